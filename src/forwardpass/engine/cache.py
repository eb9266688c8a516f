"""The response cache (Triton's ``response_cache``): identical requests answered from memory.

A model opts in with ``response_cache { enable: true }``; the server holds one cache of at most
``ServerConfig.response_cache_bytes`` (``--cache-config local,size=BYTES``, Triton's spelling).
The key is a BLAKE2b digest of everything that decides the answer: model name and version, each
input's name, datatype, shape and bytes (BYTES elements length-prefixed, so ``[b"ab", b"c"]``
and ``[b"a", b"bc"]`` differ), and the requested outputs with the parameters that change them
(``classification``); transport parameters (``binary_data``) are left out. Entries are evicted
least recently used first, by their bytes. Each entry remembers the loaded version that made
it: after a reload (or unload) that version is gone, so the entry is never served again.
"""

from __future__ import annotations

import collections
import hashlib
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from forwardpass.errors import InvalidArgument
from forwardpass.types import InferRequest, InferResponse, Tensor

__all__ = ["ResponseCache", "check_capacity", "parse_cache_config", "request_key"]

#: Output parameters that only choose a wire encoding, never the answer.
_TRANSPORT = frozenset({"binary_data", "binary_data_size", "shared_memory_region",
                        "shared_memory_byte_size", "shared_memory_offset"})  # fmt: skip


def parse_cache_config(text: str) -> int:
    """Bytes of a Triton ``--cache-config`` value: ``local,size=BYTES`` (``size=BYTES`` too)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts and parts[0] == "local":
        parts = parts[1:]
    elif parts and "=" not in parts[0]:
        raise InvalidArgument(
            f"--cache-config {text!r}: only the 'local' cache is available (local,size=BYTES)"
        )
    size = None
    for part in parts:
        key, _, value = part.partition("=")
        if key != "size":
            raise InvalidArgument(f"--cache-config {text!r}: unknown setting {key!r} (size=BYTES)")
        try:
            size = int(value)
        except ValueError:
            raise InvalidArgument(
                f"--cache-config {text!r}: size must be a number of bytes"
            ) from None
    if size is None or size < 0:
        raise InvalidArgument(f"--cache-config {text!r}: give size=BYTES (a non-negative number)")
    return size


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _tensor_bytes(digest: Any, tensor: Tensor) -> None:
    data = tensor.data
    name = tensor.name.encode()
    digest.update(struct.pack("<I", len(name)) + name)
    digest.update(tensor.datatype.value.encode() + b"\0")
    digest.update(struct.pack(f"<I{data.ndim}q", data.ndim, *data.shape))
    if data.dtype == object:
        for item in data.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode()
            digest.update(struct.pack("<Q", len(raw)) + raw)
    else:
        digest.update(np.ascontiguousarray(data).data)


def request_key(request: InferRequest, version: int) -> bytes:
    """The digest of everything in ``request`` that decides its answer."""
    digest = hashlib.blake2b(digest_size=32)
    model = request.model_name.encode()
    digest.update(struct.pack("<I", len(model)) + model + struct.pack("<q", version))
    for tensor in sorted(request.inputs, key=lambda t: t.name):
        _tensor_bytes(digest, tensor)
    if request.outputs is None:
        digest.update(b"\x01all")
    else:
        digest.update(struct.pack("<I", len(request.outputs)))
        for out in request.outputs:
            params = {k: v for k, v in out.parameters.items() if k not in _TRANSPORT}
            text = f"{out.name}\0{sorted((k, repr(v)) for k, v in params.items())}".encode()
            digest.update(struct.pack("<I", len(text)) + text)
    return digest.digest()


def _nbytes(tensors: list[Tensor]) -> int:
    total = 0
    for t in tensors:
        if t.data.dtype == object:
            total += sum(len(x) if isinstance(x, bytes | str) else 8 for x in t.data.reshape(-1))
        else:
            total += t.data.nbytes
        total += 64 + len(t.name)
    return total


@dataclass(slots=True)
class _Entry:
    #: The loaded version that made the answer; compared by identity on lookup.
    owner: object
    model: str
    version: str
    outputs: list[Tensor]
    parameters: dict[str, Any]
    nbytes: int


def check_capacity(capacity_bytes: int) -> None:
    """:class:`InvalidArgument` when a cache of ``capacity_bytes`` could not fit in memory."""
    available = _available_memory()
    if available is not None and capacity_bytes > available:
        raise InvalidArgument(
            f"response cache of {capacity_bytes} bytes is larger than the memory available "
            f"({available} bytes); give --cache-config local,size=BYTES a smaller size"
        )


class ResponseCache:
    """An LRU map from request digests to answers, bounded by bytes."""

    def __init__(self, capacity_bytes: int) -> None:
        check_capacity(capacity_bytes)
        self.capacity = capacity_bytes
        self.used = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: bytes, owner: object, request_id: str) -> InferResponse | None:
        """The cached answer for ``key`` made by ``owner`` (counted as a hit), or ``None``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.owner is not owner:
                self._drop(key)  # made by a version that has since been reloaded
                entry = None
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        return InferResponse(
            entry.model, entry.version, list(entry.outputs), request_id, dict(entry.parameters)
        )

    def insert(self, key: bytes, owner: object, response: InferResponse) -> bool:
        """Keep ``response``; False when it alone is larger than the cache."""
        outputs = [
            Tensor(t.name, t.datatype, np.array(t.data, copy=True), dict(t.parameters))
            for t in response.outputs
        ]
        for t in outputs:
            t.data.flags.writeable = False  # a hit must never hand out an array to change
        size = _nbytes(outputs)
        if size > self.capacity:
            return False
        with self._lock:
            if key in self._entries:
                self._drop(key)
            while self.used + size > self.capacity and self._entries:
                self._drop(next(iter(self._entries)))
                self.evictions += 1
            self._entries[key] = _Entry(
                owner,
                response.model_name,
                response.model_version,
                outputs,
                dict(response.parameters),
                size,
            )
            self.used += size
        return True

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        self.used -= entry.nbytes
