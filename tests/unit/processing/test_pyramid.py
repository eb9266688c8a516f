"""Image pyramids packed into one canvas (``forwardpass.processing.pyramid``)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.processing.pyramid import (
    area_resize,
    area_sample,
    image_pyramid,
    integral,
    pack,
    pyramid_scales,
)


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def request(blob: bytes) -> dict[str, np.ndarray]:
    return {"image": np.array([[blob]], dtype=object)}


@pytest.mark.parametrize("size", [(7, 5), (24, 24), (48, 31), (100, 3), (13, 200)])
def test_area_resize_is_torch_area_interpolation(size: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    pixels = np.random.default_rng(1).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    got = area_resize(pixels, *size)
    tensor = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)[None]
    want = torch.nn.functional.interpolate(tensor, size=size, mode="area")[0].permute(1, 2, 0)
    assert got.shape == (*size, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def test_area_sample_reads_a_region_of_the_summed_table() -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (30, 40, 3)).astype(np.uint8)
    region = pixels[4:19, 10:33]
    got = area_sample(integral(pixels), (4, 10, 15, 23), 6, 9)
    np.testing.assert_allclose(got, area_resize(region, 6, 9), atol=1e-5)
    with pytest.raises(InvalidArgument, match="cannot resize a 0x15 region"):
        area_sample(integral(pixels), (4, 10, 15, 0), 6, 9)


def test_scales_are_mtcnns() -> None:
    scales = pyramid_scales(512, 512, 20, 0.709, 12)
    assert scales[0] == pytest.approx(0.6)
    assert np.allclose(np.diff(np.log(scales)), np.log(0.709))
    assert 512 * scales[-1] >= 12 > 512 * scales[-1] * 0.709
    assert pyramid_scales(19, 400, 20, 0.709, 12) == []
    with pytest.raises(InvalidModelConfig, match="factor"):
        pyramid_scales(100, 100, 20, 1.2, 12)


def test_pack_places_rectangles_apart_on_even_offsets() -> None:
    sizes = [(308, 308), (219, 219), (155, 155), (110, 110), (78, 78), (56, 56), (40, 40)]
    places, width, height = pack(sizes, 12, 2)
    assert width == 308 + 12 + 219
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(places, sizes, strict=True)]
    for i, a in enumerate(rects):
        assert a[0] % 2 == 0 and a[1] % 2 == 0
        assert a[2] <= width and a[3] <= height
        for b in rects[i + 1 :]:
            apart_x = a[2] + 12 <= b[0] or b[2] + 12 <= a[0]
            apart_y = a[3] + 12 <= b[1] or b[3] + 12 <= a[1]
            assert apart_x or apart_y, (a, b)
    assert pack([], 12, 2) == ([], 0, 0)


def test_image_pyramid_packs_every_scale_of_the_picture() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (90, 120, 3)).astype(np.uint8)
    out = image_pyramid(request(png(pixels)), {"min_size": "20"})
    canvas, levels = out["canvas"], out["levels"]
    assert np.array_equal(out["pixels"], pixels)
    assert canvas.shape[:2] == (1, 3) and levels.shape[1] == 5
    assert len(levels) == len(pyramid_scales(90, 120, 20, 0.709, 12))
    for x, y, w, h, s in levels.tolist():
        x, y, w, h = int(x), int(y), int(w), int(h)
        assert (w, h) == (int(120 * s + 1), int(90 * s + 1))
        want = (area_resize(pixels, h, w) - 127.5) * 0.0078125
        np.testing.assert_allclose(canvas[0, :, y : y + h, x : x + w], want.transpose(2, 0, 1))


def test_a_picture_smaller_than_the_smallest_face_has_no_levels() -> None:
    out = image_pyramid(request(png(np.zeros((15, 40, 3), np.uint8))), {})
    assert out["levels"].shape == (0, 5)
    assert out["canvas"].shape == (1, 3, 12, 12)


def test_bad_pictures_and_parameters_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="cannot decode image"):
        image_pyramid(request(b"not a picture"), {})
    with pytest.raises(InvalidArgument, match="empty"):
        image_pyramid(request(b""), {})
    with pytest.raises(InvalidArgument, match="one picture"):
        image_pyramid({"image": np.array([[b"a", b"b"]], dtype=object)}, {})
    big = png(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(InvalidArgument, match="100x100 pixels, more than the 5000"):
        image_pyramid(request(big), {"max_pixels": "5000"})
    with pytest.raises(InvalidModelConfig, match="min_size must be a positive number"):
        image_pyramid(request(big), {"min_size": "-3"})
