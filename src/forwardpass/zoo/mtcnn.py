"""``mtcnn``: MTCNN face detection as one ensemble: image bytes in, faces out.

Weights: the P-, R- and O-Net state dicts that ``facenet-pytorch==2.6.0`` (MIT) ships in
``facenet_pytorch/data/`` (MTCNN by Zhang et al. 2016, converted from the authors' Caffe
models by David Sandberg's facenet). The package itself is not imported (it imports
torchvision at module import): the build defines the three networks in torch and loads the
state dicts into them, exports each to ONNX and checks ONNX Runtime against torch.

:func:`build` writes eight models; the ensemble ``NAME`` (default ``mtcnn``) is the one
clients call::

    image BYTES [1,1]
      └─▶ NAME_pyramid  function image_pyramid: decode, scales cell/min_size·factor^k packed
                        into one canvas [1,4,Hc,Wc] + levels [L,5] + pixels UINT8 [H,W,3]
      └─▶ NAME_pnet     ONNX P-Net, fully convolutional, on the canvas (its 4th channel
                        masks the gaps: :func:`masked_pnet`) → reg [1,4,h,w], prob [1,2,h,w]
      └─▶ NAME_propose  function mtcnn_propose: windows ≥ 0.6, NMS per level and across,
                        regression, squares → boxes [K,5], crops [K,3,24,24]
      └─▶ NAME_rnet     ONNX R-Net → reg [K,4], prob [K,2]
      └─▶ NAME_refine   function mtcnn_refine: > 0.7, NMS, regression → boxes, crops [K',3,48,48]
      └─▶ NAME_onet     ONNX O-Net → reg [K',4], landmarks [K',10], prob [K',2]
      └─▶ NAME_faces    function mtcnn_faces: > 0.7, landmarks, regression, NMS (min)

The ensemble answers ``boxes`` FP32 [F,4] (x1, y1, x2, y2 in the client's picture pixels),
``scores`` FP32 [F] and ``landmarks`` FP32 [F,5,2] (eyes, nose, mouth corners); F = 0 for a
picture without a face. The thresholds (0.6, 0.7, 0.7), ``min_size`` (20) and ``factor``
(0.709) are MTCNN's defaults, and parameters of the steps' ``config.pbtxt`` (``threshold`` of
``NAME_propose`` / ``NAME_refine`` / ``NAME_faces``; ``min_size`` and ``factor`` of
``NAME_pyramid``), or of :func:`build`.

Every step serves one picture per request (``max_batch_size: 0``): the canvas size and the
number of candidates vary per picture.
"""

from __future__ import annotations

import importlib.util
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import InternalError, InvalidArgument, Unsupported
from forwardpass.model_config import EnsembleStep, ModelConfig, TensorSpec
from forwardpass.repository.pbtxt_writer import config_to_pbtxt
from forwardpass.zoo.registry import Built, Recipe, install, provenance

__all__ = ["RECIPE", "add", "build", "masked_pnet", "networks", "step_names", "weights_folder"]

_PIP = "pip install --no-deps facenet-pytorch==2.6.0  (and torch==2.13.0)"
_ATOL = 1e-4
#: Each network's ONNX outputs, in the order its forward() returns them.
_OUTPUTS = {"pnet": ("reg", "prob"), "rnet": ("reg", "prob"), "onet": ("reg", "landmarks", "prob")}


def weights_folder() -> Path:
    """facenet-pytorch's ``data`` folder with ``pnet.pt``, ``rnet.pt``, ``onet.pt``.

    Found without importing the package (its ``__init__`` needs torchvision).
    """
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise Unsupported(f"the MTCNN weights come from facenet-pytorch: {_PIP}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [f"{n}.pt" for n in _OUTPUTS if not (folder / f"{n}.pt").is_file()]
    if missing:
        raise Unsupported(f"facenet-pytorch has no {', '.join(missing)} in {folder}: {_PIP}")
    return folder


def step_names(name: str) -> dict[str, str]:
    """The step models of ensemble ``name``: role → model name."""
    roles = ("pyramid", "pnet", "propose", "rnet", "refine", "onet", "faces")
    return {role: f"{name}_{role}" for role in roles}


def networks() -> dict[str, Any]:
    """P-Net, R-Net and O-Net as torch modules holding facenet-pytorch's weights (eval mode).

    The layer names match the state dicts'. R- and O-Net flatten their last feature map in
    (C, W, H) order, as the Caffe originals did.
    """
    import torch
    from torch import nn

    class PNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
            self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
            self.conv4_1 = nn.Conv2d(32, 2, 1)
            self.conv4_2 = nn.Conv2d(32, 4, 1)

        def forward(self, x: Any) -> tuple[Any, Any]:
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)

    class RNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1 = nn.Linear(128, 2)
            self.dense5_2 = nn.Linear(128, 4)

        def forward(self, x: Any) -> tuple[Any, Any]:
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).flatten(1)
            x = self.prelu4(self.dense4(x))
            return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1 = nn.Linear(256, 2)
            self.dense6_2 = nn.Linear(256, 4)
            self.dense6_3 = nn.Linear(256, 10)

        def forward(self, x: Any) -> tuple[Any, Any, Any]:
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).flatten(1)
            x = self.prelu5(self.dense5(x))
            return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)

    folder = weights_folder()
    built: dict[str, Any] = {}
    for role, module in (("pnet", PNet()), ("rnet", RNet()), ("onet", ONet())):
        state = torch.load(folder / f"{role}.pt", map_location="cpu", weights_only=True)
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise InternalError(f"facenet-pytorch's {role}.pt does not fit: {exc}") from exc
        built[role] = module.eval()
    return built


def masked_pnet(pnet: Any) -> Any:
    """P-Net that reads a pyramid canvas with a fourth, mask channel (1 on the levels).

    Its first feature map is set to -1e30 wherever the 3×3 window under it is not wholly
    inside a level, before the ceil-mode max-pool. A pooling window at a level's right or
    bottom edge then takes the maximum over the level's own features only, as P-Net on that
    level alone does (its ceil-mode window there is partial); every cell of every level is
    P-Net's exact output on that level. With a mask of ones it is P-Net.
    """
    import torch
    from torch import nn

    class MaskedPNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = pnet

        def forward(self, x: Any) -> tuple[Any, Any]:
            net = self.net
            inside = -nn.functional.max_pool2d(-x[:, 3:4], 3, stride=1)  # 1: window in a level
            y = net.prelu1(net.conv1(x[:, :3]))
            y = torch.where(inside > 0.5, y, torch.full_like(y, -1e30))
            y = net.pool1(y)
            y = net.prelu3(net.conv3(net.prelu2(net.conv2(y))))
            return net.conv4_2(y), torch.softmax(net.conv4_1(y), dim=1)

    return MaskedPNet().eval()


def _export(
    role: str, module: Any, reference: Any, samples: Sequence[np.ndarray], target: Path
) -> str:
    """Export ``module`` to ``target`` and check ONNX Runtime against ``reference`` (the
    network as facenet-pytorch defines it) on each sample: the summary. P-Net's samples
    carry a mask channel of ones, which ``reference`` does not read."""
    import torch

    from forwardpass.importers.torch import quiet_export
    from forwardpass.importers.verification import compare, run_onnx

    names = _OUTPUTS[role]
    axes: dict[str, dict[int, str]] = {"x": {0: "rows"}}
    if role == "pnet":
        axes["x"].update({2: "height", 3: "width"})
        axes.update({n: {0: "rows", 2: "map_height", 3: "map_width"} for n in names})
    else:
        axes.update({n: {0: "rows"} for n in names})
    quiet_export(
        torch,
        module,
        (torch.from_numpy(samples[0]),),
        target,
        input_names=["x"],
        output_names=list(names),
        dynamic_axes=axes,
    )
    summaries = []
    for sample in samples:
        with torch.no_grad():
            outputs = reference(torch.from_numpy(sample[:, :3]))
            expected = dict(zip(names, (t.numpy() for t in outputs), strict=True))
        check = compare(expected, run_onnx(target, {"x": sample}), atol=_ATOL, rtol=_ATOL)
        check.raise_if_failed()
        summaries.append(f"{list(sample.shape)}: {check.summary()}")
    return f"{role} ONNX vs torch " + "; ".join(summaries)


def _fp32(name: str, *dims: int) -> TensorSpec:
    return TensorSpec(name=name, datatype=DataType.FP32, dims=dims)


def _function(
    name: str, function: str, inputs: tuple, outputs: tuple, **params: Any
) -> ModelConfig:
    return ModelConfig(
        name=name,
        platform="",
        backend="function",
        inputs=inputs,
        outputs=outputs,
        parameters={"function": function, **{k: str(v) for k, v in params.items()}},
    )


def _configs(
    name: str, thresholds: Sequence[float], min_size: float, factor: float
) -> dict[str, ModelConfig]:
    s = step_names(name)
    pixels = TensorSpec(name="pixels", datatype=DataType.UINT8, dims=(-1, -1, 3))
    image = TensorSpec(name="image", datatype=DataType.BYTES, dims=(1, 1))
    boxes5 = _fp32("boxes", -1, 5)
    return {
        s["pyramid"]: _function(
            s["pyramid"],
            "image_pyramid",
            (image,),
            (_fp32("canvas", 1, 4, -1, -1), _fp32("levels", -1, 5), pixels),
            min_size=min_size,
            mask="true",
            factor=factor,
        ),
        s["pnet"]: ModelConfig(
            name=s["pnet"],
            inputs=(_fp32("x", -1, 4, -1, -1),),
            outputs=(_fp32("reg", -1, 4, -1, -1), _fp32("prob", -1, 2, -1, -1)),
        ),
        s["propose"]: _function(
            s["propose"],
            "mtcnn_propose",
            (
                _fp32("reg", 1, 4, -1, -1),
                _fp32("prob", 1, 2, -1, -1),
                _fp32("levels", -1, 5),
                pixels,
            ),
            (boxes5, _fp32("crops", -1, 3, 24, 24)),
            threshold=thresholds[0],
            level_iou=0.5,
            iou=0.7,
        ),
        s["rnet"]: ModelConfig(
            name=s["rnet"],
            inputs=(_fp32("x", -1, 3, 24, 24),),
            outputs=(_fp32("reg", -1, 4), _fp32("prob", -1, 2)),
        ),
        s["refine"]: _function(
            s["refine"],
            "mtcnn_refine",
            (boxes5, _fp32("reg", -1, 4), _fp32("prob", -1, 2), pixels),
            (boxes5, _fp32("crops", -1, 3, 48, 48)),
            threshold=thresholds[1],
            iou=0.7,
        ),
        s["onet"]: ModelConfig(
            name=s["onet"],
            inputs=(_fp32("x", -1, 3, 48, 48),),
            outputs=(_fp32("reg", -1, 4), _fp32("landmarks", -1, 10), _fp32("prob", -1, 2)),
        ),
        s["faces"]: _function(
            s["faces"],
            "mtcnn_faces",
            (boxes5, _fp32("reg", -1, 4), _fp32("landmarks", -1, 10), _fp32("prob", -1, 2)),
            (_fp32("boxes", -1, 4), _fp32("scores", -1), _fp32("landmarks", -1, 5, 2)),
            threshold=thresholds[2],
            iou=0.7,
        ),
        name: ModelConfig(
            name=name,
            platform="ensemble",
            backend="",
            inputs=(image,),
            outputs=(_fp32("boxes", -1, 4), _fp32("scores", -1), _fp32("landmarks", -1, 5, 2)),
            ensemble=(
                EnsembleStep(
                    s["pyramid"],
                    -1,
                    {"image": "image"},
                    {"canvas": "canvas", "levels": "levels", "pixels": "pixels"},
                ),
                EnsembleStep(s["pnet"], -1, {"x": "canvas"}, {"reg": "p_reg", "prob": "p_prob"}),
                EnsembleStep(
                    s["propose"],
                    -1,
                    {"reg": "p_reg", "prob": "p_prob", "levels": "levels", "pixels": "pixels"},
                    {"boxes": "p_boxes", "crops": "r_crops"},
                ),
                EnsembleStep(s["rnet"], -1, {"x": "r_crops"}, {"reg": "r_reg", "prob": "r_prob"}),
                EnsembleStep(
                    s["refine"],
                    -1,
                    {"boxes": "p_boxes", "reg": "r_reg", "prob": "r_prob", "pixels": "pixels"},
                    {"boxes": "r_boxes", "crops": "o_crops"},
                ),
                EnsembleStep(
                    s["onet"],
                    -1,
                    {"x": "o_crops"},
                    {"reg": "o_reg", "landmarks": "o_landmarks", "prob": "o_prob"},
                ),
                EnsembleStep(
                    s["faces"],
                    -1,
                    {
                        "boxes": "r_boxes",
                        "reg": "o_reg",
                        "landmarks": "o_landmarks",
                        "prob": "o_prob",
                    },
                    {"boxes": "boxes", "scores": "scores", "landmarks": "landmarks"},
                ),
            ),
        ),
    }


def _warmup(folder: Path) -> str:
    """A warm-up sample for the pyramid step (a small real picture in ``warmup/``): its
    config text. Without one the engine would warm it up with an empty BYTES element, which
    is no picture, and log the failure at every load."""
    from PIL import Image

    from forwardpass.datatypes import serialize_bytes_tensor

    ramp = np.linspace(0, 255, 64 * 64 * 3).astype(np.uint8).reshape(64, 64, 3)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    (folder / "warmup").mkdir(exist_ok=True)
    blob = serialize_bytes_tensor(np.array([buffer.getvalue()], dtype=object))
    (folder / "warmup" / "picture.bin").write_bytes(blob)
    return (
        'model_warmup [{ name: "picture" batch_size: 1 inputs { key: "image" value { '
        'data_type: TYPE_STRING dims: [1, 1] input_data_file: "picture.bin" } } }]\n'
    )


def _check(thresholds: Sequence[float], min_size: float, factor: float) -> None:
    if len(thresholds) != 3 or not all(0 <= t < 1 for t in thresholds):
        raise InvalidArgument(f"thresholds must be three numbers in [0, 1), got {thresholds}")
    if not min_size >= 12:
        raise InvalidArgument(f"min_size must be at least 12 pixels, got {min_size}")
    if not 0 < factor < 1:
        raise InvalidArgument(f"factor must lie between 0 and 1, got {factor}")


def build(
    repository: Path,
    name: str = "mtcnn",
    *,
    thresholds: Sequence[float] = (0.6, 0.7, 0.7),
    min_size: float = 20,
    factor: float = 0.709,
) -> Built:
    """Write the ensemble ``name`` and its seven step models into ``repository``.

    Existing folders of those names are overwritten file by file; :func:`add` is the safe
    entry point.
    """
    _check(thresholds, min_size, factor)
    nets = networks()
    rng = np.random.default_rng(0)

    def sample(*shape: int) -> np.ndarray:
        return rng.uniform(-1, 1, shape).astype(np.float32)

    def masked(rows: int, height: int, width: int) -> np.ndarray:
        x = sample(rows, 4, height, width)
        x[:, 3] = 1
        return x

    samples = {
        "pnet": [masked(1, 37, 50), masked(1, 12, 12), masked(2, 64, 41)],
        "rnet": [sample(3, 3, 24, 24), sample(1, 3, 24, 24)],
        "onet": [sample(3, 3, 48, 48), sample(1, 3, 48, 48)],
    }
    steps = step_names(name)
    notes = []
    for model, config in _configs(name, thresholds, min_size, factor).items():
        folder = repository / model
        (folder / "1").mkdir(parents=True, exist_ok=True)
        text = config_to_pbtxt(config)
        if model == steps["pyramid"]:
            text += _warmup(folder)
        (folder / "config.pbtxt").write_text(text, encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="forwardpass-zoo-") as tmp:
        for role in _OUTPUTS:
            exported = Path(tmp) / f"{role}.onnx"
            module = masked_pnet(nets[role]) if role == "pnet" else nets[role]
            notes.append(_export(role, module, nets[role], samples[role], exported))
            (repository / steps[role] / "1" / "model.onnx").write_bytes(exported.read_bytes())
    (repository / name / "ZOO.json").write_bytes(
        provenance(
            RECIPE,
            steps=list(steps.values()),
            thresholds=list(thresholds),
            min_size=min_size,
            factor=factor,
            verification=notes,
        )
    )
    return Built((f"ensemble {name!r} with steps {', '.join(steps.values())}", *notes))


def add(repository: Path, name: str = "mtcnn", *, force: bool = False, **options: Any) -> list:
    """Build the MTCNN ensemble ``name`` and its step models into ``repository``, atomically
    (see :func:`forwardpass.zoo.registry.install`); ``options`` go to :func:`build`. Returns
    the model folders written, the ensemble's last."""
    repository = Path(repository)
    names = [*step_names(name).values(), name]
    weights_folder()  # fail before creating anything when the package is missing
    written, _ = install(
        repository, lambda staging: build(staging, name, **options), force, name, names
    )
    return written


RECIPE = Recipe(
    name="mtcnn",
    task="face detection with five landmarks (MTCNN, Zhang et al. 2016)",
    summary="image bytes in, face boxes, scores and landmarks out (3 ONNX nets + 4 functions)",
    source="PyPI facenet-pytorch 2.6.0 (MTCNN P/R/O-Net weights, from davidsandberg/facenet)",
    license="MIT (facenet-pytorch, which ships the weights)",
    modules=("torch", "facenet_pytorch"),
    pip=_PIP,
    build=build,
    distributions=("torch", "facenet-pytorch"),
)
