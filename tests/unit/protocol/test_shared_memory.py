"""The system shared memory registry: mapping, bounds, lifetimes, reading and writing tensors."""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from forwardpass.datatypes import DataType, serialize_bytes_tensor
from forwardpass.errors import InvalidArgument, NotFound
from forwardpass.protocol.shared_memory import RegionStatus, SharedMemoryRegistry


@pytest.fixture
def shm() -> Iterator[tuple[str, Path]]:
    """A 4 KiB POSIX shared memory object in /dev/shm, as tritonclient creates one."""
    name = f"fp_test_{uuid.uuid4().hex[:12]}"
    path = Path("/dev/shm") / name
    path.write_bytes(bytes(4096))
    try:
        yield "/" + name, path
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture
def registry() -> Iterator[SharedMemoryRegistry]:
    reg = SharedMemoryRegistry()
    try:
        yield reg
    finally:
        reg.unregister()


def test_register_status_unregister(shm: tuple[str, Path], registry: SharedMemoryRegistry) -> None:
    key, _ = shm
    registry.register("a", key, 0, 1024)
    registry.register("b", key, 1024, 3072)
    assert registry.status() == [
        RegionStatus("a", key, 0, 1024),
        RegionStatus("b", key, 1024, 3072),
    ]
    assert registry.status("b") == [RegionStatus("b", key, 1024, 3072)]
    registry.unregister("a")
    assert [s.name for s in registry.status()] == ["b"]
    registry.unregister("never-registered")  # as in Triton: not an error
    registry.unregister()
    assert registry.status() == []
    with pytest.raises(NotFound, match="Unable to find system shared memory region: 'a'"):
        registry.status("a")


def test_the_key_may_omit_its_leading_slash(
    shm: tuple[str, Path], registry: SharedMemoryRegistry
) -> None:
    key, _ = shm
    registry.register("r", key.lstrip("/"), 0, 16)
    assert registry.status("r")[0].key == key.lstrip("/")


def test_duplicate_name_uses_tritons_words(
    shm: tuple[str, Path], registry: SharedMemoryRegistry
) -> None:
    key, _ = shm
    registry.register("r", key, 0, 16)
    with pytest.raises(InvalidArgument, match="shared memory region 'r' already in manager"):
        registry.register("r", key, 16, 16)


def test_nonexistent_key_names_the_key(registry: SharedMemoryRegistry) -> None:
    with pytest.raises(InvalidArgument, match="Unable to open shared memory region: '/fp_nope_"):
        registry.register("r", f"/fp_nope_{uuid.uuid4().hex}", 0, 16)


@pytest.mark.parametrize(
    "key", ["/../etc/passwd", "/a/b", "/", "//", "/..", "/.", "/x\0y"], ids=repr
)
def test_a_key_is_one_name_in_dev_shm_never_a_path(
    key: str, registry: SharedMemoryRegistry
) -> None:
    with pytest.raises(InvalidArgument, match="invalid shared memory key"):
        registry.register("r", key, 0, 16)


def test_a_symlink_in_dev_shm_is_not_followed(
    shm: tuple[str, Path], registry: SharedMemoryRegistry, tmp_path: Path
) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"x" * 64)
    link = Path("/dev/shm") / f"fp_link_{uuid.uuid4().hex[:12]}"
    link.symlink_to(target)
    try:
        with pytest.raises(InvalidArgument, match="Unable to open shared memory region"):
            registry.register("r", "/" + link.name, 0, 16)
    finally:
        link.unlink()


@pytest.mark.parametrize(
    ("offset", "byte_size", "match"),
    [
        (0, 4097, "exceeds the 4096 bytes"),
        (4096, 1, "exceeds the 4096 bytes"),
        (5000, 1, "exceeds the 4096 bytes"),
        (1, 2**63 - 1, "exceeds the 4096 bytes"),  # the sum would wrap a uint64 in C
        (2**63 - 1, 2**63 - 1, "exceeds the 4096 bytes"),
        (2**64 - 1, 2, "'offset' must be an integer from 0"),
        (0, 2**64, "'byte_size' must be an integer from 0"),
        (-1, 16, "'offset' must be an integer from 0"),
        (0, -16, "'byte_size' must be an integer from 0"),
        (0, 0, "byte_size must be positive"),
        (0, True, "'byte_size' must be an integer"),
        (0.5, 16, "'offset' must be an integer"),
    ],
)
def test_register_bounds_are_checked_against_the_real_file(
    shm: tuple[str, Path],
    registry: SharedMemoryRegistry,
    offset: object,
    byte_size: object,
    match: str,
) -> None:
    key, _ = shm
    with pytest.raises(InvalidArgument, match=match):
        registry.register("r", key, offset, byte_size)  # type: ignore[arg-type]
    assert registry.status() == []


def test_an_unaligned_offset_is_fine(shm: tuple[str, Path], registry: SharedMemoryRegistry) -> None:
    # mmap needs page-aligned offsets; the registry maps from 0 and slices instead.
    key, path = shm
    values = np.arange(4, dtype=np.float32)
    with open(path, "r+b") as f:
        f.seek(13)
        f.write(values.tobytes())
    registry.register("r", key, 13, 16)
    with registry.leases() as leases:
        got = leases.read("x", DataType.FP32, (4,), "r", 0, 16)
        np.testing.assert_array_equal(got, values)


def test_read_is_a_read_only_view_of_the_client_memory(
    shm: tuple[str, Path], registry: SharedMemoryRegistry
) -> None:
    key, path = shm
    registry.register("r", key, 0, 4096)
    values = np.arange(6, dtype=np.int32).reshape(2, 3)
    with open(path, "r+b") as f:
        f.seek(64)
        f.write(values.tobytes())
    with registry.leases() as leases:
        got = leases.read("x", DataType.INT32, (2, 3), "r", 64, 24)
        np.testing.assert_array_equal(got, values)
        assert not got.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            got[0, 0] = 7
        del got


@pytest.mark.parametrize(
    ("offset", "byte_size", "match"),
    [
        (100, 8, "Invalid offset for shared memory region: 'r'"),
        (64, 8, "Invalid offset for shared memory region: 'r'"),
        (60, 8, "Invalid offset \\+ byte size for shared memory region: 'r'"),
        (1, 2**63 - 1, "Invalid offset \\+ byte size"),
    ],
)
def test_tensor_bounds_are_checked_against_the_region(
    shm: tuple[str, Path], registry: SharedMemoryRegistry, offset: int, byte_size: int, match: str
) -> None:
    key, _ = shm
    registry.register("r", key, 1000, 64)
    with registry.leases() as leases:
        with pytest.raises(InvalidArgument, match=match):
            leases.read("x", DataType.UINT8, (byte_size,), "r", offset, byte_size)
        with pytest.raises(InvalidArgument, match=match):
            leases.reserve("y", "r", offset, byte_size)


def test_shape_must_fill_byte_size_exactly(
    shm: tuple[str, Path], registry: SharedMemoryRegistry
) -> None:
    key, _ = shm
    registry.register("r", key, 0, 64)
    with registry.leases() as leases:
        with pytest.raises(
            InvalidArgument, match=r"is 12 bytes but shape \[2, 2\] of FP32 needs 16"
        ):
            leases.read("x", DataType.FP32, (2, 2), "r", 0, 12)


def test_unknown_region(registry: SharedMemoryRegistry) -> None:
    with registry.leases() as leases:
        with pytest.raises(NotFound, match="Unable to find shared memory region: 'ghost'"):
            leases.read("x", DataType.FP32, (1,), "ghost", 0, 4)


def test_bytes_round_trip_length_prefixed(
    shm: tuple[str, Path], registry: SharedMemoryRegistry
) -> None:
    key, path = shm
    registry.register("r", key, 0, 4096)
    strings = np.array([b"alpha", b"", b"\x00\xffbinary"], dtype=object)
    blob = serialize_bytes_tensor(strings)
    with open(path, "r+b") as f:
        f.write(blob)
    with registry.leases() as leases:
        got = leases.read("x", DataType.BYTES, (3,), "r", 0, len(blob))
        assert list(got) == list(strings)
        # A length prefix that runs past the byte size is refused, never over-read.
        with pytest.raises(InvalidArgument, match="declares 5 bytes but only 2 remain"):
            leases.read("x", DataType.BYTES, (3,), "r", 0, 6)
        with pytest.raises(InvalidArgument, match="holds 3 element"):
            leases.read("x", DataType.BYTES, (2,), "r", 0, len(blob))
        written = leases.write("y", DataType.BYTES, strings[::-1].copy(), "r", 1000, 100)
    assert written == len(blob)
    assert path.read_bytes()[1000 : 1000 + written] == serialize_bytes_tensor(strings[::-1])


def test_write_puts_the_output_in_the_client_memory(
    shm: tuple[str, Path], registry: SharedMemoryRegistry
) -> None:
    key, path = shm
    registry.register("r", key, 512, 512)
    values = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]  # not contiguous
    with registry.leases() as leases:
        assert leases.write("y", DataType.FP64, values, "r", 8, 48) == 48
    got = np.frombuffer(path.read_bytes()[520:568], dtype=np.float64).reshape(3, 2)
    np.testing.assert_array_equal(got, values)


def test_an_output_that_does_not_fit_is_refused(
    shm: tuple[str, Path], registry: SharedMemoryRegistry
) -> None:
    key, path = shm
    registry.register("r", key, 0, 64)
    with registry.leases() as leases:
        with pytest.raises(
            InvalidArgument,
            match=r"output 'y' \(32 bytes\) should be at least 40 bytes to hold the results",
        ):
            leases.write("y", DataType.FP32, np.ones(10, np.float32), "r", 0, 32)
    assert path.read_bytes()[:40] == bytes(40)  # nothing was written


def test_unregister_while_a_request_holds_the_region(
    shm: tuple[str, Path], registry: SharedMemoryRegistry
) -> None:
    key, path = shm
    registry.register("r", key, 0, 4096)
    with open(path, "r+b") as f:
        f.write(np.arange(4, dtype=np.float32).tobytes())
    leases = registry.leases()
    array = leases.read("x", DataType.FP32, (4,), "r", 0, 16)
    leases.reserve("y", "r", 16, 16)
    registry.unregister("r")
    # New requests no longer find it...
    with registry.leases() as other, pytest.raises(NotFound):
        other.reserve("y", "r", 0, 4)
    # ...but this request completes on the mapping it holds.
    np.testing.assert_array_equal(array, np.arange(4, dtype=np.float32))
    leases.write("y", DataType.FP32, array * 2, "r", 16, 16)
    assert np.frombuffer(path.read_bytes()[16:32], np.float32).tolist() == [0, 2, 4, 6]
    # Closing while an array still views the mapping must not unmap it under the array.
    leases.close()
    np.testing.assert_array_equal(array, np.arange(4, dtype=np.float32))
    del array
    gc.collect()


def test_unregister_all_while_in_use_and_re_register_the_name(
    shm: tuple[str, Path], registry: SharedMemoryRegistry
) -> None:
    key, _ = shm
    registry.register("r", key, 0, 64)
    with registry.leases() as leases:
        leases.reserve("y", "r", 0, 8)
        registry.unregister()
        registry.register("r", key, 64, 64)  # the name is free again at once
        assert registry.status("r") == [RegionStatus("r", key, 64, 64)]
        leases.write("y", DataType.UINT8, np.full(8, 7, np.uint8), "r", 0, 8)


def test_the_object_is_never_unlinked(shm: tuple[str, Path]) -> None:
    key, path = shm
    registry = SharedMemoryRegistry()
    registry.register("r", key, 0, 64)
    registry.unregister()
    del registry
    gc.collect()
    assert path.exists()
    assert os.stat(path).st_size == 4096
