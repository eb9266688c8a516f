"""Distillation as an ``optimize`` method: a smaller sentence encoder (extra ``torch``).

For a BERT-family sentence encoder with declared text processing (the zoo's
``all-minilm-l6-v2``), the student keeps half the teacher's layers (the subset that agrees best
with the teacher before training, :func:`~forwardpass.optimize.encoder_distill.pick_layers`)
and learns its
pooled, normalised embeddings on sentences from the installed packages' docstrings and texts
(:mod:`~forwardpass.optimize.encoder_distill`, :mod:`~forwardpass.optimize.corpus`). A
second, *narrow* student keeps every layer but 3/8 of each feed-forward, the neurons
chosen and the output projections re-fitted by least squares on the same text before
training (:mod:`~forwardpass.optimize.encoder_width`). Variants: each student as it is, and
with dynamic INT8 (the chain ``--target edge`` would pick: a smaller network, then smaller
weights). Each student is trained once per run and shared by its two variants. Training
length: ``--steps`` (default
:attr:`EncoderDistillSettings.steps`). The held-out agreement (cosine mean/p5/min, top-1 and
top-5 nearest-neighbour agreement) is in the candidate's notes; the optimizer's own accuracy
columns compare it on ``--validation`` (a ``.txt`` of sentences gives a real comparison).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from forwardpass.errors import Unsupported
from forwardpass.optimize.methods.base import BuildContext, Method, MethodSkipped, Variant

__all__ = ["DistillMethod"]

_STUDENT = "distill-student"
#: The narrow student keeps this fraction of every feed-forward (all-MiniLM-L6-v2: 576 of
#: 1536 neurons; 1.39× faster at batch 1 and 1.66× at batch 8 on one thread, measured on a
#: quiet machine, bench/README.md).
_NARROW = 3 / 8
#: Every layer's hidden states pulled towards the same teacher layer's (equal depth).
_NARROW_LEARNING_RATE = 3e-4
_NARROW_HIDDEN_WEIGHT = 1.0


class DistillMethod(Method):
    """Students with half the layers or 3/8 of the feed-forward, distilled on installed
    text; and each in INT8."""

    name = "distill"
    requires = ("torch",)
    extra = "torch"

    def variants(self, ctx: BuildContext) -> tuple[Variant, ...]:
        return (
            Variant(
                "distill-half",
                "half the layers (the subset closest to the teacher), distilled on installed text",
                {"shape": "half"},
            ),
            Variant(
                "distill-half-int8",
                "half the layers, distilled, then dynamic INT8 (per-tensor)",
                {"shape": "half", "int8": True},
            ),
            Variant(
                "distill-narrow",
                "every layer, 3/8 of each feed-forward (neurons chosen and output re-fitted "
                "by least squares on installed text), distilled",
                {"shape": "narrow"},
            ),
            Variant(
                "distill-narrow-int8",
                "every layer, 3/8 of each feed-forward, distilled, then dynamic INT8",
                {"shape": "narrow", "int8": True},
            ),
        )

    def check(self, ctx: BuildContext) -> str | None:
        reason = super().check(ctx)
        if reason:
            return reason
        from forwardpass.optimize.encoder import read_encoder
        from forwardpass.processing.spec import read_declaration

        try:
            weights = read_encoder(ctx.model)
        except Unsupported as exc:
            return f"distillation takes a BERT sentence encoder: {exc.message}"
        if len(weights.layers) < 2:
            return "the encoder has one layer: nothing to keep half of"
        inputs = (read_declaration(ctx.config) or {}).get("inputs", [])
        if not any(i.get("kind") == "text" for i in inputs if isinstance(i, dict)):
            return (
                "distillation tokenizes its corpus with the model's text processing: none declared"
            )
        return None

    def _student(self, ctx: BuildContext, shape: str) -> tuple[Path, list[str]]:
        """The trained student of ``shape`` (made by its first variant, reused by the INT8
        one)."""
        from forwardpass.optimize.corpus import sentences
        from forwardpass.optimize.encoder import read_encoder
        from forwardpass.optimize.encoder_distill import EncoderDistillSettings, distill_encoder

        folder = ctx.workdir / (_STUDENT if shape == "half" else f"{_STUDENT}-{shape}")
        path, notes_file = folder / "model.onnx", folder / "notes.json"
        if path.is_file() and notes_file.is_file():
            return path, json.loads(notes_file.read_text(encoding="utf-8"))
        folder.mkdir(exist_ok=True)
        settings = EncoderDistillSettings()
        if shape == "narrow":
            weights = read_encoder(ctx.model)
            settings = replace(
                settings,
                layers=tuple(range(len(weights.layers))),
                intermediate=max(1, round(weights.intermediate(0) * _NARROW)),
                select="lsq",
                refit=True,
                hidden_weight=_NARROW_HIDDEN_WEIGHT,
                learning_rate=_NARROW_LEARNING_RATE,
            )
        if ctx.steps is not None:
            settings = replace(settings, steps=ctx.steps)
        # No more sentences than training can see (a short run reads a small corpus fast).
        corpus = sentences(
            min(settings.sentences, max(2000, 2 * settings.steps * settings.batch_size))
        )
        if len(corpus.test) < 2 or len(corpus.train) < settings.batch_size:
            raise MethodSkipped(f"too little installed text to distil on ({corpus.source})")
        result = distill_encoder(
            ctx.source,
            ctx.config,
            ctx.source.parent.parent,
            path,
            settings,
            corpus.train,
            corpus.test,
            corpus.source,
        )
        notes = result.notes()
        notes_file.write_text(json.dumps(notes), encoding="utf-8")
        return path, notes

    def build(self, ctx: BuildContext, variant: Variant, output: Path) -> list[str]:
        import shutil

        from forwardpass.optimize.methods.int8 import Int8DynamicMethod

        student, notes = self._student(ctx, str(variant.options.get("shape", "half")))
        if not variant.options.get("int8"):
            shutil.copyfile(student, output)
            return list(notes)
        # The optimizer's own dynamic INT8, on the student (its own work folder, so the
        # teacher's quantization pre-processing cache is not reused for it).
        quant = student.parent.parent / f"{student.parent.name}-int8"
        quant.mkdir(exist_ok=True)
        student_ctx = BuildContext(student, ctx.config, ctx.target, ctx.calibration, quant)
        int8 = Int8DynamicMethod()
        (plain,) = (v for v in int8.variants(student_ctx) if not v.options["per_channel"])
        return [*notes, *int8.build(student_ctx, plain, output)]
