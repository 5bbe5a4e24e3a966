"""Structural integrity of captions: tolerant parsing of an endpoint's answer, refusal
detection, and the mechanical checks every caption must pass (six non-empty components,
prose without markdown or lists, word counts within bounds, short-prompt rules).

The same checks judge the grounded writer, the model writers and ``any2cap eval``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from any2capins.annotators.captions.config import SHORT_PROMPT, Bounds
from any2capins.schemas import CAPTION_COMPONENTS

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’\-][A-Za-z0-9]+)*")
_LIST_LINE = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+", re.MULTILINE)
_MARKDOWN = re.compile(r"\*\*|__|```|^\s*#{1,6}\s|^\s*>\s|\[[^\]]*\]\([^)]*\)", re.MULTILINE)
_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry, (?:but )?i|i can(?:no|')t (?:help|assist|provide|"
    r"describe|comply)|i cannot (?:help|assist|provide|describe|comply)|i'?m (?:not able|unable)|"
    r"i am (?:not able|unable)|as an ai\b|i won'?t be able)",
    re.IGNORECASE,
)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_LABEL = re.compile(
    r"^\s*(?:\d+\.\s*)?(?:dense|main[ _]object|background|camera|style|action|short[ _]prompt)"
    r"(?:\s+caption)?\s*:\s*",
    re.IGNORECASE,
)


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text.strip()[:200]))


def text_problems(text: str, lo: int, hi: int, what: str) -> list[str]:
    """Problems of one piece of prose: empty, markdown, list, line breaks, word count."""
    stripped = text.strip()
    if not stripped:
        return [f"the {what} is empty"]
    problems = []
    if _LIST_LINE.search(stripped):
        problems.append(f"the {what} is a list; write continuous sentences")
    if _MARKDOWN.search(stripped):
        problems.append(f"the {what} contains markdown; write plain text")
    if "\n" in stripped:
        problems.append(f"the {what} has line breaks; write a single paragraph")
    n = word_count(stripped)
    if n < lo:
        problems.append(f"the {what} has {n} words, fewer than the minimum of {lo}")
    elif n > hi:
        problems.append(f"the {what} has {n} words, more than the maximum of {hi}")
    if is_refusal(stripped):
        problems.append(f"the {what} is a refusal, not a description")
    return problems


def part_problems(
    name: str,
    text: str,
    bounds: Bounds,
    violations: Callable[[str], list[str]] | None = None,
) -> list[str]:
    """Problems of one of the seven parts; ``violations`` checks the short prompt's rules."""
    rng = bounds.component(name)
    what = "short prompt" if name == SHORT_PROMPT else f"{name} caption"
    problems = text_problems(text, rng.min, rng.max, what)
    if name == SHORT_PROMPT and violations is not None and text.strip():
        problems.extend(f"the short prompt breaks a condition rule ({v})" for v in violations(text))
    return problems


@dataclass
class Integrity:
    """The structural verdict on one record's caption and short prompt."""

    problems: dict[str, list[str]]

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def summary(self) -> str:
        return "; ".join(p for ps in self.problems.values() for p in ps)


def caption_integrity(
    caption: Mapping[str, str | None] | None,
    short_prompt: str | None,
    bounds: Bounds,
    violations: Callable[[str], list[str]] | None = None,
    *,
    require_short_prompt: bool = True,
) -> Integrity:
    """All six components present and valid, their total within bounds, a valid prompt
    (unless ``require_short_prompt`` is off: instances carry the prompts then)."""
    problems: dict[str, list[str]] = {}
    caption = caption or {}
    total = 0
    for name in CAPTION_COMPONENTS:
        text = caption.get(name)
        if not text:
            problems[name] = [f"the {name} caption is missing"]
            continue
        problems[name] = part_problems(name, text, bounds)
        total += word_count(text)
    if not any(problems.values()):
        if total < bounds.total.min:
            problems["total"] = [f"the caption has {total} words, fewer than {bounds.total.min}"]
        elif total > bounds.total.max:
            problems["total"] = [f"the caption has {total} words, more than {bounds.total.max}"]
    if not short_prompt:
        if require_short_prompt:
            problems[SHORT_PROMPT] = ["the short prompt is missing"]
    else:
        problems[SHORT_PROMPT] = part_problems(SHORT_PROMPT, short_prompt, bounds, violations)
    return Integrity({k: v for k, v in problems.items() if v})


@dataclass
class Parsed:
    text: str | None
    problem: str | None


def parse_answer(content: str, key: str, json_expected: bool) -> Parsed:
    """The part's text from an answer: a JSON object, fenced JSON, or (text mode) prose.

    Tolerant of what servers without schema support do: code fences, a label such as
    "Dense caption:", a differently named single key. A JSON answer without the key, or
    JSON that does not parse, is a problem for the repair prompt.
    """
    raw = content.strip()
    fenced = _FENCE.search(raw)
    candidate = fenced.group(1).strip() if fenced else raw
    if not candidate.startswith("{") and "{" in candidate and candidate.rstrip().endswith("}"):
        candidate = candidate[candidate.index("{") :]
    if candidate.startswith("{"):
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError as e:
            return Parsed(None, f"the answer is not valid JSON ({e.msg} at char {e.pos})")
        if not isinstance(obj, dict):
            return Parsed(None, f'the answer must be a JSON object with the key "{key}"')
        value = obj.get(key)
        if value is None:
            strings = [v for v in obj.values() if isinstance(v, str) and v.strip()]
            if len(obj) == 1 and len(strings) == 1:
                value = strings[0]
            else:
                return Parsed(None, f'the JSON object has no "{key}" text')
        if not isinstance(value, str):
            return Parsed(None, f'"{key}" must be a string')
        return Parsed(_LABEL.sub("", value.strip()), None)
    if json_expected:
        return Parsed(None, f'the answer must be a JSON object with the key "{key}"')
    return Parsed(_LABEL.sub("", raw.strip('"').strip()), None)
