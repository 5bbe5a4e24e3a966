"""Per-field verdicts and the one rule that turns them into an item's outcome.

A reviewer gives every field of a record (the six caption components, then the short prompt
or one ``short_prompt:<instance key>`` per instance) a verdict: ``accept``, ``fix`` (with
the corrected text) or ``reject`` (with a reason code and an optional note).
:func:`field_outcome` is the only place that decides what the item becomes; the store, the
page and the tests all go through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from any2capins.workflows.review.policy import ReviewPolicy

Verdict = Literal["accept", "fix", "reject"]
VERDICTS: tuple[str, ...] = ("accept", "fix", "reject")
# What an item becomes: the three final states, or ``regenerate`` (waiting for new text of
# its rejected fields, then back in the queue as the item's next revision).
OutcomeState = Literal["accepted", "edited", "regenerate", "rejected"]


@dataclass(frozen=True)
class FieldVerdict:
    """One field's verdict. ``text`` is the corrected text of a ``fix``; ``reason`` (a code
    of the policy's ``reject_reasons``) and ``note`` go with a ``reject``."""

    verdict: Verdict
    text: str | None = None
    reason: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What the verdicts make of an item.

    ``edits``: the fixed text per field (also for ``regenerate``: it is carried into the next
    revision's page). ``rejected``: the rejected fields' verdicts. ``dropped``: rejected
    fields that had used up ``max_regenerations`` (they make the item ``rejected``).
    ``reason`` / ``note``: the item's reject reason code and note (for ``regenerate`` and
    ``rejected``), taken from the first deciding field in screen order.
    """

    state: OutcomeState
    edits: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, FieldVerdict] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    reason: str | None = None
    note: str | None = None

    @property
    def decision(self) -> str:
        """The whole-record decision this outcome counts as (accept / edit / reject): what
        the decision statistics and the overlap agreement compare."""
        return {"accepted": "accept", "edited": "edit"}.get(self.state, "reject")


def field_outcome(
    verdicts: Mapping[str, FieldVerdict],
    policy: ReviewPolicy,
    regenerations: Mapping[str, int] | None = None,
) -> Outcome:
    """The item's outcome from its fields' verdicts (in screen order).

    - nothing rejected: ``accepted``, or ``edited`` when any field was fixed;
    - a field rejected with one of the policy's ``final_reject_reasons`` (``bad_clip``,
      ``unsafe``): ``rejected``;
    - otherwise, with ``on_field_reject: reject``: ``rejected``;
    - with ``on_field_reject: regenerate`` (the default): ``regenerate``, unless a rejected
      field was already regenerated ``max_regenerations`` times (``regenerations`` counts
      them per field): that field is dropped for good and the item is ``rejected``.
    """
    done = regenerations or {}
    edits = {n: v.text for n, v in verdicts.items() if v.verdict == "fix" and v.text is not None}
    rejected = {n: v for n, v in verdicts.items() if v.verdict == "reject"}
    if not rejected:
        return Outcome("edited" if edits else "accepted", edits)
    final = [n for n, v in rejected.items() if v.reason in policy.final_reject_reasons]
    dropped = tuple(n for n in rejected if done.get(n, 0) >= policy.max_regenerations)
    if final or policy.on_field_reject == "reject" or dropped:
        deciding = (final or list(dropped) or list(rejected))[0]
        note = _notes(rejected)
        if dropped and not final and policy.on_field_reject == "regenerate":
            used = ", ".join(f"{n} ({done.get(n, 0)}x)" for n in dropped)
            note = "; ".join(
                p
                for p in (
                    f"dropped after max_regenerations={policy.max_regenerations}: {used}",
                    note,
                )
                if p
            )
        return Outcome("rejected", edits, rejected, dropped, rejected[deciding].reason, note)
    first = next(iter(rejected))
    return Outcome("regenerate", edits, rejected, (), rejected[first].reason, _notes(rejected))


def _notes(rejected: Mapping[str, FieldVerdict]) -> str | None:
    return "; ".join(f"{n}: {v.note}" for n, v in rejected.items() if v.note) or None
