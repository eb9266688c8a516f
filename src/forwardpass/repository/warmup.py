"""Arrays for a model's warm-up samples (Triton's ``model_warmup``).

A sample's ``dims`` leave out the batch dimension; when the model batches, the arrays get a
leading dimension of ``batch_size``. ``zero_data`` is zeros (empty ``bytes`` for BYTES),
``random_data`` is small values that every datatype holds (integers in 0..127, so token ids
and indices stay valid; floats in [0, 1); short ASCII strings), and ``input_data_file`` is the
raw little-endian contents of ``<model>/warmup/<file>``, as in Triton: one sample (repeated
over the batch) or the whole batch, BYTES elements length-prefixed as on the wire.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from forwardpass.datatypes import DataType, bf16_from_float32, deserialize_bytes_tensor
from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.model_config import ModelConfig, ModelWarmup, WarmupInput

__all__ = ["warmup_inputs", "zeros"]

#: Random integers stay below this, which every integer type holds.
_INT_LIMIT = 128


def zeros(datatype: DataType, shape: tuple[int, ...]) -> np.ndarray:
    """Zeros of ``datatype`` (empty ``bytes`` for BYTES)."""
    if datatype is DataType.BYTES:
        array = np.empty(shape, dtype=object)
        array.fill(b"")
        return array
    return np.zeros(shape, dtype=datatype.numpy)


def _random(datatype: DataType, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if datatype is DataType.BYTES:
        array = np.empty(shape, dtype=object)
        flat = array.reshape(-1)
        for i in range(flat.size):
            length = int(rng.integers(1, 9))
            flat[i] = bytes(rng.integers(ord("a"), ord("z") + 1, size=length, dtype=np.uint8))
        return array
    if datatype is DataType.BOOL:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if datatype is DataType.BF16:
        return bf16_from_float32(rng.random(shape, dtype=np.float32))
    if datatype.is_float:
        return rng.random(shape).astype(datatype.numpy)
    return rng.integers(0, _INT_LIMIT, size=shape).astype(datatype.numpy)


def _from_file(
    data: WarmupInput, shape: tuple[int, ...], batch: int | None, model_dir: Path, where: str
) -> np.ndarray:
    folder = (model_dir / "warmup").resolve()
    path = (folder / data.input_data_file).resolve()
    if not path.is_relative_to(folder):
        raise InvalidModelConfig(
            f"{where}: input_data_file {data.input_data_file!r} leaves warmup/"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidModelConfig(
            f"{where}: cannot read warmup/{data.input_data_file}: {exc.strerror or exc}"
        ) from exc
    one = math.prod(data.dims)
    total = math.prod(shape)
    datatype = data.data_type
    if datatype is DataType.BYTES:
        try:
            flat = deserialize_bytes_tensor(raw)
        except InvalidArgument as exc:
            raise InvalidModelConfig(f"{where}: warmup/{data.input_data_file}: {exc}") from exc
        count, unit, scale, have = (
            flat.size,
            "length-prefixed element(s)",
            1,
            f"{flat.size} element(s)",
        )
    else:
        scale, unit, have = datatype.numpy.itemsize, "bytes", f"{len(raw)} bytes"
        count = -1
        if len(raw) % scale == 0:
            flat = np.frombuffer(raw, dtype=datatype.numpy.newbyteorder("<"))
            flat = flat.astype(datatype.numpy)
            count = flat.size
    if count == total:
        return flat.reshape(shape)
    if count == one and batch is not None:
        # One sample, repeated over the batch as Triton does.
        return np.broadcast_to(flat.reshape(data.dims), shape).copy()
    sizes = sorted({one * scale, total * scale})
    raise InvalidModelConfig(
        f"{where}: warmup/{data.input_data_file} holds {have}; dims {list(data.dims)} of "
        f"{datatype.config_name} need {' or '.join(map(str, sizes))} {unit}"
    )


def warmup_inputs(
    config: ModelConfig, model_dir: Path
) -> list[tuple[ModelWarmup, dict[str, np.ndarray]]]:
    """Each warm-up sample of ``config`` with its input arrays, in config order.

    Random data is drawn from a fixed seed, so warm-up is the same on every load.
    Raises :class:`InvalidModelConfig` for a missing or wrongly sized data file.
    """
    rng = np.random.default_rng(0)
    samples: list[tuple[ModelWarmup, dict[str, np.ndarray]]] = []
    for sample in config.model_warmup:
        batch = sample.batch_size if config.batching else None
        arrays: dict[str, np.ndarray] = {}
        for name, data in sample.inputs.items():
            shape = ((batch,) if batch is not None else ()) + tuple(data.dims)
            where = f"model_warmup {sample.name!r} input {name!r}"
            if data.source == "zero_data":
                arrays[name] = zeros(data.data_type, shape)
            elif data.source == "random_data":
                arrays[name] = _random(data.data_type, shape, rng)
            else:
                arrays[name] = _from_file(data, shape, batch, model_dir, where)
        samples.append((sample, arrays))
    return samples
