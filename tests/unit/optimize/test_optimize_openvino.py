"""``--target openvino``: candidates compiled by OpenVINO, timed against the original on ONNX
Runtime's CPU provider, BF16 only where the CPU computes in it, a promoted candidate written
as a model of its own."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from forwardpass.errors import Unsupported
from forwardpass.optimize import OptimizeOptions, Target, optimize
from forwardpass.optimize.target import plan_target
from forwardpass.repository import ModelRepository

ov = pytest.importorskip("openvino")

HAS_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _options(root: Path, fast, **kw: object) -> OptimizeOptions:  # type: ignore[no-untyped-def]
    return replace(OptimizeOptions("digits", root, measure=fast, target=Target.OPENVINO), **kw)  # type: ignore[arg-type]


def test_plan_measures_the_original_on_ort_cpu() -> None:
    plan = plan_target(Target.OPENVINO, ("CPUExecutionProvider",))
    assert plan.providers == ("openvino:CPU:f32",)
    assert plan.original == ("CPUExecutionProvider",)


def test_missing_runtime_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a)
    )
    with pytest.raises(Unsupported, match=r"pip install 'forwardpass\[openvino\]'.*Nothing was"):
        plan_target(Target.OPENVINO, ("CPUExecutionProvider",))
    # With onnxruntime-openvino's provider present, that build serves the target instead.
    plan = plan_target(Target.OPENVINO, ("OpenVINOExecutionProvider", "CPUExecutionProvider"))
    assert plan.providers == ("OpenVINOExecutionProvider", "CPUExecutionProvider")
    assert plan.original == ("CPUExecutionProvider",)


def test_run_reports_openvino_candidates_with_agreement(
    digits_repo: Path,
    digits_npz: Path,
    fast,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    result = optimize(_options(digits_repo, fast, validation=digits_npz, dry_run=True))
    by_name = {c.name: c for c in result.report.candidates}
    assert list(by_name) == ["original", "openvino-fp32", "openvino-bf16"]
    assert by_name["original"].providers == ("CPUExecutionProvider",)
    fp32 = by_name["openvino-fp32"]
    assert fp32.status == "measured", fp32.reason
    assert fp32.providers == ("openvino:CPU:f32",)
    assert fp32.path is not None and fp32.path.name == "model.xml"
    assert fp32.accuracy is not None and fp32.accuracy.drop <= 0.01
    assert fp32.performance is not None and fp32.performance.p50_ms > 0
    assert "OpenVINO compiled it to compute in fp32" in fp32.notes
    # The same weights; conversion may add a few scalar constants of its own.
    original = by_name["original"].parameters
    assert fp32.parameters is not None and original is not None
    assert abs(fp32.parameters - original) <= 0.01 * original
    bf16 = by_name["openvino-bf16"]
    if HAS_BF16:
        assert bf16.status == "measured" and bf16.accuracy is not None
    else:
        assert bf16.status == "skipped"
        assert "no BF16 arithmetic" in bf16.reason
    saved = result.report.to_dict()
    assert saved["providers"]["original_measured_on"] == ["CPUExecutionProvider"]
    assert "openvino" in saved["versions"]
    assert ModelRepository(digits_repo).read("digits").versions == (1,)


def test_promoted_candidate_becomes_its_own_model(digits_repo: Path, tmp_path: Path) -> None:
    # Written directly: whether OpenVINO beats ORT on this machine is not under test here.
    from forwardpass.optimize.candidates import CandidateResult
    from forwardpass.optimize.methods import BuildContext
    from forwardpass.optimize.methods.openvino import OpenVinoMethod
    from forwardpass.optimize.openvino_model import write_openvino_model
    from forwardpass.runtime import backend_class

    entry = ModelRepository(digits_repo).read("digits")
    source = entry.version_dir(1) / "model.onnx"
    method = OpenVinoMethod()
    ctx = BuildContext(source, entry.config, Target.OPENVINO, None, tmp_path)
    variant = method.variants(ctx)[0]
    method.build(ctx, variant, tmp_path / "model.xml")
    chosen = CandidateResult(
        "openvino-fp32",
        "openvino",
        variant.description,
        path=tmp_path / "model.xml",
        providers=method.providers(ctx, variant),
    )

    class Report:
        version: int | None = None

    def render(report: Report) -> dict[str, bytes]:
        return {"optimization.json": json.dumps({"version": report.version}).encode()}

    report = Report()
    written = write_openvino_model(entry.path, entry.config, chosen, report, render)
    assert written == digits_repo / "digits_openvino" / "1" and report.version == 1
    assert {p.name for p in written.iterdir()} == {"model.xml", "model.bin", "optimization.json"}
    served = ModelRepository(digits_repo).read("digits_openvino")
    assert served.config.backend == "openvino"
    assert served.config.default_model_filename == "model.xml"
    assert served.config.parameters["INFERENCE_PRECISION_HINT"] == "f32"
    assert served.config.parameters["INFERENCE_NUM_THREADS"] == "1"  # from intra_op_thread_count
    assert served.labels == entry.labels
    backend = backend_class(served.config)(served.config, served.version_dir(1))
    backend.load()
    image = np.random.default_rng(0).uniform(0, 16, (3, 1, 8, 8)).astype(np.float32)
    assert backend.infer({"image": image}, ["probabilities"])["probabilities"].shape == (3, 10)
    # The original is untouched; a second write is version 2 of the OpenVINO model.
    assert ModelRepository(digits_repo).read("digits").versions == (1,)
    again = write_openvino_model(entry.path, entry.config, chosen, Report(), render)
    assert again == digits_repo / "digits_openvino" / "2"


def test_existing_model_of_another_backend_is_refused(digits_repo: Path, tmp_path: Path) -> None:
    import shutil

    from forwardpass.errors import InvalidArgument
    from forwardpass.optimize.candidates import CandidateResult
    from forwardpass.optimize.openvino_model import write_openvino_model

    other = digits_repo / "digits_openvino"
    shutil.copytree(digits_repo / "digits", other)
    text = (other / "config.pbtxt").read_text(encoding="utf-8")
    (other / "config.pbtxt").write_text(text.replace('"digits"', '"digits_openvino"'), "utf-8")
    entry = ModelRepository(digits_repo).read("digits")
    chosen = CandidateResult("c", "openvino", "", path=tmp_path / "model.xml")
    with pytest.raises(InvalidArgument, match="exists with backend 'onnxruntime'"):
        write_openvino_model(entry.path, entry.config, chosen, object(), lambda r: {})
    assert sorted(p.name for p in (digits_repo / "digits_openvino").iterdir()) == sorted(
        p.name for p in (digits_repo / "digits").iterdir()
    )


def test_unconvertible_operator_is_skipped_with_its_name(tmp_path: Path, fast) -> None:  # type: ignore[no-untyped-def]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Frobnicate", ["r"], ["y"], domain="com.example"),
        ],
        "g",
        [x],
        [y],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    # ORT cannot run it either, so the original fails: the run stops with ORT's error. The
    # candidate's own check is what names the operator; call the method directly.
    import onnx

    from forwardpass.optimize.methods import BuildContext, MethodSkipped
    from forwardpass.optimize.methods.openvino import OpenVinoMethod

    source = tmp_path / "m.onnx"
    onnx.save(model, str(source))
    method = OpenVinoMethod()
    ctx = BuildContext(source, None, Target.OPENVINO, None, tmp_path)  # type: ignore[arg-type]
    (variant, _) = method.variants(ctx)
    with pytest.raises(MethodSkipped, match=r"com\.example\.Frobnicate"):
        method.build(ctx, variant, tmp_path / "model.xml")
    assert not (tmp_path / "model.xml").exists()


def test_cli_target_openvino(digits_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from click.testing import CliRunner

    from forwardpass.cli.main import _register, cli

    _register()

    common = ["optimize", "digits", "--model-repository", str(digits_repo), "--no-isolate",
              "--iterations", "3", "--seconds", "0.1", "--target", "openvino"]  # fmt: skip
    result = CliRunner().invoke(cli, [*common, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    names = [c["name"] for c in report["candidates"]]
    assert names == ["original", "openvino-fp32", "openvino-bf16"]
    assert report["candidates"][1]["providers"] == ["openvino:CPU:f32"]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a)
    )
    refused = CliRunner().invoke(cli, common)
    assert refused.exit_code != 0
    assert "pip install 'forwardpass[openvino]'" in refused.output
    assert sorted(p.name for p in digits_repo.iterdir()) == ["digits"]
    assert ModelRepository(digits_repo).read("digits").versions == (1,)
