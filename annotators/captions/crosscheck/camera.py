"""The camera checks: a direction opposite to a measured label, motion words on a static
clip (or a static claim on a moving one), and a camera component off its topic."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# One definition of "camera talk", shared with the camera condition's short-prompt rule.
from any2capins.annotators.camera.condition import CAMERA_PHRASES, CAMERA_SOURCES
from any2capins.annotators.camera.labels import VOCABULARY
from any2capins.annotators.captions.crosscheck._settings import CrossCheckSettings
from any2capins.annotators.captions.crosscheck._text import _WORD, _join, _negated, _shorten
from any2capins.schemas import CaptionFlag, Record

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
