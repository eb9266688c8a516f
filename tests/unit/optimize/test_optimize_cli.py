"""``forwardpass optimize`` end to end on the embedded digits model, then ``models``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from forwardpass.cli.main import _register, cli
from forwardpass.config import DEFAULT_REPOSITORY
from forwardpass.protocol.documents import index_document

_register()


def test_optimize_digits_for_edge_writes_version_2(digits_repo: Path, digits_npz: Path) -> None:
    methods = "graph,fp16,int8-dynamic,int8-static"
    args = ["optimize", "digits", "--model-repository", str(digits_repo), "--target", "edge",
            "--validation", str(digits_npz), "--methods", methods, "--no-isolate",
            "--iterations", "5", "--seconds", "0.2", "--batch-sizes", "1,8"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "wrote version 2 of digits" in result.output
    version = digits_repo / "digits" / "2"
    report = json.loads((version / "optimization.json").read_text())
    assert report["optimized_from"] == 1 and report["data"]["labels"] is True
    names = {c["name"] for c in report["candidates"]}
    assert {"original", "graph-ort", "fp16", "int8-dynamic-pc", "int8-static-s8s8-pc"} <= names
    chosen = next(c for c in report["candidates"] if c["name"] == report["selection"]["chosen"])
    assert chosen["size_bytes"] < report["candidates"][0]["size_bytes"]
    assert chosen["accuracy"]["metric"] == "top1" and chosen["accuracy"]["drop"] <= 0.01

    listing = CliRunner().invoke(cli, ["models", "--model-repository", str(digits_repo), "--json"])
    assert listing.exit_code == 0, listing.output
    (row,) = json.loads(listing.output)
    assert row["versions"] == "2" and f"v2 derived from v1 by {report['method']}" in row["detail"]
    check_served(digits_repo)


def test_dry_run_writes_nothing_and_missing_gpu_is_explained(digits_repo: Path) -> None:
    common = ["optimize", "digits", "--model-repository", str(digits_repo), "--no-isolate",
              "--iterations", "3", "--seconds", "0.1", "--methods", "int8-dynamic"]  # fmt: skip
    result = CliRunner().invoke(cli, [*common, "--target", "edge", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["version"] is None and not (digits_repo / "digits" / "2").exists()
    refused = CliRunner().invoke(cli, [*common, "--target", "tensorrt"])
    assert refused.exit_code != 0 and "TensorrtExecutionProvider" in refused.output


def check_served(digits_repo: Path) -> None:
    """The promoted version is what the server now serves, and it says where it came from."""
    import asyncio

    import numpy as np
    from sklearn.datasets import load_digits

    from forwardpass.config import ServerConfig
    from forwardpass.datatypes import DataType
    from forwardpass.engine import Engine
    from forwardpass.repository import ModelRepository
    from forwardpass.types import InferRequest, Tensor

    digits = load_digits()
    images = (digits.images[:64] / 16.0).astype(np.float32).reshape(64, 1, 8, 8)

    async def serve() -> None:
        engine = Engine(ModelRepository(digits_repo), ServerConfig(model_repository=digits_repo))
        await engine.start()
        try:
            (entry,) = index_document(engine.index())
            assert entry["version"] == "2" and entry["optimized_from"] == "1"
            response = await engine.infer(
                InferRequest("digits", [Tensor("image", DataType.FP32, images)])
            )
            predicted = response.outputs[0].data.argmax(axis=1)
            assert response.model_version == "2"
            assert (predicted == digits.target[:64]).mean() >= 0.95
        finally:
            await engine.stop()

    asyncio.run(serve())


def test_a_text_file_of_sentences_validates_a_text_model(tmp_path: Path) -> None:
    import pytest

    pytest.importorskip("tokenizers")
    from model_builders import TEXT_WORDS, write_text_model

    write_text_model(tmp_path / "repo")
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(TEXT_WORDS, rng.integers(2, 9))) for _ in range(40)]
    (tmp_path / "sentences.txt").write_text("\n".join(sentences) + "\n\n")
    args = ["optimize", "words", "--model-repository", str(tmp_path / "repo"), "--no-isolate",
            "--iterations", "5", "--seconds", "0.1", "--methods", "graph", "--dry-run",
            "--json", "--validation", str(tmp_path / "sentences.txt")]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["data"]["real_inputs"] is True
    assert report["data"]["evaluation"].endswith("sentences.txt")
    # 40 sentences: a quarter held out for calibration, the rest evaluated.
    assert report["data"]["evaluation_samples"] + report["data"]["calibration_samples"] == 40
    # The digits model declares no text processing: a clear refusal, not a crash.
    shutil.copytree(DEFAULT_REPOSITORY / "digits", tmp_path / "repo" / "digits")
    refused = CliRunner().invoke(cli, [*args[:1], "digits", *args[2:]])
    assert refused.exit_code != 0 and "declares none" in refused.output
