"""The JSON API (``/api/...``) for scripts and the page's own JavaScript: claims, decisions,
leases, lint, stats and admin reads, with their request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Response models reuse the store's data types where the store already has the shape.
from any2capins.workflows.review._types import ClaimRow, DecisionResult, FieldVerdictInfo
from any2capins.workflows.review.deps import (
    MAX_ID,
    ClaimId,
    ItemId,
    Store,
    admin_api,
    annotator_api,
    reviewer_api,
)
from any2capins.workflows.review.outcome import FieldVerdict
from any2capins.workflows.review.store import ItemView, UserInfo
from any2capins.workflows.review.text import (
    FIELD_NAME_PATTERN,
    MAX_FIELD_CHARS,
    structural_warnings,
    word_count,
    word_diff,
)
from any2capins.workflows.review.views import caption_source, media_of

# The six components, ``short_prompt`` (a record without instances) or
# ``short_prompt:<instance key>`` (``short_prompt:camera+depth``); the store refuses a name
# the item's record does not have (422).
FieldName = Annotated[str, Field(pattern=FIELD_NAME_PATTERN, max_length=1100)]

router = APIRouter()


class _In(BaseModel):
    # Strict: ``"version": true`` or ``"1"`` is a 422, never version 1.
    model_config = ConfigDict(extra="forbid", strict=True)


class VerdictIn(_In):
    verdict: Literal["accept", "fix", "reject"]
    text: str | None = Field(
        default=None, max_length=MAX_FIELD_CHARS, description="the corrected text (fix only)"
    )
    reason: str | None = Field(default=None, max_length=100, description="reject reason code")
    note: str | None = Field(default=None, max_length=MAX_FIELD_CHARS, description="free text")


class DecisionIn(_In):
    decision: Literal["accept", "reject", "edit"] | None = Field(
        default=None, description="the whole record's decision (or send verdicts instead)"
    )
    version: int = Field(ge=1, le=MAX_ID, description="the item version you reviewed")
    verdicts: dict[FieldName, VerdictIn] | None = Field(
        default=None,
        description="a verdict per field (accept / fix with text / reject with reason); "
        "fields not named are accepted; the item's outcome follows from them",
    )
    edits: dict[FieldName, Annotated[str, Field(max_length=MAX_FIELD_CHARS)]] = Field(
        default_factory=dict, description="new text per field (edit only)"
    )
    reason: str | None = Field(default=None, max_length=100, description="reject reason code")
    note: str | None = Field(default=None, max_length=MAX_FIELD_CHARS, description="free text")

    @model_validator(mode="after")
    def _one_kind(self) -> DecisionIn:
        if (self.decision is None) == (self.verdicts is None):
            raise ValueError("send either decision (accept, reject, edit) or verdicts per field")
        if self.verdicts is not None and (self.edits or self.reason is not None):
            raise ValueError("with verdicts, fixes and reject reasons go in each field's verdict")
        return self


class LintIn(_In):
    field: FieldName
    text: str = Field(max_length=MAX_FIELD_CHARS)


class LintOut(BaseModel):
    words: int
    warnings: list[str]


class MediaOut(BaseModel):
    index: int
    group: str
    label: str
    media_type: str
    kind: str
    url: str


class ReviewOut(BaseModel):
    reviewer: str
    kind: str
    decision: str
    edits: dict[str, str]
    reason: str | None
    note: str | None
    at: datetime
    verdicts: dict[str, FieldVerdictInfo] = Field(default_factory=dict)


class RegenerationOut(BaseModel):
    from_revision: int
    reason: str | None
    note: str | None
    rejected_text: str


class DiffOut(BaseModel):
    op: Literal["same", "ins", "del"]
    text: str


class InstanceOut(BaseModel):
    instance_id: str
    key: str = Field(description="the condition types joined with '+': 'camera+depth'")
    field: str = Field(description="its edit field: 'short_prompt:camera+depth'")
    condition_types: list[str]
    composition: bool


class ItemOut(BaseModel):
    id: int
    clip_id: str
    version: int
    revision: int = Field(
        description="1 as ingested; +1 each time rejected fields were regenerated"
    )
    regenerated: dict[str, RegenerationOut] = Field(
        description="fields regenerated from the previous revision: why, and the rejected text"
    )
    carried_edits: dict[str, str] = Field(
        description="the previous revision's fixes, a starting point for this one"
    )
    state: str
    kind: str | None = Field(description="review or adjudication (your lease), None if not leased")
    lease_expires_at: datetime | None
    reviews_required: int
    reviews_done: int
    conditions: list[str]
    fields: dict[str, str] = Field(description="the machine text per field")
    instances: list[InstanceOut] = Field(
        description="the record's instances; each one's short prompt is its own field"
    )
    final_edits: dict[str, str]
    final_diffs: dict[str, list[DiffOut]] = Field(
        description="word diff, machine text -> human text, per field in final_edits"
    )
    caption_source: str | None
    media: list[MediaOut]
    prior_reviews: list[ReviewOut]
    record: dict[str, Any]


class LeaseOut(BaseModel):
    item_id: int
    lease_expires_at: datetime


class SkipOut(BaseModel):
    item_id: int
    state: str


class MeOut(BaseModel):
    name: str
    role: str


class ErrorOut(BaseModel):
    detail: str
    current_version: int | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no or bad credentials"},
    403: {"model": ErrorOut, "description": "your role does not allow this"},
}


def item_out(view: ItemView) -> ItemOut:
    return ItemOut(
        id=view.id,
        clip_id=view.clip_id,
        version=view.version,
        revision=view.revision,
        regenerated={
            name: RegenerationOut(
                from_revision=r.revision,
                reason=r.reason,
                note=r.note,
                rejected_text=r.rejected_text,
            )
            for name, r in view.regenerated.items()
        },
        carried_edits=view.carried_edits,
        state=view.state,
        kind=view.claim_kind,
        lease_expires_at=view.lease_expires_at,
        reviews_required=view.reviews_required,
        reviews_done=view.reviews_done,
        conditions=view.record.conditions.present(),
        fields=view.machine,
        instances=[
            InstanceOut(
                instance_id=i.instance_id,
                key=i.key,
                field=f"short_prompt:{i.key}",
                condition_types=i.condition_types,
                composition=i.composition,
            )
            for i in view.record.instances or []
        ],
        final_edits=view.final_edits,
        final_diffs={
            name: [
                DiffOut(op=op, text=text)
                for op, text in word_diff(view.machine.get(name, ""), edited)
            ]
            for name, edited in view.final_edits.items()
        },
        caption_source=caption_source(view.record),
        media=[
            MediaOut(
                index=m.index,
                group=m.group,
                label=m.label,
                media_type=m.media_type,
                kind=m.kind,
                url=f"/media/{view.id}/{m.index}",
            )
            for m in media_of(view.record)
        ],
        prior_reviews=[
            ReviewOut(
                reviewer=r.reviewer,
                kind=r.kind,
                decision=r.decision,
                edits=r.edits,
                reason=r.reason,
                note=r.note,
                at=r.at,
                verdicts=dict(r.verdicts),
            )
            for r in view.prior_reviews
        ],
        record=view.record.model_dump(mode="json"),
    )


@router.post(
    "/api/claim",
    response_model=ItemOut,
    responses={204: {"description": "nothing left to review for you"}, **ERRORS},
    tags=["queue"],
)
def api_claim(store: Store, user: UserInfo = annotator_api) -> Response | ItemOut:
    """Lease the next item (or get back the one you hold). 204 when nothing is left."""
    view = store.claim(user)
    if view is None:
        return Response(status_code=204)
    return item_out(view)


@router.get(
    "/api/items/{item_id}",
    response_model=ItemOut,
    responses={404: {"model": ErrorOut}, **ERRORS},
    tags=["queue"],
)
def api_item(item_id: ItemId, store: Store, user: UserInfo = annotator_api) -> ItemOut:
    """An item you hold a lease on (reviewers and admins: any item of the run)."""
    return item_out(store.item(user, item_id))


@router.post(
    "/api/items/{item_id}/decision",
    response_model=DecisionResult,
    responses={
        404: {"model": ErrorOut},
        409: {"model": ErrorOut, "description": "lease lost, or stale version"},
        422: {"description": "invalid decision"},
        **ERRORS,
    },
    tags=["queue"],
)
def api_decide(
    item_id: ItemId, body: DecisionIn, store: Store, user: UserInfo = annotator_api
) -> DecisionResult:
    """Accept, reject (reason code + note) or edit (new text per field) a leased item; or
    give a verdict per field (accept / fix / reject), from which its outcome follows."""
    if body.verdicts is not None:
        result = store.decide_fields(
            user,
            item_id,
            body.version,
            {
                str(name): FieldVerdict(v.verdict, v.text, v.reason, v.note)
                for name, v in body.verdicts.items()
            },
            note=body.note,
        )
        return result
    assert body.decision is not None
    result = store.decide(
        user,
        item_id,
        body.decision,
        body.version,
        edits={str(k): v for k, v in body.edits.items()},
        reason=body.reason,
        note=body.note,
    )
    return result


@router.post(
    "/api/items/{item_id}/renew",
    response_model=LeaseOut,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, **ERRORS},
    tags=["queue"],
)
def api_renew(item_id: ItemId, store: Store, user: UserInfo = annotator_api) -> LeaseOut:
    """Extend your lease (the page does this while it is open)."""
    return LeaseOut(item_id=item_id, lease_expires_at=store.renew(user, item_id))


@router.post(
    "/api/items/{item_id}/skip",
    response_model=SkipOut,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, **ERRORS},
    tags=["queue"],
)
def api_skip(item_id: ItemId, store: Store, user: UserInfo = annotator_api) -> SkipOut:
    """Give the item back; what happens to it is the run's skip policy."""
    return SkipOut(item_id=item_id, state=store.skip(user, item_id))


@router.post("/api/lint", response_model=LintOut, responses=ERRORS, tags=["text"])
def api_lint(body: LintIn, user: UserInfo = annotator_api) -> LintOut:
    """Word count and structural warnings for a field's text."""
    return LintOut(words=word_count(body.text), warnings=structural_warnings(body.field, body.text))


@router.get("/api/me", response_model=MeOut, responses=ERRORS, tags=["users"])
def api_me(user: UserInfo = annotator_api) -> MeOut:
    return MeOut(name=user.name, role=user.role)


@router.get("/api/stats", responses=ERRORS, tags=["stats"])
def api_stats(store: Store, user: UserInfo = reviewer_api) -> dict[str, Any]:
    """Queue sizes, throughput, decision/edit rates and agreement (reviewers, admins)."""
    return store.stats()


@router.get("/api/claims", response_model=list[ClaimRow], responses=ERRORS, tags=["admin"])
def api_claims(store: Store, user: UserInfo = admin_api) -> list[ClaimRow]:
    """Live leases (admins)."""
    return store.claims()


@router.post(
    "/api/claims/{claim_id}/release",
    status_code=204,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, **ERRORS},
    tags=["admin"],
)
def api_release(claim_id: ClaimId, store: Store, user: UserInfo = admin_api) -> Response:
    """Release someone's lease so the item goes back to the queue (admins)."""
    store.release(user, claim_id)
    return Response(status_code=204)
