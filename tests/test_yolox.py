"""The shared YOLOX helpers (annotators/yolox.py) that the pose and identities stages both
decode DWPose's detector with."""

from __future__ import annotations

import numpy as np
import pytest

from any2capins.annotators.yolox import anchor_grid, box_iou, decode, letterbox, nms
from tests.tiny_models import detector_output


def test_one_class_scores_match_the_full_table() -> None:
    raw = detector_output([(100.0, 80.0, 260.0, 400.0), (400.0, 100.0, 520.0, 300.0)])
    raw[:, 5:] = np.random.default_rng(0).random((raw.shape[0], raw.shape[1] - 5))
    boxes, table = decode(raw, (640, 640))
    assert table.shape == (8400, 80)
    for index in (0, 16, 79):
        same_boxes, column = decode(raw, (640, 640), class_index=index)
        np.testing.assert_array_equal(same_boxes, boxes)
        np.testing.assert_allclose(column, table[:, index])
    # the rows decode back to the boxes they were built from
    top = np.argsort(-table[:, 0])[:2]
    np.testing.assert_allclose(
        sorted(boxes[top].tolist()),
        [[100.0, 80.0, 260.0, 400.0], [400.0, 100.0, 520.0, 300.0]],
        atol=1e-3,
    )
    with pytest.raises(ValueError, match="5 \\+ classes"):
        decode(raw[:100], (640, 640))


def test_anchor_grid_is_cached_and_read_only() -> None:
    cells, strides = anchor_grid((640, 448))
    assert cells.shape == (80 * 56 + 40 * 28 + 20 * 14, 2)
    assert anchor_grid((640, 448))[0] is cells
    assert cells[:2].tolist() == [[0, 0], [1, 0]] and strides[-1, 0] == 32
    with pytest.raises(ValueError, match="read-only"):
        cells[0, 0] = 5


def test_letterbox_batches_as_uint8_bgr() -> None:
    frame = np.zeros((360, 512, 3), np.uint8)
    frame[..., 2] = 200  # blue in RGB
    chw, ratio = letterbox(frame, (640, 640))
    assert chw.dtype == np.uint8 and chw.shape == (3, 640, 640) and ratio == 1.25
    assert chw[:, 0, 0].tolist() == [200, 0, 0]  # blue first: BGR
    assert (chw[:, 450:, :] == 114).all() and (chw[:, :450, :] != 114).any()


def test_nms_plus_one_is_dwpose_s_area_convention() -> None:
    a, b = np.array([0.0, 0.0, 9.0, 9.0]), np.array([[5.0, 0.0, 14.0, 9.0]])
    assert box_iou(a, b)[0] == pytest.approx(36 / 126)  # 4 x 9 over 2 x 81 - 36
    assert box_iou(a, b, plus_one=True)[0] == pytest.approx(50 / 150)  # 5 x 10 over 200 - 50
    boxes = np.stack([a, b[0]])
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 0.3) == [0, 1]  # IoU 0.286 <= 0.3: both stay
    assert nms(boxes, scores, 0.3, plus_one=True) == [0]  # IoU 0.333 > 0.3: b goes
    assert nms(boxes, np.array([0.7, 0.8]), 0.2) == [1]  # best first
