"""The OpenAI-compatible client layer: one chat request in, one answer out, through the
response cache, the budget, the rate limits and retries (429/5xx/timeouts/malformed
bodies, honouring ``Retry-After``), with token and cost accounting.

The openai SDK does the HTTP (its own retries are off: ours share the rate limiter's
cool-down and count against the budget). Works with OpenAI, Azure OpenAI's v1 endpoint,
vLLM, SGLang and Ollama; ``json_mode: auto`` steps down from ``json_schema`` to
``json_object`` to plain text when a server rejects the response format.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import openai

from any2capins.annotators.base import MissingDependency
from any2capins.annotators.captions.cache import CachedResponse, ResponseCache, Usage, request_key
from any2capins.annotators.captions.config import WriterConfig
from any2capins.annotators.captions.errors import AwaitingBatch, CaptionAPIError
from any2capins.annotators.captions.limits import (
    Budget,
    RateLimiter,
    backoff_delay,
    retry_after_seconds,
)

JSON_MODES = ("json_schema", "json_object", "text")
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "structured output", "schema")


def response_format(key: str, mode: str) -> dict[str, Any] | None:
    if mode == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {
                "name": key,
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {key: {"type": "string"}},
                    "required": [key],
                    "additionalProperties": False,
                },
            },
        }
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def estimate_tokens(messages: list[dict[str, Any]], tokens_per_image: int) -> int:
    """A cheap upper-ish estimate (4 characters per token) for limits and the budget."""
    total = 0
    for msg in messages:
        total += 4
        content = msg.get("content")
        if isinstance(content, str):
            total += len(content) // 4 + 1
            continue
        for part in content or []:
            if part.get("type") == "text":
                total += len(part.get("text", "")) // 4 + 1
            else:
                total += tokens_per_image
    return total


def endpoint_label(base_url: str | None) -> str:
    """Scheme, host and path of the endpoint: never credentials or query strings."""
    if not base_url:
        return "https://api.openai.com/v1"
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}".rstrip("/")


@dataclass(frozen=True)
class Answer:
    content: str | None
    refusal: str | None
    finish_reason: str | None
    usage: Usage
    cost_usd: float  # what the answer cost when it was bought
    paid_usd: float  # what this call paid: 0 for a cache hit
    from_cache: bool
    json_mode: str
    # The request's key in the response cache (see CaptionClient.reject).
    cache_key: str = ""


def _answer(
    data: dict[str, Any],
    usage: Usage,
    cost: float,
    paid: float,
    hit: bool,
    mode: str,
    cache_key: str = "",
) -> Answer:
    choice = data["choices"][0]
    message = choice.get("message") or {}
    content = message.get("content")
    refusal = message.get("refusal")
    return Answer(
        content=content if isinstance(content, str) else None,
        refusal=refusal if isinstance(refusal, str) and refusal else None,
        finish_reason=choice.get("finish_reason"),
        usage=usage,
        cost_usd=cost,
        paid_usd=paid,
        from_cache=hit,
        json_mode=mode,
        cache_key=cache_key,
    )


def usage_of(data: dict[str, Any], estimate_in: int) -> tuple[Usage, bool]:
    """The reported usage, or an estimate (flagged) when the server reports none."""
    usage = data.get("usage")
    if not isinstance(usage, dict) or "prompt_tokens" not in usage:
        message = data["choices"][0].get("message") or {}
        text = message.get("content") or message.get("refusal") or ""
        return Usage(estimate_in, 0, len(text) // 4 + 1), True
    details = usage.get("prompt_tokens_details") or {}
    return (
        Usage(
            int(usage.get("prompt_tokens") or 0),
            int(details.get("cached_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        ),
        False,
    )


def check_shape(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not data.get("choices"):
        raise ValueError("the response has no choices")
    if not isinstance(data["choices"][0], dict) or "message" not in data["choices"][0]:
        raise ValueError("the response's first choice has no message")
    return data


def resolve_api_key(config: WriterConfig) -> str:
    """The key from ``$api_key_env``; servers on a ``base_url`` may need none."""
    api_key = os.environ.get(config.api_key_env)
    if api_key:
        return api_key
    if config.base_url is None:
        raise MissingDependency(
            f"the openai caption writer needs an endpoint: set ${config.api_key_env} "
            "for api.openai.com, or OPENAI_BASE_URL / params.base_url for another "
            "OpenAI-compatible server (vLLM, SGLang, Ollama, Azure OpenAI)"
        )
    return "no-key"  # local servers (vLLM, SGLang, Ollama) accept any key


@dataclass
class ClientStats:
    sent: int = 0
    retries: int = 0
    cache_hits: int = 0
    queued: int = 0
    usage_estimated: int = 0


class CaptionClient:
    def __init__(
        self,
        config: WriterConfig,
        cache: ResponseCache,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.cache = cache
        self.sleep = sleep
        api_key = resolve_api_key(config)
        self.model = config.model or ""
        self.endpoint = endpoint_label(config.base_url)
        self.sdk = openai.OpenAI(
            api_key=api_key,
            base_url=config.base_url,
            max_retries=0,
            timeout=config.limits.timeout_s,
            default_query=dict(config.default_query) or None,
        )
        lim = config.limits
        self.limiter = RateLimiter(
            lim.requests_per_minute, lim.tokens_per_minute, lim.rate_window_s
        )
        self.budget = Budget(config.budget_usd, config.budget_scope, cache)
        self.json_mode: str = "json_schema" if config.json_mode == "auto" else config.json_mode
        self.stats = ClientStats()
        self._lock = threading.Lock()

    def close(self) -> None:
        self.sdk.close()

    def body(
        self, messages: list[dict[str, Any]], key: str, clip_id: str, mode: str
    ) -> dict[str, Any]:
        opts = self.config.request
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if opts.temperature is not None:
            body["temperature"] = opts.temperature
        if opts.top_p is not None:
            body["top_p"] = opts.top_p
        if opts.seed is not None:
            body["seed"] = opts.seed
        body[opts.max_tokens_field] = opts.max_output_tokens
        fmt = response_format(key, mode)
        if fmt is not None:
            body["response_format"] = fmt
        if opts.prompt_cache_key:
            body["prompt_cache_key"] = f"any2capins-{clip_id}"
        body.update(opts.extra_body)
        return body

    def _downgrade(self, failed_mode: str) -> bool:
        """Step the JSON mode down once per failing mode; False when nothing is left."""
        with self._lock:
            if self.json_mode != failed_mode:
                return True  # another thread already stepped down
            i = JSON_MODES.index(failed_mode)
            if i + 1 >= len(JSON_MODES):
                return False
            self.json_mode = JSON_MODES[i + 1]
            return True

    def complete(
        self, messages: list[dict[str, Any]], key: str, clip_id: str, run_id: str
    ) -> Answer:
        """One answer for one request: from the cache, or bought (or queued in batch mode)."""
        while True:
            mode = self.json_mode
            body = self.body(messages, key, clip_id, mode)
            cache_key = request_key(body)
            hit = self.cache.get(cache_key) if self.config.cache else None
            if hit is not None:
                with self._lock:
                    self.stats.cache_hits += 1
                return self._from_cache(hit, mode)
            if self.config.mode == "batch":
                self.cache.add_pending(cache_key, self.endpoint, self.model, body, clip_id, run_id)
                with self._lock:
                    self.stats.queued += 1
                raise AwaitingBatch(
                    "queued for the Batch API: run `any2cap captions batch run RUN_DIR`, then "
                    "build again"
                )
            try:
                return self._send(body, cache_key, clip_id, run_id, mode)
            except openai.BadRequestError as e:
                text = f"{e.message} {json.dumps(e.body, default=str)}".lower()
                rejects_format = mode != "text" and any(w in text for w in _FORMAT_WORDS)
                if self.config.json_mode == "auto" and rejects_format and self._downgrade(mode):
                    continue
                raise CaptionAPIError(f"the endpoint refused the request (400): {e.message}") from e

    def _from_cache(self, hit: CachedResponse, mode: str) -> Answer:
        return _answer(hit.response, hit.usage, hit.cost_usd, 0.0, True, mode, hit.key)

    def reject(self, answer: Answer, reason: str) -> None:
        """The caller found ``answer`` wanting: keep it in the cache (and its cost in the
        ledger) but never replay it, so the next run asks again."""
        if answer.cache_key:
            self.cache.mark_invalid(answer.cache_key, reason)

    def _send(
        self, body: dict[str, Any], cache_key: str, clip_id: str, run_id: str, mode: str
    ) -> Answer:
        cfg = self.config
        est_in = estimate_tokens(body["messages"], cfg.images.tokens_per_image)
        max_out = cfg.request.max_output_tokens
        reserve = cfg.prices.cost(est_in, 0, max_out, batch=False)
        extra = {k: v for k, v in body.items() if k not in ("model", "messages")}
        attempt = 0
        while True:
            self.budget.reserve(run_id, reserve)
            slot = self.limiter.acquire(est_in + max_out)
            retry_after: float | None = None
            try:
                with self._lock:
                    self.stats.sent += 1
                raw = self.sdk.chat.completions.with_raw_response.create(
                    model=body["model"],
                    messages=cast(Any, body["messages"]),
                    extra_body=extra,
                )
                data = check_shape(json.loads(raw.text))
            except (openai.APIStatusError, openai.APIConnectionError, ValueError) as e:
                self.budget.release(reserve)
                self.limiter.settle(slot, 0)
                status = getattr(e, "status_code", None)
                transient = (
                    isinstance(e, openai.APIConnectionError | ValueError)
                    or status in (408, 409, 429)
                    or (status is not None and status >= 500)
                )
                if not transient:
                    raise
                if isinstance(e, openai.APIStatusError):
                    retry_after = retry_after_seconds(e.response.headers)
                if attempt >= cfg.limits.max_retries:
                    what = f"HTTP {status}" if status else type(e).__name__
                    raise CaptionAPIError(
                        f"{what} after {attempt + 1} attempts: {str(e)[:300]}"
                    ) from e
                delay = backoff_delay(
                    attempt, cfg.limits.backoff_base_s, cfg.limits.backoff_max_s, retry_after
                )
                if status == 429:
                    self.limiter.pause(delay)  # the limit is the key's, not this thread's
                with self._lock:
                    self.stats.retries += 1
                self.sleep(delay)
                attempt += 1
                continue
            usage, estimated = usage_of(data, est_in)
            cost = cfg.prices.cost(usage.tokens_in, usage.tokens_cached, usage.tokens_out, False)
            try:
                self.cache.put(cache_key, self.model, data, usage, cost, "online", run_id, clip_id)
            finally:
                self.budget.release(reserve)
                self.limiter.settle(slot, usage.tokens_in + usage.tokens_out)
            if estimated:
                with self._lock:
                    self.stats.usage_estimated += 1
            return _answer(data, usage, cost, cost, False, mode, cache_key)
