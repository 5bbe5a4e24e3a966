"""The ``captions`` stage: a six-part structured caption and a short prompt per clip, written
by an OpenAI-compatible endpoint or, with none configured, by the offline grounded writer."""

from __future__ import annotations

from typing import Any, ClassVar

from any2capins.annotators.base import (
    PROVENANCE_KEY,
    Annotator,
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    Resources,
)
from any2capins.annotators.captions.cache import ResponseCache
from any2capins.annotators.captions.config import PARTS, SHORT_PROMPT, CaptionsConfig, WriterConfig
from any2capins.annotators.captions.crosscheck import cross_check
from any2capins.annotators.captions.errors import InvalidCaption
from any2capins.annotators.captions.facts import ClipContext, build_context
from any2capins.annotators.captions.grounded import GROUNDED_VERSION, compose, grounded_problems
from any2capins.annotators.captions.templates import TemplateSet, load_templates, rules_hash
from any2capins.annotators.captions.writer import ClipResult, OpenAIWriter
from any2capins.annotators.conditions import condition_types
from any2capins.schemas import CAPTION_COMPONENTS, CaptionFlag, ModelInfo, StructuredCaption

GROUNDED_MODEL_ID = "any2capins/grounded-writer"


def make_writer(cfg: WriterConfig) -> tuple[TemplateSet, OpenAIWriter | None]:
    """The templates, and the model writer when ``cfg`` names an endpoint (else None: the
    grounded writer needs no client)."""
    templates = load_templates(cfg.templates)
    if cfg.writer != "openai":
        return templates, None
    # the openai SDK takes ~0.5 s to import: only model writers pay for it
    from any2capins.annotators.captions.client import CaptionClient, resolve_api_key

    resolve_api_key(cfg)  # a missing endpoint is an error before anything is created
    cache = ResponseCache(cfg.resolved_cache_dir())
    return templates, OpenAIWriter(cfg, templates, CaptionClient(cfg, cache))


def writer_models(cfg: WriterConfig) -> list[ModelInfo]:
    if cfg.writer == "grounded":
        return [
            ModelInfo(model_id=GROUNDED_MODEL_ID, version=GROUNDED_VERSION, license="Apache-2.0")
        ]
    return [ModelInfo(model_id=cfg.model or "")]


class WriterStage(Annotator):
    """A stage whose text comes from the model writer (an endpoint) or the grounded one:
    ``captions`` and ``instances`` share how the writer is built, closed and recorded."""

    config: WriterConfig
    templates: TemplateSet
    writer: OpenAIWriter | None

    def setup(self) -> None:
        self.templates, self.writer = make_writer(self.config)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def models(self) -> list[ModelInfo]:
        return writer_models(self.config)


class CaptionsAnnotator(WriterStage):
    name: ClassVar[str] = "captions"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = CaptionsConfig
    # The writer reads the keyframes stage's JPEGs from the record; the engine still decodes
    # what a stage declares, so ask for as little as possible.
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=1, max_side=64)
    # I/O-bound: one actor with many requests in flight (limits.concurrency) does the work.
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.25, batch_size=16, concurrency=1)
    writes: ClassVar[tuple[str, ...]] = (
        "caption",
        "short_prompt",
        "checks",
        "provenance.tokens_in",
        "provenance.tokens_out",
        "provenance.cost_usd",
    )

    config: CaptionsConfig

    def prompt_hashes(self) -> dict[str, str]:
        return {} if self.config.writer == "grounded" else self.templates.hashes()

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        types = condition_types()
        online = self.writer is not None

        def context(item: ClipInput) -> ClipContext | BaseException:
            try:
                return build_context(item.record, types, self.config.images, online)
            except Exception as e:  # noqa: BLE001 - a bad record fails only its clip
                return e

        # reading and re-encoding images releases the GIL: use the request threads
        contexts = list(
            self.writer.pool.map(context, batch) if self.writer else map(context, batch)
        )
        if self.writer is None:
            return [c if isinstance(c, BaseException) else self._grounded(c) for c in contexts]
        ready = [c for c in contexts if isinstance(c, ClipContext)]
        parts = PARTS if self.config.short_prompt else CAPTION_COMPONENTS
        results = iter(self.writer.write(ready, parts))
        return [
            c if isinstance(c, BaseException) else self._output(c, next(results)) for c in contexts
        ]

    def _checks(self, ctx: ClipContext, components: dict[str, str]) -> list[CaptionFlag]:
        """The caption-condition cross-checks; InvalidCaption when the recipe makes a flag
        a failure (``cross_checks: fail``)."""
        cfg = self.config
        if cfg.cross_checks == "off":
            return []
        # the writer's context already holds the grounding facts the checks leave aside
        facts = [f for cond in ctx.conditions for f in cond.facts]
        flags = cross_check(components, ctx.record, cfg.cross_check, facts)
        if flags and cfg.cross_checks == "fail":
            raise InvalidCaption(
                "the caption contradicts the conditions: "
                + "; ".join(f"{f.component} ({f.check}): '{f.words}' vs {f.fact}" for f in flags)
            )
        return flags

    def _grounded(self, ctx: ClipContext) -> dict[str, Any] | BaseException:
        components, clip_prompt = compose(ctx)
        prompt = clip_prompt if self.config.short_prompt else None
        problems = grounded_problems(ctx, components, prompt, self.config.grounded_bounds)
        if problems:
            return InvalidCaption("grounded writer: " + "; ".join(problems))
        try:
            flags = self._checks(ctx, components)
        except InvalidCaption as e:
            return e
        return {
            "caption": StructuredCaption(**components),
            "short_prompt": prompt,
            "checks": flags,
            "provenance.tokens_in": 0,
            "provenance.tokens_out": 0,
            "provenance.cost_usd": 0.0,
            PROVENANCE_KEY: {
                "writer": "grounded",
                "grounded_version": GROUNDED_VERSION,
                "note": "composed from measured facts only; no language model wrote this text",
                "conditions": ",".join(c.name for c in ctx.conditions),
            },
        }

    def _output(self, ctx: ClipContext, result: ClipResult) -> dict[str, Any] | BaseException:
        usage, cost, paid = result.totals()
        if result.error is not None:
            err = result.error
            if result.answers:
                # the spend stays in the ledger and the answers in the cache for the re-run
                err.args = (
                    f"{err} [{len(result.answers)} answers, ${paid:.6f} paid now, "
                    f"${cost:.6f} in all; kept in the response cache]",
                )
            return err
        cfg = self.config
        assert self.writer is not None
        client = self.writer.client
        components = {c: result.texts[c] for c in CAPTION_COMPONENTS}
        try:
            flags = self._checks(ctx, components)
        except InvalidCaption as e:
            return e
        return {
            "caption": StructuredCaption(**components),
            "short_prompt": result.texts.get(SHORT_PROMPT),
            "checks": flags,
            "provenance.tokens_in": usage.tokens_in,
            "provenance.tokens_out": usage.tokens_out,
            "provenance.cost_usd": round(cost, 8),
            PROVENANCE_KEY: {
                "writer": "openai",
                "model": cfg.model or "",
                "endpoint": client.endpoint,
                "json_mode": result.answers[-1].json_mode if result.answers else client.json_mode,
                "mode": cfg.mode,
                "requests": str(len(result.answers)),
                "cache_hits": str(sum(a.from_cache for a in result.answers)),
                "repairs": str(result.repairs),
                "tokens_cached": str(usage.tokens_cached),
                "paid_usd": f"{paid:.8f}",
                "images": str(len(ctx.images)),
                "conditions": ",".join(c.name for c in ctx.conditions),
                "condition_rules_hash": rules_hash(ctx.rules()),
                "templates": self.templates.version,
            },
        }
