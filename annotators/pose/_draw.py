"""Pose maps drawn the way controlnet_aux's ``draw_pose`` draws DWPose output, so renderings
match what ControlNet-style pose models were trained on.

Body: 17 limbs as filled ellipses (half-width 4 px) in the 18 OpenPose colours, darkened to
60%, then 18 joints as radius-4 dots in full colour (the two ear-shoulder limbs of OpenPose's
list are not drawn, as in controlnet_aux). Hands: 20 bones as 2 px lines coloured along the
HSV hue circle, joints as radius-4 blue dots. Face: 68 radius-3 white dots. Canvas is RGB.
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from any2capins.annotators.pose._keypoints import BODY, FACE, LEFT_HAND, RIGHT_HAND, SCORE_THRESHOLD

STICK_HALF_WIDTH = 4
BODY_JOINT_RADIUS = 4
HAND_LINE_THICKNESS = 2
HAND_JOINT_RADIUS = 4
FACE_RADIUS = 3
LIMB_SHADE = 0.6
# Hand and face points at pixel 0 are skipped: controlnet_aux tests ``x > 0.01`` on ints.
_EPS = 0.01

# OpenPose limbs (0-based joint pairs); only the first 17 are drawn.
BODY_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
    (2, 16), (5, 17),
)  # fmt: skip
DRAWN_LIMBS = 17
BODY_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
HAND_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19),
    (19, 20),
)  # fmt: skip
HAND_JOINT_COLOR = (0, 0, 255)
FACE_COLOR = (255, 255, 255)


def hand_edge_color(edge: int) -> tuple[float, float, float]:
    """Hue ``edge / 20`` at full saturation and value, 0..255 (cv2 rounds when drawing)."""
    r, g, b = colorsys.hsv_to_rgb(edge / len(HAND_EDGES), 1.0, 1.0)
    return (r * 255, g * 255, b * 255)


def draw_bodypose(canvas: np.ndarray, body: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """``body`` [P, 18, 2] in 0..1, ``visible`` [P, 18]; returns the new canvas."""
    h, w = canvas.shape[:2]
    for i in range(DRAWN_LIMBS):
        a, b = BODY_LIMBS[i]
        for n in range(body.shape[0]):
            if not (visible[n, a] and visible[n, b]):
                continue
            xs = body[n, [a, b], 0] * float(w)
            ys = body[n, [a, b], 1] * float(h)
            length = float(((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5)
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            polygon = cv2.ellipse2Poly(
                (int(np.mean(xs)), int(np.mean(ys))),
                (int(length / 2), STICK_HALF_WIDTH),
                int(angle),
                0,
                360,
                1,
            )
            cv2.fillConvexPoly(canvas, np.asarray(polygon, np.int32), BODY_COLORS[i])
    canvas = (canvas * LIMB_SHADE).astype(np.uint8)
    for i in range(18):
        for n in range(body.shape[0]):
            if not visible[n, i]:
                continue
            x, y = body[n, i]
            cv2.circle(
                canvas, (int(x * w), int(y * h)), BODY_JOINT_RADIUS, BODY_COLORS[i], thickness=-1
            )
    return canvas


def draw_handpose(canvas: np.ndarray, hands: np.ndarray) -> np.ndarray:
    """``hands`` [N, 21, 2] in 0..1, masked points -1."""
    h, w = canvas.shape[:2]
    for peaks in hands:
        for ie, (a, b) in enumerate(HAND_EDGES):
            x1, y1 = int(peaks[a, 0] * w), int(peaks[a, 1] * h)
            x2, y2 = int(peaks[b, 0] * w), int(peaks[b, 1] * h)
            if x1 > _EPS and y1 > _EPS and x2 > _EPS and y2 > _EPS:
                cv2.line(
                    canvas, (x1, y1), (x2, y2), hand_edge_color(ie), thickness=HAND_LINE_THICKNESS
                )
        for x, y in peaks:
            px, py = int(x * w), int(y * h)
            if px > _EPS and py > _EPS:
                cv2.circle(canvas, (px, py), HAND_JOINT_RADIUS, HAND_JOINT_COLOR, thickness=-1)
    return canvas


def draw_facepose(canvas: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``faces`` [P, 68, 2] in 0..1, masked points -1."""
    h, w = canvas.shape[:2]
    for landmarks in faces:
        for x, y in landmarks:
            px, py = int(x * w), int(y * h)
            if px > _EPS and py > _EPS:
                cv2.circle(canvas, (px, py), FACE_RADIUS, FACE_COLOR, thickness=-1)
    return canvas


def draw_pose(keypoints: np.ndarray, scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """One frame's pose map [H, W, 3] uint8 RGB from OpenPose-order keypoints [P, 134, 2]
    (0..1, masked points -1) and scores [P, 134]; persons with no points draw nothing."""
    if keypoints.ndim != 3 or keypoints.shape[1:] != (134, 2):
        raise ValueError(f"expected keypoints [P, 134, 2], got {keypoints.shape}")
    if scores.shape != keypoints.shape[:2]:
        raise ValueError(f"scores {scores.shape} do not match keypoints {keypoints.shape}")
    kp = keypoints.astype(np.float32, copy=False)
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas = draw_bodypose(canvas, kp[:, BODY], scores[:, BODY] > SCORE_THRESHOLD)
    # All left hands, then all right hands: the order controlnet_aux stacks them in.
    canvas = draw_handpose(canvas, np.concatenate([kp[:, LEFT_HAND], kp[:, RIGHT_HAND]]))
    return draw_facepose(canvas, kp[:, FACE])


__all__ = [
    "BODY_COLORS",
    "BODY_LIMBS",
    "HAND_EDGES",
    "draw_bodypose",
    "draw_facepose",
    "draw_handpose",
    "draw_pose",
    "hand_edge_color",
]
