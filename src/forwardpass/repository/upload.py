"""Uploaded model files (the repository load API's ``file:`` parameters): staged, then kept.

A load request that carries files must not change the repository unless the model it describes
serves. :func:`stage_upload` checks every path first (nothing is created for a refused
upload), then writes the files into a hidden staging folder inside the repository root (so
the final move is a rename on one file system, and the repository listing skips it); the
model loads from there, as Triton loads uploaded files from a temporary folder. Once the
model is READY, :meth:`Upload.commit` moves the files into the model's folder with the
config override as its config file, so a reload or a restart serves the same model;
:meth:`Upload.discard` removes the staging folder after a failed load, leaving the model on
disk as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from forwardpass.errors import InternalError, InvalidArgument, NotFound
from forwardpass.model_config import ModelConfig
from forwardpass.repository.pbtxt_writer import config_to_pbtxt
from forwardpass.repository.repository import (
    ModelRepository,
    describe_os_error,
    relative_parts,
)

__all__ = ["STAGING_PREFIX", "Upload", "stage_upload"]

#: Staging folders are ``<root>/.upload-<random>``: hidden, so never listed as a model.
STAGING_PREFIX = ".upload-"


@dataclass(slots=True)
class Upload:
    """Files staged for model ``name``, waiting for its load to succeed or fail."""

    repository: ModelRepository
    name: str
    #: The model's folder in the repository (it may not exist yet).
    target: Path
    #: The staging folder; the model loads from ``staging / name``.
    staging: Path
    files: tuple[tuple[str, ...], ...]

    @property
    def folder(self) -> Path:
        return self.staging / self.name

    def commit(self, config: ModelConfig, override: Mapping[str, Any] | None) -> None:
        """Move the staged files into the model's folder, then write its config file."""
        try:
            existing = self.repository.config_file(self.name) if self.target.is_dir() else None
            self.target.mkdir(exist_ok=True)
            base = self.target.resolve()
            for parts in self.files:
                destination = self.target.joinpath(*parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                _refuse_outside(self.target, base, parts, self.name)
                os.replace(self.folder.joinpath(*parts), destination)
            if override is not None:
                if existing is not None and existing.suffix in (".yaml", ".yml"):
                    _write_atomic(existing, yaml.safe_dump(dict(override)).encode())
                else:
                    _write_atomic(self.target / "config.pbtxt", config_to_pbtxt(config).encode())
        except OSError as exc:
            raise InternalError(
                f"cannot write files of model {self.name!r}: "
                f"{describe_os_error(exc, self.repository.root)}"
            ) from exc
        finally:
            self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def stage_upload(repository: ModelRepository, name: str, files: Mapping[str, bytes]) -> Upload:
    """Check ``files`` (keys relative to the model folder, ``file:`` prefix optional) against
    the model's folder, then write them into a new staging folder.

    Every path is checked before anything is created: an unsafe path, or one that would pass
    through a symlink out of the model's folder, is an :class:`InvalidArgument`.
    """
    target = repository.resolve_name(name)
    plan: list[tuple[tuple[str, ...], bytes]] = []
    for key, data in files.items():
        relative = key.removeprefix("file:") if isinstance(key, str) else key
        parts = relative_parts(relative, "file path")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgument(f"contents of {relative!r} must be bytes")
        plan.append((parts, bytes(data)))
    root = repository.root
    try:
        if not root.is_dir():
            raise NotFound("the model repository does not exist")
        base = target.resolve()
        for parts, _ in plan:
            _refuse_outside(target, base, parts, name)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    except OSError as exc:
        raise InternalError(
            f"cannot stage files of model {name!r}: {describe_os_error(exc, root)}"
        ) from exc
    upload = Upload(repository, name, target, staging, tuple(parts for parts, _ in plan))
    try:
        for parts, data in plan:
            path = upload.folder.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, data)
    except OSError as exc:
        upload.discard()
        raise InternalError(
            f"cannot stage files of model {name!r}: {describe_os_error(exc, staging)}"
        ) from exc
    except BaseException:
        upload.discard()
        raise
    return upload


def _refuse_outside(folder: Path, base: Path, parts: tuple[str, ...], name: str) -> None:
    """InvalidArgument when writing ``folder/parts`` would go through an existing symlink that
    leads out of the model's folder, or replace a symlink."""
    for depth in range(1, len(parts) + 1):
        path = folder.joinpath(*parts[:depth])
        if not path.is_symlink():
            continue
        if depth == len(parts) or not path.resolve().is_relative_to(base):
            raise InvalidArgument(f"file path {'/'.join(parts)!r} leads outside {name}/")


def _write_atomic(target: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=STAGING_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
