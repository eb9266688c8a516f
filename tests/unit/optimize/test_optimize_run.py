"""Whole runs: what is written, what is refused, what an interruption leaves."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from forwardpass.errors import InvalidArgument, Unsupported
from forwardpass.optimize import OptimizeOptions, Target, optimize, read_provenance
from forwardpass.optimize import version as version_module
from forwardpass.optimize.measure import MeasureSettings, measure
from forwardpass.optimize.version import write_version
from forwardpass.repository import ModelRepository


def _options(root: Path, fast: MeasureSettings, **kw: object) -> OptimizeOptions:
    base = OptimizeOptions("digits", root, measure=fast)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_static_quantization_is_skipped_without_data_and_the_rest_runs(digits_repo, fast) -> None:
    result = optimize(_options(digits_repo, fast, methods=("int8-static", "int8-dynamic")))
    report = result.report
    by_name = {c.name: c for c in report.candidates}
    assert by_name["int8-static"].status == "skipped"
    assert by_name["int8-static"].reason.startswith("no calibration data")
    assert by_name["int8-dynamic-pc"].status == "measured"
    assert report.data["note"] == "no accuracy data: agreement on random inputs (latency only)"
    assert by_name["int8-dynamic-pc"].accuracy is not None
    assert by_name["int8-dynamic-pc"].accuracy.basis == "random inputs"


def test_nothing_is_written_when_the_original_is_kept(
    digits_repo, digits_npz, fast, tmp_path
) -> None:
    reports = tmp_path / "reports"
    result = optimize(_options(digits_repo, fast, validation=digits_npz, methods=("graph",),
                               min_gain=0.99, report_dir=reports))  # fmt: skip
    assert not result.report.selection.promoted
    assert result.report.selection.reason.startswith("kept the original")
    assert result.version_dir is None and ModelRepository(digits_repo).read("digits").versions == (
        1,
    )
    saved = json.loads((reports / "optimization.json").read_text())
    assert saved["method"] == "original" and saved["version"] is None
    # Calibration came from the validation set, held out of the evaluation.
    assert "held out" in saved["data"]["calibration"]
    assert saved["data"]["evaluation_samples"] == 300


def test_promotion_writes_a_version_with_its_report(digits_repo, digits_npz, fast) -> None:
    options = _options(digits_repo, fast, validation=digits_npz, target=Target.EDGE,
                       methods=("int8-dynamic",))  # fmt: skip
    result = optimize(options)
    assert result.report.selection.promoted and result.version_dir == digits_repo / "digits" / "2"
    names = sorted(p.name for p in result.version_dir.iterdir())
    assert names[:3] == ["model.onnx", "optimization.html", "optimization.json"]
    report = json.loads((result.version_dir / "optimization.json").read_text())
    assert report["optimized_from"] == 1 and report["version"] == 2
    assert report["method"] == "int8-dynamic" and report["target"] == "edge"
    chosen = next(c for c in report["candidates"] if c["name"] == report["selection"]["chosen"])
    assert chosen["within_budget"] and chosen["accuracy"]["drop"] <= options.max_accuracy_drop
    assert "<svg" in (result.version_dir / "optimization.html").read_text()
    provenance = read_provenance(result.version_dir)
    assert provenance is not None and provenance.describe().startswith("derived from v1 by int8")
    assert ModelRepository(digits_repo).read("digits").versions == (2,)  # latest policy serves it
    # A second run takes the next number and leaves version 2 as it was.
    before = (result.version_dir / "model.onnx").read_bytes()
    again = optimize(replace(options, version=1))
    assert again.version_dir == digits_repo / "digits" / "3"
    assert (result.version_dir / "model.onnx").read_bytes() == before


def test_an_interrupted_write_leaves_no_version(digits_repo, digits_npz, fast, monkeypatch) -> None:
    calls = []

    def broken(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 2:  # the model and the JSON are written; the HTML is not
            raise KeyboardInterrupt
        path.write_bytes(data)

    monkeypatch.setattr(version_module, "_write_file", broken)
    options = _options(digits_repo, fast, validation=digits_npz, target=Target.EDGE,
                       methods=("int8-dynamic",))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        optimize(options)
    assert sorted(p.name for p in (digits_repo / "digits").iterdir()) == [
        "1", "TRAINING.json", "config.pbtxt", "labels.txt", "samples",
    ]  # fmt: skip


def test_an_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "2").mkdir(parents=True)
    (folder / "2" / "model.onnx").write_bytes(b"old")
    source = tmp_path / "new.onnx"
    source.write_bytes(b"new")
    with pytest.raises(InvalidArgument, match="never overwritten"):
        write_version(folder, 2, source, {"optimization.json": b"{}"})
    assert (folder / "2" / "model.onnx").read_bytes() == b"old"
    assert sorted(p.name for p in folder.iterdir()) == ["2"]


def test_a_target_without_its_provider_is_refused(digits_repo, fast) -> None:
    with pytest.raises(
        Unsupported, match=r"CUDAExecutionProvider.*present: .*CPUExecutionProvider"
    ):
        optimize(_options(digits_repo, fast, target=Target.CUDA))


def test_a_failing_method_is_reported_and_the_others_run(digits_repo, fast, monkeypatch) -> None:
    from forwardpass.optimize.methods import int8

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Unsupported op: FancyOp\nmore detail")

    monkeypatch.setattr("onnxruntime.quantization.quantize_dynamic", explode)
    assert int8  # the method imports quantize_dynamic at build time, so the patch applies
    result = optimize(_options(digits_repo, fast, methods=("graph", "int8-dynamic")))
    by_name = {c.name: c for c in result.report.candidates}
    assert by_name["int8-dynamic-pc"].status == "failed"
    assert by_name["int8-dynamic-pc"].reason == "RuntimeError: Unsupported op: FancyOp"
    assert by_name["graph-ort"].status == "measured"


def test_isolated_measurement_reports_peak_memory(mlp: onnx.ModelProto, tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp, str(path))
    settings = MeasureSettings(warmup=1, iterations=5, max_seconds=0.2, batch_sizes=(1, 4))
    inputs = {"features": np.random.default_rng(0).random((8, 64), dtype=np.float32)}
    perf = measure(path, inputs, ["CPUExecutionProvider"], settings, batching=True, max_batch=64)
    assert perf.p50_ms > 0 and perf.p99_ms >= perf.p50_ms and perf.best_batch in (1, 4)
    assert perf.peak_memory_mb > 0 and perf.memory_kind.startswith("peak RSS")
    assert set(perf.by_batch) == {"1", "4"}
