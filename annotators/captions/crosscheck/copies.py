"""The near-copy check: two components that say the same thing, once the record's own
grounding facts quoted word for word are left out of both."""

from __future__ import annotations

from collections.abc import Mapping
from difflib import SequenceMatcher
from itertools import combinations

from any2capins.annotators.captions.crosscheck._settings import CrossCheckSettings
from any2capins.annotators.captions.crosscheck._text import (
    _WORD,
    _fact_token_runs,
    _shorten,
    _without_runs,
)
from any2capins.schemas import CAPTION_COMPONENTS, CaptionFlag, Record

# --------------------------------------------------------------------------- near copies


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
