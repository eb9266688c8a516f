"""The recommender's steps on their own: id lookup, excluded entries, top labels / values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument, InvalidModelConfig, NotFound
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.processing.lookup import LookupInput
from forwardpass.processing.outputs import OutputChain, top_order

USER = TensorSpec("user", DataType.INT64, (1,))
SCORES = TensorSpec("scores", DataType.FP32, (5,))
CONFIG = ModelConfig(name="rec", max_batch_size=8, inputs=(USER,), outputs=(SCORES,))
LABELS = ("a", "b", "c", "d", "e")


def ids(*values: str) -> np.ndarray:
    return np.array([[v.encode()] for v in values], dtype=object)


def write_seen(folder: Path, rows: list[list[int]]) -> None:
    indptr = np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64)
    indices = np.array([i for r in rows for i in r], dtype=np.int64)
    np.savez(folder / "seen.npz", indptr=indptr, indices=indices)


def test_lookup_maps_ids_to_rows_and_names_an_unknown_one(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("u1\nu2\n<popular>\n")
    proc = LookupInput("user_id", CONFIG, tmp_path, {"to": "user", "vocabulary": "users.txt"})
    assert [(s.name, s.datatype, s.dims) for s in proc.inputs] == [
        ("user_id", DataType.BYTES, (1,))
    ]
    out = proc({"user_id": ids("u2", "u1")})
    assert out["user"].dtype == np.int64 and out["user"].tolist() == [[1], [0]]
    with pytest.raises(NotFound, match="unknown id 'nobody'"):
        proc({"user_id": ids("u1", "nobody")})
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        proc({"user_id": np.array([[b"\xff"]], dtype=object)})
    fallback = LookupInput(
        "user_id",
        CONFIG,
        tmp_path,
        {"to": "user", "vocabulary": "users.txt", "fallback": "<popular>"},
    )
    assert fallback({"user_id": ids("nobody", "u2")})["user"].tolist() == [[2], [1]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"to": "nope", "vocabulary": "users.txt"}, "'to' must name a model input"),
        ({"to": "user"}, "'vocabulary' must name a file"),
        ({"to": "user", "vocabulary": "missing.txt"}, "missing.txt is missing"),
        ({"to": "user", "vocabulary": "../users.txt"}, "is missing"),
        ({"to": "user", "vocabulary": "twice.txt"}, "lists an id twice"),
        ({"to": "user", "vocabulary": "users.txt", "fallback": "x"}, "fallback 'x' is not in"),
        ({"to": "user", "vocabulary": "users.txt", "oops": 1}, r"unknown option\(s\) \['oops'\]"),
    ],
)
def test_lookup_config_errors(tmp_path: Path, options: dict[str, object], message: str) -> None:
    (tmp_path / "users.txt").write_text("u1\nu2\n")
    (tmp_path / "twice.txt").write_text("u1\nu1\n")
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("users.txt", "twice.txt"):
        (folder / name).write_text((tmp_path / name).read_text())
    with pytest.raises(InvalidModelConfig, match=message):
        LookupInput("user_id", CONFIG, folder, options)


def test_lookup_needs_an_integer_row_input(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("u1\n")
    config = ModelConfig(
        name="rec",
        max_batch_size=8,
        inputs=(TensorSpec("user", DataType.FP32, (1,)),),
        outputs=(SCORES,),
    )
    with pytest.raises(InvalidModelConfig, match="must be an integer tensor"):
        LookupInput("user_id", config, tmp_path, {"to": "user", "vocabulary": "users.txt"})


def test_exclude_then_top_labels_values_and_indices_agree(tmp_path: Path) -> None:
    write_seen(tmp_path, [[0, 3], [], [4]])
    exclude = {"exclude": {"table": "seen.npz", "by": "user"}}
    chains = {
        kind: OutputChain(kind, SCORES, [exclude, {kind: 3}], LABELS, {"user": USER}, tmp_path)
        for kind in ("top_labels", "top_values", "top_indices")
    }
    assert chains["top_labels"].sources == ("scores", "user")
    assert [c.outputs[0].datatype for c in chains.values()] == [
        DataType.BYTES,
        DataType.FP32,
        DataType.INT64,
    ]
    assert all(c.outputs[0].dims == (3,) for c in chains.values())
    arrays = {
        "scores": np.array([[5, 4, 3, 2, 1], [1, 3, 3, 0, 2], [1, 3, 3, 0, 2]], np.float32),
        "user": np.array([[0], [1], [2]], np.int64),
    }
    got = {k: c(arrays)[k] for k, c in chains.items()}
    assert got["top_indices"].tolist() == [[1, 2, 4], [1, 2, 4], [1, 2, 0]]
    assert got["top_values"].tolist() == [[4, 3, 1], [3, 3, 2], [3, 3, 1]]
    assert got["top_labels"].tolist() == [
        [b"b", b"c", b"e"],
        [b"b", b"c", b"e"],
        [b"b", b"c", b"a"],
    ]
    assert arrays["scores"][0, 0] == 5  # the model's array is not written to
    with pytest.raises(InvalidArgument, match="row 7 of 'user' is outside the table"):
        chains["top_labels"]({**arrays, "user": np.array([[7], [0], [0]], np.int64)})


def test_top_order_breaks_ties_to_the_lower_index_like_a_stable_sort() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(50, 40)).astype(np.float32)
    want = np.argsort(-x, axis=1, kind="stable")[:, :7]
    assert np.array_equal(top_order(x, 7), want)
    assert np.array_equal(top_order(x, 99), np.argsort(-x, axis=1, kind="stable"))


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"exclude": {"table": "seen.npz"}}, r"exclude takes \{table: FILE, by: INPUT\}"),
        ({"exclude": {"table": "seen.npz", "by": "nope"}}, "must name an integer model input"),
        ({"exclude": {"table": "gone.npz", "by": "user"}}, "gone.npz is missing"),
        ({"exclude": {"table": "bad.npz", "by": "user"}}, "not a CSR table"),
        ({"exclude": {"table": "wide.npz", "by": "user"}}, r"indices outside 0\.\.4"),
        ({"top_labels": 0}, "top_labels needs a positive integer"),
        ({"top_values": True}, "top_values needs a positive integer"),
    ],
)
def test_exclude_and_top_config_errors(tmp_path: Path, step: object, message: str) -> None:
    write_seen(tmp_path, [[1]])
    np.savez(tmp_path / "bad.npz", indptr=np.array([0, 5]), indices=np.array([1]))
    np.savez(tmp_path / "wide.npz", indptr=np.array([0, 1]), indices=np.array([5]))
    with pytest.raises(InvalidModelConfig, match=message):
        OutputChain("out", SCORES, [step], LABELS, {"user": USER}, tmp_path)
