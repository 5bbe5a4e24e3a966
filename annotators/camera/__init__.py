"""The camera condition: per-frame intrinsics and world-to-camera extrinsics, estimated from the
video with OpenCV or imported from RealEstate10K / MotionCtrl files, with CameraBench-style
motion labels and Plücker embeddings for training code."""

from any2capins.annotators.camera.annotator import CameraAnnotator, CameraConfig, CameraImportError
from any2capins.annotators.camera.condition import CameraConditionType
from any2capins.annotators.camera.estimate import (
    EstimationError,
    EstimationReport,
    EstimatorSettings,
    estimate_camera_trajectory,
    estimate_with_report,
)
from any2capins.annotators.camera.formats import (
    CameraFormatError,
    format_motionctrl,
    format_realestate10k,
    parse_motionctrl,
    parse_realestate10k,
    read_trajectory,
    write_realestate10k,
)
from any2capins.annotators.camera.labels import (
    SPEEDS,
    VOCABULARY,
    LabelThresholds,
    MotionAnalysis,
    analyze_motion,
    label_trajectory,
)
from any2capins.annotators.camera.plucker import plucker_embedding, trajectory_plucker
from any2capins.annotators.camera.trajectory import Trajectory, TrajectoryError

# The condition type names its annotator here, once both exist: the annotator's `writes`
# is derived from the condition type, so neither module can import the other first.
CameraConditionType.annotators = (CameraAnnotator,)

__all__ = [
    "SPEEDS",
    "VOCABULARY",
    "CameraAnnotator",
    "CameraConditionType",
    "CameraConfig",
    "CameraFormatError",
    "CameraImportError",
    "EstimationError",
    "EstimationReport",
    "EstimatorSettings",
    "LabelThresholds",
    "MotionAnalysis",
    "Trajectory",
    "TrajectoryError",
    "analyze_motion",
    "estimate_camera_trajectory",
    "estimate_with_report",
    "format_motionctrl",
    "format_realestate10k",
    "label_trajectory",
    "parse_motionctrl",
    "parse_realestate10k",
    "plucker_embedding",
    "read_trajectory",
    "trajectory_plucker",
    "write_realestate10k",
]
