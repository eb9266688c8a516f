"""Writing one imported model into a model repository, all or nothing.

An entry is Triton's layout::

    <repository>/<name>/config.pbtxt        the completed config, as protobuf text
    <repository>/<name>/labels.txt          class names, when the model knows them
    <repository>/<name>/tokenizer.json      Hugging Face models: the tokenizer
    <repository>/<name>/<version>/model.onnx

A new model is assembled in a hidden folder of the repository (``.import-*``, which the
repository skips, and which a failed import removes) and renamed into place, so an
interrupted import leaves no model behind.
A new version of an existing model is assembled the same way and renamed to its number; an
existing version is never replaced. The existing config, labels and tokenizer are kept: an
import that would change them is refused, since every version of a model shares them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from forwardpass.errors import InternalError, InvalidArgument, InvalidModelConfig
from forwardpass.importers.verification import Verification
from forwardpass.model_config import ModelConfig
from forwardpass.repository import (
    CONFIG_FILES,
    ModelRepository,
    complete_config,
    load_config_file,
)
from forwardpass.repository.pbtxt_writer import config_to_pbtxt
from forwardpass.repository.repository import next_version
from forwardpass.runtime.onnx import describe_onnx

__all__ = [
    "EntryPlan",
    "ImportResult",
    "WrittenEntry",
    "build_config",
    "save_entry",
    "write_entry",
]

log = logging.getLogger("forwardpass.importers")

CONFIG_FILE = "config.pbtxt"
_FOLDER_MODE = 0o755
_FILE_MODE = 0o644
MODEL_FILE = "model.onnx"


@dataclass(frozen=True, slots=True)
class EntryPlan:
    """What an importer wants written: the ONNX file, its config and the shared files."""

    name: str
    model_file: Path
    config: ModelConfig
    #: File name in the model folder → contents (``labels.txt``, ``tokenizer.json`` ...).
    files: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WrittenEntry:
    """Where an entry went and which files were created."""

    name: str
    version: int
    folder: Path
    written: tuple[Path, ...]
    #: Shared files that already existed with the same contents and were left alone.
    kept: tuple[Path, ...] = ()


#: The ``max_batch_size`` an import writes for a batchable model when not told one. The
#: repository completes a config-less model as Triton does (4); an import writes its config
#: once, so it picks a limit that lets the dynamic batcher fill a CPU.
IMPORT_MAX_BATCH_SIZE = 64


def build_config(
    name: str,
    model_file: Path,
    *,
    max_batch_size: int | None = None,
    labels_for: str | None = None,
    parameters: Mapping[str, str] | None = None,
) -> ModelConfig:
    """The complete config of ``model_file``, as the repository would derive it.

    ``max_batch_size`` ``None`` lets the model decide (batched when every tensor has a dynamic
    leading dimension); ``labels_for`` names the output that ``labels.txt`` describes.
    """
    draft: dict[str, object] = {"name": name, "backend": "onnxruntime"}
    if max_batch_size is not None:
        draft["max_batch_size"] = max_batch_size
    if labels_for:
        draft["output"] = [{"name": labels_for, "label_filename": "labels.txt"}]
    if parameters:
        draft["parameters"] = {k: {"string_value": v} for k, v in parameters.items()}
    return complete_config(
        draft, describe_onnx(model_file), name=name, default_max_batch_size=IMPORT_MAX_BATCH_SIZE
    )


def _check_existing(folder: Path, plan: EntryPlan) -> tuple[bool, list[Path]]:
    """Refuse shared files the plan would change; return (config kept, files kept).

    The existing config is kept when it fits the new model (it may hold the user's own
    settings); one that contradicts the new model's tensors refuses the import.
    """
    kept: list[Path] = []
    config_path = next((folder / f for f in CONFIG_FILES if (folder / f).exists()), None)
    if config_path is not None:
        try:
            raw = load_config_file(config_path)
            complete_config(raw, describe_onnx(plan.model_file), name=plan.name)
        except InvalidModelConfig as exc:
            raise InvalidArgument(
                f"model {plan.name!r} already exists and its {config_path.name} does not fit "
                f"the new model ({exc.message}); its versions share one config, so import "
                "under a new --name, or fix or remove the existing model first"
            ) from exc
        kept.append(config_path)
    for filename, data in plan.files.items():
        path = folder / filename
        if path.exists():
            if path.read_bytes() != data:
                raise InvalidArgument(
                    f"model {plan.name!r} already has a different {filename}; import under a "
                    "new --name, or remove the model first"
                )
            kept.append(path)
    return config_path is not None, kept


def _write_atomic(target: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".import-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, _FILE_MODE)  # mkstemp makes it private
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _stage(parent: Path, plan: EntryPlan, version: int | None, with_shared: bool) -> Path:
    """A hidden folder under ``parent`` holding the files to move into place."""
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=parent))
    try:
        staging.chmod(_FOLDER_MODE)  # mkdtemp makes it private; a server may run as another user
        version_dir = staging / str(version) if version is not None else staging
        version_dir.mkdir(exist_ok=True)
        shutil.copyfile(plan.model_file, version_dir / MODEL_FILE)
        if with_shared:
            (staging / CONFIG_FILE).write_text(config_to_pbtxt(plan.config), encoding="utf-8")
            for filename, data in plan.files.items():
                (staging / filename).write_bytes(data)
        for path in staging.rglob("*"):
            if path.is_file():
                with path.open("rb") as handle:
                    os.fsync(handle.fileno())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _add_version(folder: Path, plan: EntryPlan, version: int | None) -> WrittenEntry:
    config_kept, kept = _check_existing(folder, plan)
    version = version or next_version(folder)
    target = folder / str(version)
    if target.exists():
        raise InvalidArgument(
            f"model {plan.name!r} already has version {version} ({target}); versions are "
            "never overwritten: leave out --version to take the next number"
        )
    missing = {name: data for name, data in plan.files.items() if folder / name not in kept}
    if not config_kept:
        missing[CONFIG_FILE] = config_to_pbtxt(plan.config).encode()
    staging = _stage(folder, plan, version=None, with_shared=False)
    written: list[Path] = []
    try:
        # Shared files first: the new version becomes visible only once they are in place.
        for filename, data in missing.items():
            _write_atomic(folder / filename, data)
            written.append(folder / filename)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    written.append(target / MODEL_FILE)
    return WrittenEntry(plan.name, version, folder, tuple(written), tuple(kept))


def write_entry(repository: Path, plan: EntryPlan, *, version: int | None = None) -> WrittenEntry:
    """Write ``plan`` as a version of model ``plan.name`` under ``repository``.

    ``version`` ``None`` picks the next free number (1 for a new model). Raises
    :class:`InvalidArgument` for a bad name, an existing version, or an existing model whose
    config or shared files differ; :class:`InternalError` when the disk write fails.
    """
    repo = ModelRepository(repository)
    folder = repo.resolve_name(plan.name)
    for filename in plan.files:
        if Path(filename).name != filename or filename.startswith(".") or filename == CONFIG_FILE:
            raise InvalidArgument(f"{filename!r} is not a plain file name for the model folder")
    if version is not None and version < 1:
        raise InvalidArgument(f"version must be a positive integer, got {version}")
    try:
        repository.mkdir(parents=True, exist_ok=True)
        if not folder.exists():
            version = version or 1
            staging = _stage(repository, plan, version, with_shared=True)
            try:
                # rename() onto an existing folder fails, so a racing import cannot be mixed in.
                os.rename(staging, folder)
            except OSError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise InvalidArgument(
                    f"model {plan.name!r} appeared in {repository} during the import; "
                    "run it again to add a version"
                ) from exc
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            written = sorted(p for p in folder.rglob("*") if p.is_file())
            return WrittenEntry(plan.name, version, folder, tuple(written))
        if not folder.is_dir():
            raise InvalidArgument(f"{folder} exists and is not a model folder")
        return _add_version(folder, plan, version)
    except OSError as exc:
        raise InternalError(f"cannot write model {plan.name!r} into {repository}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import wrote and how closely the export matched the original."""

    framework: str
    entry: WrittenEntry
    config: ModelConfig
    verification: Verification
    #: Things the user should know (recorded feature names, a kept config ...).
    notes: tuple[str, ...] = ()


def save_entry(
    framework: str,
    repository: Path,
    name: str,
    model_file: Path,
    verification: Verification,
    *,
    max_batch_size: int | None = None,
    labels: Sequence[str] | None = None,
    labels_for: str | None = None,
    parameters: Mapping[str, str] | None = None,
    files: Mapping[str, bytes] | None = None,
    version: int | None = None,
    notes: Sequence[str] = (),
) -> ImportResult:
    """Refuse a failed verification, then write the entry (see :func:`write_entry`)."""
    verification.raise_if_failed()
    shared = dict(files or {})
    if labels:
        if any("\n" in label or "\r" in label for label in labels):
            raise InvalidArgument("class labels must not contain line breaks")
        shared["labels.txt"] = ("\n".join(labels) + "\n").encode("utf-8")
    config = build_config(
        name,
        model_file,
        max_batch_size=max_batch_size,
        labels_for=labels_for if labels else None,
        parameters=parameters,
    )
    plan = EntryPlan(name=name, model_file=model_file, config=config, files=shared)
    written = write_entry(repository, plan, version=version)
    notes = list(notes)
    if any(p.name in CONFIG_FILES for p in written.kept):
        notes.append(f"kept the existing config of {name!r}: it fits the new version")
    # Read back as the server will: the effective config, and proof the entry loads.
    effective = ModelRepository(repository).read(name).config
    return ImportResult(framework, written, effective, verification, tuple(notes))
