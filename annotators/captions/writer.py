"""The model caption writer: seven independent requests per clip (six components and the
short prompt) that share one prefix (system prompt, measured facts, images), each answer
parsed and checked, repaired with a repair prompt when it is refused or invalid, then
integrated into a structured caption; a clip either gets all seven parts or fails.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from any2capins.annotators.captions.cache import Usage
from any2capins.annotators.captions.config import PARTS, SHORT_PROMPT, WriterConfig
from any2capins.annotators.captions.errors import (
    AwaitingBatch,
    BudgetExceeded,
    CaptionAPIError,
    CaptionError,
    CaptionRefused,
    InvalidCaption,
)
from any2capins.annotators.captions.facts import ClipContext, join_words
from any2capins.annotators.captions.templates import TARGET_WORDS, TITLES, TemplateSet
from any2capins.annotators.captions.validate import (
    caption_integrity,
    is_refusal,
    parse_answer,
    part_problems,
)
from any2capins.schemas import CAPTION_COMPONENTS

if TYPE_CHECKING:  # the openai SDK is imported only when a model writer is built
    from any2capins.annotators.captions.client import Answer, CaptionClient

# When several parts of a clip fail, the clip's error is the most actionable one.
_PRIORITY: tuple[type[CaptionError], ...] = (
    BudgetExceeded,
    AwaitingBatch,
    CaptionAPIError,
    CaptionRefused,
    InvalidCaption,
)


class _Abandoned(Exception):
    """Another part of the clip failed: this part sends nothing more."""


def _most_actionable(errors: list[BaseException]) -> BaseException:
    rank = {cls: i for i, cls in enumerate(_PRIORITY)}
    return min(errors, key=lambda e: next((rank[c] for c in rank if isinstance(e, c)), len(rank)))


@dataclass
class PartResult:
    part: str
    text: str | None = None
    error: BaseException | None = None
    answers: list[Answer] = field(default_factory=list)


@dataclass
class ClipResult:
    """Either the seven texts or the error, plus what the clip's requests cost."""

    texts: dict[str, str]
    error: BaseException | None
    answers: list[Answer]
    repairs: int

    def totals(self) -> tuple[Usage, float, float]:
        u = Usage(
            sum(a.usage.tokens_in for a in self.answers),
            sum(a.usage.tokens_cached for a in self.answers),
            sum(a.usage.tokens_out for a in self.answers),
        )
        return u, sum(a.cost_usd for a in self.answers), sum(a.paid_usd for a in self.answers)


def shared_messages(ctx: ClipContext, templates: TemplateSet, detail: str) -> list[dict[str, Any]]:
    """System prompt, facts and images: byte-identical across the clip's seven requests."""
    labels = [img.label for img in ctx.images]
    context = templates.render(
        "context", facts=ctx.facts_text(), images="; ".join(labels) if labels else "none"
    )
    content: list[dict[str, Any]] = [{"type": "text", "text": context}]
    content.extend(
        {"type": "image_url", "image_url": {"url": img.data_url(), "detail": detail}}
        for img in ctx.images
    )
    return [
        {"role": "system", "content": templates.render("system")},
        {"role": "user", "content": content},
    ]


def instruction(ctx: ClipContext, part: str, templates: TemplateSet, config: WriterConfig) -> str:
    rng = config.bounds.component(part)
    values: dict[str, object] = {
        "key": part,
        "target": min(max(TARGET_WORDS[part], rng.min), rng.max),
        "min_words": rng.min,
        "max_words": rng.max,
    }
    if part == SHORT_PROMPT:
        rules = ctx.rules()
        values["condition_rules"] = (
            "\n"
            + templates.render(
                "condition_rules",
                conditions=join_words(sorted(rules)),
                rules="\n".join(f"- {r}" for name in sorted(rules) for r in rules[name]),
            )
            if rules
            else ""
        )
    return templates.render(part, **values)


def part_messages(
    ctx: ClipContext,
    part: str,
    templates: TemplateSet,
    config: WriterConfig,
    shared_prefix: bool = True,
) -> list[dict[str, Any]]:
    """The request for one part. ``shared_prefix=False`` puts the instruction first, which
    defeats provider-side prompt caching (kept for the benchmark's comparison)."""
    shared = shared_messages(ctx, templates, config.images.detail)
    text = instruction(ctx, part, templates, config)
    if shared_prefix:
        return [*shared, {"role": "user", "content": text}]
    system, user = shared
    return [system, {"role": "user", "content": [{"type": "text", "text": text}, *user["content"]]}]


class OpenAIWriter:
    def __init__(self, config: WriterConfig, templates: TemplateSet, client: CaptionClient) -> None:
        self.config = config
        self.templates = templates
        self.client = client
        self.pool = ThreadPoolExecutor(
            max_workers=config.limits.concurrency, thread_name_prefix="captions"
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    def _problems(
        self, ctx: ClipContext, part: str, answer: Answer
    ) -> tuple[str | None, list[str], bool]:
        """(text, problems, refused) for one answer."""
        if answer.content is None:
            refusal = answer.refusal or "an empty answer"
            return None, [f"it was a refusal ({refusal[:160]})"], answer.refusal is not None
        parsed = parse_answer(answer.content, part, json_expected=answer.json_mode != "text")
        if parsed.problem is not None or parsed.text is None:
            return None, [parsed.problem or "no text"], False
        text = parsed.text
        checker = ctx.violations if part == SHORT_PROMPT else None
        problems = part_problems(part, text, self.config.bounds, checker)
        if answer.finish_reason == "length":
            problems.insert(0, "the answer was cut off at the output token limit")
        return text, problems, is_refusal(text)

    def run_part(
        self,
        ctx: ClipContext,
        part: str,
        abandoned: threading.Event,
        feedback: str | None = None,
    ) -> PartResult:
        """One part, repaired until valid. ``feedback`` (a reviewer's rejection, see
        :mod:`any2capins.annotators.captions.regenerate`) follows the instruction as its own message."""
        result = PartResult(part)
        messages = part_messages(ctx, part, self.templates, self.config)
        if feedback is not None:
            messages = [*messages, {"role": "user", "content": feedback}]
        problems: list[str] = []
        refused = False
        try:
            for attempt in range(self.config.repair_attempts + 1):
                if abandoned.is_set():
                    raise _Abandoned
                answer = self.client.complete(messages, part, ctx.clip_id, ctx.run_id)
                result.answers.append(answer)
                text, problems, refused = self._problems(ctx, part, answer)
                if not problems and text is not None:
                    result.text = text
                    return result
                # Never replay it: a re-run asks again instead of failing the same way.
                self.client.reject(answer, "; ".join(problems) or "no text")
                if attempt == self.config.repair_attempts:
                    break
                problems_text = "; ".join(problems)
                if refused:
                    problems_text += (
                        ". The clip is ordinary footage for a research dataset: describe only "
                        "what is visible, neutrally, without identifying anyone"
                    )
                repair = self.templates.render(
                    "repair", problems=problems_text + ".", title=TITLES[part], key=part
                )
                messages = [
                    *messages,
                    {"role": "assistant", "content": answer.content or answer.refusal or ""},
                    {"role": "user", "content": repair},
                ]
            kind = CaptionRefused if refused else InvalidCaption
            raise kind(
                f"{TITLES[part]}: {'; '.join(problems)} "
                f"(after {self.config.repair_attempts} repair prompts)"
            )
        except _Abandoned:
            result.error = _Abandoned()
        except Exception as e:  # noqa: BLE001 - any failure of a part fails its clip, no more
            result.error = e
            if not isinstance(e, AwaitingBatch):  # batch mode queues every part in one pass
                abandoned.set()
        return result

    def write(
        self, contexts: list[ClipContext], parts: tuple[str, ...] = PARTS
    ) -> list[ClipResult]:
        """All parts of all clips through the pool; one result per clip, in order."""
        futures: list[list[Future[PartResult]]] = []
        for ctx in contexts:
            abandoned = threading.Event()
            futures.append(
                [self.pool.submit(self.run_part, ctx, part, abandoned) for part in parts]
            )
        return [
            self._collect(ctx, [f.result() for f in fs])
            for ctx, fs in zip(contexts, futures, strict=True)
        ]

    def write_prompts(self, clips: list[list[ClipContext]]) -> list[ClipResult]:
        """One short prompt per context (a clip's instances), every clip's in flight at once;
        one result per clip with its texts keyed by position ("0", "1", ...). A prompt that
        fails fails its clip's other prompts, not other clips'."""
        futures: list[list[Future[PartResult]]] = []
        for contexts in clips:
            abandoned = threading.Event()
            futures.append(
                [self.pool.submit(self.run_part, c, SHORT_PROMPT, abandoned) for c in contexts]
            )
        out = []
        for fs in futures:
            results = [f.result() for f in fs]
            answers = [a for r in results for a in r.answers]
            repairs = sum(max(0, len(r.answers) - 1) for r in results)
            errors = [
                r.error
                for r in results
                if r.error is not None and not isinstance(r.error, _Abandoned)
            ]
            if errors:
                out.append(ClipResult({}, _most_actionable(errors), answers, repairs))
            else:
                texts = {str(i): r.text or "" for i, r in enumerate(results)}
                out.append(ClipResult(texts, None, answers, repairs))
        return out

    def _collect(self, ctx: ClipContext, parts: list[PartResult]) -> ClipResult:
        answers = [a for p in parts for a in p.answers]
        repairs = sum(max(0, len(p.answers) - 1) for p in parts)
        errors = [
            p.error for p in parts if p.error is not None and not isinstance(p.error, _Abandoned)
        ]
        if errors:
            return ClipResult({}, _most_actionable(errors), answers, repairs)
        texts = {p.part: p.text or "" for p in parts}
        verdict = caption_integrity(
            {c: texts[c] for c in CAPTION_COMPONENTS},
            texts.get(SHORT_PROMPT),
            self.config.bounds,
            ctx.violations,
            require_short_prompt=SHORT_PROMPT in texts,
        )
        if not verdict.ok:
            for answer in answers:  # the parts disagree: ask for all of them again next run
                self.client.reject(answer, verdict.summary())
            return ClipResult({}, InvalidCaption(verdict.summary()), answers, repairs)
        return ClipResult(texts, None, answers, repairs)
