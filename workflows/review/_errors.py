"""The store's errors; each carries the HTTP status the app answers it with."""

from __future__ import annotations

import math


class ReviewError(Exception):
    status = 400


class NotFound(ReviewError):
    status = 404


class Forbidden(ReviewError):
    status = 403


class Conflict(ReviewError):
    status = 409


class StaleVersion(Conflict):
    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


class Invalid(ReviewError):
    status = 422


class Throttled(ReviewError):
    """Too many failed logins for the account or from the address: ``retry_after`` seconds."""

    status = 429

    def __init__(self, retry_after: int) -> None:
        wait = f"{retry_after} s" if retry_after < 120 else f"{math.ceil(retry_after / 60)} min"
        super().__init__(
            f"Too many failed logins for this account or from this address: try again in "
            f"{wait} (an admin can reset the password with `any2cap review users passwd`)."
        )
        self.retry_after = retry_after
