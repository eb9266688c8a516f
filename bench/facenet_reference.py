"""facenet-pytorch's own MTCNN (eager torch), the reference the ``mtcnn`` zoo model is held to.

facenet-pytorch 2.6.0 imports torchvision at module import, for two things: the image
transforms of ``extract_face`` (cutting out the detected faces, which detection never calls)
and ``torchvision.ops.batched_nms``. Where torchvision is not installed (it is not one of
forwardpass's dependencies), :func:`load_mtcnn` imports the package behind a stand-in that
offers only ``batched_nms``, written out here in torch with torchvision's documented
semantics (per-category greedy NMS, best score first, a box is dropped when its IoU with a
kept one exceeds the threshold). The stand-in is removed from ``sys.modules`` right after the
import, so nothing else sees a torchvision. Everything else (the networks, the pyramid, the
three stages) is facenet-pytorch's own code.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

__all__ = ["batched_nms", "detect", "load_mtcnn"]


def batched_nms(boxes: Any, scores: Any, idxs: Any, iou_threshold: float) -> Any:
    """``torchvision.ops.batched_nms``: the kept indices, by decreasing score."""
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    # Shift each category's boxes apart so that boxes of different categories never overlap.
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    shifted = boxes + offsets[:, None]
    order = torch.argsort(scores, descending=True, stable=True)
    x1, y1, x2, y2 = shifted[order].unbind(1)
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    alive = torch.ones(len(order), dtype=torch.bool)
    kept = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        kept.append(i)
        w = (torch.minimum(x2[i], x2[i + 1 :]) - torch.maximum(x1[i], x1[i + 1 :])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[i + 1 :]) - torch.maximum(y1[i], y1[i + 1 :])).clamp(min=0)
        inter = w * h
        iou = inter / (area[i] + area[i + 1 :] - inter)
        alive[i + 1 :] &= ~(iou > iou_threshold)
    return order[torch.as_tensor(kept, dtype=torch.int64)]


def _import_facenet() -> Any:
    if importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module("facenet_pytorch")
    names = ("torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms")
    stand_in = {name: types.ModuleType(name) for name in names}
    stand_in["torchvision.ops.boxes"].batched_nms = batched_nms  # type: ignore[attr-defined]
    functional = types.ModuleType("torchvision.transforms.functional")
    stand_in["torchvision.transforms"].functional = functional  # type: ignore[attr-defined]
    stand_in["torchvision.transforms.functional"] = functional
    sys.modules.update(stand_in)
    try:
        return importlib.import_module("facenet_pytorch")
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)


def load_mtcnn(**options: Any) -> Any:
    """facenet-pytorch's ``MTCNN`` on the CPU, every face kept (``keep_all``)."""
    facenet = _import_facenet()
    return facenet.MTCNN(keep_all=True, device="cpu", **options)


def detect(mtcnn: Any, rgb: Any) -> tuple[Any, Any, Any]:
    """``(boxes [F,4], scores [F], landmarks [F,5,2])`` of one RGB uint8 picture."""
    import numpy as np
    from PIL import Image

    boxes, probs, points = mtcnn.detect(Image.fromarray(rgb), landmarks=True)
    if boxes is None:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2))
    return boxes.astype(np.float32), probs.astype(np.float32), points.astype(np.float32)
