"""PyTorch modules, TorchScript files and module.py:factory entry points → served ONNX."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from forwardpass.errors import InvalidArgument  # noqa: E402
from forwardpass.importers.torch import import_torch, parse_input_shape  # noqa: E402

CNN_SOURCE = """
import torch


def small_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    )
"""


def _cnn(tmp_path: Path) -> tuple[str, object]:
    (tmp_path / "nets.py").write_text(textwrap.dedent(CNN_SOURCE))
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    )
    with torch.no_grad():  # non-trivial batch-norm statistics
        module[1].running_mean.uniform_(-1, 1)
        module[1].running_var.uniform_(0.5, 2)
    return f"{tmp_path / 'nets.py'}:small_cnn", module.eval()


def test_factory_with_state_dict(tmp_path: Path, serve: Any) -> None:
    entry_point, module = _cnn(tmp_path)
    torch.save(module.state_dict(), tmp_path / "weights.pt")
    labels = ["cat", "dog", "bird", "fish"]
    result = import_torch(
        entry_point,
        ["image:1,3,16,16"],
        state_dict=tmp_path / "weights.pt",
        output_names=["logits"],
        labels=labels,
        repository=tmp_path / "repo",
        name="cnn",
    )
    assert result.verification.ok and result.verification.max_abs_diff < 1e-4
    assert result.verification.samples == 2  # the batch is dynamic: exported at 1, run at 2
    assert [(i.name, i.dims) for i in result.config.inputs] == [("image", (3, 16, 16))]
    assert result.config.output("logits").label_filename == "labels.txt"  # type: ignore[union-attr]

    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    served = serve(tmp_path / "repo", "cnn", {"image": x})
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(served["logits"], expected, atol=1e-4)


def test_torchscript_file(tmp_path: Path, serve: Any) -> None:
    _, module = _cnn(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
        torch.jit.save(torch.jit.trace(module, torch.zeros(1, 3, 16, 16)), tmp_path / "cnn.pt")
    result = import_torch(
        tmp_path / "cnn.pt", ["image:1,3,16,16"], repository=tmp_path / "repo", name="ts"
    )
    assert result.verification.max_abs_diff < 1e-4
    assert [o.name for o in result.config.outputs] == ["output"]
    x = np.ones((2, 3, 16, 16), np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(
        serve(tmp_path / "repo", "ts", {"image": x})["output"], expected, atol=1e-4
    )


def test_input_shape_syntax() -> None:
    spec = parse_input_shape("ids:1,16:int64")
    assert (spec.name, spec.shape, spec.dtype) == ("ids", (1, 16), "int64")
    for bad in ("image", "image:1,x", "image:0,3", "image:1:complex"):
        with pytest.raises(InvalidArgument):
            parse_input_shape(bad)


def test_state_dict_needs_an_entry_point(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="entry point"):
        import_torch(
            tmp_path / "x.pt",
            ["x:1,2"],
            state_dict=tmp_path / "w.pt",
            repository=tmp_path,
            name="m",
        )
