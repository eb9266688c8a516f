"""Adaptive batching: wait for a batch to fill only while waiting is expected to pay off.

Opt-in per model (``parameters { key: "batching" value: { string_value: "adaptive" } }``,
optionally ``max_latency_ms``); without it the dynamic batcher keeps Triton's exact rules.

The policy learns two things online:

* **arrivals**: an exponentially weighted mean of the logarithm of the gaps between requests
  (and of the rows each brings). The log makes the estimate the *typical* gap: a closed loop
  of clients sends bursts (every answer of a batch comes back at once, then nothing while the
  next batch computes), and a plain mean would let the one long gap of each cycle hide the
  burst. For Poisson arrivals the mean log gap is ``ln(mean) - γ``, so ``exp(mean log) · e^γ``
  estimates the mean gap without bias there.
* **service time** of a batch of ``n`` rows as ``a + b·n``: a least-squares line through the
  moving averages of recent batch compute times per size class (rows by power of two). ``a``
  is what a batch costs whatever its size, the part that merging requests saves.

Decision, asked when an instance is free and requests are queued (requests that arrive while
every instance is busy accumulate for free; the only question is whether to hold an idle
instance): holding the batch of ``n`` rows for the next request costs about ``n · gap / r``
row-time (``r`` rows per request) and saves one batch overhead ``a`` plus what was already held
(the time held is spread over more rows only if the batch grows). So it holds while
``n · gap / r < a + held`` and, in any case, no longer than:

* ``a`` in all (an idle instance never waits longer than the batch overhead it could save),
* ``SILENCE`` expected gaps after the last arrival (the arrivals stopped: a closed loop whose
  clients are all queued sends nothing more until their answers go back); when the instance
  became free after the last arrival, ``SILENCE`` expected round trips after that (the
  learned time from a batch's end to the next arrival: its answers going out, the next
  requests of their clients coming in),
* ``max_queue_delay_microseconds`` after the oldest queued request arrived, where set,
* and, with ``max_latency_ms``, the point where the oldest request's wait plus the batch's
  expected service time would pass the objective (when it cannot be met at all, at once).

**How large** a batch may grow is learned too, because a line cannot see a model whose rows
get slower past some size (a working set that leaves the cache: the bench's compute model
serves more rows/s at 16 than at 32). The policy measures the compute time per row of batches
of exactly the sizes of a ladder (powers of two below ``max_batch_size``, then
``max_batch_size``) and caps every batch at the largest measured size whose rows/s is within
``MARGIN`` of the best (ties go to the larger batch: a batch also costs the server outside
its compute, unseen here) where a larger size measured slower; while none did, the cap is
``max_batch_size``. To find and follow the best size it probes the cap's neighbours on the
ladder once the cap itself is measured: one batch in ``PROBE_EVERY`` is limited to the next
size down or may grow to the next size up, alternately (a probe up holds for its rows while
arrivals come, briefly). While the load does not fill the cap (``max_batch_size`` far above
the clients), the probes go below the largest size it did fill. A neighbour not yet measured
is tried every other batch, up to ``_EAGER_TRIES`` times; a size's first batch is not counted
(it pays for warm-up). In a closed loop of twice the cap's clients the cap also keeps the
instance busy: one half computes while the other's answers go out and its next requests come
in.

A lone request at a low rate goes at once (its gap is longer than the overhead), a busy model
fills its batches up to the next preferred size or ``max_batch_size``, and until both estimates
exist (fewer than two gaps, or batches of one size class only) nothing waits, as Triton with
no delay. The policy takes every instant as an argument (no clock of its own), so tests can
drive it deterministically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from forwardpass.errors import InvalidModelConfig

__all__ = [
    "AdaptivePolicy",
    "AdaptiveSettings",
    "AdaptiveView",
    "ladder",
    "read_adaptive",
]

#: Weight of a new observation in the moving averages.
ALPHA = 1 / 16
#: Gaps after the last arrival with none since, after which a held batch goes.
SILENCE = 3.0
#: ``exp(γ)``: mean over geometric mean of exponentially distributed gaps.
_EXP_GAMMA = math.exp(0.5772156649015329)
#: Gaps shorter than this (ns) count as this: requests delivered together.
_MIN_GAP_NS = 1_000
#: Weight of a new observation of a ladder size's time per row (they come rarely).
RATE_ALPHA = 1 / 4
#: Sizes whose rows/s is within this share of the best count as the best (the larger wins).
#: Small: the measurement already favours the larger size where the server shares the core
#: with the compute (a batch that alternates with another is measured while the loop reads
#: the other's requests, a batch of every client while nothing arrives).
MARGIN = 0.01
#: One batch in this many probes a neighbouring ladder size of the cap.
PROBE_EVERY = 16
#: A neighbour not yet measured is probed every other batch, this many times at most.
_EAGER_TRIES = 8

_POLICIES = ("adaptive", "triton")


@dataclass(frozen=True, slots=True)
class AdaptiveSettings:
    """What a model config asks of the adaptive policy."""

    #: Latency objective for one request (queue + compute), ns; 0 for none.
    max_latency_ns: int = 0


def read_adaptive(
    parameters: Mapping[str, str], max_batch_size: int, dynamic_batching: bool, sequence: bool
) -> AdaptiveSettings | None:
    """The adaptive settings a config's ``parameters`` ask for; ``None`` for Triton's rules.

    Raises :class:`InvalidModelConfig` naming the parameter for a value it cannot use.
    """
    name = parameters.get("batching")
    latency = parameters.get("max_latency_ms")
    if name is None or name.strip().lower() == "triton":
        if latency is not None:
            raise InvalidModelConfig(
                'parameter max_latency_ms needs parameter batching "adaptive" '
                f"(got batching {name!r})"
            )
        return None
    if name.strip().lower() != "adaptive":
        raise InvalidModelConfig(
            f"parameter batching must be one of {', '.join(map(repr, _POLICIES))}, got {name!r}"
        )
    if sequence:
        raise InvalidModelConfig(
            'parameter batching "adaptive" applies to the dynamic batcher; this model uses '
            "sequence_batching"
        )
    if max_batch_size <= 0 or not dynamic_batching:
        raise InvalidModelConfig(
            'parameter batching "adaptive" needs max_batch_size > 0 and dynamic_batching '
            f"(max_batch_size is {max_batch_size}"
            + ("" if dynamic_batching else ", no dynamic_batching")
            + ")"
        )
    max_latency_ns = 0
    if latency is not None:
        try:
            ms = float(latency)
        except ValueError:
            raise InvalidModelConfig(
                f"parameter max_latency_ms must be a number of milliseconds, got {latency!r}"
            ) from None
        if not math.isfinite(ms) or ms <= 0:
            raise InvalidModelConfig(
                f"parameter max_latency_ms must be a positive finite number, got {latency!r}"
            )
        max_latency_ns = max(1, round(ms * 1e6))
    return AdaptiveSettings(max_latency_ns=max_latency_ns)


@dataclass(frozen=True, slots=True)
class AdaptiveView:
    """What the policy has learned, for metrics (0 where nothing is known yet)."""

    arrival_rate_per_s: float
    batch_fixed_s: float
    batch_per_row_s: float
    #: The last wait it chose for an idle instance (0: it sent at once).
    last_wait_s: float
    #: The rows a batch may take (``max_batch_size`` until a larger size measured slower).
    batch_cap: int = 0


class _SizeClass:
    __slots__ = ("ns", "rows")

    def __init__(self, rows: float, ns: float) -> None:
        self.rows = rows
        self.ns = ns


class _Rate:
    """Compute time per row of the batches of one ladder size."""

    __slots__ = ("ns_per_row", "samples", "tries")

    def __init__(self) -> None:
        self.ns_per_row = 0.0
        #: Batches of exactly this size served (the first is not in ``ns_per_row``).
        self.samples = 0
        #: Batches planned as probes of this size.
        self.tries = 0

    @property
    def measured(self) -> bool:
        return self.samples >= 2


def ladder(max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes whose throughput is measured: powers of two below ``max_batch_size``,
    then ``max_batch_size``."""
    if max_batch_size <= 0:
        return ()
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


class AdaptivePolicy:
    """Learns arrivals and service times; says how long an idle instance holds its batch and
    how many rows it may take."""

    def __init__(
        self, settings: AdaptiveSettings, max_queue_delay_ns: int = 0, max_batch_size: int = 0
    ) -> None:
        self.settings = settings
        self.max_queue_delay_ns = max_queue_delay_ns
        self.max_batch_size = max_batch_size
        self._ladder = ladder(max_batch_size)
        self._rates = {size: _Rate() for size in self._ladder}
        #: The learned cap (see the module docstring), and the batches served so far.
        self._cap = max_batch_size
        self._batches = 0
        #: The size the last :meth:`batch_limit` probed (0: none), counted when served.
        self._probing = 0
        self._last_arrival = 0
        self._log_gap: float | None = None
        self._rows = 1.0
        #: When the last batch finished, and the mean log time from a batch's end to the
        #: next arrival (a closed loop's round trip: answers out, the next requests in).
        self._done_at = 0
        self._log_return: float | None = None
        self._classes: dict[int, _SizeClass] = {}
        self._fit: tuple[float, float] | None = None
        self.last_wait_ns = 0

    # ------------------------------------------------------------------ learning
    def arrived(self, now_ns: int, rows: int = 1) -> None:
        """A request of ``rows`` rows was queued at ``now_ns``."""
        if self._done_at > self._last_arrival:
            log_return = math.log(max(now_ns - self._done_at, _MIN_GAP_NS))
            if self._log_return is None:
                self._log_return = log_return
            else:
                self._log_return += (log_return - self._log_return) * ALPHA
        if self._last_arrival:
            log_gap = math.log(max(now_ns - self._last_arrival, _MIN_GAP_NS))
            if self._log_gap is None:
                self._log_gap = log_gap
            else:
                self._log_gap += (log_gap - self._log_gap) * ALPHA
            self._rows += (rows - self._rows) * ALPHA
        else:
            self._rows = float(rows)
        self._last_arrival = now_ns

    def served(self, rows: int, compute_ns: int, done_ns: int = 0) -> None:
        """A batch of ``rows`` rows took ``compute_ns`` (merge, run, split), ending at
        ``done_ns``."""
        self._done_at = max(self._done_at, done_ns)
        size = self._classes.get(rows.bit_length())
        if size is None:
            self._classes[rows.bit_length()] = _SizeClass(rows, compute_ns)
        else:
            size.rows += (rows - size.rows) * ALPHA
            size.ns += (compute_ns - size.ns) * ALPHA
        self._fit = self._line()
        self._batches += 1
        if self._probing:
            self._rates[self._probing].tries += 1
            self._probing = 0
        rate = self._rates.get(rows)
        if rate is not None and rows > 0:
            rate.samples += 1
            per_row = compute_ns / rows
            if rate.samples == 2:
                rate.ns_per_row = per_row
            elif rate.samples > 2:
                rate.ns_per_row += (per_row - rate.ns_per_row) * RATE_ALPHA
            if rate.measured:
                self._cap = self._best_cap()

    def _best_cap(self) -> int:
        """The largest measured ladder size within ``MARGIN`` of the best rows/s, or
        ``max_batch_size`` where that is the largest size measured."""
        measured = [size for size in self._ladder if self._rates[size].measured]
        fastest = min(self._rates[size].ns_per_row for size in measured)
        good = [s for s in measured if self._rates[s].ns_per_row * (1 - MARGIN) <= fastest]
        chosen = good[-1]
        return self.max_batch_size if chosen == measured[-1] else chosen

    def batch_limit(self) -> int:
        """The rows the next batch may take: the learned cap, or on a probe the next ladder
        size down or up (0 where the policy knows no ``max_batch_size``)."""
        self._probing = 0
        if not self._ladder:
            return self._cap
        at = self._ladder.index(self._cap)
        if self._rates[self._cap].measured:
            neighbours = [self._ladder[i] for i in (at - 1, at + 1) if 0 <= i < len(self._ladder)]
        else:
            # The load has not filled the cap: probes compare with the largest size it did
            # fill, and only below it (a size above is one the load does not reach).
            reached = [i for i in range(at) if self._rates[self._ladder[i]].measured]
            if not reached or reached[-1] == 0:
                return self._cap
            neighbours = [self._ladder[reached[-1] - 1]]
        k = self._batches
        for size in neighbours:
            rate = self._rates[size]
            if not rate.measured and rate.tries < _EAGER_TRIES and k % 2:
                self._probing = size
                return size
        if neighbours and k % PROBE_EVERY == PROBE_EVERY - 1:
            size = neighbours[(k // PROBE_EVERY) % len(neighbours)]
            self._probing = size
            return size
        return self._cap

    def _line(self) -> tuple[float, float] | None:
        """Least squares ``a + b·n`` through the size classes; ``None`` with fewer than two."""
        classes = self._classes.values()
        k = len(classes)
        if k < 2:
            return None
        mean_n = sum(c.rows for c in classes) / k
        mean_t = sum(c.ns for c in classes) / k
        var = sum((c.rows - mean_n) ** 2 for c in classes)
        if var <= 0:
            return None
        b = sum((c.rows - mean_n) * (c.ns - mean_t) for c in classes) / var
        if b < 0:  # bigger batches measured faster: noise; all of it is overhead
            return mean_t, 0.0
        a = mean_t - b * mean_n
        if a < 0:  # no overhead to save
            return 0.0, mean_t / mean_n
        return a, b

    # ------------------------------------------------------------------ estimates
    def gap_ns(self) -> float | None:
        """The expected time to the next request, or ``None`` before two arrivals."""
        if self._log_gap is None:
            return None
        return math.exp(self._log_gap) * _EXP_GAMMA

    def return_ns(self) -> float | None:
        """The expected time from a batch's end to the next arrival, or ``None`` unknown."""
        if self._log_return is None:
            return None
        return math.exp(self._log_return) * _EXP_GAMMA

    def service_ns(self, rows: int) -> float | None:
        """Expected compute time of a batch of ``rows`` rows, or ``None`` before a fit."""
        if self._fit is None:
            return None
        a, b = self._fit
        return a + b * rows

    def view(self) -> AdaptiveView:
        gap = self.gap_ns()
        a, b = self._fit or (0.0, 0.0)
        return AdaptiveView(
            arrival_rate_per_s=1e9 / gap if gap else 0.0,
            batch_fixed_s=a / 1e9,
            batch_per_row_s=b / 1e9,
            last_wait_s=self.last_wait_ns / 1e9,
            batch_cap=self._cap,
        )

    # ------------------------------------------------------------------ decision
    def hold_ns(
        self, *, now_ns: int, rows: int, target: int, oldest_ns: int, free_since_ns: int
    ) -> int:
        """How much longer an idle instance holds ``rows`` queued rows (0: send them now).

        ``target``: the size the batch could grow to (the next preferred size, or
        ``max_batch_size``); ``oldest_ns``: when the oldest of them was queued;
        ``free_since_ns``: when the instance became free.
        """
        wait = self._hold(now_ns, rows, target, oldest_ns, free_since_ns)
        self.last_wait_ns = wait
        return wait

    def _hold(self, now: int, rows: int, target: int, oldest: int, free_since: int) -> int:
        gap = self.gap_ns()
        if rows >= target or gap is None or self._fit is None:
            return 0
        a, b = self._fit
        start = max(oldest, free_since)
        held = max(0, now - start)
        # A probe of the size above the cap holds to measure it, not to save overhead: it
        # waits for arrivals while they come, at most a tenth of a capped batch's time (one
        # batch in 2·PROBE_EVERY: well under 1 % of the instance's time).
        probe = self._probing > self._cap and rows >= self._cap
        bound = max(a, 0.1 * (a + b * self._cap)) if probe else a
        if not probe and rows * gap / max(self._rows, 1.0) >= a + held:
            return 0  # the next request is expected later than it would save
        # Silence counts from the last arrival or from when the instance became free, if
        # later: the requests it just answered are only now going back to their clients,
        # and in a closed loop those clients are the next arrivals (after a round trip).
        quiet = self._last_arrival + SILENCE * gap
        if free_since > self._last_arrival:
            back = self.return_ns() or 0.0
            quiet = free_since + max(SILENCE * gap, SILENCE * back)
        deadline = min(start + bound, quiet)
        if self.max_queue_delay_ns:
            deadline = min(deadline, oldest + self.max_queue_delay_ns)
        objective = self.settings.max_latency_ns
        if objective:
            # The batch grows by one request while it waits: its service time grows too.
            deadline = min(deadline, oldest + objective - (a + b * (rows + self._rows)))
        return max(0, int(deadline - now))
