"""The HTML pages: login and logout, the start page, the review screen and its form posts,
the dashboard and the admin page, rendered from the Jinja templates."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from any2capins.workflows.review import auth
from any2capins.workflows.review.deps import (
    LOGIN_COOKIE,
    MAX_ID,
    SESSION_COOKIE,
    ClaimId,
    HTMLError,
    ItemId,
    Store,
    admin_page,
    annotator_page,
    check_csrf,
    reviewer_page,
    run_of,
    store_of,
)
from any2capins.workflows.review.outcome import FieldVerdict
from any2capins.workflows.review.store import (
    Invalid,
    ItemView,
    ReviewError,
    StaleVersion,
    Throttled,
    UserInfo,
)
from any2capins.workflows.review.text import MAX_FIELD_CHARS
from any2capins.workflows.review.views import (
    caption_source,
    fields_of,
    flags_of,
    media_of,
    palette_of,
    panes_of,
    provenance_of,
    suitability_of,
)

HERE = Path(__file__).resolve().parent

router = APIRouter()


class Templates:
    """The Jinja environment of the pages, and the static files' version for cache busting."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.static_version = hashlib.sha256(
            b"".join(p.read_bytes() for p in sorted((HERE / "static").iterdir()) if p.is_file())
        ).hexdigest()[:10]


def render(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
    templates: Templates = request.app.state.templates
    ctx = {
        "static_version": templates.static_version,
        "run": run_of(request),
        "user": getattr(request.state, "user", None),
        "csrf": getattr(request.state, "csrf", ""),
        **context,
    }
    return HTMLResponse(templates.env.get_template(name).render(**ctx), status_code=code)


def _secure_cookies(request: Request) -> bool:
    return bool(request.app.state.secure_cookies)


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    return Response(status_code=204)


@router.get("/", include_in_schema=False)
def home() -> Response:
    return RedirectResponse("/review", status_code=303)


@router.get("/login", include_in_schema=False)
def login_page(request: Request) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", login_csrf=token, error=None)
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=_secure_cookies(request),
        max_age=3600,
    )
    return response


@router.post("/login", include_in_schema=False)
def login(
    request: Request,
    store: Store,
    name: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=1000)],
    csrf: Annotated[str, Form(max_length=200)],
) -> Response:
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not auth.same(csrf, expected):
        raise HTMLError(403, "The login form expired: reload the page and try again.")
    address = request.client.host if request.client else None
    try:
        user = store.authenticate(name, password, address=address)
    except Throttled as e:
        refused = render(request, "login.html", 429, login_csrf=expected, error=str(e))
        refused.headers["Retry-After"] = str(e.retry_after)
        return refused
    if user is None:
        return render(
            request, "login.html", 401, login_csrf=expected, error="Wrong name or password."
        )
    session_id, _ = store.create_session(user)
    response = RedirectResponse("/review", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        httponly=True,
        samesite="strict",
        secure=_secure_cookies(request),
        max_age=12 * 3600,
    )
    response.delete_cookie(LOGIN_COOKIE)
    return response


@router.post("/logout", include_in_schema=False)
def logout(
    request: Request,
    store: Store,
    csrf: Annotated[str, Form(max_length=200)],
    user: UserInfo = annotator_page,
) -> Response:
    check_csrf(request, csrf)
    store.end_session(request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/review", include_in_schema=False)
def review_home(request: Request, store: Store, user: UserInfo = annotator_page) -> Response:
    held = store.current(user)
    if held is not None:
        return RedirectResponse(f"/review/items/{held.id}", status_code=303)
    return render(request, "start.html", queue=store.queue_counts(), empty=False)


def _next(request: Request, user: UserInfo) -> Response:
    store = store_of(request)
    view = store.claim(user)
    if view is None:
        return render(request, "start.html", queue=store.queue_counts(), empty=True)
    return RedirectResponse(f"/review/items/{view.id}", status_code=303)


@router.post("/review/next", include_in_schema=False)
def review_next(
    request: Request,
    csrf: Annotated[str, Form(max_length=200)],
    user: UserInfo = annotator_page,
) -> Response:
    check_csrf(request, csrf)
    return _next(request, user)


def screen(
    request: Request,
    view: ItemView,
    status: int = 200,
    values: dict[str, str] | None = None,
    error: str | None = None,
    stale: bool = False,
    verdicts: dict[str, FieldVerdict] | None = None,
) -> HTMLResponse:
    media = media_of(view.record)
    expected = "disputed" if view.claim_kind == "adjudication" else "pending"
    editable = view.claim_id is not None and view.state == expected
    policy = store_of(request).policy()
    if values is None and editable and view.carried_edits:
        # the previous revision's fixes are where this one's review starts
        values = dict(view.carried_edits)
    fields = fields_of(view.record, view.machine, values)
    return render(
        request,
        "review.html",
        status,
        item=view,
        record=view.record,
        fields=fields,
        flags=flags_of(view.record, fields),
        suitability=suitability_of(view.record),
        media=media,
        source=media[0],
        keyframes=[m for m in media if m.group == "keyframes"],
        panes=panes_of(view.record, media),
        provenance=provenance_of(view.record),
        caption_source=caption_source(view.record),
        palette=palette_of(view.record),
        reasons=policy.reject_reasons,
        verdicts=verdicts or {},
        regenerated=view.regenerated,
        lease_ttl=policy.lease_ttl_s,
        editable=editable,
        error=error,
        stale=stale,
        # text for fields this record does not have (a stale form) is shown, not dropped
        unsaved=values
        if stale and not editable
        else {k: v for k, v in (values or {}).items() if k not in view.machine} or None,
    )


@router.get("/review/items/{item_id}", include_in_schema=False)
def review_item(
    item_id: ItemId, request: Request, store: Store, user: UserInfo = annotator_page
) -> Response:
    return screen(request, store.item(user, item_id))


@router.post("/review/items/{item_id}/decision", include_in_schema=False)
async def review_decide(
    item_id: ItemId, request: Request, store: Store, user: UserInfo = annotator_page
) -> Response:
    # per field: its text, and with per-field verdicts its verdict, reason and note
    form = await request.form(max_files=0, max_fields=400, max_part_size=MAX_FIELD_CHARS * 4)
    data = {k: v for k, v in form.items() if isinstance(v, str)}
    check_csrf(request, data.get("csrf", ""))
    action = data.get("action", "")
    # every field the form sent; the store refuses names the item's record lacks
    values = {
        key.removeprefix("field_"): value.replace("\r\n", "\n")
        for key, value in data.items()
        if key.startswith("field_")
    }
    verdicts = _form_verdicts(data, values)
    try:
        version = int(data.get("version", ""))
        if not 1 <= version <= MAX_ID:
            raise ValueError
    except ValueError:
        raise HTMLError(422, "The form has no valid item version: reload the page.") from None

    def decide() -> Response:
        try:
            view = store.item(user, item_id)
            if action == "accept" and any(v.verdict == "reject" for v in verdicts.values()):
                store.decide_fields(user, item_id, version, verdicts, note=data.get("note") or None)
            elif action == "reject":
                store.decide(
                    user,
                    item_id,
                    "reject",
                    version,
                    reason=data.get("reason") or None,
                    note=data.get("note") or None,
                )
            elif action == "accept":
                machine = view.machine
                changed = {
                    k: v for k, v in values.items() if v.strip() != machine.get(k, "").strip()
                }
                store.decide(
                    user,
                    item_id,
                    "edit" if changed else "accept",
                    version,
                    edits=changed,
                    note=data.get("note") or None,
                )
            else:
                raise Invalid("unknown action: use accept or reject")
        except ReviewError as e:
            try:
                current = store.item(user, item_id)
            except ReviewError:
                # The item is out of reach now (lease released, not theirs): the typed
                # text still goes back to the reviewer.
                return render(
                    request,
                    "error.html",
                    e.status,
                    message=str(e),
                    status=e.status,
                    unsaved=values,
                )
            return screen(
                request,
                current,
                status=e.status,
                values=values,
                error=str(e),
                stale=isinstance(e, StaleVersion) or current.version != version,
                verdicts=verdicts,
            )
        return _next(request, user)

    return await run_in_threadpool(decide)


def _form_verdicts(data: dict[str, str], values: dict[str, str]) -> dict[str, FieldVerdict]:
    """The per-field verdicts a form sent (``verdict_<field>``: accept / reject, with
    ``reason_<field>`` and ``note_<field>``); a field without one is accepted, or fixed when
    its text was changed (the store drops a fix equal to the machine text)."""
    out: dict[str, FieldVerdict] = {}
    for key, verdict in data.items():
        if not key.startswith("verdict_") or not verdict:
            continue
        name = key.removeprefix("verdict_")
        if verdict == "reject":
            out[name] = FieldVerdict(
                "reject",
                None,
                data.get(f"reason_{name}") or None,
                data.get(f"note_{name}") or None,
            )
        elif verdict in ("accept", "fix"):
            out[name] = FieldVerdict("accept")
        else:
            raise HTMLError(422, f"Unknown verdict for {name}: use accept, fix or reject.")
    for name, value in values.items():
        if name not in out or out[name].verdict != "reject":
            out[name] = FieldVerdict("fix", value)
    return out


@router.post("/review/items/{item_id}/skip", include_in_schema=False)
def review_skip(
    item_id: ItemId,
    request: Request,
    store: Store,
    csrf: Annotated[str, Form(max_length=200)],
    user: UserInfo = annotator_page,
) -> Response:
    check_csrf(request, csrf)
    store.skip(user, item_id)
    return _next(request, user)


@router.get("/dashboard", include_in_schema=False)
def dashboard(request: Request, store: Store, user: UserInfo = reviewer_page) -> Response:
    return render(request, "dashboard.html", stats=store.stats())


@router.get("/admin", include_in_schema=False)
def admin(request: Request, store: Store, user: UserInfo = admin_page) -> Response:
    return render(
        request,
        "admin.html",
        claims=store.claims(),
        users=store.users(),
        policy=store.policy(),
        audit=store.audit(limit=50, newest=True),
    )


@router.post("/admin/claims/{claim_id}/release", include_in_schema=False)
def admin_release(
    claim_id: ClaimId,
    request: Request,
    store: Store,
    csrf: Annotated[str, Form(max_length=200)],
    user: UserInfo = admin_page,
) -> Response:
    check_csrf(request, csrf)
    store.release(user, claim_id)
    return RedirectResponse("/admin", status_code=303)
