"""A model's reference profile: what its drift monitor compares traffic with.

``forwardpass monitor reference MODEL --data PATH`` reads PATH the way ``optimize
--validation`` does (``optimize.data.load_samples``: ``.npz``/``.npy``, a folder of them or
of images, a ``.txt`` of sentences; files go through the model's own processing), runs the
samples through the model in-process, and stores in the model's folder::

    monitor/reference.npz    feature/<name> (one value per sample), embedding (N × D)
    monitor/reference.json   model, version, source, rows, the inputs it was built for,
                             feature kinds, embedding source and width, sha256 of the .npz

The json's ``inputs`` let the server tell a reference built for another model (or an older
config) from a matching one and say what differs instead of comparing the wrong things.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import InvalidArgument, InvalidModelConfig, Unsupported
from forwardpass.model_config import ModelConfig

__all__ = [
    "MONITOR_FOLDER",
    "Reference",
    "build_reference",
    "check_inputs",
    "load_reference",
    "profile_data",
    "profiler_for",
]

#: The folder, inside the model's folder, of the reference profile and the monitor's state.
MONITOR_FOLDER = "monitor"
_NPZ = "reference.npz"
_JSON = "reference.json"
#: At most this many reference rows are kept (a random subset beyond it).
MAX_ROWS = 10_000


@dataclass(slots=True)
class Reference:
    """A loaded reference profile."""

    features: dict[str, np.ndarray]
    kinds: dict[str, str]
    embedding: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.meta.get("rows", 0))

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("sha256", ""))


def _inputs_of(config: ModelConfig) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "datatype": s.datatype.value, "dims": list(s.dims)} for s in config.inputs
    ]


def check_inputs(reference: Reference, config: ModelConfig, where: Path) -> None:
    """Raise :class:`InvalidModelConfig` naming the difference when ``reference`` was built
    for other inputs than ``config`` declares."""
    built = {i["name"]: i for i in reference.meta.get("inputs", [])}
    now = {i["name"]: i for i in _inputs_of(config)}
    if built == now:
        return
    problems: list[str] = []
    for name in sorted(set(built) - set(now)):
        problems.append(f"input {name!r} is in the reference but not in the model")
    for name in sorted(set(now) - set(built)):
        problems.append(f"model input {name!r} is missing from the reference")
    for name in sorted(set(now) & set(built)):
        a, b = built[name], now[name]
        if a != b:
            problems.append(
                f"input {name!r} was {a['datatype']} {a['dims']} in the reference, the model "
                f"takes {b['datatype']} {b['dims']}"
            )
    raise InvalidModelConfig(
        f"reference profile {where} does not match model {config.name!r}: "
        + "; ".join(problems)
        + " (rebuild it with `forwardpass monitor reference`)"
    )


def load_reference(model_dir: Path, config: ModelConfig) -> Reference:
    """The model's stored reference; a clear error when missing, damaged or mismatched."""
    folder = model_dir / MONITOR_FOLDER
    npz, meta_file = folder / _NPZ, folder / _JSON
    if not npz.is_file() or not meta_file.is_file():
        raise InvalidModelConfig(
            f"model {config.name!r} has drift monitoring configured but no reference profile "
            f"in {folder}; build one with `forwardpass monitor reference {config.name} "
            "--data PATH`"
        )
    try:
        meta = json.loads(meta_file.read_text())
        blob = npz.read_bytes()
        with np.load(npz, allow_pickle=False) as data:
            arrays = dict(data)
    except (OSError, ValueError) as exc:
        raise InvalidModelConfig(f"cannot read reference profile {folder}: {exc}") from None
    if meta.get("sha256") != hashlib.sha256(blob).hexdigest():
        raise InvalidModelConfig(
            f"reference profile {folder}: {_NPZ} does not match {_JSON} (sha256 differs); "
            "rebuild it"
        )
    reference = Reference(
        features={k[len("feature/") :]: v for k, v in arrays.items() if k.startswith("feature/")},
        kinds=dict(meta.get("features", {})),
        embedding=arrays.get("embedding"),
        meta=meta,
    )
    check_inputs(reference, config, meta_file)
    return reference


def profiler_for(
    config: ModelConfig,
    model_dir: Path,
    labels: Mapping[str, Any],
    version: int,
    embedding: str = "auto",
    categorical: tuple[str, ...] = (),
    features: tuple[str, ...] | None = None,
) -> Any:
    """The :class:`~forwardpass.monitor.profile.Profiler` of ``version`` of this model."""
    from forwardpass.monitor.profile import Profiler

    model_file = model_dir / str(version) / (config.default_model_filename or "model.onnx")
    return Profiler(
        config,
        model_dir,
        labels,
        embedding=embedding,
        model_file=model_file if model_file.is_file() else None,
        categorical=categorical,
        features=features,
    )


async def profile_data(
    repository: Path, model: str, data: Path, version: int | None = None
) -> tuple[Any, Any, int, Path, Any]:
    """Run the samples in ``data`` through ``model`` in-process and profile them.

    Returns (profile of every sample, the profiler, the version run, the model folder, the
    samples as read). The data is read by ``optimize.data.load_samples``.
    """
    from forwardpass.config import ServerConfig
    from forwardpass.engine import Engine
    from forwardpass.monitor.profile import Profile
    from forwardpass.monitor.settings import DriftSettings, drift_settings
    from forwardpass.optimize.data import load_samples
    from forwardpass.repository import ModelRepository
    from forwardpass.scheduling.batcher import Batcher

    engine = Engine(
        ModelRepository(repository),
        ServerConfig(
            model_repository=repository, model_control_mode="explicit", load_models=(model,)
        ),
    )
    engine.monitoring.prepare_on_load = False  # the reference being built is not there yet
    await engine.start()
    try:
        handle = engine.handle(model)
        if handle.entry is None or not handle.versions:
            raise InvalidArgument(f"model {model!r} did not load: {handle.reason}")
        handle, loaded = engine.version(model, str(version) if version else "")
        config = handle.config
        settings = drift_settings(config.parameters) or DriftSettings()
        entry = handle.entry
        assert entry is not None
        samples = load_samples(data, config, model_dir=entry.path, labels=entry.labels)
        if len(samples) < 2:
            raise InvalidArgument(f"{data} holds {len(samples)} sample(s); a reference needs more")
        if not isinstance(loaded.batcher, Batcher):
            raise Unsupported(
                f"model {model!r} is an ensemble or a sequence model; a reference profile "
                "is built for a model with a plain (dynamic or direct) scheduler"
            )
        # A reference covers every feature; the monitoring config may later test a subset.
        profiler = profiler_for(
            config,
            entry.path,
            entry.labels,
            loaded.version,
            settings.embedding,
            settings.categorical,
        )
        backend = loaded.backends[0]
        size = config.max_batch_size if config.batching else 1
        parts: list[Profile] = []
        for start in range(0, len(samples), size):
            index = np.arange(start, min(start + size, len(samples)))
            batch = samples.take(index)
            inputs = dict(batch.arrays)
            if not config.batching:
                inputs = {k: v[0] for k, v in inputs.items()}
            checked = backend.check(inputs)
            outputs, _queue, _compute = await loaded.batcher.submit(checked)
            parts.append(profiler.profile(checked, outputs, batch.extra))
    finally:
        await engine.stop()
    features = {k: np.concatenate([p.features[k] for p in parts]) for k in parts[0].features}
    embedding = (
        np.concatenate([p.embedding for p in parts]).astype(np.float32)
        if parts[0].embedding is not None
        else None
    )
    return Profile(features, embedding), profiler, loaded.version, entry.path, samples


async def _run(repository: Path, model: str, version: int | None, data: Path) -> dict[str, Any]:
    profile, profiler, run_version, model_dir, _ = await profile_data(
        repository, model, data, version
    )
    config = profiler.config
    features, embedding = profile.features, profile.embedding
    rows = len(profile)
    if rows > MAX_ROWS:
        keep = np.sort(np.random.default_rng(0).choice(rows, MAX_ROWS, replace=False))
        features = {k: v[keep] for k, v in features.items()}
        embedding = embedding[keep] if embedding is not None else None
        rows = MAX_ROWS
    arrays = {f"feature/{k}": _storable(v) for k, v in features.items()}
    if embedding is not None:
        arrays["embedding"] = embedding
    folder = model_dir / MONITOR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    npz = folder / _NPZ
    tmp = folder / f".{_NPZ}.tmp"
    with tmp.open("wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
    blob = tmp.read_bytes()
    source = "none"
    if profiler.embedding_output is not None:
        source = f"output:{profiler.embedding_output}"
    elif profiler.extractor is not None:
        source = f"penultimate:{profiler.extractor.tensor}"
    meta = {
        "model": model,
        "version": run_version,
        "source": str(data),
        "rows": rows,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": _inputs_of(config),
        "features": profiler.kinds,
        "embedding": None
        if embedding is None
        else {"source": source, "width": int(embedding.shape[1])},
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    os.replace(tmp, npz)
    meta_tmp = folder / f".{_JSON}.tmp"
    meta_tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(meta_tmp, folder / _JSON)
    return {**meta, "folder": str(folder)}


def _storable(values: np.ndarray) -> np.ndarray:
    """Object arrays (strings) as fixed-width unicode: the .npz is read without pickle."""
    return values.astype(str) if values.dtype == object else values


def build_reference(
    repository: Path, model: str, data: Path, version: int | None = None
) -> dict[str, Any]:
    """Build and store the reference profile of ``model``; its json metadata (and folder)."""
    return asyncio.run(_run(repository, model, version, data))
