"""Curation scores: cheap per-clip measures written into ``record.scores`` by name, one stage
per family (quality, motion, cuts, text_overlay, aesthetics), for the recipe's filters."""

from any2capins.annotators.curation._common import ScoreAnnotator, score_fields
from any2capins.annotators.curation.aesthetics import (
    AESTHETIC_SCORES,
    AestheticsAnnotator,
    AestheticsConfig,
)
from any2capins.annotators.curation.cuts import CUT_SCORES, CutsAnnotator, CutsConfig, cut_times
from any2capins.annotators.curation.motion import (
    MOTION_SCORES,
    MotionAnnotator,
    MotionConfig,
    motion_scores,
)
from any2capins.annotators.curation.quality import (
    QUALITY_SCORES,
    QualityAnnotator,
    QualityConfig,
    quality_scores,
)
from any2capins.annotators.curation.text import TEXT_SCORES, TextOverlayAnnotator, TextOverlayConfig

# Cheap CPU stages first, then the model stages.
CURATION_ANNOTATORS: tuple[type[ScoreAnnotator], ...] = (
    QualityAnnotator,
    MotionAnnotator,
    CutsAnnotator,
    TextOverlayAnnotator,
    AestheticsAnnotator,
)

# Every score name -> the stage that writes it.
SCORE_STAGES: dict[str, str] = {
    name: cls.name for cls in CURATION_ANNOTATORS for name in cls.score_names
}

__all__ = [
    "AESTHETIC_SCORES",
    "CURATION_ANNOTATORS",
    "CUT_SCORES",
    "MOTION_SCORES",
    "QUALITY_SCORES",
    "SCORE_STAGES",
    "TEXT_SCORES",
    "AestheticsAnnotator",
    "AestheticsConfig",
    "CutsAnnotator",
    "CutsConfig",
    "MotionAnnotator",
    "MotionConfig",
    "QualityAnnotator",
    "QualityConfig",
    "ScoreAnnotator",
    "TextOverlayAnnotator",
    "TextOverlayConfig",
    "cut_times",
    "motion_scores",
    "quality_scores",
    "score_fields",
]
