"""``all-minilm-l6-v2`` from the zoo: served embeddings equal sentence-transformers'."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_builders import run_with_engine
from zoo_helpers import Built

from forwardpass.datatypes import DataType
from forwardpass.types import InferRequest, Tensor

NAME = "all-minilm-l6-v2"
SENTENCES = [
    "A man is eating a piece of bread.",
    "Someone is having a sandwich for lunch.",
    "The stock market fell sharply on Monday.",
    "Share prices dropped at the start of the week.",
    "A cat sleeps on the warm windowsill.",
    "forwardpass batches concurrent inference requests. " * 40,  # over 256 tokens: truncated
]


@pytest.fixture(scope="module")
def repo(zoo_build: Callable[[str], Built]) -> Path:
    return zoo_build(NAME)[0]


def served(repo: Path, texts: list[str]) -> np.ndarray:
    async def body(engine: Any) -> np.ndarray:
        array = np.empty((len(texts), 1), dtype=object)
        array[:, 0] = [t.encode() for t in texts]
        request = InferRequest(model_name=NAME, inputs=[Tensor("text", DataType.BYTES, array)])
        response = await engine.infer(request)
        (output,) = response.outputs
        assert output.name == "sentence_embedding"
        return np.asarray(output.data)

    return run_with_engine(repo, body)


def reference(texts: list[str], monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    pytest.importorskip("sentence_transformers")
    from forwardpass.zoo.minilm import model_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach for the hub
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_folder()), device="cpu")
    assert model.max_seq_length == 256
    return np.asarray(model.encode(texts, normalize_embeddings=True))


def test_served_embeddings_match_sentence_transformers(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = served(repo, SENTENCES)
    theirs = reference(SENTENCES, monkeypatch)
    assert ours.shape == theirs.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.min() >= 0.999, cosines


def test_related_sentences_score_far_above_unrelated_ones(repo: Path) -> None:
    e = served(repo, SENTENCES[:5])
    similarity = e @ e.T
    related = [similarity[0, 1], similarity[2, 3]]
    unrelated = [similarity[0, 2], similarity[0, 3], similarity[1, 2], similarity[3, 4]]
    assert min(related) > 0.4, similarity
    assert max(unrelated) < 0.15, similarity
    assert min(related) - max(unrelated) > 0.3


def test_one_request_per_sentence_gives_the_same_vectors(repo: Path) -> None:
    together = served(repo, SENTENCES[:3])
    alone = np.concatenate([served(repo, [s]) for s in SENTENCES[:3]])
    np.testing.assert_allclose(together, alone, atol=1e-5)
