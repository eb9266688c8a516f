"""``ppocr``: PP-OCRv4 text recognition as one ensemble: image bytes in, text lines out.

Weights: the three ONNX models that ``rapidocr-onnxruntime==1.4.4`` (Apache-2.0) ships in
``rapidocr_onnxruntime/models/``; the recogniser's character dictionary (6,623 characters,
PaddleOCR's ``ppocr_keys_v1.txt``) is read from its ONNX metadata (``character``).

:func:`add` writes six models; the ensemble ``NAME`` (default ``ocr``) is what clients call::

    image BYTES [1,1]
      └─▶ NAME_det     ONNX DB detector [N,3,S,S] → probability map [N,1,S,S]; declared image
                       input: BGR, letterboxed into S×S (S = det_size, 960), (x/255-0.5)/0.5
      └─▶ NAME_crop    function ocr_detect_crop: boxes, reading order, perspective crops
                       → crops [K,3,48,W], cls_crops [K,3,48,192], widths, boxes, box_scores
      └─▶ NAME_cls     ONNX direction classifier [K,3,48,192] → [K,2] ("0", "180")
      └─▶ NAME_orient  function ocr_orient: lines classified "180" (p > 0.9) turned over
      └─▶ NAME_rec     ONNX CTC recogniser [K,3,48,W] → [K,T,6625]; declared output
                       ``decode: ctc_greedy`` with the dictionary → text [K,1], score [K,1]

The ensemble answers ``texts`` BYTES [K,1] (UTF-8, reading order), ``scores`` FP32 [K,1]
(mean CTC confidence), ``boxes`` FP32 [K,4,2] (corners in the picture's pixels, clockwise
from the top-left) and ``box_scores`` FP32 [K] (detection confidence); K = 0 for a picture
without text.

Why a letterbox: the detector takes any H×W (multiples of 32), but the declared image input
produces one fixed size, and a fixed size is also what lets the detector batch requests of
different pictures together. Every picture is scaled to fit S×S (S a multiple of 32) and
centred on black; ``ocr_detect_crop`` undoes that geometry when it maps boxes back. Small
pictures are scaled up, which DB detection tolerates well (RapidOCR itself scales the short
side up to 736). The cost is a fixed S×S detection per picture (about 85 ms at 960 on two
cores); pass a smaller ``det_size`` for small pictures.

Only the ensemble and the detector batch (``max_batch_size`` 0 for the ensemble: one
picture per request, K rows out). The steps after detection work on one picture's K lines
as a single request (``max_batch_size: 0``): K varies, and line widths differ per picture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from forwardpass.datatypes import DataType
from forwardpass.errors import InternalError, InvalidArgument, Unsupported
from forwardpass.model_config import DynamicBatching, EnsembleStep, ModelConfig, TensorSpec
from forwardpass.repository.pbtxt_writer import config_to_pbtxt
from forwardpass.zoo.registry import Built, Recipe, install, provenance

__all__ = ["DICTIONARY_FILE", "RECIPE", "add", "build", "models_folder", "step_names"]

#: The recogniser's character dictionary, written into its model folder.
DICTIONARY_FILE = "ppocr_keys_v1.txt"

_DET = "ch_PP-OCRv4_det_infer.onnx"
_CLS = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
_REC = "ch_PP-OCRv4_rec_infer.onnx"
# The tensors the three networks declare (paddle2onnx names).
_DET_OUT = "sigmoid_0.tmp_0"
_CLS_OUT = "save_infer_model/scale_0.tmp_1"
_REC_OUT = "softmax_11.tmp_0"
_CLASSES = 6625  # blank + 6,623 dictionary characters + space

_PIP = "pip install 'forwardpass[ocr]'  (rapidocr-onnxruntime==1.4.4)"


def models_folder() -> Path:
    """The folder holding rapidocr-onnxruntime's three ONNX models."""
    try:
        import rapidocr_onnxruntime
    except ImportError:
        raise Unsupported(f"the ppocr models come from rapidocr-onnxruntime: {_PIP}") from None
    folder = Path(rapidocr_onnxruntime.__file__).parent / "models"
    missing = [f for f in (_DET, _CLS, _REC) if not (folder / f).is_file()]
    if missing:
        raise Unsupported(f"rapidocr-onnxruntime has no {', '.join(missing)} in {folder}: {_PIP}")
    return folder


def step_names(name: str) -> dict[str, str]:
    """The step models of ensemble ``name``: role → model name."""
    return {role: f"{name}_{role}" for role in ("det", "crop", "cls", "orient", "rec")}


def _dictionary(rec_model: Path) -> str:
    import onnx

    model = onnx.load(str(rec_model), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    text = meta.get("character", "")
    characters = text.splitlines()
    # The model's classes: the CTC blank, the dictionary, then the space character.
    if len(characters) + 2 != _CLASSES:
        raise InternalError(
            f"{rec_model.name}: expected {_CLASSES - 2} dictionary characters in its metadata, "
            f"found {len(characters)}"
        )
    return "\n".join(characters) + "\n"


def _fp32(name: str, *dims: int) -> TensorSpec:
    return TensorSpec(name=name, datatype=DataType.FP32, dims=dims)


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _configs(name: str, det_size: int) -> dict[str, ModelConfig]:
    steps = step_names(name)
    det_processing = {
        "inputs": [
            {
                "name": "image",
                "kind": "image",
                "to": "x",
                "color": "BGR",
                "resize": {"letterbox": [det_size, det_size], "fill": 0},
                "resample": "bilinear",
                "mean": 0.5,
                "std": 0.5,
            }
        ]
    }
    rec_processing = {
        "outputs": [
            {
                "name": "text",
                "from": _REC_OUT,
                "decode": "ctc_greedy",
                "dictionary": DICTIONARY_FILE,
                "space": True,
                "scores": "score",
            }
        ]
    }
    crop_parameters = {
        "function": "ocr_detect_crop",
        "det_threshold": "0.3",
        "box_threshold": "0.5",
        "unclip_ratio": "1.6",
        "dilate": "true",
        "max_candidates": "1000",
        "vertical_ratio": "1.5",
        "line_height": "48",
        "rec_min_width": "320",
        "rec_max_width": "1600",
        "cls_width": "192",
    }
    return {
        steps["det"]: ModelConfig(
            name=steps["det"],
            max_batch_size=4,
            inputs=(_fp32("x", 3, det_size, det_size),),
            outputs=(_fp32(_DET_OUT, 1, det_size, det_size),),
            dynamic_batching=DynamicBatching(max_queue_delay_microseconds=2000),
            parameters={"processing": _json(det_processing)},
        ),
        steps["crop"]: ModelConfig(
            name=steps["crop"],
            platform="",
            backend="function",
            inputs=(
                TensorSpec(name="image", datatype=DataType.BYTES, dims=(1, 1)),
                _fp32("maps", 1, 1, -1, -1),
            ),
            outputs=(
                _fp32("crops", -1, 3, 48, -1),
                _fp32("cls_crops", -1, 3, 48, 192),
                TensorSpec(name="widths", datatype=DataType.INT32, dims=(-1,)),
                _fp32("boxes", -1, 4, 2),
                _fp32("box_scores", -1),
            ),
            parameters=crop_parameters,
        ),
        steps["cls"]: ModelConfig(
            name=steps["cls"],
            inputs=(_fp32("x", -1, 3, 48, 192),),
            outputs=(_fp32(_CLS_OUT, -1, 2),),
        ),
        steps["orient"]: ModelConfig(
            name=steps["orient"],
            platform="",
            backend="function",
            inputs=(
                _fp32("crops", -1, 3, 48, -1),
                TensorSpec(name="widths", datatype=DataType.INT32, dims=(-1,)),
                _fp32("cls_probs", -1, 2),
            ),
            outputs=(_fp32("oriented", -1, 3, 48, -1),),
            parameters={"function": "ocr_orient", "cls_threshold": "0.9"},
        ),
        steps["rec"]: ModelConfig(
            name=steps["rec"],
            inputs=(_fp32("x", -1, 3, 48, -1),),
            outputs=(_fp32(_REC_OUT, -1, -1, _CLASSES),),
            parameters={"processing": _json(rec_processing)},
        ),
        name: ModelConfig(
            name=name,
            platform="ensemble",
            backend="",
            inputs=(TensorSpec(name="image", datatype=DataType.BYTES, dims=(1, 1)),),
            outputs=(
                TensorSpec(name="texts", datatype=DataType.BYTES, dims=(-1, 1)),
                _fp32("scores", -1, 1),
                _fp32("boxes", -1, 4, 2),
                _fp32("box_scores", -1),
            ),
            ensemble=(
                EnsembleStep(steps["det"], -1, {"image": "image"}, {_DET_OUT: "det_map"}),
                EnsembleStep(
                    steps["crop"],
                    -1,
                    {"image": "image", "maps": "det_map"},
                    {
                        "crops": "crops",
                        "cls_crops": "cls_crops",
                        "widths": "widths",
                        "boxes": "boxes",
                        "box_scores": "box_scores",
                    },
                ),
                EnsembleStep(steps["cls"], -1, {"x": "cls_crops"}, {_CLS_OUT: "cls_probs"}),
                EnsembleStep(
                    steps["orient"],
                    -1,
                    {"crops": "crops", "widths": "widths", "cls_probs": "cls_probs"},
                    {"oriented": "oriented"},
                ),
                EnsembleStep(
                    steps["rec"], -1, {"x": "oriented"}, {"text": "texts", "score": "scores"}
                ),
            ),
        ),
    }


def build(repository: Path, name: str = "ocr", *, det_size: int = 960) -> Built:
    """Write the ensemble ``name`` and its five step models into ``repository``.

    Existing folders of those names are overwritten file by file; :func:`add` is the safe
    entry point. ``det_size`` is the detector's square input side, a multiple of 32.
    """
    if det_size < 32 or det_size % 32:
        raise InvalidArgument(f"det_size must be a positive multiple of 32, got {det_size}")
    source = models_folder()
    steps = step_names(name)
    onnx_files = {steps["det"]: _DET, steps["cls"]: _CLS, steps["rec"]: _REC}
    for model, config in _configs(name, det_size).items():
        folder = repository / model
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(config_to_pbtxt(config), encoding="utf-8")
        if model in onnx_files:
            shutil.copyfile(source / onnx_files[model], folder / "1" / "model.onnx")
    (repository / steps["rec"] / DICTIONARY_FILE).write_text(
        _dictionary(source / _REC), encoding="utf-8"
    )
    (repository / name / "ZOO.json").write_bytes(
        provenance(RECIPE, steps=list(steps.values()), det_size=det_size)
    )
    return Built(
        (
            f"ensemble {name!r} with steps {', '.join(steps.values())}",
            f"detector input {det_size}x{det_size} (letterboxed)",
        )
    )


def add(
    repository: Path, name: str = "ocr", *, det_size: int = 960, force: bool = False
) -> list[Path]:
    """Build the OCR ensemble ``name`` and its five step models into ``repository``.

    Everything is built in a hidden staging folder of ``repository`` first, then each model
    folder is renamed into place, so a failed build leaves nothing behind. Raises
    :class:`InvalidArgument` when any of the six model folders exists (unless ``force``:
    then those are replaced) and :class:`Unsupported` when rapidocr-onnxruntime is missing.
    Returns the model folders written, the ensemble's last.
    """
    repository = Path(repository)
    names = [*step_names(name).values(), name]
    existing = [n for n in names if (repository / n).exists()]
    if existing and not force:
        raise InvalidArgument(
            f"model(s) {', '.join(existing)} already exist in {repository}; nothing was "
            "written. Pass force to replace them"
        )
    models_folder()  # fail before creating anything when the package is missing
    written, _ = install(
        repository, lambda staging: build(staging, name, det_size=det_size), force, name, names
    )
    return written


RECIPE = Recipe(
    name="ppocr",
    task="optical character recognition (Chinese and Latin script), PP-OCRv4",
    summary="image bytes in, text lines with boxes out (an ensemble of 3 ONNX nets + 2 functions)",
    source="PyPI rapidocr-onnxruntime 1.4.4 (PP-OCRv4 det/rec, PP-OCR mobile v2 cls)",
    license="Apache-2.0",
    modules=("rapidocr_onnxruntime", "cv2", "pyclipper"),
    pip="pip install rapidocr-onnxruntime==1.4.4",
    build=build,
    distributions=("rapidocr-onnxruntime", "opencv-python", "pyclipper"),
)
