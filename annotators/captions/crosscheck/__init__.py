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

from collections.abc import Mapping

from any2capins.annotators.captions.crosscheck._settings import (
    CHECKS,
    DEFAULT_SETTINGS,
    CrossCheckSettings,
)
from any2capins.annotators.captions.crosscheck._text import _fact_texts
from any2capins.annotators.captions.crosscheck.camera import (
    CAMERA_TOPIC_WORDS,
    MOTION_LABELS,
    _check_camera,
    _check_off_topic,
)
from any2capins.annotators.captions.crosscheck.copies import _check_near_copy
from any2capins.annotators.captions.crosscheck.subjects import (
    _check_people_without_pose,
    _check_subject_count,
)
from any2capins.schemas import CaptionFlag, Record

# --------------------------------------------------------------------------- entry point


def cross_check(
    caption: Mapping[str, str],
    record: Record,
    settings: CrossCheckSettings | None = None,
    facts: list[str] | None = None,
) -> list[CaptionFlag]:
    """Flags where ``caption`` (component name -> text) contradicts ``record``'s conditions.

    Checks whose condition the record lacks are skipped; see the module docstring for the
    rules. Flags come in a fixed order: camera, off_topic, subject_count,
    people_without_pose, near_copy. ``facts`` are the record's grounding facts when the
    caller has them already (the caption writer's context); otherwise they are asked of
    the condition types.
    """
    s = settings or DEFAULT_SETTINGS
    flags: list[CaptionFlag] = []
    if s.camera_direction or s.camera_motion:
        flags += _check_camera(caption, record, s)
    if s.off_topic:
        flags += _check_off_topic(caption, record, s)
    if facts is None:
        facts = _fact_texts(record) if s.subject_count or s.near_copy else []
    else:
        facts = [f.strip() for f in facts if f.strip()]
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
