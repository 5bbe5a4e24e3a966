"""The editable texts of a record (six caption components + short prompt): word counts,
structural warnings, word-level edit distance and how edits apply to the machine text."""

from __future__ import annotations

import re
import unicodedata

from schemas import CAPTION_COMPONENTS, Record

FIELDS: tuple[str, ...] = (*CAPTION_COMPONENTS, "short_prompt")
FIELD_TITLES: dict[str, str] = {
    "dense": "Dense",
    "main_object": "Main object",
    "background": "Background",
    "camera": "Camera",
    "style": "Style",
    "action": "Action",
    "short_prompt": "Short prompt",
}
MAX_FIELD_CHARS = 20_000

# Paper figures (Any2CapIns, Table 1): short prompts average 55 words and stay under ~100;
# the six components together average 231 words, so one component is typically 20-60.
SHORT_PROMPT_MAX_WORDS = 100
COMPONENT_MIN_WORDS = 4
COMPONENT_MAX_WORDS = 150

_WORD = re.compile(r"\S+")
_HEADER = re.compile(
    r"^\s*(\d+[.)]\s*)?(dense|main object|background|camera|style|action)( caption)?\s*:",
    re.IGNORECASE,
)
_MARKUP = re.compile(r"<\s*/?\s*[a-zA-Z][^>]*>")
_MARKDOWN = re.compile(r"(^|\n)\s*(#{1,6}\s|[-*]\s|\d+\.\s)|\*\*")
_REFUSAL = re.compile(r"\b(as an ai|i'm sorry|i am sorry|i cannot|i can't help)\b", re.IGNORECASE)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def word_count(text: str) -> int:
    return len(words(text))


def machine_texts(record: Record) -> dict[str, str]:
    """The machine's text per field ("" where the record has no caption / short prompt)."""
    texts = {name: "" for name in FIELDS}
    if record.caption is not None:
        for name in CAPTION_COMPONENTS:
            texts[name] = getattr(record.caption, name)
    if record.short_prompt is not None:
        texts["short_prompt"] = record.short_prompt
    return texts


def apply_edits(machine: dict[str, str], edits: dict[str, str]) -> dict[str, str]:
    return {name: edits.get(name, machine.get(name, "")) for name in FIELDS}


def structural_warnings(field: str, text: str) -> list[str]:
    """Mechanical problems a reviewer should look at; never blocks a decision by itself."""
    found: list[str] = []
    n = word_count(text)
    if not text.strip():
        return ["empty"]
    if field == "short_prompt":
        if n > SHORT_PROMPT_MAX_WORDS:
            found.append(f"longer than {SHORT_PROMPT_MAX_WORDS} words ({n})")
    else:
        if n < COMPONENT_MIN_WORDS:
            found.append(f"very short ({n} words)")
        if n > COMPONENT_MAX_WORDS:
            found.append(f"very long ({n} words)")
    if _HEADER.match(text):
        found.append("starts with a component header (numbered-caption leak)")
    if _MARKUP.search(text):
        found.append("contains markup (<...>)")
    if _MARKDOWN.search(text):
        found.append("contains markdown formatting")
    if _REFUSAL.search(text):
        found.append("reads like a model refusal")
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text):
        found.append("contains control characters")
    for opening, closing in (("(", ")"), ("[", "]"), ("{", "}")):
        if text.count(opening) != text.count(closing):
            found.append(f"unbalanced {opening}{closing}")
    if text.count('"') % 2:
        found.append('unbalanced "')
    if text.rstrip()[-1:] not in (".", "!", "?", '"', "'", ")"):
        found.append("does not end a sentence")
    tokens = [w.lower() for w in words(text)]
    for i in range(len(tokens) - 1):
        if tokens[i] == tokens[i + 1] and tokens[i].isalpha():
            found.append(f"repeated word: {tokens[i]!r}")
            break
    return found


def edit_distance(a: str, b: str) -> int:
    """Word-level Levenshtein distance."""
    x, y = words(a), words(b)
    if len(x) < len(y):
        x, y = y, x
    previous = list(range(len(y) + 1))
    for i, wx in enumerate(x, 1):
        current = [i]
        for j, wy in enumerate(y, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (wx != wy)))
        previous = current
    return previous[-1]


def normalized_distance(a: str, b: str) -> float:
    """Edit distance over the longer text's word count: 0 identical, 1 nothing in common."""
    longest = max(word_count(a), word_count(b))
    return 0.0 if longest == 0 else edit_distance(a, b) / longest


def check_text(value: str, what: str) -> str:
    """Refuse what a database cannot store or a reviewer cannot have meant."""
    if len(value) > MAX_FIELD_CHARS:
        raise ValueError(f"{what} is longer than {MAX_FIELD_CHARS} characters")
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid Unicode (lone surrogate)") from e
    return value
