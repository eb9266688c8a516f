"""Small PyTorch models built in the tests, and a Triton-layout repository that serves them.

Imported only by tests that have already checked torch is installed (``pytest.importorskip``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


class Linear(nn.Module):
    """``OUTPUT__0 = INPUT__0 @ W.T + b``: 4 features in, 3 out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class TwoInTwoOut(nn.Module):
    """``(a + b, a * b)``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, a * b


class DictOut(nn.Module):
    """A dict of outputs keyed by name."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"total": x.sum(dim=1, keepdim=True), "double": x * 2}


class DictIn(nn.Module):
    """One ``Dict[str, Tensor]`` argument (Triton's dictionary-input convention)."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["x"] - inputs["y"]


class HalfTypes(nn.Module):
    """FP16 and BF16 in and out: each doubled, plus the FP16 one widened to FP32."""

    def forward(
        self, h: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return h * 2, b * 2, h.float()


class Raises(nn.Module):
    """Fails the batch when any value exceeds 1000."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x > 1000).any()):
            raise ValueError("input too large for this model")
        return x + 1


class Mlp(nn.Module):
    """A compute-heavy MLP for the benchmark and the batching test."""

    def __init__(self, width: int = 256, depth: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def script(module: nn.Module, path: Path) -> nn.Module:
    """``torch.jit.script`` the module and save it at ``path``; returns the eager module."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; Triton serves it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return module


def export(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> nn.Module:
    """A torch.export program with a dynamic leading (batch) dimension on every input."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = tuple({0: batch} for _ in example)
    program = torch.export.export(module.eval(), example, dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return module


def tensor(name: str, datatype: str, dims: list[int]) -> str:
    return f'{{ name: "{name}" data_type: {datatype} dims: {dims} }}'


def write_config(
    root: Path,
    name: str,
    inputs: list[str],
    outputs: list[str],
    max_batch_size: int = 8,
    extra: str = "",
    platform: str = 'platform: "pytorch_libtorch"',
) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(
        f"{platform}\nmax_batch_size: {max_batch_size}\n"
        f"input [ {', '.join(inputs)} ]\noutput [ {', '.join(outputs)} ]\n{extra}\n"
    )
    return folder
