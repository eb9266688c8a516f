"""Writing an optimized model as a new version of its model, all or nothing.

The version is assembled in a hidden folder of the model folder (``.optimize-*``, which the
repository ignores: only folders named by positive integers are versions) holding the model
file and its report, then renamed to its number in one step. So a reader sees the whole
version or none of it, an interrupted run (an exception, Ctrl-C) leaves nothing behind, and an
existing version is never replaced. Like :mod:`forwardpass.importers.entry`, whose layout this
follows; the importer writes only the model file into a version, this also writes the report
beside it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from forwardpass.errors import InternalError, InvalidArgument
from forwardpass.repository.repository import next_version

__all__ = ["next_version", "write_version"]

_FOLDER_MODE = 0o755
_FILE_MODE = 0o644
STAGING_PREFIX = ".optimize-"


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    path.chmod(_FILE_MODE)


def write_version(
    model_folder: Path,
    version: int,
    model_file: Path,
    files: Mapping[str, bytes],
    *,
    model_filename: str = "model.onnx",
) -> Path:
    """Create ``model_folder/version`` holding ``model_file`` and ``files``; its path.

    :class:`InvalidArgument` when that version exists (versions are never overwritten) or a
    file name is not plain; :class:`InternalError` when the disk write fails.
    """
    for name in (*files, model_filename):
        if Path(name).name != name or name.startswith(".") or not name:
            raise InvalidArgument(f"{name!r} is not a plain file name for a version folder")
    target = model_folder / str(version)
    if target.exists():
        raise InvalidArgument(
            f"{target} already exists; versions are never overwritten (leave out --version "
            "to take the next number)"
        )
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_folder))
    except OSError as exc:
        raise InternalError(f"cannot write into {model_folder}: {exc}") from exc
    try:
        staging.chmod(_FOLDER_MODE)
        with model_file.open("rb") as source, (staging / model_filename).open("wb") as copy:
            shutil.copyfileobj(source, copy)
            copy.flush()
            os.fsync(copy.fileno())
        (staging / model_filename).chmod(_FILE_MODE)
        for name, data in files.items():
            _write_file(staging / name, data)
        if target.exists():  # a concurrent run took the number while this one was writing
            raise InvalidArgument(f"{target} appeared while writing; run again for a new number")
        # rename() of a folder onto an existing non-empty one fails: no mixing with a racer.
        os.rename(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InternalError(f"cannot write version {version} into {model_folder}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
