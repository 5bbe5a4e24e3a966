"""The review web app (FastAPI): server-rendered pages for annotators, a JSON API with bearer
tokens for scripts, media from the run's artifact store, and the security headers.

Pages authenticate with a session cookie (HttpOnly, SameSite=Strict) and check a CSRF token
on every POST; the API takes ``Authorization: Bearer <token>`` (or the session cookie plus an
``X-CSRF-Token`` header, which is how the page's own JavaScript calls it). Every endpoint
checks the caller's role.

Hostile clients: request bodies have a size limit (413 from the Content-Length header before
anything is read; a chunked body is read only until it passes the limit), and a request that
may carry a body is refused for missing credentials before one byte of it is read. Logins are
throttled per account and per client address in the store (``LoginLimits``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import fsspec
from fastapi import Depends, FastAPI, Form, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from workflows.review import auth
from workflows.review.store import (
    Invalid,
    ItemView,
    ReviewError,
    ReviewStore,
    StaleVersion,
    Throttled,
    UserInfo,
)
from workflows.review.text import (
    FIELD_NAME_PATTERN,
    MAX_FIELD_CHARS,
    structural_warnings,
    word_count,
    word_diff,
)
from workflows.review.views import (
    caption_source,
    fields_of,
    flags_of,
    media_of,
    palette_of,
    panes_of,
    provenance_of,
    resolve_media,
    suitability_of,
)

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "a2c_session"
LOGIN_COOKIE = "a2c_login"
MAX_ID = 2**31 - 1
MB = 1 << 20
# The largest legitimate body, a decision editing every field of a record with many instances
# in non-ASCII text as a form, stays under 4 MB.
DEFAULT_MAX_BODY_MB = 8.0
# Where the gate in front of the app finds the API caller it already looked up.
_PRINCIPAL_KEY = "a2c_api_principal"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]

ItemId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
# Module level: FastAPI resolves these (string) annotations in the module's namespace.
bearer = HTTPBearer(auto_error=False, description="API token from `any2cap review tokens create`")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
# The six components, ``short_prompt`` (a record without instances) or
# ``short_prompt:<instance key>`` (``short_prompt:camera+depth``); the store refuses a name
# the item's record does not have (422).
FieldName = Annotated[str, Field(pattern=FIELD_NAME_PATTERN, max_length=1100)]


# API models
class _In(BaseModel):
    # Strict: ``"version": true`` or ``"1"`` is a 422, never version 1.
    model_config = ConfigDict(extra="forbid", strict=True)


class DecisionIn(_In):
    decision: Literal["accept", "reject", "edit"]
    version: int = Field(ge=1, le=MAX_ID, description="the item version you reviewed")
    edits: dict[FieldName, Annotated[str, Field(max_length=MAX_FIELD_CHARS)]] = Field(
        default_factory=dict, description="new text per field (edit only)"
    )
    reason: str | None = Field(default=None, max_length=100, description="reject reason code")
    note: str | None = Field(default=None, max_length=MAX_FIELD_CHARS, description="free text")


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


class DecisionOut(BaseModel):
    item_id: int
    clip_id: str
    decision: str
    state: str
    version: int
    final: bool


class LeaseOut(BaseModel):
    item_id: int
    lease_expires_at: datetime


class SkipOut(BaseModel):
    item_id: int
    state: str


class ClaimOut(BaseModel):
    id: int
    item_id: int
    clip_id: str
    user: str
    kind: str
    claimed_at: datetime
    expires_at: datetime


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


class _NeedLogin(Exception):
    pass


class _HTMLError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SecurityHeaders:
    """Pure ASGI middleware: the same strict headers on every response, errors included."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_static = scope.get("path", "").startswith("/static/")

        async def wrapped(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                if not is_static and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, wrapped)


class _BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes the limit. An HTTPException, so FastAPI's
    body reading passes it on (not a 400) and its handler answers JSON."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit), headers={"Connection": "close"})


def _too_large(limit: int) -> str:
    return f"the request body is over this server's limit of {limit / MB:g} MB"


async def _send_json(send: Any, status: int, detail: str, headers: list[Any] | None = None) -> None:
    body = JSONResponse({"detail": detail}).body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Pure ASGI middleware: a request body over ``max_bytes`` is refused with 413. A declared
    Content-Length over the limit is answered before anything is read; otherwise ``receive``
    counts the bytes and stops the app once they pass the limit (chunked bodies)."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            # (the server has already refused a malformed Content-Length with 400)
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _send_json(send, 413, _too_large(limit), [(b"connection", b"close")])
                return
        received = 0
        started = False

        async def limited_receive() -> MutableMapping[str, Any]:
            nonlocal received
            message: MutableMapping[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if started:  # too late for a 413: the app sees the client leave
                        return {"type": "http.disconnect"}
                    raise _BodyTooLarge(limit)
            return message

        async def tracked_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _BodyTooLarge:
            if started:
                raise
            await _send_json(send, 413, _too_large(limit), [(b"connection", b"close")])


class CredentialsFirst:
    """Pure ASGI middleware: a request that may carry a body (any method but GET, HEAD and
    OPTIONS) to the API or to a page needing a login is refused before one byte of its body
    is read when its credentials are missing or wrong: 401 for the API, the login page for
    the pages. (FastAPI reads a body before it solves the dependencies that check the
    caller.) The API caller found is kept in the scope for the endpoint's own check."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        api_principal: Callable[[str | None, str | None], tuple[UserInfo | None, str | None]],
        page_principal: Callable[[str | None], tuple[UserInfo, str] | None],
    ) -> None:
        self.app = app
        self.api_principal = api_principal
        self.page_principal = page_principal

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        conn = HTTPConnection(scope)
        session_id = conn.cookies.get(SESSION_COOKIE)
        # An unread body would still be received (and dropped) after the answer: close the
        # connection instead.
        length = conn.headers.get("content-length", "0")
        close = (
            [(b"connection", b"close")]
            if "transfer-encoding" in conn.headers or length != "0"
            else []
        )
        if path.startswith("/api/"):
            found = await run_in_threadpool(
                self.api_principal, conn.headers.get("authorization"), session_id
            )
            if found[0] is None:
                await _send_json(
                    send, 401, _LOGIN_FIRST, [(b"www-authenticate", b"Bearer"), *close]
                )
                return
            scope.setdefault("state", {})[_PRINCIPAL_KEY] = found
        elif (path == "/logout" or path.startswith(("/review/", "/admin/"))) and (
            await run_in_threadpool(self.page_principal, session_id) is None
        ):
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [(b"location", b"/login"), (b"content-length", b"0"), *close],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


_LOGIN_FIRST = "log in or send Authorization: Bearer <token>"


def create_app(
    store: ReviewStore,
    *,
    secure_cookies: bool = False,
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * MB),
) -> FastAPI:
    """The app for one store bound to a run. ``secure_cookies`` for HTTPS deployments;
    ``max_body_bytes``: request bodies over it are refused (413)."""
    run = store.run
    if run is None:
        raise Invalid("the review app serves one run: open the store with a run directory")
    app = FastAPI(
        title="any2cap review",
        version="1",
        description="Human verification of Any2CapIns records: leased claims, decisions, stats.",
        docs_url=None,  # the Swagger page loads scripts from a CDN, which the CSP forbids
        redoc_url=None,
    )

    # who is calling
    def api_principal(
        authorization: str | None, session_id: str | None
    ) -> tuple[UserInfo | None, str | None]:
        """(user, None) for a bearer token; (user, csrf) for a session cookie."""
        scheme, token = get_authorization_scheme_param(authorization)
        if authorization and scheme.lower() == "bearer" and token:
            return store.user_for_token(token), None
        if session_id:
            found = store.session_user(session_id)
            if found is not None:
                return found
        return None, None

    def page_principal(session_id: str | None) -> tuple[UserInfo, str] | None:
        return store.session_user(session_id) if session_id else None

    # Last added runs first: security headers on every answer, then the body limit, then
    # credentials before any body is read.
    app.add_middleware(CredentialsFirst, api_principal=api_principal, page_principal=page_principal)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    static_version = hashlib.sha256(
        b"".join(p.read_bytes() for p in sorted((HERE / "static").iterdir()) if p.is_file())
    ).hexdigest()[:10]

    def render(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
        ctx = {
            "static_version": static_version,
            "run": run,
            "user": getattr(request.state, "user", None),
            "csrf": getattr(request.state, "csrf", ""),
            **context,
        }
        return HTMLResponse(env.get_template(name).render(**ctx), status_code=code)

    def principal(
        request: Request, creds: HTTPAuthorizationCredentials | None
    ) -> tuple[UserInfo | None, str | None]:
        found: tuple[UserInfo | None, str | None] | None = request.scope.get("state", {}).get(
            _PRINCIPAL_KEY
        )
        if found is not None:  # CredentialsFirst looked it up from the same headers
            return found
        return api_principal(
            request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE)
        )

    def api_user(role: str) -> Callable[..., UserInfo]:
        def dependency(
            request: Request,
            creds: Bearer,
        ) -> UserInfo:
            user, csrf = principal(request, creds)
            if user is None:
                raise _APIError(401, _LOGIN_FIRST)
            if csrf is not None and request.method not in ("GET", "HEAD", "OPTIONS"):
                sent = request.headers.get("x-csrf-token", "")
                if not auth.same(sent, csrf):
                    raise _APIError(403, "missing or wrong X-CSRF-Token header")
            if not user.has(role):
                raise _APIError(403, f"this needs the {role} role (you are {user.role})")
            request.state.user, request.state.csrf = user, csrf or ""
            return user

        return dependency

    def page_user(role: str) -> Callable[..., UserInfo]:
        def dependency(request: Request) -> UserInfo:
            session_id = request.cookies.get(SESSION_COOKIE)
            found = store.session_user(session_id) if session_id else None
            if found is None:
                raise _NeedLogin()
            user, csrf = found
            request.state.user, request.state.csrf = user, csrf
            if not user.has(role):
                raise _HTMLError(403, f"This page needs the {role} role; you are {user.role}.")
            return user

        return dependency

    def check_csrf(request: Request, sent: str) -> None:
        if not auth.same(sent, getattr(request.state, "csrf", "") or "x"):
            raise _HTMLError(403, "The form's security token is missing or stale: reload the page.")

    annotator_api = Depends(api_user("annotator"))
    reviewer_api = Depends(api_user("reviewer"))
    admin_api = Depends(api_user("admin"))
    annotator_page = Depends(page_user("annotator"))
    reviewer_page = Depends(page_user("reviewer"))
    admin_page = Depends(page_user("admin"))

    # errors
    @app.exception_handler(_APIError)
    async def _api_error(request: Request, exc: _APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(ReviewError)
    async def _review_error(request: Request, exc: ReviewError) -> Response:
        body: dict[str, Any] = {"detail": str(exc)}
        if isinstance(exc, StaleVersion):
            body["current_version"] = exc.current_version
        if request.url.path.startswith(("/api/", "/media/")):
            return JSONResponse(body, status_code=exc.status)
        return render(request, "error.html", exc.status, message=str(exc), status=exc.status)

    @app.exception_handler(_NeedLogin)
    async def _need_login(request: Request, exc: _NeedLogin) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(_HTMLError)
    async def _html_error(request: Request, exc: _HTMLError) -> Response:
        return render(request, "error.html", exc.status, message=str(exc), status=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {
                "loc": list(e.get("loc", ())),
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        if request.url.path.startswith("/api/") or not request.url.path.startswith(
            ("/review", "/admin")
        ):
            return JSONResponse({"detail": errors}, status_code=422)
        message = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in errors)
        return render(request, "error.html", 422, message=message, status=422)

    # serialising items
    def item_out(view: ItemView) -> ItemOut:
        return ItemOut(
            id=view.id,
            clip_id=view.clip_id,
            version=view.version,
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
                )
                for r in view.prior_reviews
            ],
            record=view.record.model_dump(mode="json"),
        )

    # JSON API
    @app.post(
        "/api/claim",
        response_model=ItemOut,
        responses={204: {"description": "nothing left to review for you"}, **ERRORS},
        tags=["queue"],
    )
    def api_claim(user: UserInfo = annotator_api) -> Response | ItemOut:
        """Lease the next item (or get back the one you hold). 204 when nothing is left."""
        view = store.claim(user)
        if view is None:
            return Response(status_code=204)
        return item_out(view)

    @app.get(
        "/api/items/{item_id}",
        response_model=ItemOut,
        responses={404: {"model": ErrorOut}, **ERRORS},
        tags=["queue"],
    )
    def api_item(item_id: ItemId, user: UserInfo = annotator_api) -> ItemOut:
        """An item you hold a lease on (reviewers and admins: any item of the run)."""
        return item_out(store.item(user, item_id))

    @app.post(
        "/api/items/{item_id}/decision",
        response_model=DecisionOut,
        responses={
            404: {"model": ErrorOut},
            409: {"model": ErrorOut, "description": "lease lost, or stale version"},
            422: {"description": "invalid decision"},
            **ERRORS,
        },
        tags=["queue"],
    )
    def api_decide(
        item_id: ItemId, body: DecisionIn, user: UserInfo = annotator_api
    ) -> DecisionOut:
        """Accept, reject (reason code + note) or edit (new text per field) a leased item."""
        result = store.decide(
            user,
            item_id,
            body.decision,
            body.version,
            edits={str(k): v for k, v in body.edits.items()},
            reason=body.reason,
            note=body.note,
        )
        return DecisionOut(**result.__dict__)

    @app.post(
        "/api/items/{item_id}/renew",
        response_model=LeaseOut,
        responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, **ERRORS},
        tags=["queue"],
    )
    def api_renew(item_id: ItemId, user: UserInfo = annotator_api) -> LeaseOut:
        """Extend your lease (the page does this while it is open)."""
        return LeaseOut(item_id=item_id, lease_expires_at=store.renew(user, item_id))

    @app.post(
        "/api/items/{item_id}/skip",
        response_model=SkipOut,
        responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, **ERRORS},
        tags=["queue"],
    )
    def api_skip(item_id: ItemId, user: UserInfo = annotator_api) -> SkipOut:
        """Give the item back; what happens to it is the run's skip policy."""
        return SkipOut(item_id=item_id, state=store.skip(user, item_id))

    @app.post("/api/lint", response_model=LintOut, responses=ERRORS, tags=["text"])
    def api_lint(body: LintIn, user: UserInfo = annotator_api) -> LintOut:
        """Word count and structural warnings for a field's text."""
        return LintOut(
            words=word_count(body.text), warnings=structural_warnings(body.field, body.text)
        )

    @app.get("/api/me", response_model=MeOut, responses=ERRORS, tags=["users"])
    def api_me(user: UserInfo = annotator_api) -> MeOut:
        return MeOut(name=user.name, role=user.role)

    @app.get("/api/stats", responses=ERRORS, tags=["stats"])
    def api_stats(user: UserInfo = reviewer_api) -> dict[str, Any]:
        """Queue sizes, throughput, decision/edit rates and agreement (reviewers, admins)."""
        return store.stats()

    @app.get("/api/claims", response_model=list[ClaimOut], responses=ERRORS, tags=["admin"])
    def api_claims(user: UserInfo = admin_api) -> list[ClaimOut]:
        """Live leases (admins)."""
        return [ClaimOut(**c.__dict__) for c in store.claims()]

    @app.post(
        "/api/claims/{claim_id}/release",
        status_code=204,
        responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, **ERRORS},
        tags=["admin"],
    )
    def api_release(
        claim_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], user: UserInfo = admin_api
    ) -> Response:
        """Release someone's lease so the item goes back to the queue (admins)."""
        store.release(user, claim_id)
        return Response(status_code=204)

    # media
    @app.get(
        "/media/{item_id}/{index}", tags=["media"], responses={404: {"model": ErrorOut}, **ERRORS}
    )
    def media(
        item_id: ItemId,
        index: Annotated[int, PathParam(ge=0, le=10_000)],
        request: Request,
        creds: Bearer,
    ) -> Response:
        """A media file of an item: its source video or a payload in the artifact store."""
        user, _ = principal(request, creds)
        if user is None:
            return JSONResponse({"detail": "log in first"}, status_code=401)
        view = store.item(user, item_id)
        target, local, media_type = resolve_media(view.record, index, run.artifacts_root)
        disposition = (
            {}
            if media_type != "application/octet-stream"
            else {"content-disposition": "attachment"}
        )
        headers = {"cache-control": "private, max-age=3600", **disposition}
        if local:
            return FileResponse(target, media_type=media_type, headers=headers)

        def chunks() -> Any:
            with fsspec.open(target, "rb") as f:
                while block := f.read(1 << 16):
                    yield block

        return StreamingResponse(chunks(), media_type=media_type, headers=headers)

    # pages
    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/review", status_code=303)

    @app.get("/login", include_in_schema=False)
    def login_page(request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        response = render(request, "login.html", login_csrf=token, error=None)
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=secure_cookies,
            max_age=3600,
        )
        return response

    @app.post("/login", include_in_schema=False)
    def login(
        request: Request,
        name: Annotated[str, Form(max_length=100)],
        password: Annotated[str, Form(max_length=1000)],
        csrf: Annotated[str, Form(max_length=200)],
    ) -> Response:
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not auth.same(csrf, expected):
            raise _HTMLError(403, "The login form expired: reload the page and try again.")
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
            secure=secure_cookies,
            max_age=12 * 3600,
        )
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(
        request: Request,
        csrf: Annotated[str, Form(max_length=200)],
        user: UserInfo = annotator_page,
    ) -> Response:
        check_csrf(request, csrf)
        store.end_session(request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/review", include_in_schema=False)
    def review_home(request: Request, user: UserInfo = annotator_page) -> Response:
        held = store.current(user)
        if held is not None:
            return RedirectResponse(f"/review/items/{held.id}", status_code=303)
        return render(request, "start.html", queue=store.queue_counts(), empty=False)

    def _next(request: Request, user: UserInfo) -> Response:
        view = store.claim(user)
        if view is None:
            return render(request, "start.html", queue=store.queue_counts(), empty=True)
        return RedirectResponse(f"/review/items/{view.id}", status_code=303)

    @app.post("/review/next", include_in_schema=False)
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
    ) -> HTMLResponse:
        media = media_of(view.record)
        expected = "disputed" if view.claim_kind == "adjudication" else "pending"
        editable = view.claim_id is not None and view.state == expected
        policy = store.policy()
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
            lease_ttl=policy.lease_ttl_s,
            editable=editable,
            error=error,
            stale=stale,
            # text for fields this record does not have (a stale form) is shown, not dropped
            unsaved=values
            if stale and not editable
            else {k: v for k, v in (values or {}).items() if k not in view.machine} or None,
        )

    @app.get("/review/items/{item_id}", include_in_schema=False)
    def review_item(item_id: ItemId, request: Request, user: UserInfo = annotator_page) -> Response:
        return screen(request, store.item(user, item_id))

    @app.post("/review/items/{item_id}/decision", include_in_schema=False)
    async def review_decide(
        item_id: ItemId, request: Request, user: UserInfo = annotator_page
    ) -> Response:
        form = await request.form(max_files=0, max_fields=50, max_part_size=MAX_FIELD_CHARS * 4)
        data = {k: v for k, v in form.items() if isinstance(v, str)}
        check_csrf(request, data.get("csrf", ""))
        action = data.get("action", "")
        # every field the form sent; the store refuses names the item's record lacks
        values = {
            key.removeprefix("field_"): value.replace("\r\n", "\n")
            for key, value in data.items()
            if key.startswith("field_")
        }
        try:
            version = int(data.get("version", ""))
            if not 1 <= version <= MAX_ID:
                raise ValueError
        except ValueError:
            raise _HTMLError(422, "The form has no valid item version: reload the page.") from None

        def decide() -> Response:
            try:
                view = store.item(user, item_id)
                if action == "reject":
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
                )
            return _next(request, user)

        return await run_in_threadpool(decide)

    @app.post("/review/items/{item_id}/skip", include_in_schema=False)
    def review_skip(
        item_id: ItemId,
        request: Request,
        csrf: Annotated[str, Form(max_length=200)],
        user: UserInfo = annotator_page,
    ) -> Response:
        check_csrf(request, csrf)
        store.skip(user, item_id)
        return _next(request, user)

    @app.get("/dashboard", include_in_schema=False)
    def dashboard(request: Request, user: UserInfo = reviewer_page) -> Response:
        return render(request, "dashboard.html", stats=store.stats())

    @app.get("/admin", include_in_schema=False)
    def admin(request: Request, user: UserInfo = admin_page) -> Response:
        return render(
            request,
            "admin.html",
            claims=store.claims(),
            users=store.users(),
            policy=store.policy(),
            audit=store.audit(limit=50, newest=True),
        )

    @app.post("/admin/claims/{claim_id}/release", include_in_schema=False)
    def admin_release(
        claim_id: Annotated[int, PathParam(ge=1, le=MAX_ID)],
        request: Request,
        csrf: Annotated[str, Form(max_length=200)],
        user: UserInfo = admin_page,
    ) -> Response:
        check_csrf(request, csrf)
        store.release(user, claim_id)
        return RedirectResponse("/admin", status_code=303)

    return app


class _APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
