"""Records with instances, suitability and cross-check flags, built by hand on top of
``tests.review_fixtures.make_run`` (the shape the any2capins recipe's instance planning
produces): for the review screen, the review store and the export of one row per instance.

``make_instance_run(root)`` gives four records (clips 0-3 of ``make_run``):

- clip 0 (depth, pose, identities, camera): instances camera, depth, identities and the
  composition camera+depth; pose turned away; two flags (camera, main_object);
- clip 1 (depth, pose): instances depth and pose;
- clip 2 (identities, camera): instance camera; identities turned away;
- clip 3 (no conditions): instances planned, none suitable (``instances == []``).
"""

from __future__ import annotations

from pathlib import Path

from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import CaptionFlag, Instance, Record, Suitability, make_instance_id
from tests.review_fixtures import make_run

PROMPTS: dict[str, str] = {
    "camera": "The camera trucks right past a grey square gliding over a glowing gradient.",
    "depth": "A grey square slides in front of a flat, glowing gradient backdrop.",
    "identities": "Two people watch a grey square glide across the screen.",
    "pose": "A person stands still while a grey square slides past.",
    "camera+depth": "Trucking right, the camera follows a grey square far in front of a flat "
    "gradient wall.",
}
# clip index -> instance keys, in the order the record lists them
INSTANCES: dict[int, list[str]] = {
    0: ["camera", "depth", "identities", "camera+depth"],
    1: ["depth", "pose"],
    2: ["camera"],
    3: [],
}
FLAGS = [
    CaptionFlag(
        check="camera_motion",
        component="camera",
        fact="the camera trucks right and dollies in",
        words="The camera is static",
    ),
    CaptionFlag(
        check="subject_count",
        component="main_object",
        fact="2 distinct subjects tracked",
        words="a flat grey square",
    ),
]


def _suitability(index: int) -> dict[str, Suitability]:
    ok = "suits the condition type"
    if index == 0:
        return {
            "camera": Suitability(
                suitable=True,
                reason="trajectory of 16 frames, rotation residual 0.8 deg",
                measured={"frames": 16, "residual_deg": 0.8},
                thresholds={"min_frames": 8, "max_residual_deg": 5},
            ),
            "depth": Suitability(suitable=True, reason=ok, measured={"depth_range": 0.62}),
            "identities": Suitability(
                suitable=True, reason="2 distinct subjects", measured={"identities": 2}
            ),
            "pose": Suitability(
                suitable=False,
                reason="no person visible in 6 of 8 frames; need one in at least 50%",
                measured={"frames_with_people": 0.25},
                thresholds={"min_frames_with_people": 0.5},
            ),
        }
    if index == 1:
        return {
            "depth": Suitability(suitable=True, reason=ok, measured={"depth_range": 0.4}),
            "pose": Suitability(suitable=True, reason="1 person in 8 of 8 frames"),
        }
    if index == 2:
        return {
            "camera": Suitability(suitable=True, reason="trajectory of 16 frames"),
            "identities": Suitability(
                suitable=False,
                reason="only 1 distinct subject, need 2",
                measured={"identities": 1},
                thresholds={"min_identities": 2},
            ),
        }
    return {}


def with_instances(record: Record, index: int) -> Record:
    keys = INSTANCES.get(index, [])
    instances = [
        Instance(
            instance_id=make_instance_id(record.clip_id, key.split("+")),
            condition_types=key.split("+"),
            composition="+" in key,
            short_prompt=PROMPTS[key],
        )
        for key in keys
    ]
    return record.model_copy(
        update={
            "instances": instances,
            "short_prompt": None,
            "suitability": _suitability(index),
            "checks": list(FLAGS) if index == 0 else [],
        }
    )


def make_instance_run(root: Path, n: int = 4, *, run_id: str | None = None) -> Path:
    """``make_run(root, n)`` with instances, suitability and flags on every record."""
    make_run(root, n=n, run_id=run_id)
    rundir = RunDir(str(root))
    records = sorted(rundir.records(), key=lambda r: r.clip.start_s)
    for index, record in enumerate(records):
        rundir.save_record(with_instances(record, index))
    return root


def record_by_index(root: Path, index: int) -> Record:
    return sorted(RunDir(str(root)).records(), key=lambda r: r.clip.start_s)[index]
