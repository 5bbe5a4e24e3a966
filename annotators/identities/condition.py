"""The identities condition type: its summary model, payload decoding, the text facts it gives
the caption writer (how many subjects, what, where, how big, how long visible) and the
short-prompt rules that follow from the writer being shown the subjects' reference images.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from any2capins.annotators.conditions import ConditionType, PayloadReader
from any2capins.annotators.identities.selection import decode_png, parse_boxes_json, unpack_masks
from any2capins.schemas import IdentitiesCondition, Identity, Record, Suitability

SMALL, LARGE = 0.05, 0.20  # shares of the frame between "small", "medium" and "large"

COLOURS = (
    "red|blue|green|yellow|black|white|brown|gr[ae]y|orange|pink|purple|violet|beige|tan|"
    "blond|blonde|golden|silver|navy|maroon|striped|plaid|checkered|polka-dot|dark|light"
)
GARMENTS = (
    "shirt|t-shirt|tee|top|blouse|dress|skirt|jacket|coat|hoodie|sweater|jumper|cardigan|"
    "vest|hat|cap|beanie|pants|trousers|jeans|shorts|leggings|shoes|sneakers|boots|socks|"
    "scarf|gloves|uniform|suit|hair|fur|beard|collar|apron|glasses|sunglasses"
)
_WEARING = re.compile(r"\b(wearing|wears|dressed in|clad in|sporting|outfit)\b", re.IGNORECASE)
_HAIRED = re.compile(
    r"\b(long|short|curly|straight|wavy|blond|blonde|dark|brown|red|black|grey|gray|white)"
    r"[- ]haired\b",
    re.IGNORECASE,
)


def _plural(label: str) -> str:
    return "people" if label == "person" else f"{label}s"


def _article(label: str) -> str:
    return "an" if label[:1].lower() in "aeiou" else "a"


def position_phrase(center: list[float]) -> str:
    """Where in the frame a centre (x, y as fractions) lies, in words."""
    if len(center) != 2:
        return "in the frame"
    x, y = center
    horiz = "left" if x < 1 / 3 else ("right" if x > 2 / 3 else "centre")
    vert = "upper" if y < 1 / 3 else ("lower" if y > 2 / 3 else "")
    if not vert:
        return "in the centre" if horiz == "centre" else f"on the {horiz}"
    return f"in the {vert} {'centre' if horiz == 'centre' else horiz}"


def size_phrase(area_fraction: float) -> str:
    word = "small" if area_fraction < SMALL else ("large" if area_fraction >= LARGE else "medium")
    return f"{word} (about {max(1, round(area_fraction * 100))}% of the frame)"


def visibility_phrase(identity: Identity, frames: int, duration_s: float) -> str:
    if frames <= 0:
        return f"visible in {identity.frames_present} sampled frames"
    if identity.frames_present >= frames:
        return "visible throughout the clip"
    seconds = duration_s * identity.frames_present / frames
    return (
        f"visible for about {seconds:.1f} s of the {duration_s:.1f} s clip "
        f"({identity.frames_present} of {frames} sampled frames)"
    )


def reference_name(identity: Identity, others: list[Identity]) -> str:
    """How a prompt should refer to a subject: its kind, plus its position when another
    subject is of the same kind."""
    same = [
        o for o in others if o.label == identity.label and o.identity_id != identity.identity_id
    ]
    name = f"the {identity.label}"
    return f"{name} {position_phrase(identity.center)}" if same else name


class IdentitiesConditionType(ConditionType[IdentitiesCondition]):
    name: ClassVar[str] = "identities"
    summary_model: ClassVar[type[BaseModel]] = IdentitiesCondition
    description: ClassVar[str] = (
        "1-3 main subjects: RGBA reference crops, a stitched reference image, per-frame "
        "boxes and low-resolution masks"
    )

    # 1-3 distinct subjects, each seen in at least half of the sampled frames, with a mask
    # whose area stays steady where it is present (a flickering or drifting mask makes a
    # poor reference): coefficient of variation of the area at most 0.5.
    default_thresholds: ClassVar[dict[str, float]] = {
        "min_identities": 1.0,
        "max_identities": 3.0,
        "min_presence_fraction": 0.5,
        "max_area_cv": 0.5,
    }

    def suitability(
        self, summary: BaseModel, record: Record, thresholds: Mapping[str, float]
    ) -> Suitability:
        s = self.summary_of(summary)
        lo, hi = float(thresholds["min_identities"]), float(thresholds["max_identities"])
        min_presence = float(thresholds["min_presence_fraction"])
        max_cv = float(thresholds["max_area_cv"])
        idents = s.identities
        frames = s.frames or max((i.frames_present for i in idents), default=0)
        presence = min((i.frames_present / frames for i in idents), default=0.0) if frames else 0.0
        cv = max((i.area_cv for i in idents), default=0.0)
        n = len(idents)
        checks = [
            (lo <= n <= hi, f"{n} subject{'' if n == 1 else 's'} (needs {lo:.0f}-{hi:.0f})"),
            (
                presence >= min_presence,
                f"the least-seen subject is present in {presence:.0%} of {frames} sampled "
                f"frames (needs >= {min_presence:.0%})",
            ),
            (
                cv <= max_cv,
                f"the least stable mask's area varies by {cv:.2f} (coefficient of variation; "
                f"needs <= {max_cv:.2f})",
            ),
        ]
        failed = [text for ok, text in checks if not ok]
        reason = "; ".join(failed if failed else [text for _, text in checks])
        return Suitability(
            suitable=not failed,
            reason=("the subjects do not make a good identities instance: " if failed else "")
            + reason,
            measured={
                "identities": float(n),
                "min_presence_fraction": round(presence, 4),
                "max_area_cv": round(cv, 4),
                "frames": float(frames),
            },
            thresholds={
                "min_identities": lo,
                "max_identities": hi,
                "min_presence_fraction": min_presence,
                "max_area_cv": max_cv,
            },
        )

    def decode_payload(self, summary: BaseModel, read: PayloadReader) -> dict[str, np.ndarray]:
        """``stitched_reference`` [H, W, 3]; per identity ``crop_<id>`` [h, w, 4] RGBA and
        ``boxes_<id>`` [T, 4] (display pixels, NaN where absent); ``masks`` [N, T, h, w]
        bool with ``mask_identity_ids`` and ``timestamps_s`` when the masks were stored."""
        s = self.summary_of(summary)
        out: dict[str, np.ndarray] = {"stitched_reference": decode_png(read(s.stitched_reference))}
        for ident in s.identities:
            out[f"crop_{ident.identity_id}"] = decode_png(read(ident.crop))
            if ident.boxes is not None:
                out[f"boxes_{ident.identity_id}"] = parse_boxes_json(read(ident.boxes))
        if s.masks is not None:
            packed = unpack_masks(read(s.masks))
            out["masks"] = packed["masks"]
            out["mask_identity_ids"] = packed["identity_ids"]
            out["timestamps_s"] = packed["timestamps_s"]
        return out

    def grounding_facts(self, summary: BaseModel, record: Record) -> list[str]:
        s = self.summary_of(summary)
        idents = sorted(s.identities, key=lambda i: i.identity_id)
        if not idents:
            return ["No main subject was identified in the clip."]
        n = len(idents)
        listing = ", ".join(
            f"{k}. {_article(i.label)} {i.label}" for k, i in enumerate(idents, start=1)
        )
        facts = [
            f"There {'is 1 main subject' if n == 1 else f'are {n} main subjects'}, shown "
            f"{'in the reference image' if n == 1 else 'left to right in the stitched reference image'}: "
            f"{listing}."
        ]
        for k, ident in enumerate(idents, start=1):
            facts.append(
                f"Subject {k} ({ident.label}) is {position_phrase(ident.center)}, "
                f"{size_phrase(ident.mean_area_fraction)}, "
                f"{visibility_phrase(ident, s.frames, record.clip.duration_s)}."
            )
        labels = [i.label for i in idents]
        for label in sorted(set(labels)):
            same = [i for i in idents if i.label == label]
            if len(same) > 1:
                names = ", ".join(f"'{reference_name(i, idents)}'" for i in same)
                facts.append(
                    f"{len(same)} of the subjects are {_plural(label)}; they are told apart "
                    f"by position: {names}."
                )
        return facts

    def short_prompt_rules(self, summary: BaseModel, record: Record) -> list[str]:
        s = self.summary_of(summary)
        idents = sorted(s.identities, key=lambda i: i.identity_id)
        if not idents:
            return []
        names = ", ".join(f"'{reference_name(i, idents)}'" for i in idents)
        return [
            "The reference image(s) already show what the main subjects look like: do not "
            "describe their appearance (clothing, colours, hair, fur, build, age).",
            f"Refer to the subjects briefly and implicitly, by kind and position: {names}.",
            "Say what the subjects do and how they interact, not who they are.",
        ]

    def short_prompt_violations(self, prompt: str, summary: BaseModel, record: Record) -> list[str]:
        s = self.summary_of(summary)
        if not s.identities:
            return []
        problems: list[str] = []
        for m in _WEARING.finditer(prompt):
            problems.append(
                f"describes clothing ('{m.group(0)}') that the reference images already show"
            )
        for m in _HAIRED.finditer(prompt):
            problems.append(
                f"describes hair ('{m.group(0)}') that the reference images already show"
            )
        nouns = (
            GARMENTS
            + "|"
            + "|".join(re.escape(w) for i in s.identities for w in {i.label, _plural(i.label)})
        )
        colour_noun = re.compile(
            rf"\b(?:{COLOURS})(?:[- ](?:and|[a-z]+))?[- ](?:{nouns})\b", re.IGNORECASE
        )
        for m in colour_noun.finditer(prompt):
            problems.append(
                f"describes colour or pattern ('{m.group(0)}') that the reference images "
                "already show"
            )
        return list(dict.fromkeys(problems))


__all__ = [
    "IdentitiesConditionType",
    "position_phrase",
    "reference_name",
    "size_phrase",
    "visibility_phrase",
]
