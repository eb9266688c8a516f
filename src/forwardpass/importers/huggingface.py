"""Importing Hugging Face transformer checkpoints from a local folder (extra ``torch`` plus
``transformers``). Nothing is ever downloaded: the source must be a folder on disk and is
loaded with ``local_files_only=True``.

Tasks:

* ``embedding``: the encoder with pooling over the attention mask (mean by default, or what a
  sentence-transformers folder's ``1_Pooling/config.json`` says) and L2 normalisation inside
  the graph → ``sentence_embedding`` f32 ``[batch, hidden]``;
* ``sequence-classification``: ``logits`` f32 ``[batch, labels]``, with ``labels.txt`` from
  the config's ``id2label``.

Inputs are ``input_ids``, ``attention_mask`` and, when the model takes it,
``token_type_ids``: int64 ``[batch, sequence]`` with both axes dynamic. ``tokenizer.json`` is
copied into the model folder for text preprocessing.
"""

from __future__ import annotations

import inspect
import json
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from forwardpass.errors import InvalidArgument, Unsupported
from forwardpass.importers.entry import ImportResult, save_entry
from forwardpass.importers.torch import quiet_export
from forwardpass.importers.verification import compare, run_onnx

__all__ = ["DEFAULT_ATOL", "TASKS", "import_huggingface"]

Task = Literal["embedding", "sequence-classification"]
TASKS: tuple[Task, ...] = ("embedding", "sequence-classification")
DEFAULT_ATOL = 1e-4
_POOLING = ("mean", "cls", "max")
#: Sentences tokenized for verification when the folder has a tokenizer.
_SENTENCES = (
    "forwardpass turns a trained network into fast predictions.",
    "A short one.",
    "Dynamic batching merges requests that arrive together, padding them to one length.",
)


def _transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise Unsupported(
            "importing Hugging Face models needs torch and transformers: "
            "pip install 'forwardpass[huggingface]'"
        ) from exc
    return torch, transformers


def _pooling_mode(folder: Path, pooling: str | None) -> str:
    if pooling is not None:
        if pooling not in _POOLING:
            raise InvalidArgument(f"pooling must be one of {', '.join(_POOLING)}")
        return pooling
    config = folder / "1_Pooling" / "config.json"
    if not config.is_file():
        return "mean"
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read {config}: {exc}") from exc
    for mode in _POOLING:
        key = "pooling_mode_cls_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"
        if settings.get(key):
            return mode
    raise InvalidArgument(f"{config}: unsupported pooling; choose one of {', '.join(_POOLING)}")


def _wrapper(torch: Any, model: Any, task: Task, pooling: str, normalize: bool, names: list[str]):
    class Exported(torch.nn.Module):
        """The model with named int64 inputs and the task's head."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            kwargs = dict(zip(names, tensors, strict=True))
            if task == "sequence-classification":
                return self.model(**kwargs).logits
            hidden = self.model(**kwargs).last_hidden_state
            mask = kwargs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if pooling == "cls":
                pooled = hidden[:, 0]
            elif pooling == "max":
                pooled = (hidden - (1 - mask) * 1e9).max(dim=1).values
            else:
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return pooled

    return Exported().eval()


def _load(transformers: Any, folder: Path, task: Task) -> Any:
    factory = (
        transformers.AutoModel
        if task == "embedding"
        else transformers.AutoModelForSequenceClassification
    )
    logging = transformers.utils.logging
    bar = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            # Eager attention exports to plain ONNX operators.
            return factory.from_pretrained(
                str(folder), local_files_only=True, attn_implementation="eager"
            ).eval()
    except Exception as exc:  # OSError, ValueError, missing weights
        raise InvalidArgument(f"cannot load a {task} model from {folder}: {exc}") from exc
    finally:
        if bar:
            logging.enable_progress_bar()


def _samples(folder: Path, model: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Token ids of a few sentences (padded), or random ids when there is no tokenizer."""
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(128)
        tokenizer.enable_padding()
        encodings = tokenizer.encode_batch(list(_SENTENCES))
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
    else:
        rng = np.random.default_rng(0)
        vocab = int(getattr(model.config, "vocab_size", 100))
        ids = rng.integers(1, vocab, size=(3, 12)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1, 7:] = 0  # one padded row, so pooling over the mask is exercised
        ids[1, 7:] = int(getattr(model.config, "pad_token_id", 0) or 0)
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {n: arrays[n] for n in names}


def _labels(model: Any) -> list[str] | None:
    id2label = getattr(model.config, "id2label", None) or {}
    if not id2label:
        return None
    return [str(id2label[i]) for i in sorted(int(k) for k in id2label)]


def import_huggingface(
    folder: Path,
    *,
    task: Task,
    repository: Path,
    name: str,
    pooling: str | None = None,
    normalize: bool = True,
    samples: Mapping[str, np.ndarray] | None = None,
    max_batch_size: int | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = 0.0,
    version: int | None = None,
) -> ImportResult:
    """Export the checkpoint in ``folder`` for ``task`` and write it as model ``name``."""
    if task not in TASKS:
        raise InvalidArgument(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InvalidArgument(
            f"{folder} is not a local Hugging Face model folder (no config.json); models are "
            "never downloaded"
        )
    torch, transformers = _transformers()
    model = _load(transformers, folder, task)
    accepted = inspect.signature(model.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]
    mode = _pooling_mode(folder, pooling) if task == "embedding" else "mean"
    wrapper = _wrapper(torch, model, task, mode, normalize, names)
    inputs = dict(samples) if samples else _samples(folder, model, names)
    missing = sorted(set(names) - set(inputs))
    if missing:
        raise InvalidArgument(f"no sample for input(s) {missing}")
    inputs = {n: np.asarray(inputs[n], dtype=np.int64) for n in names}
    tensors = tuple(torch.from_numpy(inputs[n]) for n in names)
    output = "sentence_embedding" if task == "embedding" else "logits"
    try:
        with torch.no_grad():
            reference = {output: wrapper(*tensors).numpy()}
    except Exception as exc:
        raise InvalidArgument(f"the model fails on the sample inputs: {exc}") from exc
    labels = _labels(model) if task == "sequence-classification" else None
    files = {}
    if (folder / "tokenizer.json").is_file():
        files["tokenizer.json"] = (folder / "tokenizer.json").read_bytes()
    notes = [f"pooling: {mode}, L2-normalized: {normalize}"] if task == "embedding" else []
    with tempfile.TemporaryDirectory(prefix="forwardpass-import-") as tmp:
        model_file = Path(tmp) / "model.onnx"
        dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
        quiet_export(
            torch,
            wrapper,
            tensors,
            model_file,
            input_names=names,
            output_names=[output],
            dynamic_axes={**dynamic, output: {0: "batch"}},
        )
        verification = compare(reference, run_onnx(model_file, inputs), atol=atol, rtol=rtol)
        return save_entry(
            "huggingface",
            repository,
            name,
            model_file,
            verification,
            max_batch_size=max_batch_size,
            labels=labels,
            labels_for=output if labels else None,
            files=files,
            version=version,
            notes=notes,
        )
