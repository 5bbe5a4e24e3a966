"""The ways a clip's caption can fail; each class name is the failure row's error type."""

from __future__ import annotations


class CaptionError(RuntimeError):
    """Base of every caption failure."""


class BudgetExceeded(CaptionError):
    """The configured spending cap is reached: no new requests are sent.

    The clip's finished requests stay in the response cache, so a re-run with a larger
    budget pays only for what is missing.
    """


class InvalidCaption(CaptionError):
    """The endpoint kept answering with text that fails the structural checks."""


class CaptionRefused(CaptionError):
    """The endpoint refused to describe the clip, also after the repair prompt."""


class CaptionAPIError(CaptionError):
    """The endpoint could not be reached or kept failing after every retry."""


class AwaitingBatch(CaptionError):
    """Batch mode: the clip's requests are queued for the Batch API, not answered yet."""


class CaptionInputError(CaptionError):
    """The record lacks what the writer needs (keyframes, a condition type, a payload)."""
