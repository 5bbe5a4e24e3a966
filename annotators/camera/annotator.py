"""The camera stage: per clip, a camera trajectory (estimated from the sampled frames, or
imported from a camera file shipped beside the video), its motion labels, and the trajectory
stored as a RealEstate10K text payload.

Import convention (``source: import``): for a video ``.../NAME.EXT`` the stage looks for
``NAME.camera.txt`` (RealEstate10K) and then ``NAME.camera.json`` (MotionCtrl) in the
video's folder, or in ``import_dir`` when set (there ``NAME.txt`` / ``NAME.json`` are
accepted too). Manifests cannot name the file: sources carry only URI and span. RealEstate10K
timestamps are read on the video's own timeline and cut to the clip's span; MotionCtrl poses
have no times and are spread evenly over the clip.
"""

from __future__ import annotations

import posixpath
from typing import Any, ClassVar, Literal

import cv2
import fsspec
import numpy as np
from pydantic import Field

from any2capins.annotators.base import (
    PROVENANCE_KEY,
    Annotator,
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    Resources,
)
from any2capins.annotators.camera.condition import CameraConditionType
from any2capins.annotators.camera.estimate import (
    EstimatorSettings,
    UntrackableError,
    estimate_with_report,
)
from any2capins.annotators.camera.formats import (
    CameraFormat,
    CameraFormatError,
    format_realestate10k,
    read_trajectory,
)
from any2capins.annotators.camera.labels import label_trajectory
from any2capins.annotators.camera.masks import subject_masks
from any2capins.annotators.camera.trajectory import (
    Trajectory,
    TrajectoryError,
    normalized_intrinsics,
)
from any2capins.annotators.keyframes import grid_field
from any2capins.schemas import CameraCondition, FrameGrid, ModelInfo

# RealEstate10K timestamps are integer microseconds; a pose this close to a span bound is in.
_SPAN_EPS_S = 1e-3


class CameraImportError(ValueError):
    """``source: import`` and no usable camera file for the clip."""


class CameraConfig(AnnotatorConfig):
    source: Literal["estimate", "import"] = Field(
        default="estimate", description="estimate from the frames, or import a camera file"
    )
    fov_deg: float = Field(
        default=60.0, gt=1, lt=179, description="horizontal field of view assumed for estimation"
    )
    use_subject_masks: bool = Field(
        default=True, description="ignore features on identities/pose subjects when present"
    )
    import_dir: str | None = Field(
        default=None, description="folder (path or URI) with camera files named after videos"
    )
    work_side: int = Field(default=640, ge=64, description="estimator's working resolution")
    # Under a grid an imported trajectory is resampled onto the sampled frames' times, so
    # that its cameras share the other conditions' timestamps.
    frame_grid: FrameGrid | None = grid_field()


def _stem_uri(uri: str) -> tuple[str, str]:
    """(folder, file stem) of a video URI, for local paths and fsspec URIs alike."""
    head, name = posixpath.split(uri)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return head, stem


def find_camera_file(video_uri: str, import_dir: str | None) -> tuple[str, CameraFormat] | None:
    """The camera file for a video by the naming convention, or None."""
    folder, stem = _stem_uri(video_uri)
    names: list[tuple[str, CameraFormat]] = [
        (f"{stem}.camera.txt", "realestate10k"),
        (f"{stem}.camera.json", "motionctrl"),
    ]
    if import_dir is not None:
        folder = import_dir.rstrip("/")
        names += [(f"{stem}.txt", "realestate10k"), (f"{stem}.json", "motionctrl")]
    for name, fmt in names:
        uri = f"{folder}/{name}" if folder else name
        fs, path = fsspec.core.url_to_fs(uri)
        if fs.exists(path):
            return uri, fmt
    return None


def imported_for_clip(trajectory: Trajectory, fmt: CameraFormat, item: ClipInput) -> Trajectory:
    """The part of an imported trajectory that belongs to the clip's span."""
    clip = item.clip
    if fmt == "motionctrl":
        n = len(trajectory)
        times = np.linspace(clip.start_s, clip.end_s, n) if n > 1 else np.array([clip.start_s])
        return trajectory.replace(timestamps_s=times)
    t = trajectory.timestamps_s
    inside = np.flatnonzero((t >= clip.start_s - _SPAN_EPS_S) & (t < clip.end_s + _SPAN_EPS_S))
    if inside.size == 0:
        raise CameraImportError(
            f"the camera file's timestamps ({t[0]:.3f}-{t[-1]:.3f} s) do not overlap the clip "
            f"({clip.start_s:.3f}-{clip.end_s:.3f} s); RealEstate10K times must be on the "
            "video's own timeline"
        )
    return trajectory.select(inside)


def on_frames(trajectory: Trajectory, item: ClipInput) -> Trajectory:
    """An imported trajectory at the times of the clip's sampled frames (interpolated), for a
    recipe with a frame grid; the file must cover them to within a frame and a half."""
    slack = 1.5 / item.clip.fps
    try:
        return trajectory.at(item.timestamps_s, tolerance_s=slack)
    except TrajectoryError as e:
        raise CameraImportError(f"the camera file does not cover the frame grid: {e}") from e


class CameraAnnotator(Annotator):
    name: ClassVar[str] = "camera"
    version: ClassVar[str] = "2"  # 2: the measurements suitability reads
    Config: ClassVar[type[AnnotatorConfig]] = CameraConfig
    # Feature tracking wants small steps between samples: 5 per second, not 16 per clip.
    default_sampling: ClassVar[FrameSampling] = FrameSampling(
        num_frames=None, fps=5.0, max_frames=96, max_side=480
    )
    default_resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=2)
    writes: ClassVar[tuple[str, ...]] = (CameraConditionType.output_key(),)

    config: CameraConfig

    def models(self) -> list[ModelInfo]:
        if self.config.source == "import":
            return []
        return [
            ModelInfo(
                model_id="opencv-klt-essential-pnp",
                version=cv2.__version__,
                license="Apache-2.0",
            )
        ]

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        out: list[dict[str, Any] | BaseException] = []
        for item in batch:
            try:
                out.append(self._one(item))
            except Exception as e:  # noqa: BLE001 - the clip fails, the batch goes on
                out.append(e)
        return out

    def _one(self, item: ClipInput) -> dict[str, Any]:
        details: dict[str, str] = {"source": self.config.source}
        source: Literal["estimated", "realestate10k", "motionctrl"]
        quality: dict[str, float] = {}
        if self.config.source == "import":
            found = find_camera_file(item.clip.source_uri, self.config.import_dir)
            if found is None:
                folder, stem = _stem_uri(item.clip.source_uri)
                raise CameraImportError(
                    f"no camera file for {item.clip.source_uri}: looked for {stem}.camera.txt "
                    f"and {stem}.camera.json in {self.config.import_dir or folder or '.'}"
                )
            uri, fmt = found
            try:
                trajectory = imported_for_clip(read_trajectory(uri, fmt), fmt, item)
            except CameraFormatError as e:
                raise CameraImportError(str(e)) from e
            source = fmt
            details["file"] = uri
            if self.config.frame_grid is not None:
                trajectory = on_frames(trajectory, item)
                details["resampled"] = f"{len(trajectory)} frames of the frame grid"
        else:
            try:
                trajectory, details_est, quality = self._estimate(item)
            except UntrackableError as e:
                # A property of the clip (blank, textureless, untrackable), not a fault: the
                # record keeps an unusable camera condition that no suitability rule accepts.
                return self._unusable(item, details, str(e))
            details.update(details_est)
            source = "estimated"
        labels, speed, description = label_trajectory(trajectory)
        text = format_realestate10k(trajectory, url=item.clip.source_uri)
        ref = item.artifacts.put("trajectory.txt", text.encode("utf-8"), "text/plain")
        summary = CameraCondition(
            source=source,
            frames=len(trajectory),
            labels=labels,
            description=description,
            trajectory=ref,
            speed=speed,
            quality=quality,
            timestamps_s=[round(float(t), 4) for t in trajectory.timestamps_s],
            frame_grid=self.config.frame_grid,
        )
        return {**CameraConditionType.to_output(summary), PROVENANCE_KEY: details}

    def _unusable(self, item: ClipInput, details: dict[str, str], why: str) -> dict[str, Any]:
        """A still camera at every sampled time, flagged unusable, with zero quality."""
        n = len(item.timestamps_s)
        h, w = item.frames.shape[1:3]
        w2c = np.tile(np.hstack([np.eye(3), np.zeros((3, 1))]), (max(n, 1), 1, 1))
        ts = np.asarray(item.timestamps_s, np.float64) if n else np.array([item.clip.start_s])
        trajectory = Trajectory(
            normalized_intrinsics(self.config.fov_deg, w, h), w2c, ts, meta={"format": "none"}
        )
        text = format_realestate10k(trajectory, url=item.clip.source_uri)
        ref = item.artifacts.put("trajectory.txt", text.encode("utf-8"), "text/plain")
        details["estimator_error"] = why[:500]
        summary = CameraCondition(
            source="estimated",
            frames=len(trajectory),
            labels=["static"],
            description=f"camera motion could not be measured: {why}",
            trajectory=ref,
            usable=False,
            quality={
                "mean_tracks": 0.0,
                "inlier_ratio": 0.0,
                "reprojection_rms_px": 0.0,
                "lost_fraction": 1.0,
            },
            timestamps_s=[round(float(t), 4) for t in trajectory.timestamps_s],
            frame_grid=self.config.frame_grid,
        )
        return {**CameraConditionType.to_output(summary), PROVENANCE_KEY: details}

    def _estimate(self, item: ClipInput) -> tuple[Trajectory, dict[str, str], dict[str, float]]:
        frames = item.frames
        h, w = frames.shape[1:3]
        details: dict[str, str] = {}
        masks = None
        if self.config.use_subject_masks:
            found = subject_masks(item.record, list(item.timestamps_s), h, w)
            masks = found.masks
            details["masks"] = "+".join(found.sources) or "none"
            if found.notes:
                details["mask_notes"] = "; ".join(found.notes)[:500]
        settings = EstimatorSettings(max_side=self.config.work_side)
        trajectory, report = estimate_with_report(
            frames, item.timestamps_s, fov_deg=self.config.fov_deg, masks=masks, settings=settings
        )
        details.update({f"estimator_{k}": v for k, v in report.summary().items() if k != "masks"})
        if trajectory.scene_depth is None:
            details["translation"] = "none measured (no parallax)"
        return trajectory, details, report.quality()


__all__ = [
    "CameraAnnotator",
    "CameraConfig",
    "CameraImportError",
    "find_camera_file",
    "imported_for_clip",
    "on_frames",
]
