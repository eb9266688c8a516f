"""The key/value cache a generation model's sequences share, owned by forwardpass.

One preallocated buffer per layer and kind, ``[slots, kv_heads, context, head_dim]`` float32:
a slot holds one sequence's keys (or values) for every position it may reach, so a sequence
never grows, moves between buffers or reallocates while it runs. The slots in use are kept
dense, ``[0, active)``: the running batch is then the leading ``active`` rows of every buffer,
a contiguous view the decoder binds without copying (``window="full"``). When a sequence
leaves, the last slot's contents move into the hole once (:meth:`KVCache.release`).

With ``window="bucket"`` the same memory is laid out narrower: each buffer is viewed as
``[slots, kv_heads, width, head_dim]`` where ``width`` is the longest live sequence rounded
up to :data:`BUCKET` positions (at most the context). The running batch is then still the
leading rows of every buffer, contiguous, bound without a copy, while attention spans only
``width`` positions instead of the whole context. When a sequence outgrows ``width`` (once
every ``BUCKET`` tokens at most) or the longest sequences leave, the live slots are laid out
again at the new width (:meth:`KVCache.fit`): one copy per bucket instead of one per step.

The budget is counted in slots: ``slots_for`` turns a byte budget into how many sequences of
the full context fit, and admission control (the scheduler) never hands out more; the
buffers are allocated with ``np.zeros`` at load, so the memory a model may take is fixed and
known when it loads, and an over-large budget fails the load rather than a request.
"""

from __future__ import annotations

import numpy as np

from forwardpass.errors import InvalidModelConfig
from forwardpass.zoo.decoder import DecoderShape

__all__ = ["BUCKET", "KVCache"]

#: Positions the bucketed layout's width grows and shrinks by.
BUCKET = 64


class KVCache:
    """Per-slot key/value buffers for every layer, with the live length of each slot."""

    def __init__(self, shape: DecoderShape, context: int, slots: int) -> None:
        self.shape = shape
        self.context = context
        self.slots = slots
        size = slots * shape.kv_heads * context * shape.head_dim
        self._flat = [np.zeros(size, np.float32) for _ in range(2 * shape.layers)]
        #: Positions per slot in the current layout (the context unless :meth:`fit` changed it).
        self.width = context
        #: In the decoder's input order: key_0, value_0, key_1, value_1, ...
        self.buffers = self._views(context)
        self.relayouts = 0
        #: Positions filled in each slot.
        self.lengths = np.zeros(slots, np.int64)
        self.active = 0

    def _views(self, width: int) -> list[np.ndarray]:
        shape = self.shape
        count = self.slots * shape.kv_heads * width * shape.head_dim
        dims = (self.slots, shape.kv_heads, width, shape.head_dim)
        return [flat[:count].reshape(dims) for flat in self._flat]

    def fit(self, needed: int) -> None:
        """Lay the cache out ``BUCKET``-rounded wide enough for ``needed`` positions and for
        every live sequence (the bucketed layout); a no-op while the width fits."""
        longest = int(self.lengths[: self.active].max()) if self.active else 0
        needed = max(needed, longest)
        width = min(self.context, max(BUCKET, -(-needed // BUCKET) * BUCKET))
        if width == self.width:
            return
        keep = min(longest, width)
        live = [b[: self.active, :, :keep].copy() for b in self.buffers]
        self.width = width
        self.buffers = self._views(width)
        for buffer, part in zip(self.buffers, live, strict=True):
            buffer[: self.active, :, :keep] = part
        self.relayouts += 1

    @staticmethod
    def slot_bytes(shape: DecoderShape, context: int) -> int:
        """Bytes one slot takes across every layer's keys and values."""
        return 2 * shape.layers * shape.kv_heads * context * shape.head_dim * 4

    @classmethod
    def slots_for(cls, budget: int, shape: DecoderShape, context: int, max_batch: int) -> int:
        """How many slots ``budget`` bytes hold (capped at ``max_batch``); at least one, or
        :class:`InvalidModelConfig` saying what one sequence needs."""
        per = cls.slot_bytes(shape, context)
        if budget < per:
            raise InvalidModelConfig(
                f"generation cache_bytes {budget} holds no sequence: one of context_length "
                f"{context} needs {per} bytes ({per / 2**20:.1f} MiB); raise cache_bytes or "
                "lower context_length"
            )
        return min(max_batch, budget // per)

    @property
    def capacity_bytes(self) -> int:
        return self.slots * self.slot_bytes(self.shape, self.context)

    @property
    def used_bytes(self) -> int:
        """Bytes held by the sequences in the cache (whole slots)."""
        return self.active * self.slot_bytes(self.shape, self.context)

    @property
    def used_tokens(self) -> int:
        return int(self.lengths[: self.active].sum())

    def acquire(self) -> int | None:
        """A free slot (empty), or ``None`` when every slot is taken."""
        if self.active >= self.slots:
            return None
        slot = self.active
        self.active += 1
        self.lengths[slot] = 0
        return slot

    def release(self, slot: int) -> int | None:
        """Free ``slot``. To keep the slots dense the last one moves into it: its old index
        is returned (the caller renumbers that sequence), or ``None`` if nothing moved."""
        last = self.active - 1
        moved: int | None = None
        if slot != last:
            n = int(self.lengths[last])
            for buffer in self.buffers:
                buffer[slot, :, :n] = buffer[last, :, :n]
            self.lengths[slot] = n
            moved = last
        self.lengths[last] = 0
        self.active = last
        return moved

    def past(self, rows: int, window: int) -> list[np.ndarray]:
        """The first ``rows`` slots' caches, ``window`` positions long: views of the buffers
        when ``window`` is the layout's width, else one contiguous copy per buffer."""
        if window == self.width:
            return [buffer[:rows] for buffer in self.buffers]
        return [np.ascontiguousarray(buffer[:rows, :, :window]) for buffer in self.buffers]

    def swap(self, a: int, b: int) -> None:
        """Exchange the contents (and lengths) of live slots ``a`` and ``b``."""
        if a == b:
            return
        n = int(max(self.lengths[a], self.lengths[b]))
        for buffer in self.buffers:
            held = buffer[a, :, :n].copy()
            buffer[a, :, :n] = buffer[b, :, :n]
            buffer[b, :, :n] = held
        self.lengths[[a, b]] = self.lengths[[b, a]]

    def write_prefill(
        self, slot: int, new: list[np.ndarray], row: int = 0, count: int | None = None
    ) -> None:
        """Append the first ``count`` positions of row ``row`` of a prefill's keys and values
        (``[B, kv, S, d]`` each; all ``S`` by default) to ``slot``."""
        start = int(self.lengths[slot])
        count = new[0].shape[2] if count is None else count
        for buffer, array in zip(self.buffers, new, strict=True):
            buffer[slot, :, start : start + count] = array[row, :, :count]
        self.lengths[slot] = start + count

    def write_step(self, rows: int, new: list[np.ndarray]) -> None:
        """Append one position (``[rows, kv, 1, d]`` each) to each of the first ``rows`` slots."""
        index = np.arange(rows)
        at = self.lengths[:rows]
        for buffer, array in zip(self.buffers, new, strict=True):
            buffer[index, :, at] = array[:, :, 0]
        self.lengths[:rows] += 1
