"""The subject checks: the main-object component's count against identities or pose, and
the action component describing people where pose found nobody."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from any2capins.annotators.captions.crosscheck._settings import CrossCheckSettings
from any2capins.annotators.captions.crosscheck._text import _join, _negated, _strip_facts
from any2capins.schemas import CaptionFlag, Record

# --------------------------------------------------------------------------- subject count

_NUMBERS: dict[str, int] = {
    w: i
    for i, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
    )
} | {"both": 2, "a pair of": 2, "a trio of": 3, "a single": 1, "a lone": 1, "only one": 1,
     "just one": 1}  # fmt: skip
_PEOPLE: dict[str, str] = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "kid": "kids",
    "boy": "boys", "girl": "girls", "baby": "babies", "toddler": "toddlers",
    "teenager": "teenagers", "teen": "teens", "adult": "adults", "lady": "ladies",
    "gentleman": "gentlemen", "guy": "guys", "individual": "individuals",
    "player": "players", "dancer": "dancers", "worker": "workers", "athlete": "athletes",
    "performer": "performers", "student": "students", "friend": "friends",
    "human": "humans", "figure": "figures",
}  # fmt: skip
_ANIMALS: dict[str, str] = {
    w: w + "s"
    for w in [
        "dog",
        "cat",
        "horse",
        "bird",
        "cow",
        "goat",
        "duck",
        "bear",
        "deer",
        "rabbit",
        "chicken",
        "pig",
        "lion",
        "tiger",
        "elephant",
        "monkey",
        "puppy",
        "kitten",
    ]
} | {"sheep": "sheep", "fish": "fish", "puppy": "puppies"}
_GENERIC = {"subject": "subjects"}
_SKIP_MODIFIERS = frozenset(
    [
        "of",
        "the",
        "a",
        "an",
        "and",
        "or",
        "with",
        "in",
        "on",
        "at",
        "to",
        "from",
        "by",
        "for",
        "than",
        "more",
        "other",
        "others",
        "out",
        "times",
        "seconds",
        "minutes",
        "frames",
        "is",
        "are",
        "was",
        "were",
        "who",
        "which",
        "that",
    ]
)
_QUALIFIERS = re.compile(
    r"\b(?:up\s+to|at\s+most|at\s+least|more\s+than|fewer\s+than|less\s+than|over|about|"
    r"around|roughly|approximately|some)\s+$",
    re.IGNORECASE,
)
# Count nouns that also name things ("each individual frame", "a video player").
_NOT_ALWAYS_PEOPLE = frozenset(
    ["figure", "figures", "individual", "individuals", "player", "players", "friend", "friends"]
)
_PEOPLE_WORDS = re.compile(
    r"\b(?:"
    + "|".join(sorted({*_PEOPLE, *_PEOPLE.values()} - _NOT_ALWAYS_PEOPLE, key=len,
                      reverse=True))
    + r"|someone|somebody|he|she|him|his|her|hers|they\s+(?:walk|stand|sit|run|talk|smile|dance"
    r"|play|move|wave|hold|look))\b(?!-)",
    re.IGNORECASE,
)  # fmt: skip


@dataclass
class _Count:
    """A count the text states for one kind of subject."""

    n: int
    exact: bool
    words: list[str]


def _noun_table(record: Record) -> dict[str, tuple[str, str]]:
    """word (singular or plural) -> (category, 'sg' | 'pl')."""
    table: dict[str, tuple[str, str]] = {}
    ident = record.conditions.identities
    labels = [i.label.lower() for i in ident.identities] if ident is not None else []
    extra = {lab: ("people" if lab == "person" else lab + "s") for lab in labels if " " not in lab}
    for group, cat in ((_ANIMALS, None), (extra, None), (_GENERIC, "subject"), (_PEOPLE, "people")):
        for sg, pl in group.items():
            category = cat or sg
            table[sg] = (category, "sg")
            table[pl] = (category, "pl")
    return table


def _count_claims(text: str, record: Record) -> tuple[dict[str, _Count], list[tuple[int, int]]]:
    """Stated counts per category ('people', 'dog', ..., 'subject') and the spans counted.

    Understood: a number word (one..twelve, both, a pair of, a single, only one) or digits,
    then up to two modifiers, then a known noun ("two people", "3 small dogs", "2 main
    subjects"): exact. Lists of indefinite singulars ("a man and a woman", "a man, a woman
    and a child"): exact. "a group / crowd of", "several", "many" + a plural: at least 3.
    A lone indefinite singular ("a person", "one dog"): at least 1. Counts after "up to",
    "at least", "about" ... are skipped. Known nouns: people words, common animals, the
    identity labels and "subject(s)".
    """
    table = _noun_table(record)
    nouns = "|".join(sorted(map(re.escape, table), key=len, reverse=True))
    mod = r"(?:[A-Za-z][\w'-]*\s+){0,2}?"
    num = "|".join(
        sorted((r"\s+".join(map(re.escape, k.split())) for k in _NUMBERS), key=len, reverse=True)
    )
    counted = re.compile(rf"\b(?P<num>{num}|\d{{1,2}})\s+(?P<mod>{mod})(?P<noun>{nouns})\b", re.I)
    group = re.compile(
        rf"\b(?:an?\s+(?:\w+\s+)?(?:group|crowd|bunch|team|family|pack|herd|flock)\s+of"
        rf"|several|many|numerous)\s+(?P<mod>{mod})(?P<noun>{nouns})\b",
        re.I,
    )
    single = rf"(?:an?|one)\s+{mod}(?:{nouns})"
    listed = re.compile(rf"\b{single}(?:\s*,\s*{single})*\s*,?\s+and\s+{single}\b", re.I)
    item = re.compile(rf"\b(?:an?|one)\s+(?P<mod>{mod})(?P<noun>{nouns})\b", re.I)
    claims: dict[str, _Count] = {}
    spans: list[tuple[int, int]] = []

    def add(cat: str, n: int, exact: bool, words: str, span: tuple[int, int]) -> None:
        spans.append(span)
        old = claims.get(cat)
        if old is None:
            claims[cat] = _Count(n, exact, [words])
        elif exact and old.exact:
            old.n = max(old.n, n)
            old.words.append(words)
        else:  # mixed exact and at-least statements only give a lower bound
            old.n, old.exact = max(old.n, n), False
            old.words.append(words)

    def modifiers_ok(mods: str) -> bool:
        return not any(w.lower() in _SKIP_MODIFIERS for w in mods.split())

    taken: list[tuple[int, int]] = []
    for m in counted.finditer(text):
        if not modifiers_ok(m.group("mod")) or _QUALIFIERS.search(text[: m.start()]):
            continue
        word = " ".join(m.group("num").lower().split())
        n = int(word) if word.isdigit() else _NUMBERS[word]
        cat, form = table[m.group("noun").lower()]
        if n == 0 or (n > 1 and form == "sg") or (n == 1 and form == "pl"):
            continue  # "1 in 2 people", "one person's": not a count
        add(cat, n, n > 1 or word not in ("one",), m.group(0), m.span())
        taken.append(m.span())
    for m in group.finditer(text):
        if modifiers_ok(m.group("mod")) and table[m.group("noun").lower()][1] == "pl":
            add(table[m.group("noun").lower()][0], 3, False, m.group(0), m.span())
            taken.append(m.span())
    for m in listed.finditer(text):
        items = [i for i in item.finditer(m.group(0)) if modifiers_ok(i.group("mod"))]
        per: dict[str, int] = {}
        for i in items:
            cat = table[i.group("noun").lower()][0]
            per[cat] = per.get(cat, 0) + 1
        for cat, n in per.items():
            add(cat, n, True, m.group(0), m.span())
        taken.append(m.span())
    seen: set[str] = set()
    for m in item.finditer(text):
        if any(s <= m.start() < e for s, e in taken) or not modifiers_ok(m.group("mod")):
            continue
        noun = m.group("noun").lower()
        cat, form = table[noun]
        if form != "sg" or noun in seen:
            continue
        seen.add(noun)
        add(cat, 1, False, m.group(0), m.span())
    return claims, spans


def _mentions_outside(text: str, record: Record, spans: list[tuple[int, int]]) -> bool:
    table = _noun_table(record)
    rx = re.compile(r"\b(?:" + "|".join(map(re.escape, table)) + r")\b", re.I)
    return any(not any(s <= m.start() < e for s, e in spans) for m in rx.finditer(text))


def _check_subject_count(
    caption: Mapping[str, str], record: Record, s: CrossCheckSettings, facts: list[str]
) -> list[CaptionFlag]:
    text = _strip_facts(caption.get("main_object") or "", facts)
    if not text.strip():
        return []
    claims, spans = _count_claims(text, record)
    table = _noun_table(record)
    ident = record.conditions.identities
    pose = record.conditions.pose
    if ident is not None:
        k = len(ident.identities)
        kinds = ", ".join(i.label for i in sorted(ident.identities, key=lambda i: i.identity_id))
        fact = f"identities: {k} main {'subject' if k == 1 else 'subjects'}" + (
            f" ({kinds})" if kinds else ""
        )
        if "subject" in claims:
            total = claims["subject"]
        else:
            parts = [c for cat, c in claims.items() if cat != "subject"]
            if not parts:
                return []
            total = _Count(
                sum(c.n for c in parts), all(c.exact for c in parts),
                [w for c in parts for w in c.words],
            )  # fmt: skip
        if not total.exact:
            return []  # a lower bound never contradicts a selection of main subjects
        # per kind too: "two people" when the identities hold one person and a dog
        have: dict[str, int] = {}
        for i in ident.identities:
            kind = table.get(i.label.lower(), (i.label.lower(), "sg"))[0]
            have[kind] = have.get(kind, 0) + 1
        too_many = [
            c
            for cat, c in claims.items()
            if cat != "subject" and c.exact and c.n > have.get(cat, 0)
        ]
        over = k < s.identities_cap and (total.n > k or bool(too_many))
        if over and total.n <= k:
            total = _Count(total.n, True, [w for c in too_many for w in c.words])
        under = total.n < k and ("subject" in claims or not _mentions_outside(text, record, spans))
        if over or under:
            return [CaptionFlag(check="subject_count", component="main_object", fact=fact,
                                words=_join(total.words))]  # fmt: skip
        return []
    if pose is None or "people" not in claims:
        return []
    people = claims["people"]
    tracked = sum(1 for p in pose.activity if p.frames_present > 0)
    lo, hi = pose.people_typical, max(pose.people_max, tracked)
    wrong = people.n > hi or (people.exact and people.n < lo)
    if not wrong:
        return []
    fact = (
        f"pose: {pose.people_typical} {'person' if pose.people_typical == 1 else 'people'} in a "
        f"typical frame, up to {pose.people_max} at once, {tracked} tracked over "
        f"{pose.frames} frames"
    )
    return [CaptionFlag(check="subject_count", component="main_object", fact=fact,
                        words=_join(people.words))]  # fmt: skip


# --------------------------------------------------------------------------- people, no pose


def _check_people_without_pose(
    caption: Mapping[str, str], record: Record, s: CrossCheckSettings
) -> list[CaptionFlag]:
    pose = record.conditions.pose
    text = caption.get("action") or ""
    if pose is None or pose.people_max > 0 or not text.strip():
        return []
    words = [
        m.group(0)
        for m in _PEOPLE_WORDS.finditer(text)
        if not _negated(text, m.start(), m.end(), s.negation_window_words)
    ]
    if not words:
        return []
    fact = f"pose: no person detected in any of the {pose.frames} sampled frames"
    return [CaptionFlag(check="people_without_pose", component="action", fact=fact,
                        words=_join(words[:6]))]  # fmt: skip
