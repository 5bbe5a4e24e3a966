"""The offline ``grounded`` writer: the six components and a short prompt composed only from
measured facts (clip size and duration, brightness, palette names, frame-to-frame change,
and the condition types' grounding facts). It runs without any endpoint, says nothing it
does not know, and is marked ``writer=grounded`` in provenance so its text is never taken
for a model's.
"""

from __future__ import annotations

import hashlib

from any2capins.annotators.captions.config import SHORT_PROMPT, Bounds
from any2capins.annotators.captions.facts import (
    ClipContext,
    brightness_word,
    colour_name,
    join_words,
    motion_word,
    orientation,
    palette_phrase,
)
from any2capins.annotators.captions.validate import part_problems, word_count
from any2capins.schemas import CAPTION_COMPONENTS

GROUNDED_VERSION = "1"

# Which component a built-in condition's facts belong to (all of them also go to dense);
# facts of other condition types appear in the dense caption only.
CONDITION_COMPONENTS: dict[str, tuple[str, ...]] = {
    "camera": ("camera",),
    "identities": ("main_object",),
    "pose": ("action", "main_object"),
    "depth": ("background",),
}


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _pick(options: list[str], clip_id: str) -> str:
    """A deterministic choice per clip, so openings vary across the dataset."""
    return options[int(hashlib.sha256(clip_id.encode()).hexdigest(), 16) % len(options)]


def _condition_facts(ctx: ClipContext, component: str | None) -> list[str]:
    """The facts for one component; for the dense caption (``None``), a condition that has
    components of its own gives its headline only (they carry the rest, and a clip with all
    four conditions would pass the dense caption's word limit), any other condition all."""
    out: list[str] = []
    for cond in ctx.conditions:
        own = CONDITION_COMPONENTS.get(cond.name, ())
        if component is None:
            out.extend(_sentence(f) for f in (cond.facts[:1] if own else cond.facts))
        elif component in own:
            out.extend(_sentence(f) for f in cond.facts)
    return out


def compose(ctx: ClipContext) -> tuple[dict[str, str], str]:
    """(the six components, the short prompt) for one clip."""
    clip, stats = ctx.record.clip, ctx.record.stats
    seconds = f"{clip.duration_s:.1f}"
    orient = orientation(clip.width, clip.height)
    size = f"{clip.width}x{clip.height}"
    fps = f"{clip.fps:.0f}"
    intro = f"A {seconds}-second {orient} video clip at {size} pixels and {fps} frames per second."
    looks: list[str] = []
    motion: list[str] = []
    if stats is not None:
        bright = brightness_word(stats.mean_brightness)
        looks.append(
            f"The picture is {bright} overall (mean luma {stats.mean_brightness:.2f} on a 0 to 1 "
            "scale)."
        )
        if stats.palette:
            looks.append(f"Its dominant colours by area are {palette_phrase(stats)}.")
        motion.append(
            f"Across {stats.frames_sampled} frames sampled over the clip the picture shows "
            f"{motion_word(stats.motion_magnitude)} change from frame to frame (mean absolute "
            f"luma difference {stats.motion_magnitude:.3f}), counting subject and camera "
            "motion together."
        )
    size_sentence = f"The frame is {orient} at {size} pixels."
    components = {
        "dense": " ".join([intro, *looks, *motion, *_condition_facts(ctx, None)]),
        "main_object": " ".join(_condition_facts(ctx, "main_object"))
        or "The identity, number and position of the main subjects were not measured for "
        "this clip.",
        "background": " ".join(_condition_facts(ctx, "background"))
        or "The layout and depth of the scene behind the subjects were not measured for this clip.",
        "camera": " ".join(_condition_facts(ctx, "camera"))
        or " ".join(["Camera motion was not measured for this clip.", *motion]),
        "style": " ".join([*looks, size_sentence])
        if looks
        else f"{size_sentence} Colour and lighting were not measured for this clip.",
        "action": " ".join(_condition_facts(ctx, "action") + motion)
        or "Subject activity and motion were not measured for this clip.",
    }
    return components, short_prompt(ctx)


def short_prompt(ctx: ClipContext) -> str:
    """Clip-level facts only: what the conditions show is the conditions' to say.

    A sentence that breaks a condition type's mechanical rule is dropped, so a new condition
    type's rules shape this prompt too.
    """
    clip, stats = ctx.record.clip, ctx.record.stats
    seconds = f"{clip.duration_s:.0f}"
    orient = orientation(clip.width, clip.height)
    sentences: list[str] = []
    if stats is not None:
        names = (
            join_words(list(dict.fromkeys(colour_name(s.hex) for s in stats.palette))[:3])
            or "natural"
        )
        bright = brightness_word(stats.mean_brightness)
        sentences.append(
            _pick(
                [
                    f"A {bright} {orient} scene in {names} tones, about {seconds} seconds long.",
                    f"Show a {bright} {orient} scene dominated by {names}, lasting about "
                    f"{seconds} seconds.",
                    f"About {seconds} seconds of {bright} {orient} footage in {names} tones.",
                    f"{names[0].upper() + names[1:]} tones fill a {bright} {orient} scene "
                    f"for about {seconds} seconds.",
                ],
                ctx.clip_id,
            )
        )
        sentences.append(
            f"The picture shows {motion_word(stats.motion_magnitude)} change from moment to moment."
        )
    else:
        sentences.append(
            f"A {orient} video clip of about {seconds} seconds at {clip.width}x{clip.height} "
            "resolution."
        )
    kept = [s for s in sentences if not ctx.violations(s)]
    return " ".join(kept)


def instance_prompt(ctx: ClipContext, bounds: Bounds) -> str:
    """The grounded short prompt of one instance (``ctx.given``): the clip-level sentences,
    then the first measured fact of each condition the instance does *not* give, since the
    prompt must say what its conditions do not show. A sentence that breaks a given
    condition's rule, or would pass the word limit, is left out."""
    given = {c.name for c in ctx.given_conditions}
    sentences = [short_prompt(ctx)]
    limit = bounds.short_prompt.max
    for cond in ctx.conditions:
        if cond.name in given or not cond.facts:
            continue
        candidate = _sentence(cond.facts[0])
        text = " ".join([*sentences, candidate])
        if not ctx.violations(candidate) and word_count(text) <= limit:
            sentences.append(candidate)
    return " ".join(s for s in sentences if s)


def grounded_problems(
    ctx: ClipContext, components: dict[str, str], prompt: str | None, bounds: Bounds
) -> list[str]:
    """What the structural checks find in the grounded text; ``prompt`` None: the clip gets
    no prompt of its own (its instances do)."""
    problems = [p for c in CAPTION_COMPONENTS for p in part_problems(c, components[c], bounds)]
    if prompt is not None:
        problems.extend(part_problems(SHORT_PROMPT, prompt, bounds, ctx.violations))
    return problems
