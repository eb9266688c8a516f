"""Distilling a BERT sentence encoder into a shallower one, on installed text (extra ``torch``).

::

    teacher ONNX ─▶ read_encoder (torch copy, checked against ONNX Runtime)
        ─▶ shrink (alternate layers, optional narrower FFN) ─▶ train on corpus sentences
        ─▶ export with the teacher's I/O ─▶ held-out agreement (ONNX Runtime, both files)

The student learns the teacher's pooled, L2-normalised embedding: ``(1 − cos) + w·‖s − t‖²``
per sentence, optionally plus hidden-state matching (student layer *j* towards the teacher
layer it was initialised from, masked MSE). The sentences (:mod:`.corpus`) are tokenized by
the model's own declared text processing, as serving does, so the student is a drop-in
version under the same tokenizer and config. Token, position and type embedding tables stay
frozen (most of the parameters; moving them on a few thousand sentences would only overfit).
Training stops after ``steps`` optimizer steps.

Agreement is measured on held-out sentences from other documents: cosine to the teacher
(mean, 5th percentile, min) and retrieval agreement (for each sentence, is its nearest other
sentence the same under both embeddings — top-1 — and how much of its top-5 is shared).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import InternalError, InvalidArgument

__all__ = [
    "Agreement",
    "EncoderDistillResult",
    "EncoderDistillSettings",
    "agreement",
    "distill_encoder",
    "embed",
    "pick_layers",
    "tokenize",
]

log = logging.getLogger("forwardpass.optimize")
_EVAL_BATCH = 32


@dataclass(frozen=True, slots=True)
class EncoderDistillSettings:
    """The student's shape and how long and how hard to train it."""

    #: Teacher layers the student starts from; ``None``: half of them (rounded up), the
    #: subset that already agrees best with the teacher (:func:`pick_layers`).
    layers: tuple[int, ...] | None = None
    #: Feed-forward width of the student; ``None`` keeps the teacher's.
    intermediate: int | None = None
    #: How the kept feed-forward neurons are chosen (:mod:`.encoder_width`): ``"weight"``
    #: (``‖w_in‖·‖w_out‖``, no data), ``"activation"`` or ``"lsq"`` (on calibration text).
    select: str = "weight"
    #: Solve the narrowed layers' output projections on calibration text before training.
    refit: bool = False
    #: What the re-fit reproduces: the full feed-forward on the student's inputs (``"own"``)
    #: or the teacher's pre-LayerNorm sum (``"teacher"``).
    refit_target: str = "own"
    #: Training sentences (spread over the set) the selection and re-fit run on.
    calibration_sentences: int = 2000
    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 3e-4
    warmup: float = 0.06
    mse_weight: float = 1.0
    hidden_weight: float = 0.0
    #: Training sentences are truncated to this many tokens (serving truncates as declared).
    max_tokens: int = 64
    sentences: int = 20000
    test_sentences: int = 1000
    seed: int = 0
    threads: int = 1


@dataclass(frozen=True, slots=True)
class Agreement:
    """How closely the student's embeddings follow the teacher's on held-out sentences."""

    sentences: int
    cosine_mean: float
    cosine_p5: float
    cosine_min: float
    top1: float
    top5: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"cosine to the teacher on {self.sentences} held-out sentences: mean "
            f"{self.cosine_mean:.4f}, p5 {self.cosine_p5:.4f}, min {self.cosine_min:.4f}; "
            f"nearest-neighbour agreement top-1 {self.top1:.3f}, top-5 {self.top5:.3f}"
        )


@dataclass(slots=True)
class EncoderDistillResult:
    path: Path
    teacher: str
    student: str
    agreement: Agreement
    losses: list[float]
    seconds: float
    corpus: str
    train_sentences: int
    onnx_vs_torch: float
    #: Per narrowed layer, how well its kept neurons reproduce the full feed-forward.
    fits: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        if self.losses:
            first = float(np.mean(self.losses[: max(1, len(self.losses) // 10)]))
            last = float(np.mean(self.losses[-max(1, len(self.losses) // 10) :]))
            trained = (
                f"trained {len(self.losses)} steps in {self.seconds:.0f} s on "
                f"{self.train_sentences} sentences; loss {first:.4f} → {last:.4f}"
            )
        else:
            trained = "not trained (0 steps): the student as initialised"
        return [
            f"student {self.student} from teacher {self.teacher}",
            self.agreement.summary(),
            trained,
            *(f"feed-forward {f}" for f in self.fits),
            f"corpus: {self.corpus}",
        ]


def pick_layers(
    teacher: Any,
    count: int,
    batch: Mapping[str, np.ndarray],
    candidates: int = 10,
) -> tuple[tuple[int, ...], float]:
    """The ``count`` teacher layers whose untrained student agrees best (mean cosine) with
    the teacher on ``batch`` (training sentences), and that cosine.

    Which layers are kept matters more than any other choice of the student: on
    all-MiniLM-L6-v2, layers (0, 2, 4) start at cosine 0.37, (0, 4, 5) at 0.72. Subsets
    that keep the last layer are tried (its output is what the pooling was trained on), at
    most ``candidates`` of them, spread evenly first.
    """
    import itertools

    import torch

    from forwardpass.optimize.encoder import SentenceEncoder, shrink

    weights = teacher.weights()
    total = len(weights.layers)
    if not 1 <= count <= total:
        raise InvalidArgument(f"a student of {count} layers from a teacher of {total}")
    last = total - 1
    spread = tuple(round(float(x)) for x in np.linspace(0, last, count)) if count > 1 else (last,)
    options = [spread] if len(set(spread)) == count else []
    for rest in itertools.combinations(range(last), count - 1):
        option = (*rest, last)
        if option not in options:
            options.append(option)
    names = weights.input_names
    args = [torch.from_numpy(batch[n]) for n in names]
    with torch.no_grad():
        reference = teacher(*args)
        scored = []
        for option in options[:candidates]:
            student = SentenceEncoder(shrink(weights, option)).eval()
            scored.append((float((student(*args) * reference).sum(-1).mean()), option))
    best = max(scored)
    return best[1], best[0]


def agreement(teacher: np.ndarray, student: np.ndarray) -> Agreement:
    """Cosine and top-1/top-5 nearest-neighbour agreement between two embeddings of the
    same sentences (each row's neighbours among the other rows)."""
    from forwardpass.optimize.accuracy import cosine_similarity

    if len(teacher) != len(student) or len(teacher) < 2:
        raise InvalidArgument("agreement needs the same two or more sentences embedded twice")
    cos = cosine_similarity(teacher, student)

    def ranked(x: np.ndarray, k: int) -> np.ndarray:
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = unit.astype(np.float64) @ unit.T.astype(np.float64)
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1, kind="stable")[:, :k]

    k = min(5, len(teacher) - 1)
    t5, s5 = ranked(teacher, k), ranked(student, k)
    overlap = [len(set(a) & set(b)) / k for a, b in zip(t5, s5, strict=True)]
    return Agreement(
        len(teacher),
        float(cos.mean()),
        float(np.percentile(cos, 5)),
        float(cos.min()),
        float(np.mean(t5[:, 0] == s5[:, 0])),
        float(np.mean(overlap)),
    )


def tokenize(
    config: Any, model_dir: Path, max_tokens: int | None = None
) -> Callable[[Sequence[str]], dict[str, np.ndarray]]:
    """A function of sentences → the model's inputs, through its declared text processing
    (one padded batch per call), optionally truncated shorter than declared."""
    from forwardpass.processing.spec import build_processing
    from forwardpass.processing.text import TextInput

    processing = build_processing(config, model_dir, {})
    text_inputs = [p for p in processing.inputs if isinstance(p, TextInput)]
    if len(text_inputs) != 1 or len(processing.client_inputs) != 1:
        raise InvalidArgument(
            f"model {config.name!r} declares no single text input in its processing; the "
            "encoder is distilled on sentences its own tokenizer encodes"
        )
    if max_tokens is not None:
        text_inputs[0].tokenizer.enable_truncation(min(max_tokens, text_inputs[0].max_length))
    client = processing.client_inputs[0].name

    def encode(texts: Sequence[str]) -> dict[str, np.ndarray]:
        blobs = np.empty((len(texts), 1), dtype=object)
        blobs[:, 0] = [t.encode() for t in texts]
        prepared = processing.preprocess({client: blobs})
        return {s.name: np.asarray(prepared[s.name], np.int64) for s in config.inputs}

    return encode


class _Batches:
    """Tokenized batches of sentences, made once (sorted by length so padding stays short)."""

    def __init__(
        self, tokenize_fn: Callable[[Sequence[str]], dict[str, np.ndarray]], texts: Sequence[str]
    ) -> None:
        self.texts = sorted(texts, key=len)
        self._tokenize = tokenize_fn

    def batches(self, size: int) -> list[dict[str, np.ndarray]]:
        return [self._tokenize(self.texts[i : i + size]) for i in range(0, len(self.texts), size)]


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def embed(path: Path, batches: Sequence[Mapping[str, np.ndarray]], threads: int = 1) -> np.ndarray:
    """The model file's embeddings of ``batches`` (ONNX Runtime, CPU)."""
    session = _session(path, threads)
    names = [i.name for i in session.get_inputs()]
    return np.concatenate([session.run(None, {n: b[n] for n in names})[0] for b in batches])


def distill_encoder(
    source: Path,
    config: Any,
    model_dir: Path,
    output: Path,
    settings: EncoderDistillSettings,
    train: Sequence[str],
    test: Sequence[str],
    corpus: str = "",
    initial: Path | None = None,
) -> EncoderDistillResult:
    """Train a student of the encoder in ``source`` and write it to ``output``.

    ``initial``: go on training this student file (an earlier ``output``) instead of
    deriving one from the teacher; ``settings.layers`` then names the teacher layer each of
    its layers stands for (default, for a student as deep as the teacher: the same index).
    """
    import onnx
    import torch

    from forwardpass.optimize.encoder import (
        SentenceEncoder,
        export_encoder,
        read_encoder,
        shrink,
        verify_encoder,
    )
    from forwardpass.optimize.encoder_width import (
        SELECTIONS,
        TARGETS,
        LayerFit,
        narrow_feed_forward,
    )

    if settings.steps < 0 or settings.batch_size < 1:
        raise InvalidArgument(
            "distillation takes zero or more steps (0: the student as initialised) of at "
            "least one sentence"
        )
    if settings.select not in SELECTIONS or settings.refit_target not in TARGETS:
        raise InvalidArgument(
            f"neuron selection {settings.select!r} (one of {', '.join(SELECTIONS)}), re-fit "
            f"target {settings.refit_target!r} (one of {', '.join(TARGETS)})"
        )
    calibrated = settings.intermediate is not None and (
        settings.refit or settings.select != "weight"
    )
    if calibrated and settings.calibration_sentences < 1:
        raise InvalidArgument("the feed-forward selection needs calibration sentences")
    if len(train) < settings.batch_size or len(test) < 2:
        raise InvalidArgument(
            f"too few sentences: {len(train)} to train on (batch {settings.batch_size}), "
            f"{len(test)} held out (need 2)"
        )
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    weights = read_encoder(onnx.load(str(source)))
    teacher = SentenceEncoder(weights).eval()
    tok = tokenize(config, model_dir, settings.max_tokens)
    fits: list[LayerFit] = []
    if initial is not None:
        student = SentenceEncoder(read_encoder(onnx.load(str(initial))))
        depth = len(student.encoder.layer)
        layers = settings.layers or (tuple(range(depth)) if depth == len(weights.layers) else ())
        if len(layers) != depth or not all(0 <= i < len(weights.layers) for i in layers):
            raise InvalidArgument(
                f"the student {initial.name} has {depth} layers: name the teacher layer each "
                f"stands for (layers {list(layers)} given, the teacher has "
                f"{len(weights.layers)})"
            )
        if student.weights().hidden != weights.hidden:
            raise InvalidArgument(
                f"the student {initial.name} is {student.weights().hidden} wide, the teacher "
                f"{weights.hidden}"
            )
        described = (
            f"{depth} layers (teacher's {list(layers)}), FFN "
            f"{'/'.join(str(student.weights().intermediate(i)) for i in range(depth))}, "
            f"trained on from {initial.name}"
        )
    else:
        if settings.layers is not None:
            layers, picked = settings.layers, ""
        else:
            probe = tok(list(train)[:: max(1, len(train) // 64)][:64])
            layers, start = pick_layers(teacher, -(-len(weights.layers) // 2), probe)
            picked = f", picked: cosine {start:.3f} before training"
        if calibrated:
            assert settings.intermediate is not None
            student = SentenceEncoder(shrink(weights, layers))
            every = max(1, len(train) // settings.calibration_sentences)
            calibration = list(train)[::every][: settings.calibration_sentences]
            fits = narrow_feed_forward(
                student,
                _Batches(tok, calibration).batches(64),
                settings.intermediate,
                select=settings.select,
                refit=settings.refit,
                target=settings.refit_target,
                teacher=teacher,
                teacher_layers=layers,
            )
            how = f"{settings.select}-selected" + (
                f", re-fitted ({settings.refit_target}) on {len(calibration)} sentences"
                if settings.refit
                else f" on {len(calibration)} sentences"
            )
        else:
            student = SentenceEncoder(shrink(weights, layers, settings.intermediate))
            how = "weight-selected"
        described = f"{len(layers)} layers (teacher's {list(layers)}{picked})" + (
            f", FFN {settings.intermediate} ({how})" if settings.intermediate else ""
        )

    test_batches = _Batches(tok, list(test)[: settings.test_sentences]).batches(_EVAL_BATCH)
    diff = verify_encoder(source, teacher, test_batches[0])
    if not diff <= 1e-4:
        raise InternalError(f"the torch copy of the teacher differs from ONNX by {diff:.2e}")

    for table in (
        student.embeddings.word_embeddings,
        student.embeddings.position_embeddings,
        student.embeddings.token_type_embeddings,
    ):
        if table is not None:
            table.weight.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.01)
    warm = max(1, int(settings.steps * settings.warmup))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + np.cos(np.pi * (step - warm) / max(1, settings.steps - warm)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    # Batches of sentences of similar length (little padding), visited in a seeded random
    # order, reshuffled each epoch.
    rng = np.random.default_rng(settings.seed)
    pool = sorted(train, key=len)
    size = settings.batch_size
    groups = [pool[i : i + size] for i in range(0, len(pool) - size + 1, size)]
    order = rng.permutation(len(groups))
    names = weights.input_names
    # Without hidden-state matching the teacher is needed only for its embeddings: ONNX
    # Runtime computes them faster than the torch copy.
    teacher_session = None if settings.hidden_weight > 0 else _session(source, settings.threads)
    losses: list[float] = []
    started = time.perf_counter()
    student.train()  # no dropout in this module: train() only marks the phase
    for step in range(settings.steps):
        if step and step % len(groups) == 0:
            order = rng.permutation(len(groups))
        batch = tok(groups[order[step % len(groups)]])
        feeds = {n: torch.from_numpy(v) for n, v in batch.items() if n in names}
        args = (feeds["input_ids"], feeds["attention_mask"], feeds.get("token_type_ids"))
        teacher_hidden: list[torch.Tensor] = []
        if teacher_session is not None:
            target = torch.from_numpy(teacher_session.run(None, {n: batch[n] for n in names})[0])
        else:
            with torch.no_grad():
                target, teacher_hidden = teacher.encode(*args)
        out, hidden = student.encode(*args)
        loss = (1 - (out * target).sum(-1)).mean()
        loss = loss + settings.mse_weight * ((out - target) ** 2).sum(-1).mean()
        if settings.hidden_weight > 0:
            mask = feeds["attention_mask"].unsqueeze(-1).to(out.dtype)
            for j, i in enumerate(layers):
                gap = ((hidden[j + 1] - teacher_hidden[i + 1]) ** 2 * mask).sum()
                loss = loss + settings.hidden_weight * gap / (mask.sum() * out.shape[-1])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.item()))
        if step % 25 == 0:
            log.info("distill step %d/%d loss %.4f", step, settings.steps, losses[-1])
    seconds = time.perf_counter() - started
    student.eval()
    export_encoder(student, output, test_batches[0])
    exported = verify_encoder(output, student, test_batches[-1])
    if not exported <= 1e-4:
        raise InternalError(f"the student's ONNX export differs from torch by {exported:.2e}")
    result = agreement(
        embed(source, test_batches, settings.threads), embed(output, test_batches, settings.threads)
    )
    return EncoderDistillResult(
        output,
        weights.describe(),
        described,
        result,
        losses,
        seconds,
        corpus,
        len(pool),
        exported,
        [f.summary() for f in fits],
    )
