"""The human-verification queue: review store, web app, JSON API and CLI (``any2cap review``).

For export and other jobs, the public surface is::

    store = open_store(run_dir="runs/demo")          # or db_url="postgresql+psycopg://..."
    store.ingest()                                   # queue the run's records (idempotent)
    states = final_states(store)                     # clip_id -> ClipReview
    stats = review_stats(store)                      # queue sizes, rates, agreement

``ClipReview`` carries the clip's final state (``accepted`` / ``rejected`` / ``edited`` /
``pending`` / ``held_back``), the human text per edited field, reviewers, reasons and
timestamps; ``ClipReview.review_state()`` converts it to the record schema's ``ReviewState``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from any2capins.schemas._lazy import lazy_exports

if TYPE_CHECKING:
    from any2capins.workflows.review._regenerate import regeneration_hint
    from any2capins.workflows.review.outcome import FieldVerdict, Outcome, field_outcome
    from any2capins.workflows.review.policy import ReviewPolicy, load_policy
    from any2capins.workflows.review.store import (
        ClipReview,
        Conflict,
        DecisionResult,
        Forbidden,
        IngestReport,
        Invalid,
        ItemView,
        LoginLimits,
        NotFound,
        ReviewError,
        ReviewInfo,
        ReviewStore,
        StaleVersion,
        Throttled,
        UserInfo,
        open_store,
    )
    from any2capins.workflows.review.text import FIELDS, apply_review, field_names

# Imported on first use: export and the shard reader import `any2capins.workflows.review.text` without
# the store's database dependencies.
_WHERE = {
    "regeneration_hint": "any2capins.workflows.review._regenerate",
    "FieldVerdict": "any2capins.workflows.review.outcome",
    "Outcome": "any2capins.workflows.review.outcome",
    "field_outcome": "any2capins.workflows.review.outcome",
    "ReviewPolicy": "any2capins.workflows.review.policy",
    "load_policy": "any2capins.workflows.review.policy",
    "ClipReview": "any2capins.workflows.review.store",
    "Conflict": "any2capins.workflows.review.store",
    "DecisionResult": "any2capins.workflows.review.store",
    "Forbidden": "any2capins.workflows.review.store",
    "IngestReport": "any2capins.workflows.review.store",
    "Invalid": "any2capins.workflows.review.store",
    "ItemView": "any2capins.workflows.review.store",
    "LoginLimits": "any2capins.workflows.review.store",
    "NotFound": "any2capins.workflows.review.store",
    "ReviewError": "any2capins.workflows.review.store",
    "ReviewInfo": "any2capins.workflows.review.store",
    "ReviewStore": "any2capins.workflows.review.store",
    "StaleVersion": "any2capins.workflows.review.store",
    "Throttled": "any2capins.workflows.review.store",
    "UserInfo": "any2capins.workflows.review.store",
    "open_store": "any2capins.workflows.review.store",
    "FIELDS": "any2capins.workflows.review.text",
    "apply_review": "any2capins.workflows.review.text",
    "field_names": "any2capins.workflows.review.text",
}
__getattr__, __dir__ = lazy_exports(globals(), _WHERE)


def final_states(store: ReviewStore) -> dict[str, ClipReview]:
    """Every clip of the store's run with its final reviewed state.

    - ``state``: ``accepted`` (machine text kept), ``edited`` (accepted with human text),
      ``rejected``, ``pending`` (not decided yet, including items waiting for
      adjudication: ``queue_state == "disputed"``) or ``held_back`` (not sampled by the
      policy or dropped by a skip; never exported as accepted).
    - ``edits``: field name (the six caption components; ``short_prompt`` for a record
      without instances, ``short_prompt:<instance key>`` such as ``short_prompt:camera+depth``
      for each instance of a record with them) -> the human text, only for fields a human
      changed, only for final states. ``any2capins.workflows.review.text.apply_review`` applies them.
    - ``reviewers``: who decided (independent reviewers, then the adjudicator).
    - ``reason`` / ``note``: the reject reason code and free text (notes on accepts too).
    - ``ingested_at`` / ``decided_at``: when the item was queued and finally decided.
    - ``reviews``: every individual decision (:class:`ReviewInfo`, with its per-field
      ``verdicts`` when given per field), oldest first, over every revision.
    - ``revision`` / ``regenerations``: the item's revision (1 as ingested, +1 per
      regeneration) and each regenerated field's rejected text, reason and note.
    A clip waiting for regeneration is ``pending`` (``queue_state == "regenerate"``).
    """
    return store.final_states()


def review_stats(store: ReviewStore) -> dict[str, Any]:
    """Review statistics of the store's run (what ``any2cap review stats --json`` prints):
    ``queue`` (state counts per condition type and ``all``), ``rates`` (accept / reject /
    edit over independent reviews), ``edit_rate_per_component`` (the six components and one
    ``short_prompt`` bucket: the record's prompt or any instance prompt changed),
    ``edit_rate_per_instance`` (instance key -> share of kept reviews of items with that
    instance that changed its prompt), ``annotators`` (counts,
    median seconds per item, items per hour of work), ``agreement`` (over items reviewed
    twice: accept/reject agreement, Cohen's kappa, per-component identical-text rate and
    mean normalised word edit distance), ``field_verdicts`` (per field: accepted / fixed /
    rejected counts and reject reasons of kept per-field verdicts) and ``regeneration``."""
    return store.stats()


__all__ = [
    "FIELDS",
    "ClipReview",
    "Conflict",
    "DecisionResult",
    "FieldVerdict",
    "Forbidden",
    "IngestReport",
    "Invalid",
    "ItemView",
    "LoginLimits",
    "NotFound",
    "Outcome",
    "ReviewError",
    "ReviewInfo",
    "ReviewPolicy",
    "ReviewStore",
    "StaleVersion",
    "Throttled",
    "UserInfo",
    "apply_review",
    "field_names",
    "field_outcome",
    "final_states",
    "load_policy",
    "open_store",
    "regeneration_hint",
    "review_stats",
]
