"""The pose condition: DWPose whole-body keypoints on onnxruntime, in controlnet_aux's OpenPose
convention (134 points per person, scores under 0.3 masked), persons tracked across frames,
pose maps rendered like controlnet_aux's ``draw_pose``."""

from any2capins.annotators.pose._condition import (
    DEFAULT_POSE_MODEL,
    ENV_DETECTOR,
    ENV_POSE_MODEL,
    PoseAnnotator,
    PoseConditionType,
    PoseConfig,
)
from any2capins.annotators.pose._draw import draw_pose
from any2capins.annotators.pose._facts import activity_facts, measure_activity, posture
from any2capins.annotators.pose._keypoints import (
    NUM_OPENPOSE,
    SCORE_THRESHOLD,
    normalize_and_mask,
    track_boxes,
    wholebody_to_openpose,
)
from any2capins.annotators.yolox import DEFAULT_DETECTOR

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_POSE_MODEL",
    "ENV_DETECTOR",
    "ENV_POSE_MODEL",
    "NUM_OPENPOSE",
    "SCORE_THRESHOLD",
    "PoseAnnotator",
    "PoseConditionType",
    "PoseConfig",
    "activity_facts",
    "draw_pose",
    "measure_activity",
    "normalize_and_mask",
    "posture",
    "track_boxes",
    "wholebody_to_openpose",
]
