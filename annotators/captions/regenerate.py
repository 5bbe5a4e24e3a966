"""Rewriting the fields a human reviewer rejected: each rejected caption component, short
prompt or instance prompt is asked for again with the clip's usual request (same system
prompt, facts, images and instruction) followed by the reviewer's reason code, note and the
rejected text; every other field of the record stays byte-identical.

The request differs from the original by the feedback message, so the response cache never
answers it with the rejected text; answers go through the writer's validation and repair
loop like any other part.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from any2capins.annotators.captions.config import SHORT_PROMPT, CaptionsConfig, WriterConfig
from any2capins.annotators.captions.crosscheck import cross_check
from any2capins.annotators.captions.errors import CaptionError
from any2capins.annotators.captions.facts import ClipContext, build_context
from any2capins.annotators.captions.templates import TITLES
from any2capins.annotators.captions.writer import OpenAIWriter
from any2capins.annotators.conditions import condition_types
from any2capins.schemas import (
    CAPTION_COMPONENTS,
    CaptionFlag,
    Record,
    StageProvenance,
    StructuredCaption,
    utc_now,
)

PROMPT_PREFIX = "short_prompt:"
STAGE = "regenerate"


@dataclass(frozen=True)
class Rejection:
    """A reviewer's rejection of one field: reason code, note, and the rejected text."""

    field: str
    reason: str | None
    note: str | None
    rejected_text: str


@dataclass
class Regenerated:
    """The record with new text for the rejected fields, and what the requests cost."""

    record: Record
    texts: dict[str, str]
    requests: int = 0
    cache_hits: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)


def feedback_template(version: str) -> str:
    path = (
        resources.files("any2capins.annotators.captions")
        / "templates"
        / f"regenerate.{version}.txt"
    )
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt template regenerate.{version}.txt is not in annotators/captions/templates"
        )
    return path.read_text(encoding="utf-8")


def feedback(rejection: Rejection, part: str, version: str = "v1") -> str:
    """The message that follows the part's instruction: why the reviewer rejected it."""
    import string

    return (
        string.Template(feedback_template(version))
        .substitute(
            title=TITLES[part],
            key=part,
            reason=(rejection.reason or "not given").replace("_", " "),
            note=rejection.note or "none",
            rejected=rejection.rejected_text,
        )
        .strip()
    )


def _context(record: Record, name: str, config: WriterConfig) -> tuple[ClipContext, str]:
    """The request context and the writer's part name of one field."""
    types = condition_types()
    ctx = build_context(record, types, config.images, True)
    if name.startswith(PROMPT_PREFIX):
        key = name.removeprefix(PROMPT_PREFIX)
        instance = next((i for i in record.instances or [] if i.key == key), None)
        if instance is None:
            raise CaptionError(f"record {record.clip_id} has no instance {key!r}")
        return ctx.for_conditions(list(instance.condition_types), types), SHORT_PROMPT
    if name != SHORT_PROMPT and name not in CAPTION_COMPONENTS:
        raise CaptionError(f"cannot regenerate {name!r}: not a caption field")
    return ctx, name


def regenerate_fields(
    record: Record,
    rejections: list[Rejection],
    writer: OpenAIWriter,
    prompt_writer: OpenAIWriter | None = None,
) -> Regenerated:
    """New text for each rejected field (instance prompts through ``prompt_writer``, the
    instances stage's writer, when given). A field that fails keeps its old text and is
    named in ``errors``; then the record is returned unchanged."""
    out = Regenerated(record, {})
    abandoned = threading.Event()  # never set: each field is independent
    for rejection in rejections:
        is_instance = rejection.field.startswith(PROMPT_PREFIX)
        w = prompt_writer if is_instance and prompt_writer is not None else writer
        try:
            ctx, part = _context(record, rejection.field, w.config)
        except Exception as e:  # noqa: BLE001 - a bad record fails only this field, named
            out.errors[rejection.field] = f"{type(e).__name__}: {e}"
            continue
        message = feedback(rejection, part, w.config.templates)
        result = w.run_part(ctx, part, abandoned, feedback=message)
        for answer in result.answers:
            out.requests += 1
            out.cache_hits += int(answer.from_cache)
            out.tokens_in += answer.usage.tokens_in
            out.tokens_out += answer.usage.tokens_out
            out.cost_usd += answer.cost_usd
        if result.error is not None or result.text is None:
            out.errors[rejection.field] = str(result.error or "no text")
            continue
        out.texts[rejection.field] = result.text
    if out.errors:
        return out
    out.record = _with_texts(record, out, writer)
    return out


def _cross_checks(
    components: dict[str, str], record: Record, config: WriterConfig
) -> list[CaptionFlag]:
    """The captions stage's cross-checks on the new caption, so the reviewer sees flags on
    the regenerated text as on the original (a flag is shown, never a failure here: the
    text goes back to a human either way)."""
    if not isinstance(config, CaptionsConfig) or config.cross_checks == "off":
        return list(record.checks)
    return cross_check(components, record, config.cross_check)


def _with_texts(record: Record, done: Regenerated, writer: OpenAIWriter) -> Record:
    update: dict[str, Any] = {}
    texts = done.texts
    if any(n in CAPTION_COMPONENTS for n in texts):
        assert record.caption is not None, "a rejected component has machine text"
        components = {c: texts.get(c, getattr(record.caption, c)) for c in CAPTION_COMPONENTS}
        update["caption"] = StructuredCaption.model_validate(components)
        update["checks"] = _cross_checks(components, record, writer.config)
    if SHORT_PROMPT in texts:
        update["short_prompt"] = texts[SHORT_PROMPT]
    if any(n.startswith(PROMPT_PREFIX) for n in texts) and record.instances is not None:
        update["instances"] = [
            i.model_copy(update={"short_prompt": texts[PROMPT_PREFIX + i.key]})
            if PROMPT_PREFIX + i.key in texts
            else i
            for i in record.instances
        ]
    prov = record.provenance
    stage = StageProvenance(
        stage=STAGE,
        annotator_version="1",
        config_hash="",
        run_id=prov.run_id,
        seconds=0.0,
        finished_at=utc_now(),
        details={
            "writer": "openai",
            "model": writer.config.model or "",
            "endpoint": writer.client.endpoint,
            "fields": ",".join(texts),
            "requests": str(done.requests),
            "cache_hits": str(done.cache_hits),
            "note": "rewritten after a human reviewer rejected these fields",
        },
    )
    update["provenance"] = prov.model_copy(
        update={
            "stages": [*prov.stages, stage],
            "tokens_in": prov.tokens_in + done.tokens_in,
            "tokens_out": prov.tokens_out + done.tokens_out,
            "cost_usd": round(prov.cost_usd + done.cost_usd, 8),
        }
    )
    return record.model_copy(update=update)


__all__ = ["Regenerated", "Rejection", "feedback", "regenerate_fields"]
