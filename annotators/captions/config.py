"""The caption stage's parameters (recipe ``params``), and how ``writer: auto`` and the
endpoint are resolved from the recipe and the standard ``OPENAI_*`` environment variables.

Secrets never live here: the API key is read from the environment variable named by
``api_key_env`` when the client is built, so it is neither in the config hash nor in
provenance. The endpoint, the model and the writer actually chosen *are* resolved into the
config, so that switching from the grounded writer to an endpoint (or between endpoints)
changes the stage's config hash and re-runs it.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from any2capins.annotators.base import AnnotatorConfig
from any2capins.annotators.captions.crosscheck import CrossCheckSettings
from any2capins.schemas import CAPTION_COMPONENTS

DEFAULT_MODEL = "gpt-4o-mini"
SHORT_PROMPT = "short_prompt"
# The seven requests of a clip, in the order they are submitted.
PARTS: tuple[str, ...] = (*CAPTION_COMPONENTS, SHORT_PROMPT)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WordRange(_Strict):
    min: int = Field(ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> WordRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


def _ranges(**kw: tuple[int, int]) -> dict[str, WordRange]:
    return {k: WordRange(min=lo, max=hi) for k, (lo, hi) in kw.items()}


# A model's components: the paper's captions average 231 words over the six parts.
MODEL_BOUNDS: dict[str, Any] = {
    "components": _ranges(
        dense=(40, 220),
        main_object=(12, 150),
        background=(10, 150),
        camera=(6, 100),
        style=(8, 120),
        action=(12, 150),
    ),
    "total": WordRange(min=120, max=800),
    "short_prompt": WordRange(min=20, max=100),
}
# The grounded writer says only what was measured, which is often little.
GROUNDED_BOUNDS: dict[str, Any] = {
    "components": {c: WordRange(min=4, max=220) for c in CAPTION_COMPONENTS},
    "total": WordRange(min=30, max=1000),
    "short_prompt": WordRange(min=8, max=100),
}


class Bounds(_Strict):
    """Word-count bounds per component, for the six together and for the short prompt."""

    components: dict[str, WordRange]
    total: WordRange
    short_prompt: WordRange

    @field_validator("components")
    @classmethod
    def _known(cls, value: dict[str, WordRange]) -> dict[str, WordRange]:
        unknown = sorted(set(value) - set(CAPTION_COMPONENTS))
        if unknown:
            raise ValueError(f"unknown components {unknown} (known: {list(CAPTION_COMPONENTS)})")
        missing = sorted(set(CAPTION_COMPONENTS) - set(value))
        if missing:
            raise ValueError(f"components {missing} have no bounds")
        return value

    def component(self, name: str) -> WordRange:
        return self.short_prompt if name == SHORT_PROMPT else self.components[name]


def _merge_bounds(defaults: dict[str, Any], given: Any) -> Any:
    """Recipe bounds override the defaults key by key (a recipe may name one component)."""
    if isinstance(given, Bounds) or not isinstance(given, dict):
        return given
    merged: dict[str, Any] = {
        "components": {k: v.model_dump() for k, v in defaults["components"].items()},
        "total": defaults["total"].model_dump(),
        "short_prompt": defaults["short_prompt"].model_dump(),
    }
    for key, value in given.items():
        if key == "components" and isinstance(value, dict):
            merged["components"].update(value)
        else:
            merged[key] = value
    return merged


class RequestOptions(_Strict):
    """What goes into every chat request besides the messages."""

    temperature: float | None = Field(default=0.2, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_output_tokens: int = Field(default=800, ge=16)
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = Field(
        default="max_completion_tokens",
        description="older servers (some Ollama versions) only know max_tokens",
    )
    seed: int | None = None
    prompt_cache_key: bool = Field(
        default=False,
        description="send OpenAI's prompt_cache_key (the clip id) so a clip's 7 requests "
        "share one cache route; leave off for servers that reject unknown fields",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="merged into the JSON body (e.g. vLLM's top_k)"
    )


class Limits(_Strict):
    """Throughput limits of one actor of the stage (see docs/captions.md for pools)."""

    concurrency: int = Field(default=8, ge=1, le=512, description="requests in flight")
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    rate_window_s: float = Field(
        default=60.0,
        gt=0,
        le=60,
        description="limits hold over every window of this length (scaled from per-minute); "
        "shorter windows smooth bursts",
    )
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=6, ge=0, le=50)
    backoff_base_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)


class Prices(_Strict):
    """USD per million tokens; the defaults count tokens but no money."""

    input_per_mtok: float = Field(default=0.0, ge=0)
    cached_input_per_mtok: float | None = Field(
        default=None, ge=0, description="cached prompt tokens (default: the input price)"
    )
    output_per_mtok: float = Field(default=0.0, ge=0)
    batch_discount: float = Field(
        default=0.5, gt=0, le=1, description="fraction of the price paid for Batch API requests"
    )

    def cost(self, tokens_in: int, tokens_cached: int, tokens_out: int, batch: bool) -> float:
        cached_price = (
            self.input_per_mtok
            if self.cached_input_per_mtok is None
            else self.cached_input_per_mtok
        )
        cached = min(tokens_cached, tokens_in)
        usd = (
            (tokens_in - cached) * self.input_per_mtok
            + cached * cached_price
            + tokens_out * self.output_per_mtok
        ) / 1e6
        return usd * (self.batch_discount if batch else 1.0)


class ImageOptions(_Strict):
    """The images each request carries (identical across a clip's seven requests)."""

    keyframes: int = Field(default=4, ge=1, le=32, description="keyframes taken, evenly spaced")
    max_side: int = Field(default=512, ge=32, le=4096)
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    detail: Literal["low", "high", "auto"] = Field(
        default="high",
        description="high: a 512 px keyframe is one tile (255 tokens at OpenAI) and, with the "
        "shared prefix cached, costs little more than low detail (docs/benchmarks.md)",
    )
    condition_images: int = Field(
        default=4, ge=0, le=16, description="condition visuals at most (reference, depth, pose)"
    )
    video_frames: int = Field(
        default=3, ge=1, le=16, description="frames taken from a condition's video payload"
    )
    tokens_per_image: int = Field(
        default=255,
        ge=1,
        description="estimate for rate limits and the budget (OpenAI: 255 for a high-detail "
        "image up to 512 px, 85 at low detail)",
    )


class WriterConfig(AnnotatorConfig):
    """How text is written: the endpoint and its limits, cache, prices, templates, images
    and word bounds. Shared by the ``captions`` and ``instances`` stages."""

    writer: Literal["auto", "grounded", "openai"] = Field(
        default="auto",
        description="auto: openai when an endpoint is configured (params.base_url, "
        "OPENAI_BASE_URL or the API key variable), else grounded",
    )
    model: str | None = Field(
        default=None, description=f"default: $OPENAI_MODEL or {DEFAULT_MODEL}"
    )
    base_url: str | None = Field(default=None, description="default: $OPENAI_BASE_URL")
    api_key_env: str = Field(default="OPENAI_API_KEY", min_length=1)
    default_query: dict[str, str] = Field(
        default_factory=dict, description="query parameters on every call (Azure api-version)"
    )
    json_mode: Literal["auto", "json_schema", "json_object", "text"] = Field(
        default="auto",
        description="auto: json_schema, falling back to json_object, then plain text, when "
        "the endpoint rejects it",
    )
    request: RequestOptions = Field(default_factory=RequestOptions)
    limits: Limits = Field(default_factory=Limits)
    prices: Prices = Field(default_factory=Prices)
    budget_usd: float | None = Field(default=None, ge=0)
    budget_scope: Literal["run", "cache"] = Field(
        default="run",
        description="run: spend of this build invocation; cache: all spend recorded in the cache",
    )
    cache: bool = True
    cache_dir: str | None = Field(
        default=None, description="default: $ANY2CAP_CACHE_DIR or ~/.cache/any2capins/captions"
    )
    mode: Literal["online", "batch"] = Field(
        default="online",
        description="batch: queue uncached requests for the Batch API (any2cap captions batch)",
    )
    repair_attempts: int = Field(default=2, ge=0, le=5)
    templates: str = Field(default="v1", pattern=r"^v\d+$")
    images: ImageOptions = Field(default_factory=ImageOptions)
    bounds: Bounds = Field(default_factory=lambda: Bounds.model_validate(MODEL_BOUNDS))
    grounded_bounds: Bounds = Field(default_factory=lambda: Bounds.model_validate(GROUNDED_BOUNDS))

    @field_validator("bounds", mode="before")
    @classmethod
    def _merge_model_bounds(cls, value: Any) -> Any:
        return _merge_bounds(MODEL_BOUNDS, value)

    @field_validator("grounded_bounds", mode="before")
    @classmethod
    def _merge_grounded_bounds(cls, value: Any) -> Any:
        return _merge_bounds(GROUNDED_BOUNDS, value)

    @model_validator(mode="after")
    def _resolve(self) -> WriterConfig:
        env_url = os.environ.get("OPENAI_BASE_URL") or None
        if self.writer == "auto":
            configured = self.base_url or env_url or os.environ.get(self.api_key_env)
            self.writer = "openai" if configured else "grounded"
        if self.writer == "openai":
            self.base_url = self.base_url or env_url
            self.model = self.model or os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL
        return self

    def effective_bounds(self) -> Bounds:
        return self.grounded_bounds if self.writer == "grounded" else self.bounds

    def resolved_cache_dir(self) -> str:
        if self.cache_dir:
            return os.path.expanduser(self.cache_dir)
        env = os.environ.get("ANY2CAP_CACHE_DIR")
        if env:
            return os.path.expanduser(env)
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return os.path.join(xdg, "any2capins", "captions")


class CaptionsConfig(WriterConfig):
    """The ``captions`` stage: the six components, and the clip's own short prompt unless the
    recipe plans instances (whose stage writes one short prompt per instance instead)."""

    short_prompt: bool = Field(
        default=True,
        description="write one short prompt for the clip (off when an instances stage follows)",
    )
    cross_checks: Literal["flag", "fail", "off"] = Field(
        default="flag",
        description="caption-condition cross-checks: flags for the reviewer, or failures",
    )
    cross_check: CrossCheckSettings = Field(default_factory=CrossCheckSettings)
