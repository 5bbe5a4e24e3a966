"""Accounts: users and passwords, API tokens, browser sessions and login throttling."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from any2capins.workflows.review import auth
from any2capins.workflows.review._base import StoreBase
from any2capins.workflows.review._db import retrying
from any2capins.workflows.review._errors import Conflict, Invalid, NotFound, Throttled
from any2capins.workflows.review._types import (
    UserInfo,
)
from any2capins.workflows.review.models import (
    ROLES,
    ApiToken,
    LoginThrottle,
    User,
    WebSession,
)

SESSION_TTL = timedelta(hours=12)


class AccountsMixin(StoreBase):
    """Users, tokens, sessions and login throttling."""

    @retrying
    def add_user(
        self, name: str, role: str, password: str | None, actor: str = "admin-cli"
    ) -> UserInfo:
        if role not in ROLES:
            raise Invalid(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        name = name.strip()
        if (
            not name
            or len(name) > 100
            or not name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        ):
            raise Invalid("user names are 1-100 letters, digits, '-', '_' or '.'")
        if password is not None:
            auth.check_new_password(password, name)
        hashed = auth.hash_password(password) if password is not None else None
        with self._write() as s:
            if s.scalar(select(User.id).where(User.name == name)) is not None:
                raise Conflict(f"user {name!r} already exists")
            user = User(
                name=name, role=role, password_hash=hashed, created_at=self._now(), disabled=False
            )
            s.add(user)
            s.flush()
            self._audit(s, actor, "user_add", after={"user": name, "role": role})
            return UserInfo(user.id, user.name, user.role)

    @retrying
    def set_password(self, name: str, password: str, actor: str = "admin-cli") -> None:
        """Set ``name``'s password; ends their sessions and lifts their account's lockout."""
        auth.check_new_password(password, name)
        hashed = auth.hash_password(password)
        with self._write() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFound(f"no user {name!r}")
            user.password_hash = hashed
            s.execute(delete(WebSession).where(WebSession.user_id == user.id))
            s.execute(
                delete(LoginThrottle).where(
                    LoginThrottle.kind == "account", LoginThrottle.subject == name
                )
            )
            self._audit(s, actor, "user_password", after={"user": name})

    def users(self) -> list[tuple[UserInfo, bool]]:
        with self._read() as s:
            return [
                (UserInfo(u.id, u.name, u.role), u.disabled)
                for u in s.scalars(select(User).order_by(User.name))
            ]

    def authenticate(self, name: str, password: str, address: str | None = None) -> UserInfo | None:
        """The user whose name and password these are, else None; throttled per account name
        and per client ``address`` (:class:`LoginLimits`): raises :class:`Throttled` while
        either is locked out (the right password included) and on the failure that locks
        it. Failed logins and lockouts are audited."""
        keys = [("account", name[:200])]
        if address:
            keys.append(("address", address[:200]))
        # Each attempt is counted before its password is checked, so a burst of parallel
        # guesses (or several server processes) cannot get past the limit.
        self._login_reserve(keys)
        try:
            with self._read() as s:
                user = s.scalar(select(User).where(User.name == name))
            stored = user.password_hash if user is not None and not user.disabled else None
            ok = auth.verify_password(stored, password) and user is not None
        except BaseException:
            self._login_settle(keys, None, name, address)
            raise
        if not ok or user is None:
            self._login_settle(keys, False, name, address)
            return None
        self._login_settle(keys, True, name, address)
        return UserInfo(user.id, user.name, user.role)

    def _throttle_rows(
        self, s: Session, keys: list[tuple[str, str]], now: datetime
    ) -> list[LoginThrottle]:
        """The throttle rows of ``keys``, created as needed and locked (in key order)."""
        insert: Callable[..., Any] = pg_insert if self.dialect == "postgresql" else sqlite_insert
        for kind, subject in sorted(keys):
            s.execute(
                insert(LoginThrottle)
                .values(kind=kind, subject=subject, failures=0, window_start=now, lockouts=0)
                .on_conflict_do_nothing()
            )
        wanted = or_(*(and_(LoginThrottle.kind == k, LoginThrottle.subject == v) for k, v in keys))
        return list(
            s.scalars(
                select(LoginThrottle)
                .where(wanted)
                .order_by(LoginThrottle.kind, LoginThrottle.subject)
                .with_for_update()
            )
        )

    @retrying
    def _login_reserve(self, keys: list[tuple[str, str]]) -> None:
        limits = self.login_limits
        now = self._now()
        with self._write() as s:
            rows = self._throttle_rows(s, keys, now)
            wait = 0.0
            for row in rows:
                if row.locked_until is not None and row.locked_until > now:
                    wait = max(wait, (row.locked_until - now).total_seconds())
                elif now - row.window_start >= limits.window:
                    row.failures, row.window_start = 0, now
                elif row.failures >= limits.limit(row.kind):
                    # the window's budget is taken by attempts still in flight
                    wait = max(wait, limits.lockout(row.lockouts).total_seconds())
            if wait:
                raise Throttled(max(1, math.ceil(wait)))
            for row in rows:
                row.failures += 1

    @retrying
    def _login_settle(
        self, keys: list[tuple[str, str]], ok: bool | None, name: str, address: str | None
    ) -> None:
        """Settle a reserved attempt: ``ok`` True (success), False (wrong name or password),
        None (not checked: an error)."""
        limits = self.login_limits
        now = self._now()
        locked: list[tuple[LoginThrottle, timedelta]] = []
        with self._write() as s:
            rows = self._throttle_rows(s, keys, now)
            for row in rows:
                if ok is None or (ok and row.kind == "address"):
                    row.failures = max(0, row.failures - 1)
                elif ok:
                    row.failures, row.lockouts, row.locked_until = 0, 0, None
                else:
                    row.last_failure_at = now
                    if row.failures >= limits.limit(row.kind):
                        length = limits.lockout(row.lockouts)
                        row.locked_until = now + length
                        row.lockouts += 1
                        row.failures, row.window_start = 0, now
                        locked.append((row, length))
            if ok is False:
                actor = name[:100] or "?"
                self._audit(s, actor, "login_failed", after={"user": name, "address": address})
                for row, length in locked:
                    self._audit(
                        s,
                        actor,
                        "login_lockout",
                        after={
                            "kind": row.kind,
                            "subject": row.subject,
                            "seconds": int(length.total_seconds()),
                            "lockouts": row.lockouts,
                            "until": row.locked_until,
                        },
                    )
                # forget quiet subjects (their lockout count starts again from the first)
                cutoff = now - limits.forget_after
                s.execute(
                    delete(LoginThrottle).where(
                        LoginThrottle.window_start < cutoff,
                        or_(
                            LoginThrottle.locked_until.is_(None),
                            LoginThrottle.locked_until < cutoff,
                        ),
                    )
                )
        if locked:
            raise Throttled(max(1, math.ceil(max(t for _, t in locked).total_seconds())))

    @retrying
    def create_token(self, name: str, label: str = "", actor: str = "admin-cli") -> str:
        token = auth.new_token()
        with self._write() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFound(f"no user {name!r} (add it with `any2cap review users add`)")
            s.add(
                ApiToken(
                    user_id=user.id,
                    token_sha256=auth.digest(token),
                    label=label,
                    created_at=self._now(),
                )
            )
            self._audit(s, actor, "token_create", after={"user": name, "label": label})
        return token

    @retrying
    def revoke_tokens(self, name: str, actor: str = "admin-cli") -> int:
        with self._write() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFound(f"no user {name!r}")
            result = s.execute(
                update(ApiToken)
                .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
            n = int(getattr(result, "rowcount", 0) or 0)
            self._audit(s, actor, "token_revoke", after={"user": name, "tokens": n})
            return n

    def user_for_token(self, token: str) -> UserInfo | None:
        if not token.startswith(auth.TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = auth.digest(token)
        with self._read() as s:
            row = s.execute(
                select(User, ApiToken)
                .join(ApiToken, ApiToken.user_id == User.id)
                .where(ApiToken.token_sha256 == digest, ApiToken.revoked_at.is_(None))
            ).first()
        if row is None or row[0].disabled:
            return None
        user, tok = row
        now = self._now()
        # Recording use is a write: once every few minutes is enough to see idle tokens.
        if tok.last_used_at is None or now - tok.last_used_at > timedelta(minutes=5):
            with contextlib.suppress(DBAPIError), self._write() as s:
                s.execute(update(ApiToken).where(ApiToken.id == tok.id).values(last_used_at=now))
        return UserInfo(user.id, user.name, user.role)

    @retrying
    def create_session(self, user: UserInfo) -> tuple[str, str]:
        """A browser session: returns (session id for the cookie, CSRF token)."""
        session_id, csrf = auth.new_secret(), auth.new_secret()
        now = self._now()
        with self._write() as s:
            s.execute(delete(WebSession).where(WebSession.expires_at < now))
            s.add(
                WebSession(
                    id_sha256=auth.digest(session_id),
                    user_id=user.id,
                    csrf=csrf,
                    created_at=now,
                    expires_at=now + SESSION_TTL,
                )
            )
            self._audit(s, user.name, "login")
        return session_id, csrf

    def session_user(self, session_id: str) -> tuple[UserInfo, str] | None:
        if len(session_id) > 200:
            return None
        with self._read() as s:
            row = s.execute(
                select(User, WebSession)
                .join(WebSession, WebSession.user_id == User.id)
                .where(WebSession.id_sha256 == auth.digest(session_id))
            ).first()
        if row is None or row[0].disabled or row[1].expires_at < self._now():
            return None
        return UserInfo(row[0].id, row[0].name, row[0].role), row[1].csrf

    @retrying
    def end_session(self, session_id: str) -> None:
        with self._write() as s:
            s.execute(delete(WebSession).where(WebSession.id_sha256 == auth.digest(session_id)))
