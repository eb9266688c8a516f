"""The PyTorch backend: TorchScript and torch.export models read through the repository,
Triton's naming conventions, every datatype, parameters, devices and each bad input."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from forwardpass.datatypes import DataType, bf16_from_float32  # noqa: E402
from forwardpass.errors import InternalError, InvalidModelConfig, Unsupported  # noqa: E402
from forwardpass.repository import ModelRepository  # noqa: E402
from forwardpass.runtime import backend_class, pytorch  # noqa: E402
from forwardpass.runtime.pytorch import INSTALL_HINT, PyTorchBackend  # noqa: E402
from torch_models import (  # noqa: E402 - after the importorskip
    DictIn,
    DictOut,
    HalfTypes,
    Linear,
    Raises,
    TwoInTwoOut,
    export,
    script,
    tensor,
    write_config,
)

F4 = tensor("INPUT__0", "TYPE_FP32", [4])
O3 = tensor("OUTPUT__0", "TYPE_FP32", [3])


def load(root: Path, name: str, instance: int = 0) -> PyTorchBackend:
    entry = ModelRepository(root).read(name)
    cls = backend_class(entry.config)
    assert cls is PyTorchBackend
    backend = PyTorchBackend(entry.config, entry.version_dir(entry.versions[-1]), instance)
    backend.load()
    return backend


def outputs(backend: PyTorchBackend, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    return backend.infer(inputs, [o.name for o in backend.config.outputs])


def eager(module: Any, *arrays: np.ndarray) -> Any:
    with torch.inference_mode():
        return module(*(torch.from_numpy(a) for a in arrays))


# ----------------------------------------------------------------------------- happy paths
def test_linear_with_triton_index_names_matches_eager_pytorch_exactly(tmp_path: Path) -> None:
    model = script(Linear(), tmp_path / "linear" / "1" / "model.pt")
    write_config(tmp_path, "linear", [F4], [O3])
    backend = load(tmp_path, "linear")
    x = np.random.default_rng(0).standard_normal((5, 4), dtype=np.float32)
    got = outputs(backend, INPUT__0=x)["OUTPUT__0"]
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_array_equal(got, eager(model, x).numpy())
    assert backend.providers == ["torch-torchscript:cpu"]


def test_backend_pytorch_and_default_model_filename_are_honoured(tmp_path: Path) -> None:
    model = script(Linear(), tmp_path / "linear" / "1" / "weights.pt")
    write_config(
        tmp_path,
        "linear",
        [F4],
        [O3],
        platform='backend: "pytorch"\ndefault_model_filename: "weights.pt"',
    )
    entry = ModelRepository(tmp_path).read("linear")
    assert (entry.config.backend, entry.config.platform) == ("pytorch", "pytorch_libtorch")
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(
        outputs(load(tmp_path, "linear"), INPUT__0=x)["OUTPUT__0"], eager(model, x).numpy()
    )


@pytest.mark.parametrize(
    ("inputs", "feed"),
    [
        # <name>__<index>, declared out of order: the index decides the position.
        (
            [tensor("B__1", "TYPE_FP32", [3]), tensor("A__0", "TYPE_FP32", [3])],
            {"A__0": "a", "B__1": "b"},
        ),
        # forward()'s own argument names, declared out of order: passed by name.
        ([tensor("b", "TYPE_FP32", [3]), tensor("a", "TYPE_FP32", [3])], {"a": "a", "b": "b"}),
    ],
)
def test_two_inputs_two_outputs_by_either_naming_convention(
    tmp_path: Path, inputs: list[str], feed: dict[str, str]
) -> None:
    script(TwoInTwoOut(), tmp_path / "two" / "1" / "model.pt")
    outs = [tensor("SUM__0", "TYPE_FP32", [3]), tensor("PRODUCT__1", "TYPE_FP32", [3])]
    write_config(tmp_path, "two", inputs, outs)
    backend = load(tmp_path, "two")
    data = {"a": np.array([[1, 2, 3]], np.float32), "b": np.array([[10, 20, 30]], np.float32)}
    got = outputs(backend, **{name: data[arg] for name, arg in feed.items()})
    np.testing.assert_array_equal(got["SUM__0"], [[11, 22, 33]])
    np.testing.assert_array_equal(got["PRODUCT__1"], [[10, 40, 90]])


def test_an_output_index_picks_that_element_of_the_tuple(tmp_path: Path) -> None:
    script(TwoInTwoOut(), tmp_path / "two" / "1" / "model.pt")
    ins = [tensor("INPUT__0", "TYPE_FP32", [2]), tensor("INPUT__1", "TYPE_FP32", [2])]
    write_config(tmp_path, "two", ins, [tensor("OUTPUT__1", "TYPE_FP32", [2])])
    a, b = np.array([[2, 3]], np.float32), np.array([[4, 5]], np.float32)
    got = outputs(load(tmp_path, "two"), INPUT__0=a, INPUT__1=b)
    np.testing.assert_array_equal(got["OUTPUT__1"], [[8, 15]])


def test_dict_outputs_are_read_by_config_name(tmp_path: Path) -> None:
    script(DictOut(), tmp_path / "d" / "1" / "model.pt")
    outs = [tensor("double", "TYPE_FP32", [2]), tensor("total", "TYPE_FP32", [1])]
    write_config(tmp_path, "d", [tensor("x", "TYPE_FP32", [2])], outs)
    got = outputs(load(tmp_path, "d"), x=np.array([[1, 2], [3, 4]], np.float32))
    np.testing.assert_array_equal(got["total"], [[3], [7]])
    np.testing.assert_array_equal(got["double"], [[2, 4], [6, 8]])


def test_a_dict_argument_receives_the_inputs_by_name(tmp_path: Path) -> None:
    script(DictIn(), tmp_path / "d" / "1" / "model.pt")
    ins = [tensor("y", "TYPE_INT64", [2]), tensor("x", "TYPE_INT64", [2])]
    write_config(tmp_path, "d", ins, [tensor("OUTPUT__0", "TYPE_INT64", [2])])
    got = outputs(load(tmp_path, "d"), x=np.array([[5, 7]]), y=np.array([[1, 2]]))
    np.testing.assert_array_equal(got["OUTPUT__0"], [[4, 5]])


def test_fp16_and_bf16_round_trip_bit_exactly(tmp_path: Path) -> None:
    model = script(HalfTypes(), tmp_path / "h" / "1" / "model.pt")
    ins = [tensor("INPUT__0", "TYPE_FP16", [3]), tensor("INPUT__1", "TYPE_BF16", [3])]
    outs = [
        tensor("OUTPUT__0", "TYPE_FP16", [3]),
        tensor("OUTPUT__1", "TYPE_BF16", [3]),
        tensor("OUTPUT__2", "TYPE_FP32", [3]),
    ]
    write_config(tmp_path, "h", ins, outs)
    h = np.array([[0.1, -2.5, 65504 / 2]], np.float16)
    b = bf16_from_float32(np.array([[0.1, -3.3, 1e30]], np.float32))
    assert b.dtype == np.uint16
    got = outputs(load(tmp_path, "h"), INPUT__0=h, INPUT__1=b)
    with torch.inference_mode():  # eager PyTorch on the same bits
        want_h, want_b, want_f = model(
            torch.from_numpy(h), torch.from_numpy(b).view(torch.bfloat16)
        )
    want_b = want_b.view(torch.int16).numpy().view(np.uint16)
    assert got["OUTPUT__0"].dtype == np.float16 and got["OUTPUT__1"].dtype == np.uint16
    np.testing.assert_array_equal(got["OUTPUT__0"], want_h.numpy())
    np.testing.assert_array_equal(got["OUTPUT__1"], want_b)
    np.testing.assert_array_equal(got["OUTPUT__2"], want_f.numpy())
    np.testing.assert_array_equal(got["OUTPUT__2"], h.astype(np.float32))


IDENTITY_TYPES = [
    "BOOL",
    "UINT8",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "BF16",
    "FP32",
    "FP64",
]


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


@pytest.mark.parametrize("name", IDENTITY_TYPES)
def test_every_datatype_torch_supports_passes_through_unchanged(tmp_path: Path, name: str) -> None:
    script(Identity(), tmp_path / "i" / "1" / "model.pt")
    dt = DataType.parse(name)
    write_config(
        tmp_path,
        "i",
        [tensor("INPUT__0", dt.config_name, [4])],
        [tensor("OUTPUT__0", dt.config_name, [4])],
    )
    data = (np.arange(8).reshape(2, 4) % 3).astype(dt.numpy)
    got = outputs(load(tmp_path, "i"), INPUT__0=data)["OUTPUT__0"]
    assert got.dtype == dt.numpy
    np.testing.assert_array_equal(got, data)


def test_a_read_only_input_buffer_is_never_written_by_the_model(tmp_path: Path) -> None:
    class InPlace(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.add_(1)

    script(InPlace(), tmp_path / "p" / "1" / "model.pt")
    write_config(
        tmp_path,
        "p",
        [tensor("INPUT__0", "TYPE_FP32", [2])],
        [tensor("OUTPUT__0", "TYPE_FP32", [2])],
    )
    data = np.frombuffer(np.array([[1, 2]], np.float32).tobytes(), np.float32).reshape(1, 2)
    assert not data.flags.writeable
    got = outputs(load(tmp_path, "p"), INPUT__0=data)
    np.testing.assert_array_equal(got["OUTPUT__0"], [[2, 3]])
    np.testing.assert_array_equal(data, [[1, 2]])


# ----------------------------------------------------------------------------- torch.export
def test_a_torch_export_program_completes_its_config_and_matches_eager(tmp_path: Path) -> None:
    model = export(Linear(), (torch.zeros(2, 4),), tmp_path / "ex" / "1" / "model.pt2")
    (tmp_path / "ex" / "config.pbtxt").write_text(
        'backend: "pytorch"\ndefault_model_filename: "model.pt2"\n'
    )
    entry = ModelRepository(tmp_path).read("ex")
    config = entry.config
    assert config.max_batch_size == 4 and config.dynamic_batching is not None
    assert [(s.name, s.datatype, s.dims) for s in config.inputs] == [("x", DataType.FP32, (4,))]
    assert [(s.name, s.dims) for s in config.outputs] == [("OUTPUT__0", (3,))]
    backend = load(tmp_path, "ex")
    assert backend.providers == ["torch-export:cpu"]
    x = np.random.default_rng(1).standard_normal((7, 4), dtype=np.float32)
    np.testing.assert_array_equal(outputs(backend, x=x)["OUTPUT__0"], eager(model, x).numpy())


def test_model_format_parameter_selects_torch_export_for_any_file_name(tmp_path: Path) -> None:
    export(Linear(), (torch.zeros(2, 4),), tmp_path / "ex" / "1" / "model.pt")
    write_config(
        tmp_path,
        "ex",
        [tensor("x", "TYPE_FP32", [4])],
        [O3],
        extra='parameters { key: "MODEL_FORMAT" value: { string_value: "torch_export" } }',
    )
    assert load(tmp_path, "ex").format == "export"


def test_a_torch_export_program_named_model_pt_gets_a_pointed_error(tmp_path: Path) -> None:
    export(Linear(), (torch.zeros(2, 4),), tmp_path / "ex" / "1" / "model.pt")
    write_config(tmp_path, "ex", [F4], [O3])
    with pytest.raises(InvalidModelConfig, match=r"model\.pt .*torch\.export program.*model\.pt2"):
        ModelRepository(tmp_path).read("ex")


# ----------------------------------------------------------------------------- bad configs/files
def test_torchscript_needs_a_full_config_as_in_triton(tmp_path: Path) -> None:
    script(Linear(), tmp_path / "m" / "1" / "model.pt")
    (tmp_path / "m" / "config.pbtxt").write_text(
        'platform: "pytorch_libtorch"\ninput [ { name: "INPUT__0" data_type: TYPE_FP32 } ]\n'
        f"output [ {O3} ]\n"
    )
    with pytest.raises(InvalidModelConfig, match=r"TorchScript .* must declare .*input 'INPUT__0'"):
        ModelRepository(tmp_path).read("m")
    (tmp_path / "m" / "config.pbtxt").write_text('platform: "pytorch_libtorch"\n')
    with pytest.raises(InvalidModelConfig, match="its inputs and outputs"):
        ModelRepository(tmp_path).read("m")


@pytest.mark.parametrize(
    ("contents", "why"),
    [
        (b"not a model at all", "not a zip file"),
        (None, "torch.save checkpoint"),
    ],
)
def test_a_file_that_is_not_torchscript_is_named_in_the_error(
    tmp_path: Path, contents: bytes | None, why: str
) -> None:
    path = tmp_path / "m" / "1" / "model.pt"
    path.parent.mkdir(parents=True)
    if contents is None:
        torch.save(Linear().state_dict(), str(path))
    else:
        path.write_bytes(contents)
    write_config(tmp_path, "m", [F4], [O3])
    with pytest.raises(
        InvalidModelConfig, match=rf"model\.pt is not a file torch\.jit\.load .*{why}"
    ):
        ModelRepository(tmp_path).read("m")
    # The backend on its own (a config from elsewhere) says the same at load.
    script(Linear(), tmp_path / "ok" / "1" / "model.pt")
    write_config(tmp_path, "ok", [F4], [O3])
    good = ModelRepository(tmp_path).read("ok").config
    backend = PyTorchBackend(good, path.parent)
    with pytest.raises(InvalidModelConfig, match=r"model\.pt is not a TorchScript file"):
        backend.load()


@pytest.mark.parametrize(
    ("datatype", "match"),
    [("TYPE_STRING", "no string tensors"), ("TYPE_UINT32", "TYPE_UINT32, which PyTorch")],
)
def test_datatypes_torch_cannot_hold_are_refused_when_read(
    tmp_path: Path, datatype: str, match: str
) -> None:
    script(Identity(), tmp_path / "m" / "1" / "model.pt")
    write_config(tmp_path, "m", [tensor("INPUT__0", datatype, [1])], [O3])
    with pytest.raises(InvalidModelConfig, match=match):
        ModelRepository(tmp_path).read("m")


@pytest.mark.parametrize("count", [1, 3])
def test_input_count_must_fit_forward_arity(tmp_path: Path, count: int) -> None:
    script(TwoInTwoOut(), tmp_path / "m" / "1" / "model.pt")
    ins = [tensor(f"INPUT__{i}", "TYPE_FP32", [2]) for i in range(count)]
    outs = [tensor(f"OUTPUT__{i}", "TYPE_FP32", [2]) for i in range(2)]
    write_config(tmp_path, "m", ins, outs)
    with pytest.raises(
        InvalidModelConfig, match=rf"forward\(a, b\) takes 2 input\(s\), .*declares {count}"
    ):
        load(tmp_path, "m")


def test_a_missing_forward_argument_is_named(tmp_path: Path) -> None:
    script(TwoInTwoOut(), tmp_path / "m" / "1" / "model.pt")
    outs = [tensor(f"OUTPUT__{i}", "TYPE_FP32", [2]) for i in range(2)]
    write_config(tmp_path, "m", [tensor("a", "TYPE_FP32", [2])], outs)
    with pytest.raises(InvalidModelConfig, match=r"needs argument\(s\) \['b'\]"):
        load(tmp_path, "m")


def test_output_count_must_match_what_forward_returns(tmp_path: Path) -> None:
    script(TwoInTwoOut(), tmp_path / "m" / "1" / "model.pt")
    ins = [tensor(f"INPUT__{i}", "TYPE_FP32", [2]) for i in range(2)]
    outs = [tensor(f"out{i}", "TYPE_FP32", [2]) for i in range(3)]
    write_config(tmp_path, "m", ins, outs)
    with pytest.raises(InvalidModelConfig, match=r"returns 2 output\(s\), .*declares 3"):
        load(tmp_path, "m")
    write_config(tmp_path, "m", ins, [tensor("OUTPUT__2", "TYPE_FP32", [2])])
    with pytest.raises(InvalidModelConfig, match="output index 2 does not exist"):
        load(tmp_path, "m")


def test_a_list_of_the_wrong_length_fails_that_batch_only(tmp_path: Path) -> None:
    class Split(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return list(x.unbind(1))

    script(Split(), tmp_path / "m" / "1" / "model.pt")
    write_config(
        tmp_path,
        "m",
        [tensor("INPUT__0", "TYPE_FP32", [-1])],
        [tensor("a", "TYPE_FP32", []), tensor("b", "TYPE_FP32", [])],
    )
    backend = load(tmp_path, "m")
    got = outputs(backend, INPUT__0=np.array([[1, 2]], np.float32))
    np.testing.assert_array_equal(got["b"], [2])
    with pytest.raises(InternalError, match=r"returned 3 output\(s\), but the config declares 2"):
        outputs(backend, INPUT__0=np.array([[1, 2, 3]], np.float32))


def test_a_forward_that_raises_fails_the_batch_with_its_message(tmp_path: Path) -> None:
    script(Raises(), tmp_path / "m" / "1" / "model.pt")
    write_config(
        tmp_path,
        "m",
        [tensor("INPUT__0", "TYPE_FP32", [2])],
        [tensor("OUTPUT__0", "TYPE_FP32", [2])],
    )
    backend = load(tmp_path, "m")
    with pytest.raises(
        InternalError, match=r"forward\(\) failed: .*input too large for this model"
    ):
        outputs(backend, INPUT__0=np.array([[1, 5000]], np.float32))
    np.testing.assert_array_equal(
        outputs(backend, INPUT__0=np.ones((1, 2), np.float32))["OUTPUT__0"], [[2, 2]]
    )


def test_an_output_of_another_dtype_than_the_config_is_an_error(tmp_path: Path) -> None:
    script(Linear(), tmp_path / "m" / "1" / "model.pt")
    write_config(tmp_path, "m", [F4], [tensor("OUTPUT__0", "TYPE_FP64", [3])])
    with pytest.raises(
        InternalError, match=r"OUTPUT__0' is torch.float32, but the config declares TYPE_FP64"
    ):
        outputs(load(tmp_path, "m"), INPUT__0=np.ones((1, 4), np.float32))


# ----------------------------------------------------------------------------- parameters
def params(**values: str) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()
    )


def test_bad_parameter_values_are_refused_and_unknown_keys_ignored(tmp_path: Path) -> None:
    script(Linear(), tmp_path / "m" / "1" / "model.pt")
    write_config(tmp_path, "m", [F4], [O3], extra=params(INFERENCE_MODE="maybe"))
    with pytest.raises(InvalidModelConfig, match="INFERENCE_MODE must be true or false"):
        load(tmp_path, "m")
    write_config(tmp_path, "m", [F4], [O3], extra=params(INTRA_OP_THREAD_COUNT="0"))
    with pytest.raises(InvalidModelConfig, match="INTRA_OP_THREAD_COUNT must be >= 1"):
        load(tmp_path, "m")
    write_config(
        tmp_path,
        "m",
        [F4],
        [O3],
        extra=params(
            SOMETHING_ELSE="x",
            INFERENCE_MODE="false",
            DISABLE_OPTIMIZED_EXECUTION="true",
            ENABLE_CACHE_CLEANING="true",
            ENABLE_NVFUSER="true",
        ),
    )
    backend = load(tmp_path, "m")
    x = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(
        outputs(backend, INPUT__0=x)["OUTPUT__0"], eager(Linear(), x).numpy()
    )


def test_process_wide_thread_counts_are_applied_once_and_disagreement_is_warned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pytorch, "_process_settings", {})
    before = torch.get_num_threads()
    try:
        for name, threads in (("first", "1"), ("second", "2")):
            script(Linear(), tmp_path / name / "1" / "model.pt")
            write_config(tmp_path, name, [F4], [O3], extra=params(INTRA_OP_THREAD_COUNT=threads))
        with caplog.at_level(logging.INFO, logger="forwardpass.runtime.pytorch"):
            load(tmp_path, "first")
            load(tmp_path, "first", instance=1)  # the same model's instances agree: no warning
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
            load(tmp_path, "second")
        assert torch.get_num_threads() == 1
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "second asks for INTRA_OP_THREAD_COUNT=2" in warnings[0]
        assert "first already set it to 1" in warnings[0]
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- devices, torch
def test_kind_gpu_without_cuda_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    script(Linear(), tmp_path / "m" / "1" / "model.pt")
    write_config(tmp_path, "m", [F4], [O3], extra="instance_group [ { kind: KIND_GPU gpus: [0] } ]")
    with pytest.raises(Unsupported, match=r"KIND_GPU needs a CUDA device.*use kind: KIND_CPU"):
        ModelRepository(tmp_path).read("m")
    write_config(tmp_path, "m", [F4], [O3], extra="instance_group [ { kind: KIND_CPU count: 2 } ]")
    assert load(tmp_path, "m", instance=1).device == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kind_gpu_runs_on_the_listed_gpu_and_matches_the_same_model_on_it(tmp_path: Path) -> None:
    model = script(Linear(), tmp_path / "m" / "1" / "model.pt")
    write_config(tmp_path, "m", [F4], [O3], extra="instance_group [ { kind: KIND_GPU gpus: [0] } ]")
    backend = load(tmp_path, "m")
    assert backend.device == "cuda:0"
    x = np.random.default_rng(2).standard_normal((3, 4), dtype=np.float32)
    want = model.cuda()(torch.from_numpy(x).cuda()).detach().cpu().numpy()
    np.testing.assert_allclose(outputs(backend, INPUT__0=x)["OUTPUT__0"], want, rtol=1e-5)


HIDDEN_TORCH = "import sys; sys.modules['torch'] = None\n"


def test_without_torch_the_model_is_unavailable_with_a_copyable_install_hint(
    tmp_path: Path,
) -> None:
    script(Linear(), tmp_path / "m" / "1" / "model.pt")
    write_config(tmp_path, "m", [F4], [O3])
    code = HIDDEN_TORCH + (
        "from forwardpass.cli.main import main\n"
        f"sys.argv = ['forwardpass', 'models', '--model-repository', {str(tmp_path)!r}, '--json']\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    import json

    rows = json.loads(out.stdout)
    assert rows[0]["state"] == "UNAVAILABLE"
    assert rows[0]["detail"] == INSTALL_HINT
    assert "pip install 'forwardpass[torch]'" in INSTALL_HINT and "torch==2.13.0" in INSTALL_HINT


def test_without_torch_the_engine_reports_the_same_reason(tmp_path: Path) -> None:
    script(Linear(), tmp_path / "m" / "1" / "model.pt")
    write_config(tmp_path, "m", [F4], [O3])
    code = HIDDEN_TORCH + (
        "import asyncio\n"
        "from forwardpass.config import ServerConfig\n"
        "from forwardpass.engine import Engine\n"
        "from forwardpass.repository import ModelRepository\n"
        "async def main():\n"
        f"    root = {str(tmp_path)!r}\n"
        "    engine = Engine(ModelRepository(root), ServerConfig(model_repository=root))\n"
        "    await engine.start()\n"
        "    try:\n"
        "        for e in engine.index():\n"
        "            print(e.state.value, e.reason, sep='|')\n"
        "    finally:\n"
        "        await engine.stop()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"UNAVAILABLE|{INSTALL_HINT}"
