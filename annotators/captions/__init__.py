"""Caption writers: the ``captions`` stage (six-part structured caption + short prompt per
clip), its OpenAI-compatible client layer, the offline grounded writer, the versioned prompt
templates and the structural checks."""

from any2capins.annotators.captions.annotator import GROUNDED_MODEL_ID, CaptionsAnnotator
from any2capins.annotators.captions.cache import ResponseCache, request_key
from any2capins.annotators.captions.config import (
    GROUNDED_BOUNDS,
    MODEL_BOUNDS,
    PARTS,
    SHORT_PROMPT,
    Bounds,
    CaptionsConfig,
)
from any2capins.annotators.captions.errors import (
    AwaitingBatch,
    BudgetExceeded,
    CaptionAPIError,
    CaptionError,
    CaptionInputError,
    CaptionRefused,
    InvalidCaption,
)
from any2capins.annotators.captions.templates import load_templates
from any2capins.annotators.captions.validate import Integrity, caption_integrity, word_count

__all__ = [
    "GROUNDED_BOUNDS",
    "GROUNDED_MODEL_ID",
    "MODEL_BOUNDS",
    "PARTS",
    "SHORT_PROMPT",
    "AwaitingBatch",
    "Bounds",
    "BudgetExceeded",
    "CaptionAPIError",
    "CaptionError",
    "CaptionInputError",
    "CaptionRefused",
    "CaptionsAnnotator",
    "CaptionsConfig",
    "Integrity",
    "InvalidCaption",
    "ResponseCache",
    "caption_integrity",
    "load_templates",
    "request_key",
    "word_count",
]
