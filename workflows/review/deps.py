"""What the routers share: the store and settings on ``app.state``, who is calling (bearer
token or session cookie), the role checks of API and page dependencies, the CSRF check of
forms, and the errors they raise (the app turns them into answers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from any2capins.workflows.review import auth
from any2capins.workflows.review.store import ReviewStore, RunBinding, UserInfo

SESSION_COOKIE = "a2c_session"
LOGIN_COOKIE = "a2c_login"
MAX_ID = 2**31 - 1
# Where the gate in front of the app finds the API caller it already looked up.
PRINCIPAL_KEY = "a2c_api_principal"
LOGIN_FIRST = "log in or send Authorization: Bearer <token>"

ItemId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
ClaimId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
# Module level: FastAPI resolves these (string) annotations in the module's namespace.
bearer = HTTPBearer(auto_error=False, description="API token from `any2cap review tokens create`")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


class NeedLogin(Exception):
    """A page needs a login: the app redirects to the login page."""


class HTMLError(Exception):
    """A page's error: the app renders the error page with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class APIError(Exception):
    """An API error: the app answers JSON ``{"detail": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def store_of(request: Request) -> ReviewStore:
    store: ReviewStore = request.app.state.store
    return store


def run_of(request: Request) -> RunBinding:
    run: RunBinding = request.app.state.run
    return run


def api_principal(
    store: ReviewStore, authorization: str | None, session_id: str | None
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


def page_principal(store: ReviewStore, session_id: str | None) -> tuple[UserInfo, str] | None:
    return store.session_user(session_id) if session_id else None


def principal(
    request: Request, creds: HTTPAuthorizationCredentials | None
) -> tuple[UserInfo | None, str | None]:
    found: tuple[UserInfo | None, str | None] | None = request.scope.get("state", {}).get(
        PRINCIPAL_KEY
    )
    if found is not None:  # CredentialsFirst looked it up from the same headers
        return found
    return api_principal(
        store_of(request), request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE)
    )


def api_user(role: str) -> Callable[..., UserInfo]:
    def dependency(
        request: Request,
        creds: Bearer,
    ) -> UserInfo:
        user, csrf = principal(request, creds)
        if user is None:
            raise APIError(401, LOGIN_FIRST)
        if csrf is not None and request.method not in ("GET", "HEAD", "OPTIONS"):
            sent = request.headers.get("x-csrf-token", "")
            if not auth.same(sent, csrf):
                raise APIError(403, "missing or wrong X-CSRF-Token header")
        if not user.has(role):
            raise APIError(403, f"this needs the {role} role (you are {user.role})")
        request.state.user, request.state.csrf = user, csrf or ""
        return user

    return dependency


def page_user(role: str) -> Callable[..., UserInfo]:
    def dependency(request: Request) -> UserInfo:
        found = page_principal(store_of(request), request.cookies.get(SESSION_COOKIE))
        if found is None:
            raise NeedLogin()
        user, csrf = found
        request.state.user, request.state.csrf = user, csrf
        if not user.has(role):
            raise HTMLError(403, f"This page needs the {role} role; you are {user.role}.")
        return user

    return dependency


def check_csrf(request: Request, sent: str) -> None:
    if not auth.same(sent, getattr(request.state, "csrf", "") or "x"):
        raise HTMLError(403, "The form's security token is missing or stale: reload the page.")


Store = Annotated[ReviewStore, Depends(store_of)]
annotator_api = Depends(api_user("annotator"))
reviewer_api = Depends(api_user("reviewer"))
admin_api = Depends(api_user("admin"))
annotator_page = Depends(page_user("annotator"))
reviewer_page = Depends(page_user("reviewer"))
admin_page = Depends(page_user("admin"))
