"""The model repository: one folder per model, laid out as Triton lays it out.

    <root>/<model>/config.pbtxt        or config.yaml / config.yml, or none (auto-complete)
    <root>/<model>/<version>/model.onnx   positive integer folders; default_model_filename
    <root>/<model>/labels.txt          an output's label_filename, one label per line
    <root>/<model>/warmup/<file>       a model_warmup input_data_file

This module only reads (and, for the repository load API, writes uploaded files); the engine
owns loading and unloading. Reading one model never depends on another: a broken model is an
:class:`InvalidModelConfig` (or :class:`NotFound`) for that model alone, with the reason.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from forwardpass.errors import (
    ForwardpassError,
    InternalError,
    InvalidArgument,
    InvalidModelConfig,
    NotFound,
)
from forwardpass.model_config import ModelConfig
from forwardpass.repository.completion import (
    DEFAULT_MAX_BATCH_SIZE,
    complete_config,
    complete_pytorch_config,
)
from forwardpass.repository.config_io import read_draft
from forwardpass.repository.draft import ConfigDraft
from forwardpass.repository.pbtxt import parse_pbtxt
from forwardpass.runtime import backend_class
from forwardpass.runtime.onnx import describe_onnx

__all__ = [
    "CONFIG_FILES",
    "ModelEntry",
    "ModelRepository",
    "check_backend",
    "check_name",
    "describe_os_error",
    "inside",
    "load_config_file",
    "next_version",
    "relative_parts",
]

log = logging.getLogger("forwardpass.repository")

#: Backends with no model file: the config alone declares the inputs and outputs.
_FILELESS = ("null", "ensemble", "function")

#: Config file names, in the order they are looked for.
CONFIG_FILES = ("config.pbtxt", "config.yaml", "config.yml")
_MAX_NAME = 255


def next_version(model_folder: Path) -> int:
    """One more than the highest version number among ``model_folder``'s entries (1 for
    none): the number a new version takes, whether or not the others hold a model yet."""
    numbers = [
        int(p.name)
        for p in model_folder.iterdir()
        if p.name.isascii() and p.name.isdigit() and not p.name.startswith("0")
    ]
    return max(numbers, default=0) + 1


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model as the repository describes it: its effective config and served versions."""

    name: str
    path: Path
    config: ModelConfig
    #: Versions the version policy selects, ascending.
    versions: tuple[int, ...]
    #: Output name → labels (line ``i`` of the output's label file is class ``i``).
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    #: The config file read, or ``None`` (auto-completed, or a load request's config).
    config_file: Path | None = None

    def version_dir(self, version: int) -> Path:
        """The folder of ``version``; :class:`NotFound` when the policy does not serve it."""
        if version not in self.versions:
            raise NotFound(
                f"model {self.name!r} has no version {version} "
                f"(served versions: {list(self.versions)})"
            )
        return self.path / str(version)


def load_config_file(path: Path) -> dict[str, Any]:
    """The dict in a ``config.pbtxt`` or ``config.yaml``/``config.yml`` (empty file: ``{}``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidModelConfig(f"{path.name} is not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise InvalidModelConfig(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    if path.suffix == ".pbtxt":
        return parse_pbtxt(text, source=path.name)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path.name}:{mark.line + 1}:{mark.column + 1}" if mark else path.name
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidModelConfig(f"{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidModelConfig(f"{path.name} must hold a mapping, not {type(data).__name__}")
    return data


def relative_parts(relative: str, what: str) -> tuple[str, ...]:
    """The components of a relative path that stays inside its folder, or InvalidArgument."""
    if not isinstance(relative, str) or not relative:
        raise InvalidArgument(f"{what} must be a non-empty relative path")
    if "\x00" in relative or "\\" in relative or relative.startswith("/"):
        raise InvalidArgument(f"{what} {relative!r} is not a safe relative path")
    parts = tuple(relative.split("/"))
    for part in parts:
        if part in ("", ".", "..") or part.startswith("."):
            raise InvalidArgument(
                f"{what} {relative!r} is not a safe relative path (empty, '.', '..' or hidden "
                "component)"
            )
    return parts


def inside(folder: Path, relative: str, what: str) -> Path:
    """``folder/relative``, refusing any path (or symlink) that leads out of ``folder``."""
    target = folder.joinpath(*relative_parts(relative, what))
    if not target.resolve().is_relative_to(folder.resolve()):
        raise InvalidArgument(f"{what} {relative!r} leads outside {folder.name}/")
    return target


def _config_override(override: Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(override, str):
        try:
            override = json.loads(override)
        except json.JSONDecodeError as exc:
            raise InvalidModelConfig(f"config override is not valid JSON: {exc}") from exc
    if not isinstance(override, Mapping):
        raise InvalidModelConfig("config override must be a JSON object")
    return dict(override)


def check_name(name: str) -> None:
    """:class:`InvalidArgument` unless ``name`` is a plain folder name that stays inside the
    repository (no separator, ``..``, NUL, control character or leading dot) and fits a file
    system's name limit, in bytes."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument("model name must be a non-empty string")
    try:
        encoded = os.fsencode(name)
    except UnicodeError:
        raise InvalidArgument("model name is not valid Unicode text") from None
    if len(encoded) > _MAX_NAME:
        # File systems limit a folder name in bytes: 200 "é" are 400 bytes.
        raise InvalidArgument(
            f"model name is longer than {_MAX_NAME} bytes ({len(encoded)} in UTF-8)"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidArgument(f"model name {name!r} contains control characters")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise InvalidArgument(f"model name {name!r} contains a path separator")
    if name.startswith("."):
        raise InvalidArgument(f"model name {name!r} is not a plain folder name")


class ModelRepository:
    """Reads the models under ``root``.

    ``autocomplete`` (on by default, as in Triton) reads each ONNX model's file to fill in and
    check its config; off, every config must be complete. ``default_max_batch_size`` is the
    batch limit given to a batchable model whose config does not set one.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        autocomplete: bool = True,
        default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        run_model_code: bool = True,
    ) -> None:
        self._root = Path(root).absolute()
        self.autocomplete = autocomplete
        self.default_max_batch_size = default_max_batch_size
        #: Python models: run their ``auto_complete_config`` (or import their native class)
        #: in a stub process while reading. Off for listings, which must not run model code:
        #: such a model's config is then what its file declares.
        self.run_model_code = run_model_code

    @property
    def root(self) -> Path:
        return self._root

    def __repr__(self) -> str:
        return f"ModelRepository({str(self._root)!r})"

    # -- names -------------------------------------------------------------------------------

    def resolve_name(self, name: str) -> Path:
        """The folder of model ``name``; :class:`InvalidArgument` for a name that could leave
        the repository (separators, ``..``, absolute, NUL, control characters, leading dot,
        longer than a file system allows).
        """
        check_name(name)
        return self._root / name

    def exists(self, name: str) -> bool:
        """Whether the repository has a folder for model ``name`` (a valid name).

        Checked on a plain string: a Path would intern the name, and unknown names must
        leave nothing behind.
        """
        try:
            check_name(name)
            return os.path.isdir(os.path.join(self._root, name))
        except (InvalidArgument, OSError, ValueError):
            return False

    def list_models(self) -> list[str]:
        """Names of the model folders, sorted; hidden entries and plain files are skipped."""
        try:
            with os.scandir(self._root) as iterator:
                entries = list(iterator)
        except FileNotFoundError:
            raise NotFound(f"model repository {self._root} does not exist") from None
        except OSError as exc:
            raise NotFound(
                f"cannot read model repository {self._root}: {exc.strerror or exc}"
            ) from exc
        names = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if not entry.is_dir():
                    continue
                self.resolve_name(entry.name)
            except (OSError, InvalidArgument):
                continue
            names.append(entry.name)
        return sorted(names)

    # -- reading -----------------------------------------------------------------------------

    def read(
        self,
        name: str,
        config_override: Mapping[str, Any] | str | None = None,
        folder: Path | None = None,
    ) -> ModelEntry:
        """Model ``name``: its completed config, selected versions and labels.

        ``config_override`` (a Triton JSON config, as a dict or JSON text, as a repository load
        request carries in ``parameters.config``) replaces the config file. ``folder`` reads the
        model from another folder than its own (an upload being staged). Raises
        :class:`InvalidArgument` for an unsafe name, :class:`NotFound` for a missing model and
        :class:`InvalidModelConfig` for anything wrong with the model, its backend included.
        Messages name files relative to the repository, never by their server path.
        """
        path = self.resolve_name(name) if folder is None else folder
        if not path.is_dir():
            raise NotFound(f"model {name!r} is not in the repository")
        try:
            entry = self._read(name, path, config_override)
        except OSError as exc:
            raise InvalidModelConfig(
                f"cannot read model {name!r}: {describe_os_error(exc, path.parent)}"
            ) from exc
        check_backend(entry.config)
        return entry

    def read_all(self) -> dict[str, ModelEntry | ForwardpassError]:
        """Every model, each read on its own: an entry, or the error that explains it."""
        result: dict[str, ModelEntry | ForwardpassError] = {}
        for name in self.list_models():
            try:
                result[name] = self.read(name)
            except ForwardpassError as exc:
                result[name] = exc
            except Exception as exc:  # a bug reading one model must not hide the others
                log.exception("unexpected error reading model %s", name)
                result[name] = InternalError(f"unexpected error reading model {name!r}: {exc}")
        return result

    def config_file(self, name: str, folder: Path | None = None) -> Path | None:
        """The config file of model ``name`` that :meth:`read` uses, if any."""
        path = self.resolve_name(name) if folder is None else folder
        found = [path / f for f in CONFIG_FILES if (path / f).is_file()]
        if len(found) > 1:
            log.warning(
                "model %s has %s; using %s", name, ", ".join(f.name for f in found), found[0].name
            )
        return found[0] if found else None

    def _read(
        self, name: str, path: Path, config_override: Mapping[str, Any] | str | None
    ) -> ModelEntry:
        config_file: Path | None = None
        if config_override is not None:
            raw = _config_override(config_override)
        else:
            config_file = self.config_file(name, path)
            raw = load_config_file(config_file) if config_file is not None else {}
        draft = read_draft(raw, name=name)
        versions = self._versions(path, draft)
        config = self._config(path, draft, versions)
        return ModelEntry(
            name=name,
            path=path,
            config=config,
            versions=versions,
            labels=self._labels(path, config),
            config_file=config_file,
        )

    def _config(self, path: Path, draft: ConfigDraft, versions: tuple[int, ...]) -> ModelConfig:
        if draft.backend == "onnxruntime" and self.autocomplete:
            model_file = path / str(versions[-1]) / draft.default_model_filename
            io = describe_onnx(model_file)
            return complete_config(
                draft, io, name=draft.name, default_max_batch_size=self.default_max_batch_size
            )
        if draft.backend == "openvino" and self.autocomplete:
            from forwardpass.runtime.openvino import describe_openvino

            model_file = path / str(versions[-1]) / draft.default_model_filename
            return complete_config(
                draft,
                describe_openvino(model_file),
                name=draft.name,
                default_max_batch_size=self.default_max_batch_size,
            )
        if draft.backend == "pytorch":
            return complete_pytorch_config(
                draft,
                path / str(versions[-1]) / draft.default_model_filename,
                autocomplete=self.autocomplete,
                default_max_batch_size=self.default_max_batch_size,
            )
        if draft.backend == "python" and self.autocomplete and self.run_model_code:
            return self._complete_python(path, draft, versions)
        config = draft.build()
        if draft.backend in _FILELESS and (not config.inputs or not config.outputs):
            raise InvalidModelConfig(
                f"a model with backend {draft.backend!r} has no model file: its config must "
                "declare its inputs and outputs"
            )
        return config

    def _complete_python(
        self, path: Path, draft: ConfigDraft, versions: tuple[int, ...]
    ) -> ModelConfig:
        """A Python model's config completed by its own code, as Triton does at load."""
        from forwardpass.repository.config_json import config_to_dict
        from forwardpass.runtime.python import complete_python_config

        raw = config_to_dict(draft.build())
        if draft.max_batch_size is None:
            del raw["max_batch_size"]  # unset: the model's code may choose
        raw.pop("model_transaction_policy", None)
        if draft.fields.get("decoupled"):
            raw["model_transaction_policy"] = {"decoupled": True}
        completed = complete_python_config(raw, path / str(versions[-1]))
        return read_draft(completed, name=draft.name).build()

    def _versions(self, path: Path, draft: ConfigDraft) -> tuple[int, ...]:
        """The version numbers the policy selects, ascending."""
        filename = draft.default_model_filename
        needs_file = draft.backend not in _FILELESS and bool(filename)
        if draft.backend == "python" and draft.fields["parameters"].get("class"):
            needs_file = False  # a native class: its module is found on the path
        if needs_file:
            relative_parts(filename, "default_model_filename")
        found: list[int] = []
        empty: list[int] = []
        with os.scandir(path) as iterator:
            entries = list(iterator)
        for entry in entries:
            name = entry.name
            if not (name.isascii() and name.isdigit()) or name.startswith("0"):
                continue
            if not entry.is_dir():
                continue
            if needs_file and not (Path(entry.path) / filename).exists():
                empty.append(int(name))
                continue
            found.append(int(name))
        found.sort()
        if empty:
            log.warning(
                "model %s: version folder(s) %s have no %s; skipped",
                draft.name,
                sorted(empty),
                filename,
            )
        policy = draft.version_policy
        if policy.kind == "specific":
            missing = [v for v in policy.versions if v not in found]
            if missing:
                raise InvalidModelConfig(
                    f"version_policy asks for version(s) {missing}, which "
                    + (f"have no {filename}" if set(missing) <= set(empty) else "do not exist")
                    + f" (available: {found})"
                )
            return tuple(policy.versions)
        if not found:
            what = f" holding {filename}" if needs_file else ""
            raise InvalidModelConfig(
                f"no version folder{what} (versions are folders named 1, 2, ...)"
            )
        if policy.kind == "all":
            return tuple(found)
        return tuple(found[-policy.num_versions :])

    def _labels(self, path: Path, config: ModelConfig) -> Mapping[str, tuple[str, ...]]:
        labels: dict[str, tuple[str, ...]] = {}
        for output in config.outputs:
            if not output.label_filename:
                continue
            what = f"label_filename of output {output.name!r}"
            try:
                file = inside(path, output.label_filename, what)
            except InvalidArgument as exc:
                raise InvalidModelConfig(exc.message) from exc
            try:
                text = file.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise InvalidModelConfig(
                    f"{what}: {output.label_filename} does not exist in the model folder"
                ) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidModelConfig(
                    f"{what}: cannot read {output.label_filename}: {exc}"
                ) from exc
            lines = tuple(text.splitlines())
            if not any(line.strip() for line in lines):
                raise InvalidModelConfig(f"{what}: {output.label_filename} is empty")
            labels[output.name] = lines
        return MappingProxyType(labels)


def check_backend(config: ModelConfig) -> None:
    """:class:`InvalidModelConfig` unless this build has the backend ``config`` names: the one
    check that the server's load and ``forwardpass models`` share."""
    if config.is_ensemble:
        return
    backend_class(config)


def describe_os_error(exc: OSError, base: Path) -> str:
    """An OS error in words, its file named relative to ``base`` (never a server path)."""
    reason = exc.strerror or type(exc).__name__
    names = []
    for filename in (exc.filename, exc.filename2):
        if filename is None:
            continue
        path = Path(os.fsdecode(filename))
        try:
            names.append(str(path.absolute().relative_to(base.absolute())))
        except ValueError:
            names.append(path.name)
    return f"{reason}: {', '.join(repr(n) for n in names)}" if names else reason
