"""``forwardpass predict``: local inference on images, ``.npy`` and JSON through the engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from model_builders import write_model

import forwardpass
from forwardpass.cli.predict import predict

SAMPLES = Path(forwardpass.__file__).parent / "models" / "digits" / "samples"
SAMPLE_FILES = sorted(SAMPLES.glob("digit_*_0.png"))


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(predict, [str(a) for a in args])


def label_of(path: Path) -> str:
    match = re.fullmatch(r"digit_(\d)_0\.png", path.name)
    assert match, path.name
    return match.group(1)


def failed(result: Result, *words: str) -> str:
    """A clean failure: non-zero exit, 'Error: ...' naming the problem, no traceback."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ") or "Error: " in result.output
    for word in words:
        assert word in result.output, result.output
    return result.output


def test_every_sample_exists() -> None:
    assert [label_of(p) for p in SAMPLE_FILES] == [str(d) for d in range(10)]


def test_json_top1_is_the_right_digit_for_every_sample() -> None:
    result = run("digits", *SAMPLE_FILES, "--json", "--top-k", "3")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert list(document) == [str(p) for p in SAMPLE_FILES]
    for path in SAMPLE_FILES:
        ranked = document[str(path)]["probabilities"]
        assert len(ranked) == 3
        assert set(ranked[0]) == {"label", "index", "score"}
        assert ranked[0]["label"] == label_of(path), (path.name, ranked)
        assert ranked[0]["index"] == int(label_of(path))
        scores = [item["score"] for item in ranked]
        assert scores == sorted(scores, reverse=True)
        assert 0.5 < scores[0] <= 1.0


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_table_shows_the_right_digit_first(path: Path) -> None:
    result = run("digits", path, "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert f"{path.name} → probabilities" in " ".join(result.output.split())
    # Piped output (CliRunner is no terminal): plain "label  score" rows, no box-drawing.
    rows = re.findall(r"^(\S+) +(\d\.\d{4})$", result.output, re.M)
    assert len(rows) == 2, result.output
    assert rows[0][0] == label_of(path)
    assert float(rows[0][1]) >= float(rows[1][1])


def test_npy_input_on_a_model_without_labels(repo: Path, tmp_path: Path) -> None:
    # A [4] array gets its batch dimension added; a [2, 4] array is already a batch.
    one, two = tmp_path / "one.npy", tmp_path / "two.npy"
    np.save(one, np.array([1, 2, 3, 4], dtype=np.float64))
    np.save(two, np.full((2, 4), 3, dtype=np.float32))
    result = run("square", one, two, "--model-repository", repo, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document[str(one)] == {"y": {"shape": [1, 4], "data": [[1.0, 4.0, 9.0, 16.0]]}}
    assert document[str(two)] == {"y": {"shape": [2, 4], "data": [[9.0] * 4] * 2}}


def test_npy_input_on_a_model_with_labels(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.array([1, 2, 3], dtype=np.float32))
    result = run("add", path, "--model-repository", repo, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[str(path)] == {
        "y": [
            {"label": "cat", "index": 2, "score": 6.0},
            {"label": "bee", "index": 1, "score": 4.0},
            {"label": "ant", "index": 0, "score": 2.0},
        ]
    }


def test_human_output_of_a_plain_tensor(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(4, dtype=np.float32))
    result = run("square", path, "--model-repository", repo)
    assert result.exit_code == 0, result.output
    assert "x.npy → y shape=[1, 4]: [[0.0, 0.0, 0.0, 0.0]]" in " ".join(result.output.split())


def test_json_inputs_by_name_and_as_a_v2_request(repo: Path, tmp_path: Path) -> None:
    by_name = tmp_path / "by_name.json"
    by_name.write_text(json.dumps({"x": [[0, 0, 10]]}))
    v2 = tmp_path / "v2.json"
    v2.write_text(
        json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [9, 0, 0]}]}
        )
    )
    result = run("add", by_name, v2, "--model-repository", repo, "--json", "--top-k", "1")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    # The add model has labels (ant, bee, cat): classification picks the largest of x + [1,2,3].
    assert document[str(by_name)] == {"y": [{"label": "cat", "index": 2, "score": 13.0}]}
    assert document[str(v2)] == {"y": [{"label": "ant", "index": 0, "score": 10.0}]}


def test_missing_file(tmp_path: Path) -> None:
    failed(run("digits", tmp_path / "nope.png"), "nope.png", "does not exist")


def test_unknown_model(tmp_path: Path) -> None:
    failed(run("ghost", SAMPLE_FILES[0]), "'ghost'", "not in the repository")


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "input.csv"
    path.write_text("1,2,3\n")
    failed(run("digits", path), "unsupported input type '.csv'")


def test_broken_model(repo: Path) -> None:
    failed(run("broken", SAMPLE_FILES[0], "--model-repository", repo), "config.pbtxt")


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("bad.json", b"{nope", ("bad.json", "not valid JSON")),
        ("bin.json", b"\xff\xfe\x00", ("bin.json", "not valid JSON")),
        ("list.json", b"[1, 2]", ("expected a V2 request",)),
        ("input.json", b'{"z": [1, 2, 3]}', ("has no input 'z'",)),
        ("text.json", b'{"x": [["a", "b", "c"]]}', ("input 'x' is not FP32 data",)),
        ("ragged.json", b'{"x": [[1, 2], [3]]}', ("input 'x'",)),
        ("shape.json", b'{"x": [[1, 2, 3, 4]]}', ("unexpected shape for input 'x'", "got [1,4]")),
        ("v2.json", b'{"inputs": [{"name": "x"}]}', ("datatype",)),
        ("garbage.npy", b"not an array", ("garbage.npy", "cannot read")),
    ],
)
def test_bad_inputs_fail_cleanly(
    repo: Path, tmp_path: Path, name: str, content: bytes, words: tuple[str, ...]
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    failed(run("add", path, "--model-repository", repo), *words)


def test_undecodable_image(tmp_path: Path) -> None:
    path = tmp_path / "picture.png"
    path.write_bytes(b"not a png")
    failed(run("digits", path), "cannot decode image", "picture.png")


def test_image_on_a_model_that_takes_no_image(repo: Path) -> None:
    failed(run("add", SAMPLE_FILES[0], "--model-repository", repo), "cannot feed an image")


def test_npy_of_the_wrong_shape(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 2, 2), dtype=np.float32))
    failed(
        run("add", path, "--model-repository", repo),
        "unexpected shape for input 'x'",
        "got [2,2,2]",
    )


def test_multi_input_model_needs_json(tmp_path: Path) -> None:

    root = tmp_path / "models"
    write_model(
        root,
        "two",
        config="""
backend: "null"
max_batch_size: 2
input [ { name: "a" data_type: TYPE_FP32 dims: [ 1 ] },
        { name: "b" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "c" data_type: TYPE_FP32 dims: [ 1 ] } ]
""",
    )
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(1, dtype=np.float32))
    failed(run("two", path, "--model-repository", root), "has 2 inputs", "JSON")
