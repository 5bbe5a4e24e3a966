"""Curation filters: the recipe's ``curation`` block, parsed into rules that each stage applies
as soon as the score a rule reads exists.

A rule is decided right after the last stage that can write its score has run (or earlier,
as soon as the score is there), so later stages never run on a dropped clip. A dropped clip
becomes a *filtered* row (:class:`any2capins.schemas.FilterDecision`): not a failure, never a silent
drop. The curation block is not part of any stage's config hash, so changing a threshold
re-decides from the stored scores without re-scoring.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from any2capins.schemas import FilterDecision, Record

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_CONDITION = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")
# The rule name under which near-duplicates are counted in the report.
NEAR_DUPLICATE = "near-duplicate"
KeepRule = Literal["longest", "sharpest", "largest"]
DEFAULT_KEEP: tuple[KeepRule, ...] = ("longest", "sharpest")


class DedupConfig(BaseModel):
    """Near-duplicate removal across the whole run (``any2capins.pipeline.dedup``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_distance: int = Field(
        default=6,
        ge=0,
        le=32,
        description="Hamming distance (of 64 bits) allowed at every hashed frame",
    )
    keep: list[KeepRule] = Field(
        default_factory=lambda: list(DEFAULT_KEEP),
        description="which clip of a group stays, in order of preference; clip_id breaks ties",
    )
    stage: str | None = Field(
        default=None, description="the stage that writes phashes (default: the only one)"
    )


class CurationConfig(BaseModel):
    """The recipe's ``curation`` block."""

    model_config = ConfigDict(extra="forbid")

    keep: dict[str, str] = Field(
        default_factory=dict,
        description="score name -> condition a clip must meet to stay, e.g. '>= 0.05'",
    )
    score_only: bool = Field(
        default=False, description="record scores and would-be decisions, drop nothing"
    )
    missing: Literal["drop", "keep"] = Field(
        default="drop",
        description="a score absent once every stage that can write it has run: drop the clip "
        "(a filtered row with value None) or keep it (the report warns)",
    )
    dedup: DedupConfig | None = None


@dataclass(frozen=True)
class FilterRule:
    score: str
    op: str
    threshold: float

    @property
    def condition(self) -> str:
        return f"{self.op} {self.threshold:g}"

    @property
    def text(self) -> str:
        return f"{self.score} {self.condition}"

    def passes(self, value: float) -> bool:
        return not math.isnan(value) and OPERATORS[self.op](value, self.threshold)


def parse_rule(score: str, condition: object) -> FilterRule:
    """``('aesthetic', '>= 4.5')`` -> a rule; ValueError says what is wrong."""
    if not isinstance(condition, str):
        raise ValueError(f"expected a condition such as '>= 0.05', got {condition!r}")
    match = _CONDITION.match(condition)
    if match is None:
        raise ValueError(
            f"{condition!r} is not '<operator> <number>' (operators: {', '.join(OPERATORS)})"
        )
    op, number = match.groups()
    try:
        threshold = float(number)
    except ValueError:
        raise ValueError(f"{number!r} in {condition!r} is not a number") from None
    if math.isnan(threshold):
        raise ValueError(f"{condition!r}: the threshold is not a number")
    return FilterRule(score, op, threshold)


def parse_rules(keep: dict[str, object]) -> tuple[list[FilterRule], list[str]]:
    """Every rule of ``curation.keep``, and a problem line per bad one (naming its key)."""
    rules, problems = [], []
    for score, condition in keep.items():
        try:
            rules.append(parse_rule(score, condition))
        except ValueError as e:
            problems.append(f"curation.keep.{score}: {e}")
    return rules, problems


def score_writers(writes: Sequence[tuple[str, ...]], score: str) -> list[int]:
    """Indices of the stages whose declared ``writes`` can set ``scores.<score>``."""
    return [i for i, w in enumerate(writes) if "scores" in w or f"scores.{score}" in w]


@dataclass(frozen=True)
class StageFilters:
    """What a stage decides right after it ran: ``rules`` whose score may exist by now, and
    ``due``, the scores that no later stage can write (missing now = missing for good)."""

    rules: tuple[FilterRule, ...]
    due: frozenset[str]
    missing: Literal["drop", "keep"] = "drop"

    def decide(self, record: Record, stage: str) -> tuple[FilterDecision | None, list[str]]:
        """The first rule the record fails (None: it stays), and warnings about it."""
        warnings: list[str] = []
        for rule in self.rules:
            value = record.scores.get(rule.score)
            if value is None:
                if rule.score not in self.due:
                    continue
                if self.missing == "keep":
                    warnings.append(
                        f"curation: score {rule.score!r} missing after stage {stage!r}; "
                        "such clips were kept (curation.missing: keep)"
                    )
                    continue
            elif rule.passes(value):
                continue
            return (
                FilterDecision(
                    clip_id=record.clip_id,
                    source_uri=record.clip.source_uri,
                    rule=rule.text,
                    score=rule.score,
                    value=value,
                    threshold=rule.condition,
                    stage=stage,
                ),
                warnings,
            )
        return None, warnings


def stage_filters(
    config: CurationConfig | None, writes: Sequence[tuple[str, ...]]
) -> tuple[list[StageFilters | None], list[str]]:
    """Per stage (in order), the filters it applies; and a problem line per bad rule.

    A rule whose score no stage declares it writes is refused: it could never be decided.
    ``score_only`` attaches nothing: the stages drop nothing and the report counts what the
    rules would have dropped.
    """
    if config is None or not config.keep:
        return [None] * len(writes), []
    rules, problems = parse_rules(dict(config.keep))
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for rule in rules:
        at = score_writers(writes, rule.score)
        if not at:
            problems.append(
                f"curation.keep.{rule.score}: no stage of the recipe writes scores.{rule.score}"
            )
            continue
        first[rule.score], last[rule.score] = at[0], at[-1]
    if problems or config.score_only:
        return [None] * len(writes), problems
    out: list[StageFilters | None] = []
    for i in range(len(writes)):
        live = tuple(r for r in rules if first[r.score] <= i)
        due = frozenset(r.score for r in rules if last[r.score] <= i)
        out.append(StageFilters(live, due, config.missing) if live else None)
    return out, []


def would_drop(config: CurationConfig | None, scores: dict[str, float]) -> str | None:
    """For score-only runs and reports: the first rule a clip with ``scores`` fails."""
    if config is None:
        return None
    rules, _ = parse_rules(dict(config.keep))
    for rule in rules:
        value = scores.get(rule.score)
        if value is None:
            if config.missing == "drop":
                return rule.text
        elif not rule.passes(value):
            return rule.text
    return None


def rule_key(decision: FilterDecision) -> str:
    """The report's name for a decision's rule (one key for every near-duplicate)."""
    return NEAR_DUPLICATE if decision.rule.startswith(NEAR_DUPLICATE) else decision.rule


__all__ = [
    "NEAR_DUPLICATE",
    "CurationConfig",
    "DedupConfig",
    "FilterRule",
    "StageFilters",
    "parse_rule",
    "parse_rules",
    "rule_key",
    "stage_filters",
    "would_drop",
]
