"""Throughput and spending controls shared by the threads of one caption writer: sliding-
window rate limits (requests and tokens per minute), a shared cool-down after a 429,
exponential backoff with jitter that honours ``Retry-After``, and the budget cap."""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from any2capins.annotators.captions.cache import ResponseCache
from any2capins.annotators.captions.errors import BudgetExceeded


@dataclass(eq=False)  # identity, not value: two slots may hold the same numbers
class Slot:
    """One admitted request; its token count is corrected once the usage is known."""

    t: float
    tokens: int


class RateLimiter:
    """At most ``rpm`` requests and ``tpm`` tokens in every window of ``window_s`` seconds
    (limits scaled from per minute). Blocks the caller until its request fits."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        scale = window_s / 60.0
        self.max_requests = (
            None if requests_per_minute is None else max(1, int(requests_per_minute * scale))
        )
        self.max_tokens = (
            None if tokens_per_minute is None else max(1, int(tokens_per_minute * scale))
        )
        self.window_s = window_s
        self.clock = clock
        self._slots: deque[Slot] = deque()
        self._tokens = 0
        self._cooldown_until = 0.0
        self._cond = threading.Condition()

    def _expire(self, now: float) -> None:
        while self._slots and self._slots[0].t <= now - self.window_s:
            self._tokens -= self._slots.popleft().tokens

    def _wait_time(self, now: float, tokens: int) -> float:
        if self._cooldown_until > now:
            return self._cooldown_until - now
        if not self._slots:
            return 0.0  # a single request larger than the token limit still gets through
        until_oldest = self._slots[0].t + self.window_s - now
        if self.max_requests is not None and len(self._slots) >= self.max_requests:
            return until_oldest
        if self.max_tokens is not None and self._tokens + tokens > self.max_tokens:
            return until_oldest
        return 0.0

    def acquire(self, tokens: int) -> Slot:
        with self._cond:
            while True:
                now = self.clock()
                self._expire(now)
                wait = self._wait_time(now, tokens)
                if wait <= 0:
                    slot = Slot(now, tokens)
                    self._slots.append(slot)
                    self._tokens += tokens
                    return slot
                self._cond.wait(timeout=wait)

    def settle(self, slot: Slot, tokens: int) -> None:
        """Replace the estimate with the tokens the endpoint reported."""
        with self._cond:
            if slot in self._slots:
                self._tokens += tokens - slot.tokens
            slot.tokens = tokens
            self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        """Nobody sends for ``seconds`` (a 429 applies to the whole key, not one thread)."""
        with self._cond:
            self._cooldown_until = max(self._cooldown_until, self.clock() + seconds)
            self._cond.notify_all()


def retry_after_seconds(
    headers: Mapping[str, str] | None, now: float | None = None
) -> float | None:
    """``retry-after-ms`` (OpenAI), ``retry-after`` in seconds or as an HTTP date."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(
    attempt: int,
    base_s: float,
    max_s: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds before retry ``attempt`` (0-based).

    With a ``Retry-After`` the server's wait is honoured, plus up to 10% jitter so the
    threads that were told the same time do not return at once; otherwise exponential
    backoff with "equal jitter" (half fixed, half random), capped at ``max_s``.
    """
    r = rng or random
    if retry_after is not None:
        return retry_after * (1.0 + 0.1 * r.random())
    d = min(max_s, base_s * (2.0**attempt))
    return d / 2.0 + r.uniform(0.0, d / 2.0)


class Budget:
    """Stops new requests once the spend (ledger) plus requests in flight would pass the cap.

    Each request reserves its worst-case cost (estimated input plus the maximum output)
    before it is sent and releases it once its real cost is in the ledger, so threads
    cannot overshoot together. Once a request is refused the budget stays closed for that
    run: the remaining clips fail cleanly with ``BudgetExceeded``.
    """

    def __init__(self, limit_usd: float | None, scope: str, cache: ResponseCache) -> None:
        self.limit_usd = limit_usd
        self.scope = scope
        self.cache = cache
        self._reserved = 0.0
        self._closed: set[str] = set()
        self._lock = threading.Lock()

    def reserve(self, run_id: str, estimate_usd: float) -> None:
        if self.limit_usd is None:
            return
        key = run_id if self.scope == "run" else "*"
        with self._lock:
            if key in self._closed:
                raise BudgetExceeded(f"the caption budget of ${self.limit_usd:.4f} is exhausted")
            spent = self.cache.spend(run_id if self.scope == "run" else None).cost_usd
            if spent + self._reserved + estimate_usd > self.limit_usd:
                self._closed.add(key)
                raise BudgetExceeded(
                    f"the caption budget of ${self.limit_usd:.4f} is reached (${spent:.4f} spent "
                    f"{'by this run' if self.scope == 'run' else 'in this cache'}, "
                    f"${self._reserved:.4f} in flight, next request up to ${estimate_usd:.4f})"
                )
            self._reserved += estimate_usd

    def release(self, estimate_usd: float) -> None:
        if self.limit_usd is None:
            return
        with self._lock:
            self._reserved = max(0.0, self._reserved - estimate_usd)
