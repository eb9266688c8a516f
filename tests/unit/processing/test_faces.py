"""MTCNN's glue functions (``forwardpass.processing.faces``) on hand-made network outputs."""

from __future__ import annotations

import numpy as np
import pytest

from forwardpass.errors import InvalidArgument
from forwardpass.processing.decoding import suppress
from forwardpass.processing.faces import crop_squares, faces, level_cells, propose, refine
from forwardpass.processing.pyramid import area_resize

PIXELS = np.random.default_rng(0).integers(0, 256, (100, 120, 3)).astype(np.uint8)


def test_suppress_by_union_or_by_the_smaller_box() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 5, 5], [20, 20, 30, 30]], dtype=np.float32)
    # The small box lies inside the big one: IoU 0.25, but all of the smaller box overlaps.
    assert suppress(boxes, None, 0.5).tolist() == [0, 1, 2]
    assert suppress(boxes, None, 0.5, overlap="min").tolist() == [0, 2]
    touching = np.array([[0, 0, 9, 9], [9, 0, 18, 9]], dtype=np.float32)
    assert suppress(touching, None, 0.0).tolist() == [0, 1]  # no shared area
    assert suppress(touching, None, 0.0, inclusive=True).tolist() == [0]  # column 9 shared
    assert suppress(boxes, None, 0.0, limit=1).tolist() == [0]
    with pytest.raises(ValueError, match="overlap"):
        suppress(boxes, None, 0.5, overlap="max")


def test_level_cells_are_p_nets_output_sizes() -> None:
    levels = np.array([[0, 0, 12, 12, 1.0], [14, 6, 13, 29, 0.5]], dtype=np.float32)
    # 12 → conv 10 → ceil pool 5 → 3 → 1; 13 → 11 → 6 → 2; 29 → 27 → 14 → 10.
    assert level_cells(levels, 2, 12) == [(0, 0, 1, 1), (3, 7, 10, 2)]


def p_net(levels: np.ndarray, hot: dict[tuple[int, int], float]) -> dict[str, np.ndarray]:
    """P-Net outputs on a canvas: zero scores except the ``hot`` map cells."""
    prob = np.zeros((1, 2, 60, 60), np.float32)
    for (row, col), score in hot.items():
        prob[0, 1, row, col] = score
    prob[0, 0] = 1 - prob[0, 1]
    reg = np.zeros((1, 4, 60, 60), np.float32)
    return {"reg": reg, "prob": prob, "levels": levels, "pixels": PIXELS}


def test_propose_maps_each_window_back_to_the_picture() -> None:
    levels = np.array([[0, 0, 61, 51, 0.5], [64, 0, 31, 26, 0.25]], dtype=np.float32)
    # One window on each level: cell (row 3, col 4) of level 0, cell (1, 2) of level 1.
    out = propose(p_net(levels, {(3, 4): 0.9, (1, 32 + 2): 0.8, (2, 2): 0.5}), {})
    boxes = out["boxes"]
    assert boxes.shape == (2, 5) and out["crops"].shape == (2, 3, 24, 24)
    # Level 0: x from floor((2*4+1)/0.5) = 18 to floor((2*4+12)/0.5) = 40, y 14 .. 36; square.
    np.testing.assert_allclose(boxes[0], [18, 14, 40, 36, 0.9], rtol=1e-6)
    # Level 1: x floor(5/0.25) = 20 .. floor(16/0.25) = 64, y 12 .. 56.
    np.testing.assert_allclose(boxes[1], [20, 12, 64, 56, 0.8], rtol=1e-6)
    # The crop is the box's pixels (1-based corners: columns 17 .. 39), area-resampled.
    want = (area_resize(PIXELS[13:36, 17:40], 24, 24) - 127.5) * 0.0078125
    np.testing.assert_allclose(out["crops"][0], want.transpose(2, 0, 1), atol=1e-6)


def test_propose_keeps_the_best_of_overlapping_windows() -> None:
    levels = np.array([[0, 0, 61, 51, 0.5]], dtype=np.float32)
    out = propose(p_net(levels, {(3, 4): 0.9, (3, 5): 0.95}), {})
    assert out["boxes"][:, 4].tolist() == pytest.approx([0.95])
    out = propose(p_net(levels, {(3, 4): 0.9, (3, 5): 0.95}), {"level_iou": "0.9", "iou": "0.9"})
    assert out["boxes"][:, 4].tolist() == pytest.approx([0.95, 0.9])


def test_nothing_above_the_threshold_is_zero_rows() -> None:
    levels = np.array([[0, 0, 61, 51, 0.5]], dtype=np.float32)
    out = propose(p_net(levels, {(3, 4): 0.9}), {"threshold": "0.95"})
    assert out["boxes"].shape == (0, 5) and out["crops"].shape == (0, 3, 24, 24)
    none = propose(p_net(np.zeros((0, 5), np.float32), {}), {})
    assert none["boxes"].shape == (0, 5)
    empty = {"boxes": np.zeros((0, 5), np.float32), "reg": np.zeros((0, 4)), "pixels": PIXELS}
    refined = refine({**empty, "prob": np.zeros((0, 2))}, {})
    assert refined["boxes"].shape == (0, 5) and refined["crops"].shape == (0, 3, 48, 48)
    found = faces({**empty, "prob": np.zeros((0, 2)), "landmarks": np.zeros((0, 10))}, {})
    shapes = {k: v.shape for k, v in found.items()}
    assert shapes == {"boxes": (0, 4), "scores": (0,), "landmarks": (0, 5, 2)}


def test_refine_thresholds_regresses_and_squares() -> None:
    boxes = np.array([[10, 10, 29, 29, 0.9], [50, 50, 69, 69, 0.9]], dtype=np.float32)
    reg = np.array([[0.1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32)
    prob = np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32)
    out = refine({"boxes": boxes, "reg": reg, "prob": prob, "pixels": PIXELS}, {})
    # x1 moves by 0.1 of the 20-pixel side: 12 .. 29 wide 17, tall 19 → squared about the centre.
    np.testing.assert_allclose(out["boxes"], [[11, 10, 30, 29, 0.8]], rtol=1e-6)
    assert out["crops"].shape == (1, 3, 48, 48)
    high = refine(
        {"boxes": boxes, "reg": reg, "prob": prob, "pixels": PIXELS}, {"threshold": "0.85"}
    )
    assert high["boxes"].shape == (0, 5)


def test_faces_places_landmarks_inside_the_box() -> None:
    boxes = np.array([[10, 20, 59, 69, 0.9]], dtype=np.float32)
    points = np.array([[0.3, 0.7, 0.5, 0.35, 0.65, 0.4, 0.4, 0.6, 0.8, 0.8]], np.float32)
    out = faces(
        {
            "boxes": boxes,
            "reg": np.zeros((1, 4), np.float32),
            "landmarks": points,
            "prob": np.array([[0.01, 0.99]], np.float32),
        },
        {},
    )
    np.testing.assert_allclose(out["boxes"], [[10, 20, 59, 69]])
    assert out["scores"].tolist() == pytest.approx([0.99])
    # A 50-pixel box: x = 50 * p + 10 - 1, y = 50 * p + 20 - 1.
    np.testing.assert_allclose(out["landmarks"][0, 0], [24, 39])
    np.testing.assert_allclose(out["landmarks"][0, 4], [41.5, 59])


def test_crop_squares_clips_to_the_picture_and_skips_empty_regions() -> None:
    boxes = np.array([[-30, -30, 10, 10], [150, 10, 190, 50], [100, 80, 140, 120]], np.float32)
    crops, kept = crop_squares(PIXELS, boxes, 24)
    assert kept == [0, 2]  # the second lies right of the 120-pixel-wide picture
    want = (area_resize(PIXELS[0:10, 0:10], 24, 24) - 127.5) * 0.0078125
    np.testing.assert_allclose(crops[0], want.transpose(2, 0, 1), atol=1e-6)


def test_inputs_of_the_wrong_shape_are_refused() -> None:
    boxes = np.zeros((2, 5), np.float32)
    with pytest.raises(InvalidArgument, match="'prob' has 1 rows, the boxes 2"):
        refine(
            {"boxes": boxes, "reg": np.zeros((2, 4)), "prob": np.zeros((1, 2)), "pixels": PIXELS},
            {},
        )
    with pytest.raises(InvalidArgument, match="'pixels' must have 3 dimensions"):
        refine(
            {
                "boxes": boxes,
                "reg": np.zeros((2, 4)),
                "prob": np.zeros((2, 2)),
                "pixels": PIXELS[0],
            },
            {},
        )
    levels = np.array([[0, 0, 200, 200, 1.0]], dtype=np.float32)
    with pytest.raises(InvalidArgument, match="does not cover the levels"):
        propose(p_net(levels, {}), {})
