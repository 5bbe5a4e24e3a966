"""Caption-condition cross-checks: places where a structured caption contradicts what a
condition measured, as :class:`~schemas.CaptionFlag` rows for the reviewer.

Pure text rules over one record; nothing is loaded and nothing is guessed. Every check is
conservative: a flag means "a reviewer should look", and ordinary prose should stay quiet.

Checks (each can be switched off in :class:`CrossCheckSettings`):

* ``camera_direction`` - the camera component states a direction opposite to a measured
  camera label (labels ``pan_left``, text "pans right"; ``dolly_in`` vs "pulls back").
* ``camera_motion`` - motion words on a clip whose labels are exactly ``["static"]``, or a
  "static camera" / "the camera does not move" claim on a clip with a measured motion.
* ``subject_count`` - the main_object component's explicit subject count disagrees with
  the identities (total and per kind) or, without identities, with pose (people count).
  The record's own grounding facts quoted word for word are not read as claims.
* ``people_without_pose`` - the action component describes people where pose found nobody.
* ``near_copy`` - two components that are (nearly) the same text, once the record's
  grounding facts quoted word for word are left out of both.
* ``off_topic`` - a camera component without a single word about the shot or its motion.

Negated mentions ("no pan, tilt, roll, translation or zoom", "the camera does not move",
"without panning", "no person is visible") never count as claims.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from difflib import SequenceMatcher
from itertools import combinations

from pydantic import BaseModel, ConfigDict, Field

# One definition of "camera talk", shared with the camera condition's short-prompt rule.
from annotators.camera.condition import CAMERA_PHRASES, CAMERA_SOURCES
from annotators.camera.labels import VOCABULARY
from schemas import CAPTION_COMPONENTS, CaptionFlag, Record

CHECKS: tuple[str, ...] = (
    "camera_direction",
    "camera_motion",
    "subject_count",
    "people_without_pose",
    "near_copy",
    "off_topic",
)


class CrossCheckSettings(BaseModel):
    """Thresholds and switches of :func:`cross_check`."""

    model_config = ConfigDict(extra="forbid")

    camera_direction: bool = True
    camera_motion: bool = True
    subject_count: bool = True
    people_without_pose: bool = True
    near_copy: bool = True
    off_topic: bool = True
    camera_components: tuple[str, ...] = Field(
        default=("camera",), description="components read by the two camera checks"
    )
    near_copy_ratio: float = Field(
        default=0.8, gt=0, le=1, description="word-level SequenceMatcher ratio for a near-copy"
    )
    near_copy_min_words: int = Field(
        default=6, ge=1, description="shorter components are never compared"
    )
    negation_window_words: int = Field(
        default=8, ge=0, description="a negator this many words before a phrase negates it"
    )
    identities_cap: int = Field(
        default=3, ge=1, description="the most identities the annotator keeps (1-3)"
    )
    words_max_chars: int = Field(default=120, ge=20, description="flag.words is cut to this")


DEFAULT_SETTINGS = CrossCheckSettings()

# --------------------------------------------------------------------------- shared text tools

_NEGATOR = re.compile(
    r"\b(?:no|not|never|without|neither|nor|none|nothing|nobody|instead\s+of|rather\s+than)\b"
    r"|n't\b",
    re.IGNORECASE,
)
# A clause boundary stops a negation: "no zoom. The camera pans left" pans.
_CLAUSE_END = re.compile(
    r"[.;:!?()]|\b(?:but|however|although|though|yet|whereas|while|then)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")


def _negated(text: str, start: int, end: int, window: int) -> bool:
    """A negator up to ``window`` words before ``start`` in the same clause, or inside the
    phrase before its last word ("the camera does not move")."""
    last = max((m.start() for m in _WORD.finditer(text, start, end)), default=start)
    cut = max((m.end() for m in _CLAUSE_END.finditer(text, 0, start)), default=0)
    before = [m.start() for m in _WORD.finditer(text, cut, start)]
    from_ = start if window == 0 else (before[-window] if len(before) >= window else cut)
    return _NEGATOR.search(text, from_, last) is not None


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _join(phrases: Iterable[str]) -> str:
    return "; ".join(dict.fromkeys(" ".join(p.split()) for p in phrases))


# --------------------------------------------------------------------------- camera checks

_LR = r"(?:to\s+(?:the\s+)?|towards?\s+(?:the\s+)?)?"
# Stated directions, one pattern per camera label (VOCABULARY names).
_DIRECTION_PATTERNS: dict[str, str] = {
    "pan_left": rf"pan(?:s|ning|ned)?\s+{_LR}left",
    "pan_right": rf"pan(?:s|ning|ned)?\s+{_LR}right",
    "tilt_up": r"tilt(?:s|ing|ed)?\s+up(?:wards?)?",
    "tilt_down": r"tilt(?:s|ing|ed)?\s+down(?:wards?)?",
    "roll_cw": r"roll(?:s|ing|ed)?\s+clockwise",
    "roll_ccw": r"roll(?:s|ing|ed)?\s+(?:counter|anti)-?clockwise",
    "truck_left": rf"(?:truck|crab)(?:s|bing|bed|ing|ed)?\s+{_LR}left",
    "truck_right": rf"(?:truck|crab)(?:s|bing|bed|ing|ed)?\s+{_LR}right",
    "pedestal_up": r"(?:pedestal(?:s|ing|led|ling)?|crane(?:s|d)?|craning|boom(?:s|ing|ed)?)"
    r"\s+up(?:wards?)?",
    "pedestal_down": r"(?:pedestal(?:s|ing|led|ling)?|crane(?:s|d)?|craning|boom(?:s|ing|ed)?)"
    r"\s+down(?:wards?)?",
    "dolly_in": r"dolly(?:ing)?\s+(?:in|forwards?)|dollies\s+(?:in|forwards?)|dolly-in"
    r"|push(?:es|ing|ed)?\s+in(?:wards?)?|camera\s+(?:\w+\s+)?(?:moves|moving|travels|glides)"
    r"\s+(?:forwards?|closer|in\s+towards?)",
    "dolly_out": r"dolly(?:ing)?\s+(?:out|back(?:wards?)?)|dollies\s+(?:out|back(?:wards?)?)"
    r"|dolly-out|pull(?:s|ing|ed)?\s+(?:back|out|away)"
    r"|camera\s+(?:\w+\s+)?(?:moves|moving|travels|glides|retreats)\s+(?:backwards?|back|away)",
    "zoom_in": r"zoom(?:s|ing|ed)?[\s-]+in(?:to|wards?)?",
    "zoom_out": r"zoom(?:s|ing|ed)?[\s-]+out",
    "orbit_left": rf"(?:orbit|arc|circle)(?:s|ing|ed|d)?\s+{_LR}left",
    "orbit_right": rf"(?:orbit|arc|circle)(?:s|ing|ed|d)?\s+{_LR}right",
}
assert set(_DIRECTION_PATTERNS) <= set(VOCABULARY)
_DIRECTIONS = {
    label: re.compile(rf"\b(?:{p})\b", re.IGNORECASE) for label, p in _DIRECTION_PATTERNS.items()
}
_OPPOSITE: dict[str, str] = {}
for _a, _b in (
    ("pan_left", "pan_right"),
    ("tilt_up", "tilt_down"),
    ("roll_cw", "roll_ccw"),
    ("truck_left", "truck_right"),
    ("pedestal_up", "pedestal_down"),
    ("dolly_in", "dolly_out"),
    ("zoom_in", "zoom_out"),
    ("orbit_left", "orbit_right"),
):
    _OPPOSITE[_a], _OPPOSITE[_b] = _b, _a
MOTION_LABELS = frozenset(_OPPOSITE)

# Words that are also nouns: "a frying pan over the stove", "a red truck left", "a dolly".
_NOUN_VERBS = re.compile(r"(?:pan|truck|dolly|zoom|orbit|crane|boom|arc|circle|roll)\b", re.I)
_DETERMINERS = frozenset(
    [
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "his",
        "her",
        "its",
        "their",
        "my",
        "our",
        "your",
        "one",
        "another",
        "every",
        "each",
    ]
)
_CAMERA_NOUN_AFTER = re.compile(r"[\s-]+(?:shots?|moves?|movements?|motion)\b", re.I)
# ... unless the word before says it is a camera move: "a slow pan to the left".
_MOVE_ADJECTIVES = frozenset(
    [
        "slow",
        "slowly",
        "quick",
        "fast",
        "gentle",
        "smooth",
        "steady",
        "gradual",
        "subtle",
        "sweeping",
        "slight",
        "brief",
        "long",
        "short",
        "wide",
        "horizontal",
        "vertical",
        "continuous",
        "camera",
        "camera's",
        "shot's",
        "handheld",
    ]
)

# Claims that the camera does not move (checked against moving clips).
_STATIC_CLAIM = re.compile(
    r"\b(?:(?:static|fixed|stationary|locked[- ]off|locked|immobile|motionless|unmoving|still)"
    r"\s+(?:camera|shot|frame|view|tripod\s+shot)"
    r"|(?:on|from)\s+a\s+tripod"
    r"|camera\s+(?:\w+\s+){0,2}?(?:is|remains|stays|stands|holds|was)\s+(?:\w+\s+)?"
    r"(?:static|fixed(?!\s+on)|stationary|motionless|immobile|in\s+place|still(?!\s+\w+ing\b)))\b",
    re.IGNORECASE,
)
# Negated motion that amounts to a static claim ("the camera does not move").
_NO_MOVE = re.compile(
    r"\b(?:camera\s+(?:\w+\s+)?(?:does\s+not|doesn't|did\s+not|didn't|never|not)\s+"
    r"(?:\w+\s+)?(?:move|moves|moving|budge)"
    r"|no\s+camera\s+(?:movement|motion|moves)"
    r"|without\s+(?:any\s+)?camera\s+(?:movement|motion))\b",
    re.IGNORECASE,
)
# Phrases from CAMERA_PHRASES that state stillness rather than motion.
_STATIC_WORDS = re.compile(
    r"\b(?:static|fixed|stationary|still|locked|steady|stays|remains|holds)\b", re.IGNORECASE
)


@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    text: str


def _is_noun_use(text: str, start: int, end: int) -> bool:
    """The match starts with a bare noun-verb ("pan", "truck") used as a noun; "a dolly out
    shot" stays a camera move."""
    m = _NOUN_VERBS.match(text, start)
    if m is None or _CAMERA_NOUN_AFTER.match(text, end):
        return False
    before = [w.group(0).lower() for w in _WORD.finditer(text, max(0, start - 40), start)][-2:]
    if not before:
        return False
    if before[-1] in _MOVE_ADJECTIVES:
        return False
    return any(w in _DETERMINERS for w in before)


def _camera_mentions(text: str, window: int) -> list[tuple[str | None, _Hit]]:
    """Non-negated camera motion phrases: (direction label or None, hit), in text order."""
    found: list[tuple[str | None, _Hit]] = []
    spans: list[tuple[int, int]] = []
    for label, rx in _DIRECTIONS.items():
        for m in rx.finditer(text):
            if _is_noun_use(text, m.start(), m.end()) or _negated(text, m.start(), m.end(), window):
                continue
            found.append((label, _Hit(m.start(), m.end(), m.group(0))))
            spans.append(m.span())
    for m in CAMERA_PHRASES.finditer(text):
        phrase = m.group(0)
        if _STATIC_WORDS.search(phrase) or _is_noun_use(text, m.start(), m.end()):
            continue
        if any(s < m.end() and m.start() < e for s, e in spans):
            continue  # already read as a direction
        if _negated(text, m.start(), m.end(), window):
            continue
        found.append((None, _Hit(m.start(), m.end(), phrase)))
    return sorted(found, key=lambda lh: lh[1].start)


def _static_claims(text: str, window: int) -> list[_Hit]:
    hits = [
        _Hit(m.start(), m.end(), m.group(0))
        for m in _STATIC_CLAIM.finditer(text)
        if not _negated(text, m.start(), m.end(), window)
    ]
    hits += [_Hit(m.start(), m.end(), m.group(0)) for m in _NO_MOVE.finditer(text)]
    return sorted(hits, key=lambda h: h.start)


def _camera_fact(record: Record) -> str:
    cam = record.conditions.camera
    assert cam is not None
    labels = ", ".join(cam.labels) or "none"
    return f"camera labels: {labels} ({CAMERA_SOURCES.get(cam.source, cam.source)})"


def _check_camera(
    caption: Mapping[str, str], record: Record, s: CrossCheckSettings
) -> list[CaptionFlag]:
    cam = record.conditions.camera
    # an unusable estimate carries "static" as a placeholder, not as a measurement
    if cam is None or not cam.usable:
        return []
    labels = set(cam.labels)
    static = cam.labels == ["static"]
    moving = bool(labels & MOTION_LABELS)
    fact = _camera_fact(record)
    flags: list[CaptionFlag] = []
    for component in s.camera_components:
        text = caption.get(component) or ""
        mentions = _camera_mentions(text, s.negation_window_words)
        if s.camera_direction and not static:
            wrong = [
                h.text
                for label, h in mentions
                if label is not None and label not in labels and _OPPOSITE[label] in labels
            ]
            if wrong:
                flags.append(CaptionFlag(check="camera_direction", component=component,
                                         fact=fact, words=_join(wrong)))  # fmt: skip
        if not s.camera_motion:
            continue
        if static and mentions:
            flags.append(CaptionFlag(check="camera_motion", component=component, fact=fact,
                                     words=_join(h.text for _, h in mentions)))  # fmt: skip
        elif moving:
            claims = _static_claims(text, s.negation_window_words)
            if claims:
                flags.append(CaptionFlag(check="camera_motion", component=component, fact=fact,
                                         words=_join(h.text for h in claims)))  # fmt: skip
    return flags


# --------------------------------------------------------------------------- off topic

# Any one of these words in the camera component keeps it on topic.
CAMERA_TOPIC_WORDS: tuple[str, ...] = (
    "camera", "cameras", "shot", "shots", "frame", "frames", "framed", "framing", "angle",
    "angles", "view", "views", "viewpoint", "perspective", "lens", "pov", "pan", "pans",
    "panning", "panned", "tilt", "tilts", "tilting", "tilted", "roll", "rolls", "rolling",
    "zoom", "zooms", "zooming", "zoomed", "dolly", "dollies", "dollying", "truck", "trucks",
    "trucking", "pedestal", "crane", "orbit", "orbits", "orbiting", "tracking", "tracks",
    "follows", "handheld", "hand-held", "steadicam", "tripod", "static", "still",
    "stationary", "fixed", "locked-off", "steady", "shaky", "moves", "move", "moving",
    "movement", "motion", "close-up", "closeup", "wide", "medium", "overhead", "aerial",
    "eye-level", "low-angle", "high-angle", "focus", "composition", "footage", "filmed",
    "recorded", "viewer",
)  # fmt: skip
_TOPIC = re.compile(
    r"(?<![\w-])(?:" + "|".join(map(re.escape, CAMERA_TOPIC_WORDS)) + r")(?![\w-])", re.I
)


def _check_off_topic(
    caption: Mapping[str, str], record: Record, s: CrossCheckSettings
) -> list[CaptionFlag]:
    text = caption.get("camera") or ""
    if not text.strip() or _TOPIC.search(text):
        return []
    fact = "the camera component describes the shot and the camera's motion"
    if record.conditions.camera is not None and record.conditions.camera.usable:
        fact += f"; {_camera_fact(record)}"
    return [
        CaptionFlag(check="off_topic", component="camera", fact=fact,
                    words=_shorten(text, s.words_max_chars))
    ]  # fmt: skip


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


# --------------------------------------------------------------------------- near copies


def _fact_texts(record: Record) -> list[str]:
    """The record's grounding facts, as the condition types word them for the writer.

    Stating a measured fact word for word is grounding, not a claim to check: the grounded
    writer puts pose facts in both main_object and action, and pose's "2 distinct people"
    next to identities' "1 main subject: a cup" is two measurements, not a miscount.
    """
    from annotators.conditions import condition_types  # the registry, loaded once

    out: list[str] = []
    try:
        types = condition_types()
    except Exception:  # noqa: BLE001 - a broken plugin must not break the checks
        return out
    for name in record.conditions.present():
        ctype = types.get(name)
        try:
            summary = type(ctype).read(record) if ctype is not None else None
            facts = ctype.grounding_facts(summary, record) if ctype and summary else []
        except Exception:  # noqa: BLE001 - same: the facts stage reports such plugins
            continue
        out.extend(str(f).strip() for f in facts if str(f).strip())
    return out


def _strip_facts(text: str, facts: list[str]) -> str:
    for fact in sorted(facts, key=len, reverse=True):
        body = fact.rstrip(".!? ")
        if len(body.split()) > 2:
            text = re.sub(re.escape(body) + r"[.!?]?", " ", text, flags=re.IGNORECASE)
    return text


def _fact_token_runs(facts: list[str]) -> list[list[str]]:
    runs = [toks for f in facts if len(toks := [w.lower() for w in _WORD.findall(f)]) > 2]
    return sorted(runs, key=len, reverse=True)


def _without_runs(tokens: list[str], runs: list[list[str]]) -> list[str]:
    for run in runs:
        n, i, out = len(run), 0, []
        while i < len(tokens):
            if tokens[i : i + n] == run:
                i += n
            else:
                out.append(tokens[i])
                i += 1
        tokens = out
    return tokens


def _check_near_copy(
    caption: Mapping[str, str], record: Record, s: CrossCheckSettings, facts: list[str]
) -> list[CaptionFlag]:
    runs = _fact_token_runs(facts)
    tokens = {
        c: _without_runs([w.lower() for w in _WORD.findall(caption.get(c) or "")], runs)
        for c in caption
    }
    order = [c for c in CAPTION_COMPONENTS if c in tokens] + sorted(
        c for c in tokens if c not in CAPTION_COMPONENTS
    )
    flags: list[CaptionFlag] = []
    for a, b in combinations(order, 2):
        ta, tb = tokens[a], tokens[b]
        if min(len(ta), len(tb)) < s.near_copy_min_words:
            continue
        sm = SequenceMatcher(None, ta, tb, autojunk=False)
        # cheap upper bounds first
        if sm.real_quick_ratio() < s.near_copy_ratio or sm.quick_ratio() < s.near_copy_ratio:
            continue
        ratio = sm.ratio()
        if ratio < s.near_copy_ratio:
            continue
        block = max(sm.get_matching_blocks(), key=lambda m: m.size)
        shared = " ".join(ta[block.a : block.a + block.size])
        flags.append(
            CaptionFlag(
                check="near_copy",
                component=f"{a}~{b}",
                fact=f"the {a} and {b} components are {ratio:.0%} the same words "
                f"(near-copy from {s.near_copy_ratio:.0%}; measured facts quoted in both "
                "left out)",
                words=_shorten(shared, s.words_max_chars),
            )
        )
    return flags


# --------------------------------------------------------------------------- entry point


def cross_check(
    caption: Mapping[str, str], record: Record, settings: CrossCheckSettings | None = None
) -> list[CaptionFlag]:
    """Flags where ``caption`` (component name -> text) contradicts ``record``'s conditions.

    Checks whose condition the record lacks are skipped; see the module docstring for the
    rules. Flags come in a fixed order: camera, off_topic, subject_count,
    people_without_pose, near_copy.
    """
    s = settings or DEFAULT_SETTINGS
    flags: list[CaptionFlag] = []
    if s.camera_direction or s.camera_motion:
        flags += _check_camera(caption, record, s)
    if s.off_topic:
        flags += _check_off_topic(caption, record, s)
    facts = _fact_texts(record) if s.subject_count or s.near_copy else []
    if s.subject_count:
        flags += _check_subject_count(caption, record, s, facts)
    if s.people_without_pose:
        flags += _check_people_without_pose(caption, record, s)
    if s.near_copy:
        flags += _check_near_copy(caption, record, s, facts)
    return flags


__all__ = [
    "CAMERA_TOPIC_WORDS",
    "CHECKS",
    "MOTION_LABELS",
    "CrossCheckSettings",
    "cross_check",
]
