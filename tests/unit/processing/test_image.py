"""Image files → input tensors in the layout a model's config declares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument
from forwardpass.model_config import TensorSpec
from forwardpass.processing.image import IMAGE_SUFFIXES, image_layout, load_image


def spec(*dims: int, datatype: DataType = DataType.FP32) -> TensorSpec:
    return TensorSpec("image", datatype, dims)


def save(tmp_path: Path, array: np.ndarray, name: str = "in.png", mode: str | None = None) -> Path:
    path = tmp_path / name
    Image.fromarray(array, mode).save(path)
    return path


@pytest.mark.parametrize(
    ("dims", "layout"),
    [
        ((1, 8, 8), ("CHW", 1, 8, 8)),
        ((3, 32, 16), ("CHW", 3, 32, 16)),
        ((24, 32, 3), ("HWC", 3, 24, 32)),
        ((24, 32, 1), ("HWC", 1, 24, 32)),
        ((28, 28), ("HW", 1, 28, 28)),
    ],
)
def test_layouts(dims: tuple[int, ...], layout: tuple[str, int, int, int]) -> None:
    assert image_layout(dims) == layout


@pytest.mark.parametrize("dims", [(4,), (2, 3, 4, 5), (-1, 28), (3, -1, -1), (5, 8, 8), (8, 8, 5)])
def test_dims_that_are_no_image(dims: tuple[int, ...]) -> None:
    with pytest.raises(InvalidArgument, match="cannot feed an image"):
        image_layout(dims)


def test_grayscale_chw_is_scaled_to_unit_range(tmp_path: Path) -> None:
    pixels = np.zeros((8, 8), dtype=np.uint8)
    pixels[2, 5] = 255
    pixels[7, 0] = 51
    array = load_image(save(tmp_path, pixels), spec(1, 8, 8))
    assert array.shape == (1, 8, 8)
    assert array.dtype == np.float32
    assert array.flags.c_contiguous
    assert array[0, 2, 5] == 1.0
    assert array[0, 7, 0] == pytest.approx(0.2)
    assert array.sum() == pytest.approx(1.2)


def test_rgb_hwc_and_chw_keep_channels_apart(tmp_path: Path) -> None:
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # pure red
    path = save(tmp_path, pixels)
    hwc = load_image(path, spec(4, 6, 3))
    assert hwc.shape == (4, 6, 3)
    np.testing.assert_array_equal(hwc[..., 0], 1.0)
    np.testing.assert_array_equal(hwc[..., 1:], 0.0)
    chw = load_image(path, spec(3, 4, 6))
    assert chw.shape == (3, 4, 6)
    np.testing.assert_array_equal(chw, hwc.transpose(2, 0, 1))


def test_colour_image_to_a_grayscale_input(tmp_path: Path) -> None:
    pixels = np.full((5, 5, 3), 255, dtype=np.uint8)
    array = load_image(save(tmp_path, pixels), spec(5, 5))
    assert array.shape == (5, 5)
    np.testing.assert_allclose(array, 1.0)


def test_resize_with_box_averages_areas(tmp_path: Path) -> None:
    # A 16x16 picture whose left half is white: downscaled to 8x8 the halves stay apart, and
    # 2x2 averaging of a checkerboard gives a uniform grey.
    halves = np.zeros((16, 16), dtype=np.uint8)
    halves[:, :8] = 255
    array = load_image(save(tmp_path, halves), spec(8, 8))
    np.testing.assert_allclose(array[:, :4], 1.0)
    np.testing.assert_allclose(array[:, 4:], 0.0)
    checker = (np.indices((16, 16)).sum(axis=0) % 2 * 255).astype(np.uint8)
    grey = load_image(save(tmp_path, checker, "checker.png"), spec(8, 8))
    np.testing.assert_allclose(grey, 0.5, atol=0.01)
    bilinear = load_image(
        save(tmp_path, checker, "c2.png"), spec(8, 8), {"image_resample": "bilinear"}
    )
    assert bilinear.shape == (8, 8)


@pytest.mark.parametrize(
    ("invert", "background", "expected"),
    [
        ("false", 255, 1.0),
        ("true", 255, 0.0),
        ("auto", 255, 0.0),  # mostly light: inverted
        ("auto", 0, 0.0),  # mostly dark: left alone
        ("TRUE", 0, 1.0),
    ],
)
def test_inversion(tmp_path: Path, invert: str, background: int, expected: float) -> None:
    pixels = np.full((4, 4), background, dtype=np.uint8)
    array = load_image(save(tmp_path, pixels), spec(4, 4), {"image_invert": invert})
    np.testing.assert_allclose(array, expected)


def test_datatype_follows_the_spec(tmp_path: Path) -> None:
    pixels = np.full((2, 2), 255, dtype=np.uint8)
    array = load_image(save(tmp_path, pixels), spec(2, 2, datatype=DataType.FP16))
    assert array.dtype == np.float16
    np.testing.assert_array_equal(array, 1.0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 2 wide x 1 high with the white pixel on the left, tagged "rotate 90° CW to
    # view" (orientation 6): viewed, it is 1 wide x 2 high with the white pixel on top.
    image = Image.fromarray(np.array([[255, 0]], dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    array = load_image(path, spec(2, 1))
    assert array.shape == (2, 1)
    assert array[0, 0] > 0.5 > array[1, 0]


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_bytes(b"GIF? no")
    with pytest.raises(InvalidArgument, match=r"cannot decode image .*fake\.png"):
        load_image(path, spec(8, 8))
    with pytest.raises(InvalidArgument, match="cannot decode image"):
        load_image(tmp_path / "absent.png", spec(8, 8))


def test_suffixes() -> None:
    assert {".png", ".jpg", ".jpeg"} <= IMAGE_SUFFIXES
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)
