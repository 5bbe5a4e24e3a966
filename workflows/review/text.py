"""The editable texts of a record (six caption components + short prompts): word counts,
structural warnings, word-level edit distance and how edits apply to the machine text.

Field names: the six caption components, then the short prompts. A record with instances
(one per suitable condition type, plus compositions) has one prompt field per instance,
``short_prompt:<instance key>`` (``short_prompt:camera``, ``short_prompt:camera+depth``);
a record without instances (recipes without instance planning) has the one ``short_prompt``.
:func:`apply_review` is the one place where human edits replace the machine text: the review
store, its statistics and the export all go through it.
"""

from __future__ import annotations

import difflib
import re
import unicodedata

from any2capins.schemas import CAPTION_COMPONENTS, Instance, Record, StructuredCaption

PROMPT = "short_prompt"
PROMPT_PREFIX = "short_prompt:"
# The fields of a record without instances (the six components and its one short prompt).
FIELDS: tuple[str, ...] = (*CAPTION_COMPONENTS, PROMPT)
FIELD_TITLES: dict[str, str] = {
    "dense": "Dense",
    "main_object": "Main object",
    "background": "Background",
    "camera": "Camera",
    "style": "Style",
    "action": "Action",
    "short_prompt": "Short prompt",
}
# What a field name may look like before a record says which instances it has.
FIELD_NAME_PATTERN = (
    r"^(dense|main_object|background|camera|style|action|short_prompt"
    r"|short_prompt:[A-Za-z0-9_.-]{1,64}(\+[A-Za-z0-9_.-]{1,64}){0,15})$"
)
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


def prompt_field(instance: Instance) -> str:
    """The edit field of an instance's short prompt: ``short_prompt:camera+depth``."""
    return PROMPT_PREFIX + instance.key


def is_prompt(name: str) -> bool:
    """A short prompt field: the record's one ``short_prompt`` or an instance's."""
    return name == PROMPT or name.startswith(PROMPT_PREFIX)


def instance_key(name: str) -> str | None:
    """``camera+depth`` for ``short_prompt:camera+depth``; None for other fields."""
    key = name.removeprefix(PROMPT_PREFIX) if name.startswith(PROMPT_PREFIX) else ""
    return key or None


def field_names(record: Record) -> tuple[str, ...]:
    """The record's editable fields, in screen order: the six components, then one prompt
    per instance (in the record's order; none when the recipe planned instances and the clip
    suits no condition type), or the single ``short_prompt`` for a recipe without instance
    planning (``instances`` is None)."""
    if record.instances is not None:
        return (*CAPTION_COMPONENTS, *(prompt_field(i) for i in record.instances))
    return FIELDS


def field_title(name: str) -> str:
    key = instance_key(name)
    return FIELD_TITLES[PROMPT] if key is not None else FIELD_TITLES.get(name, name)


def unknown_fields(record: Record, names: list[str] | tuple[str, ...]) -> list[str]:
    known = set(field_names(record))
    return [n for n in names if n not in known]


def machine_texts(record: Record) -> dict[str, str]:
    """The machine's text per field of the record ("" where the machine wrote none)."""
    texts = dict.fromkeys(field_names(record), "")
    if record.caption is not None:
        for name in CAPTION_COMPONENTS:
            texts[name] = getattr(record.caption, name)
    if record.instances is not None:
        for instance in record.instances:
            texts[prompt_field(instance)] = instance.short_prompt or ""
    elif record.short_prompt is not None:
        texts[PROMPT] = record.short_prompt
    return texts


def apply_edits(machine: dict[str, str], edits: dict[str, str]) -> dict[str, str]:
    """The text per field after the edits (the fields are the machine dict's keys)."""
    return {name: edits.get(name, text) for name, text in machine.items()}


def apply_review(record: Record, edits: dict[str, str]) -> Record:
    """The record with the human text in place of the machine's: caption components, the
    single short prompt or each instance's. The one implementation of "apply the edits"
    that export uses. A record the machine left without a caption gets one only when the
    edits write all six components. Raises ValueError for a field the record does not have."""
    unknown = unknown_fields(record, list(edits))
    if unknown:
        raise ValueError(
            f"record {record.clip_id} has no field {', '.join(unknown)}; its fields are "
            + ", ".join(field_names(record))
        )
    if not edits:
        return record
    final = apply_edits(machine_texts(record), edits)
    update: dict[str, object] = {}
    if any(c in edits for c in CAPTION_COMPONENTS):
        components = {c: final[c] for c in CAPTION_COMPONENTS}
        if record.caption is not None or all(v.strip() for v in components.values()):
            update["caption"] = StructuredCaption.model_validate(components)
    if record.instances is not None:
        update["instances"] = [
            i.model_copy(update={"short_prompt": edits[prompt_field(i)]})
            if prompt_field(i) in edits
            else i
            for i in record.instances
        ]
    elif PROMPT in edits:
        update["short_prompt"] = edits[PROMPT]
    return record.model_copy(update=update)


def structural_warnings(field: str, text: str) -> list[str]:
    """Mechanical problems a reviewer should look at; never blocks a decision by itself."""
    found: list[str] = []
    n = word_count(text)
    if not text.strip():
        return ["empty"]
    if is_prompt(field):
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


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """Word-level diff of ``a`` -> ``b``: ``("same" | "del" | "ins", word)`` in order."""
    x, y = words(a), words(b)
    out: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=x, b=y, autojunk=False).get_opcodes():
        if tag == "equal":
            out += [("same", w) for w in x[i1:i2]]
            continue
        out += [("del", w) for w in x[i1:i2]]
        out += [("ins", w) for w in y[j1:j2]]
    return out
