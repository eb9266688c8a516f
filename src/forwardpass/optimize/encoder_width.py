"""A narrower feed-forward for a BERT student, chosen and re-fitted on real activations.

:func:`~forwardpass.optimize.encoder.shrink` alone keeps the intermediate neurons of largest
``‖w_in‖·‖w_out‖`` and changes nothing else: on all-MiniLM-L6-v2 with all six layers and 512
of 1536 neurons the untrained student agrees with the teacher at cosine 0.68. What a neuron
contributes depends on how it fires on text, and the kept neurons can make up for the dropped
ones once the output projection is solved for. :func:`narrow_feed_forward` does both, layer
by layer, on calibration sentences:

1. run the student as built so far over the sentences (real tokens only: padding masked out)
   to get the layer's input ``h`` (after attention), the full GELU activations ``a`` and the
   target ``y``: the full feed-forward's output on those same inputs (``target="own"``) or
   the residual that would give the teacher's own pre-LayerNorm sum
   (``z_teacher − h``, ``target="teacher"``, which also undoes the earlier layers' errors);
2. choose ``width`` neurons: ``"weight"`` as :func:`shrink`, ``"activation"`` by
   ``E|gelu(a_i)|·‖w_out_i‖``, or ``"lsq"``: greedy forward selection of the neurons whose
   least-squares (ridge) fit of ``y`` leaves the smallest error (each step takes the
   neuron that reduces the residual most, from the covariance of ``a`` and ``y``);
3. solve the output projection and bias of the kept neurons in closed form (ridge,
   ``refit=True``), then move on to the next layer with the narrowed layer in place, so
   every later layer is fitted on the inputs it will really see.

Errors are measured as the LayerNorm after the residual sum sees them (``normalised``):
each token weighted by ``1/var(h + FFN(h))``, each output by its ``|γ|``. Unweighted, a few
tokens with huge activations in a few outlier dimensions make the error look tiny (0.2 % on
MiniLM's first layer at 512 neurons) while the same cut costs 0.01 of final cosine; weighted,
it reads 17 %, which is what distillation then has to win back. Widths may differ per layer.

Sufficient statistics (means, ``aᵀa``, ``aᵀy``) are summed over batches in float64, so the
memory is ``O(n²)`` in the teacher's width ``n``, not ``O(tokens)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forwardpass.errors import InvalidArgument

__all__ = ["SELECTIONS", "TARGETS", "LayerFit", "narrow_feed_forward", "select_lsq"]

SELECTIONS = ("weight", "activation", "lsq")
TARGETS = ("own", "teacher")


@dataclass(frozen=True, slots=True)
class LayerFit:
    """One narrowed layer: its kept neurons and how well they reproduce the target."""

    layer: int
    keep: tuple[int, ...]
    #: ``E‖y − ŷ‖² / E‖y − E y‖²`` on the calibration tokens: before (the kept neurons with
    #: the teacher's own output rows) and after the re-fit.
    error_kept: float
    error_refit: float

    def summary(self) -> str:
        return (
            f"layer {self.layer}: {len(self.keep)} neurons, relative error "
            f"{self.error_kept:.4f} → {self.error_refit:.4f} after re-fit"
        )


class _Moments:
    """Running token-weighted sums for a ridge regression of ``y`` on ``a`` (float64)."""

    def __init__(self, n: int, d: int, cross: bool) -> None:
        self.count = 0.0
        self.sum_a = np.zeros(n)
        self.sum_y = np.zeros(d)
        self.aa = np.zeros((n, n))
        self.ay = np.zeros((n, d)) if cross else None
        self.yy = np.zeros(d)
        self.abs_a = np.zeros(n)

    def add(self, a: np.ndarray, y: np.ndarray | None, weight: np.ndarray) -> None:
        w = weight.astype(np.float64)[:, None]
        self.count += float(w.sum())
        self.sum_a += (w * a).sum(0)
        self.aa += ((a * w.astype(a.dtype)).T @ a).astype(np.float64)
        self.abs_a += (w * np.abs(a)).sum(0)
        if self.ay is not None and y is not None:
            self.sum_y += (w * y).sum(0)
            self.ay += ((a * w.astype(a.dtype)).T @ y).astype(np.float64)
            self.yy += (w * y.astype(np.float64) ** 2).sum(0)

    def centred(
        self, w_out: np.ndarray, b_out: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Covariance of ``a``, cross-covariance of ``a`` with ``y``, the variance of each
        output of ``y``, and the means of ``a`` and ``y``."""
        n = self.count
        mean_a, mean_y = self.sum_a / n, self.sum_y / n
        cov = self.aa / n - np.outer(mean_a, mean_a)
        if self.ay is None:  # y = a·w_out + b_out exactly
            cross = cov @ w_out
            mean_y = mean_a @ w_out + b_out
            var_y = (cross * w_out).sum(0)
        else:
            cross = self.ay / n - np.outer(mean_a, mean_y)
            var_y = self.yy / n - mean_y**2
        return cov, cross, var_y, mean_a, mean_y


def select_lsq(cov: np.ndarray, cross: np.ndarray, width: int, ridge: float) -> np.ndarray:
    """Greedy forward selection of ``width`` columns for the ridge regression with input
    covariance ``cov`` (n×n) and input-target covariance ``cross`` (n×d): each step adds
    the column that lowers the residual most (the sorted indices).

    The residual covariances are updated in place by one rank-1 step per pick (a Cholesky
    sweep), so the cost is ``O(width·n·(n + d))``.
    """
    n = cov.shape[0]
    if not 1 <= width <= n:
        raise InvalidArgument(f"select {width} of {n} columns")
    g = cov + ridge * np.eye(n)
    c = cross.copy()
    chosen: list[int] = []
    free = np.ones(n, bool)
    for _ in range(width):
        diag = np.diag(g)
        gain = np.where(free & (diag > 1e-12), (c**2).sum(1) / np.maximum(diag, 1e-300), -1.0)
        j = int(np.argmax(gain))
        if gain[j] < 0:  # what is left is constant on these tokens: any of it will do
            j = int(np.flatnonzero(free)[0])
        chosen.append(j)
        free[j] = False
        pivot = g[j, j]
        if pivot > 1e-12:
            col = g[:, j].copy()
            c -= np.outer(col, c[j]) / pivot
            g -= np.outer(col, col) / pivot
    return np.sort(np.asarray(chosen))


def _error(
    cov: np.ndarray,
    cross: np.ndarray,
    var_y: np.ndarray,
    keep: np.ndarray,
    w: np.ndarray,
    scale: np.ndarray,
) -> float:
    """Relative residual of ``y ≈ a[:, keep]·w + (the best bias)``, output ``k`` counted
    ``scale[k]²`` times."""
    sub = cov[np.ix_(keep, keep)]
    per_output = var_y - 2 * (w * cross[keep]).sum(0) + (w * (sub @ w)).sum(0)
    total = float(np.sum(scale**2 * var_y))
    return max(float(np.sum(scale**2 * per_output)), 0.0) / max(total, 1e-30)


def narrow_feed_forward(
    student: object,
    batches: Sequence[Mapping[str, np.ndarray]],
    width: int | Sequence[int],
    *,
    select: str = "lsq",
    refit: bool = True,
    target: str = "own",
    teacher: object | None = None,
    teacher_layers: Sequence[int] | None = None,
    ridge: float = 1e-3,
    normalised: bool = True,
) -> list[LayerFit]:
    """Cut every feed-forward of ``student`` (a :class:`~.encoder.SentenceEncoder`, changed
    in place) to ``width`` neurons (or per layer: one width each), chosen by ``select`` and
    (``refit``) with the output projection solved on ``batches`` (see the module docstring).
    ``target="teacher"`` needs the ``teacher`` encoder and, per student layer, the teacher
    layer it stands for (``teacher_layers``; default: the same index). ``ridge`` is
    relative to the mean activation variance. ``normalised``: measure the error as the
    LayerNorm that follows sees it (each token weighted by ``1/var(z)``, each output by its
    ``|γ|``)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from forwardpass.optimize.encoder import SentenceEncoder, largest_weights

    if not isinstance(student, SentenceEncoder):
        raise InvalidArgument("narrow_feed_forward takes a SentenceEncoder")
    if select not in SELECTIONS:
        raise InvalidArgument(f"neuron selection {select!r}: one of {', '.join(SELECTIONS)}")
    if target not in TARGETS:
        raise InvalidArgument(f"re-fit target {target!r}: one of {', '.join(TARGETS)}")
    if not batches:
        raise InvalidArgument("narrowing the feed-forward needs calibration sentences")
    # Untyped: torch types submodule attributes as ``Tensor | Module``.
    layers: list[Any] = list(student.encoder.layer)
    mapping = list(teacher_layers) if teacher_layers is not None else list(range(len(layers)))
    if len(mapping) != len(layers):
        raise InvalidArgument(
            f"{len(mapping)} teacher layers given for a student of {len(layers)} layers"
        )
    if target == "teacher" and not isinstance(teacher, SentenceEncoder):
        raise InvalidArgument("re-fitting towards the teacher needs the teacher encoder")
    widths = [width] * len(layers) if isinstance(width, int) else [int(w) for w in width]
    if len(widths) != len(layers):
        raise InvalidArgument(f"{len(widths)} FFN widths given for a student of {len(layers)}")
    for i, (layer, w) in enumerate(zip(layers, widths, strict=True)):
        full = layer.intermediate.dense.out_features
        if not 1 <= w <= full:
            raise InvalidArgument(f"student FFN width {w}: between 1 and {full} (layer {i})")

    names = student.input_names

    def args(batch: Mapping[str, np.ndarray]) -> list[torch.Tensor | None]:
        return [
            torch.from_numpy(np.asarray(batch["input_ids"], np.int64)),
            torch.from_numpy(np.asarray(batch["attention_mask"], np.int64)),
            torch.from_numpy(np.asarray(batch["token_type_ids"], np.int64))
            if "token_type_ids" in names and "token_type_ids" in batch
            else None,
        ]

    def start(model: SentenceEncoder, batch: Mapping[str, np.ndarray]) -> tuple[Any, Any, Any]:
        ids, mask, types = args(batch)
        assert ids is not None and mask is not None
        x = model.embeddings(ids, types)
        keep = mask.to(x.dtype)
        additive = (1.0 - keep)[:, None, None, :] * torch.finfo(x.dtype).min
        return x, additive, mask.bool()

    fits: list[LayerFit] = []
    with torch.no_grad():
        state = [start(student, b) for b in batches]  # (hidden, additive mask, token mask)
        teacher_pre: list[list[torch.Tensor]] = []
        if target == "teacher":
            assert isinstance(teacher, SentenceEncoder)
            # The teacher's pre-LayerNorm sums (h + FFN(h)) of every layer, real tokens only.
            for batch in batches:
                x, additive, tokens = start(teacher, batch)
                sums = []
                t_layers: list[Any] = list(teacher.encoder.layer)
                for t_layer in t_layers:
                    h = t_layer.attention(x, additive)
                    z = t_layer.output.dense(t_layer.intermediate(h)) + h
                    sums.append(z[tokens])
                    x = t_layer.output.LayerNorm(z)
                teacher_pre.append(sums)
        for index, layer in enumerate(layers):
            w_in = layer.intermediate.dense.weight.detach().numpy().T.astype(np.float64)
            b_in = layer.intermediate.dense.bias.detach().numpy()
            w_out = layer.output.dense.weight.detach().numpy().T.astype(np.float64)
            b_out = layer.output.dense.bias.detach().numpy().astype(np.float64)
            moments = _Moments(w_out.shape[0], w_out.shape[1], cross=target == "teacher")
            attended = []
            for b, (x, additive, tokens) in enumerate(state):
                h = layer.attention(x, additive)
                attended.append(h)
                full = F.gelu(layer.intermediate.dense(h))
                a = full[tokens].numpy()
                y = (
                    (teacher_pre[b][mapping[index]] - h[tokens]).numpy()
                    if target == "teacher"
                    else None
                )
                if normalised:
                    # What the LayerNorm after the sum divides by: a token with a large
                    # spread counts for less.
                    z = (layer.output.dense(full) + h)[tokens]
                    weight = 1.0 / (z.var(-1, unbiased=False) + layer.output.LayerNorm.eps)
                    moments.add(a, y, weight.numpy())
                else:
                    moments.add(a, y, np.ones(len(a)))
            cov, cross, var_y, mean_a, mean_y = moments.centred(w_out, b_out)
            lam = ridge * max(float(np.mean(np.diag(cov))), 1e-12)
            scale = (
                np.abs(layer.output.LayerNorm.weight.detach().numpy()).astype(np.float64)
                if normalised
                else np.ones(w_out.shape[1])
            )
            if select == "weight":
                keep = largest_weights(w_in, w_out, widths[index])
            elif select == "activation":
                score = moments.abs_a / moments.count * np.linalg.norm(w_out, axis=1)
                keep = np.sort(np.argsort(-score, kind="stable")[: widths[index]])
            else:
                keep = select_lsq(cov, cross * scale, widths[index], lam)
            sub = cov[np.ix_(keep, keep)]
            kept_w = w_out[keep]
            before = _error(cov, cross, var_y, keep, kept_w, scale)
            if refit:
                new_w = np.linalg.solve(sub + lam * np.eye(len(keep)), cross[keep])
                new_b = mean_y - mean_a[keep] @ new_w
            else:
                new_w, new_b = kept_w, b_out
            after = _error(cov, cross, var_y, keep, new_w, scale)
            # The narrowed layer, in place.
            idx = torch.from_numpy(keep)
            inter = nn.Linear(w_in.shape[0], len(keep))
            inter.weight.copy_(layer.intermediate.dense.weight[idx])
            inter.bias.copy_(torch.from_numpy(b_in[keep]))
            out = nn.Linear(len(keep), w_out.shape[1])
            out.weight.copy_(torch.from_numpy(np.ascontiguousarray(new_w.T, dtype=np.float32)))
            out.bias.copy_(torch.from_numpy(np.asarray(new_b, np.float32)))
            layer.intermediate.dense = inter
            layer.output.dense = out
            fits.append(LayerFit(index, tuple(int(k) for k in keep), before, after))
            state = [
                (layer.output(layer.intermediate(h), h), additive, tokens)
                for h, (_, additive, tokens) in zip(attended, state, strict=True)
            ]
    return fits
