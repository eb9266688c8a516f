"""The OCR glue functions: DB post-processing, reading order, crops and the direction fix-up."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("cv2", reason="the OCR functions need opencv-python")
pytest.importorskip("pyclipper", reason="the OCR functions need pyclipper")

from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.processing.ocr import (
    DbOptions,
    db_boxes,
    detect_and_crop,
    orient_crops,
    reading_order,
)


def prob_map(*rects: tuple[int, int, int, int], size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A probability map with 0.9 inside each (x0, y0, x1, y1) rectangle, 0.05 elsewhere."""
    prob = np.full(size, 0.05, dtype=np.float32)
    for x0, y0, x1, y1 in rects:
        prob[y0:y1, x0:x1] = 0.9
    return prob


def png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def test_two_rectangles_give_two_grown_boxes_in_reading_order() -> None:
    # Listed bottom first: the order must come from the geometry.
    prob = prob_map((20, 60, 100, 72), (10, 20, 90, 32))
    boxes, scores = db_boxes(prob)
    assert boxes.shape == (2, 4, 2) and scores.shape == (2,)
    order = reading_order(boxes)
    boxes, scores = boxes[order], scores[order]
    top, bottom = boxes
    # Clockwise from the top-left, around each rectangle, grown by the unclip distance.
    assert top[0, 0] < 10 and top[0, 1] < 20 and top[2, 0] > 89 and top[2, 1] > 31
    # Grown by area × 1.6 / perimeter ≈ 8 pixels, no more.
    assert 0 < top[0, 0] < 4 and 10 < top[0, 1] < 14 and 36 < top[2, 1] <= 42
    assert top[0, 1] < top[3, 1] and top[0, 0] < top[1, 0]
    assert 48 < bottom[0, 1] < 60 and bottom[0, 0] < 20
    assert np.all((scores > 0.75) & (scores <= 0.9))  # the dilated edge pulls it below 0.9


def test_low_scoring_regions_and_specks_are_dropped() -> None:
    prob = prob_map((10, 10, 60, 20), (100, 80, 102, 82))  # the speck is 2x2
    prob[40:50, 10:60] = 0.35  # above the threshold, but the box score stays under 0.5
    boxes, _ = db_boxes(prob)
    assert len(boxes) == 1
    assert db_boxes(prob, DbOptions(box_threshold=0.3))[0].shape == (2, 4, 2)
    empty, no_scores = db_boxes(np.zeros((32, 32), np.float32))
    assert empty.shape == (0, 4, 2) and no_scores.shape == (0,)


def test_reading_order_is_top_to_bottom_then_left_to_right() -> None:
    def box(x: float, y: float) -> list[list[float]]:
        return [[x, y], [x + 20, y], [x + 20, y + 10], [x, y + 10]]

    # Two words on one slightly uneven line, then a line below.
    boxes = np.array([box(60, 2), box(0, 40), box(5, 0)], dtype=np.float32)
    assert reading_order(boxes).tolist() == [2, 0, 1]
    assert reading_order(np.zeros((0, 4, 2), np.float32)).tolist() == []


def test_detect_and_crop_maps_boxes_back_through_the_letterbox() -> None:
    # A 200x100 picture letterboxed into 64x64: scale 0.32, content 64x32 at rows 16..48.
    prob = prob_map((8, 24, 40, 30), size=(64, 64))
    out = detect_and_crop(
        {"image": np.array([[png(200, 100)]], dtype=object), "maps": prob[None, None]},
        {"min_size": "1"},
    )
    assert out["crops"].shape[:3] == (1, 3, 48) and out["crops"].shape[3] >= 320
    assert out["cls_crops"].shape == (1, 3, 48, 192)
    assert out["widths"].dtype == np.int32 and 0 < out["widths"][0] <= out["crops"].shape[3]
    (box,) = out["boxes"]
    assert 0 <= box[0, 0] < 25 and 10 < box[0, 1] < 28  # (8, 24) → (25, 25) before unclipping
    assert 125 < box[2, 0] < 140 and 40 < box[2, 1] < 60
    # White pixels normalise to 1; the padding is 0.
    assert np.allclose(out["crops"][0, :, :, : out["widths"][0]], 1.0)
    assert np.all(out["crops"][0, :, :, out["widths"][0] :] == 0)


def test_no_text_gives_zero_rows_of_every_output() -> None:
    out = detect_and_crop(
        {"image": np.array([[png(50, 40)]], dtype=object), "maps": np.zeros((1, 1, 32, 32))}, {}
    )
    assert out["crops"].shape[:3] == (0, 3, 48)
    assert out["cls_crops"].shape == (0, 3, 48, 192)
    assert out["widths"].shape == (0,) and out["box_scores"].shape == (0,)
    assert out["boxes"].shape == (0, 4, 2)
    oriented = orient_crops(
        {"crops": out["crops"], "widths": out["widths"], "cls_probs": np.zeros((0, 2))}, {}
    )
    assert oriented["oriented"].shape == out["crops"].shape


def test_bad_inputs_and_parameters_are_named() -> None:
    maps = np.zeros((1, 1, 32, 32), np.float32)
    with pytest.raises(InvalidArgument, match="cannot decode image"):
        detect_and_crop({"image": np.array([[b"nope"]], dtype=object), "maps": maps}, {})
    with pytest.raises(InvalidArgument, match="one image per request"):
        detect_and_crop({"image": np.array([b"a", b"b"], dtype=object), "maps": maps}, {})
    with pytest.raises(InvalidModelConfig, match="unclip_ratio"):
        detect_and_crop(
            {"image": np.array([[png(8, 8)]], dtype=object), "maps": maps}, {"unclip_ratio": "x"}
        )


def test_orient_turns_only_confident_upside_down_lines_and_keeps_padding_right() -> None:
    crops = np.zeros((3, 3, 2, 5), dtype=np.float32)
    crops[:, :, 0, :3] = [1, 2, 3]  # top row 1 2 3, bottom row 0; columns 3.. are padding
    widths = np.array([3, 3, 3], dtype=np.int32)
    probs = np.array([[0.05, 0.95], [0.2, 0.8], [0.99, 0.01]], dtype=np.float32)
    out = orient_crops({"crops": crops, "widths": widths, "cls_probs": probs}, {})["oriented"]
    assert out[0, 0].tolist() == [[0, 0, 0, 0, 0], [3, 2, 1, 0, 0]]
    assert np.array_equal(out[1:], crops[1:])  # not confident enough / right way up
    with pytest.raises(InvalidArgument, match="cls_probs"):
        orient_crops({"crops": crops, "widths": widths, "cls_probs": probs[:2]}, {})
