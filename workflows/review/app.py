"""The review web app (FastAPI): :func:`create_app` puts the store on ``app.state``, adds the
security middlewares and the error handlers, and assembles the routers: the JSON API
(:mod:`.api`), the HTML pages (:mod:`.pages`) and the media files (:mod:`.media`); the
caller, role and CSRF checks they share are in :mod:`.deps`.

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

import functools
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from any2capins.workflows.review import api, media, pages
from any2capins.workflows.review.deps import (
    LOGIN_FIRST,
    PRINCIPAL_KEY,
    SESSION_COOKIE,
    APIError,
    HTMLError,
    NeedLogin,
    api_principal,
    page_principal,
)
from any2capins.workflows.review.pages import Templates, render
from any2capins.workflows.review.store import (
    Invalid,
    ReviewError,
    ReviewStore,
    StaleVersion,
    UserInfo,
)

HERE = Path(__file__).resolve().parent
MB = 1 << 20
# The largest legitimate body, a decision editing every field of a record with many instances
# in non-ASCII text as a form, stays under 4 MB.
DEFAULT_MAX_BODY_MB = 8.0
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
                await _send_json(send, 401, LOGIN_FIRST, [(b"www-authenticate", b"Bearer"), *close])
                return
            scope.setdefault("state", {})[PRINCIPAL_KEY] = found
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

    # Last added runs first: security headers on every answer, then the body limit, then
    # credentials before any body is read.
    app.add_middleware(
        CredentialsFirst,
        api_principal=functools.partial(api_principal, store),
        page_principal=functools.partial(page_principal, store),
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders)
    app.state.store, app.state.run = store, run
    app.state.secure_cookies = secure_cookies
    app.state.templates = Templates()
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    # errors
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
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

    @app.exception_handler(NeedLogin)
    async def _need_login(request: Request, exc: NeedLogin) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(HTMLError)
    async def _html_error(request: Request, exc: HTMLError) -> Response:
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

    app.include_router(api.router)
    app.include_router(media.router)
    app.include_router(pages.router)
    return app
