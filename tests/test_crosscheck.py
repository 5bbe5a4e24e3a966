"""Caption-condition cross-checks: each flag fires on its crafted case and stays quiet on a
consistent caption, including the offline grounded writer's own text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from any2capins.annotators.captions.config import ImageOptions
from any2capins.annotators.captions.crosscheck import CHECKS, CrossCheckSettings, cross_check
from any2capins.annotators.captions.facts import build_context
from any2capins.annotators.captions.grounded import compose
from any2capins.annotators.conditions import condition_types
from any2capins.schemas import (
    CAPTION_COMPONENTS,
    CameraCondition,
    CaptionFlag,
    ClipRef,
    ClipStats,
    ColorSwatch,
    Conditions,
    DepthCondition,
    DepthLayout,
    IdentitiesCondition,
    Identity,
    PayloadRef,
    PersonActivity,
    PoseCondition,
    Provenance,
    Record,
)

REF = PayloadRef(uri="mem://dummy", media_type="application/octet-stream", bytes=0, sha256="0" * 64)

NEUTRAL = {
    "dense": "A woman in a red coat stands on a city street at dusk and waves at a friend.",
    "main_object": "A woman in a red coat with short dark hair and a leather bag.",
    "background": "A busy city street with shop windows, parked cars and warm street lights.",
    "camera": "A static medium shot at eye level; the camera does not move.",
    "style": "Naturalistic colour grading with warm highlights and soft evening contrast.",
    "action": "She raises her right hand and waves twice, then smiles and lowers her arm.",
}


def camera(labels: list[str], source: str = "estimated") -> CameraCondition:
    return CameraCondition(
        source=source,  # type: ignore[arg-type]
        frames=16,
        labels=labels,
        description="the camera is static" if labels == ["static"] else "the camera moves",
        trajectory=REF,
        speed="" if labels == ["static"] else "slowly",
    )


def person(pid: int, frames: int = 16, position: str = "center") -> PersonActivity:
    return PersonActivity(
        person_id=pid,
        frames_present=frames,
        position=position,
        horizontal_drift=0.0,
        posture="standing",
        posture_frames=12,
        arm_raised_frames={"right": 10},
        arm_seen_frames={"right": 14},
        limb_motion={"right arm": 0.2, "left leg": 0.01},
    )


def pose(people: int, typical: int | None = None) -> PoseCondition:
    return PoseCondition(
        model_id="dwpose",
        frames=16,
        max_persons=people,
        timestamps_s=[i / 2 for i in range(16)],
        keypoints=REF,
        people_max=people,
        people_typical=people if typical is None else typical,
        activity=[person(i) for i in range(people)],
    )


def identities(*labels: str) -> IdentitiesCondition:
    return IdentitiesCondition(
        model_ids=["grounding-dino", "sam2"],
        identities=[
            Identity(
                identity_id=i,
                label=label,
                frames_present=16,
                mean_area_fraction=0.2,
                crop=REF,
                center=[(i + 0.5) / len(labels), 0.5],
            )
            for i, label in enumerate(labels)
        ],
        stitched_reference=REF,
        frames=16,
    )


def depth() -> DepthCondition:
    return DepthCondition(
        model_id="depth-anything/Depth-Anything-V2-Small-hf",
        frames=16,
        timestamps_s=[i / 2 for i in range(16)],
        normalization="u16 of per-frame min-max",
        payload=REF,
        layout=DepthLayout(
            nearest_region="bottom left",
            farthest_region="top right",
            near_fraction=0.3,
            far_fraction=0.4,
            foreground_fraction=0.35,
            foreground_region="center",
            mean_change=0.02,
        ),
    )


def record(**conditions: object) -> Record:
    return Record(
        clip=ClipRef(
            clip_id="clip-1",
            source_uri="file:///videos/clip.mp4",
            start_s=0.0,
            end_s=6.0,
            fps=30.0,
            width=1280,
            height=720,
            num_frames=180,
        ),
        stats=ClipStats(
            frames_sampled=16,
            mean_brightness=0.5,
            palette=[ColorSwatch(hex="#804020", fraction=0.6)],
            motion_magnitude=0.01,
        ),
        conditions=Conditions(**conditions),  # type: ignore[arg-type]
        provenance=Provenance(recipe="test", recipe_hash="h", run_id="run-1"),
    )


def caption(**parts: str) -> dict[str, str]:
    return {**NEUTRAL, **parts}


def checks(flags: list[CaptionFlag]) -> list[str]:
    return [f.check for f in flags]


def grounded(rec: Record) -> dict[str, str]:
    ctx = build_context(rec, condition_types(), ImageOptions(), with_images=False)
    return compose(ctx)[0]


# --------------------------------------------------------------------------- consistent


def test_neutral_caption_on_consistent_record_is_quiet() -> None:
    rec = record(camera=camera(["static"]), pose=pose(1), identities=identities("person"))
    assert cross_check(NEUTRAL, rec) == []


def test_grounded_writer_on_consistent_record_gives_no_flag() -> None:
    rec = record(
        camera=camera(["static"]), pose=pose(1), identities=identities("person"), depth=depth()
    )
    parts = grounded(rec)
    assert "The camera does not move: no pan, tilt, roll, translation or zoom." in parts["camera"]
    assert cross_check(parts, rec) == []
    # the captions stage hands over the facts its context holds: the same verdicts
    ctx = build_context(rec, condition_types(), ImageOptions(), with_images=False)
    given = [f for cond in ctx.conditions for f in cond.facts]
    assert cross_check(parts, rec, facts=given) == []
    two = record(camera=camera(["static"]), pose=pose(3, typical=2), depth=depth())
    two_facts = [
        f
        for c in build_context(two, condition_types(), ImageOptions(), with_images=False).conditions
        for f in c.facts
    ]
    assert cross_check(grounded(two), two, facts=two_facts) == cross_check(grounded(two), two)


@pytest.mark.parametrize(
    "labels",
    [["pan_left"], ["dolly_in", "tilt_up"], ["orbit_right", "shaky"], ["zoom_out"], ["shaky"]],
)
def test_grounded_writer_on_moving_camera_gives_no_flag(labels: list[str]) -> None:
    from any2capins.annotators.camera.labels import _sentence  # the labeller's own description

    cam = camera(labels).model_copy(update={"description": _sentence(labels, "slowly")})
    rec = record(camera=cam, pose=pose(2), identities=identities("person", "dog"))
    assert cross_check(grounded(rec), rec) == []


def test_grounded_writer_with_two_people_and_no_people() -> None:
    rec = record(camera=camera(["static"]), pose=pose(3, typical=2), depth=depth())
    assert cross_check(grounded(rec), rec, CrossCheckSettings(near_copy=False)) == []
    empty = record(camera=camera(["static"]), pose=pose(0), depth=depth())
    parts = grounded(empty)
    assert "no person is detected" in parts["action"]
    assert cross_check(parts, empty, CrossCheckSettings(near_copy=False)) == []


# --------------------------------------------------------------------------- camera_direction


@pytest.mark.parametrize(
    ("labels", "text", "words"),
    [
        (["pan_left"], "The camera pans right across the street.", "pans right"),
        (["pan_left"], "A slow pan to the right follows her.", "pan to the right"),
        (["tilt_up"], "The camera tilts down towards the pavement.", "tilts down"),
        (["dolly_in"], "The camera pulls back to reveal the street.", "pulls back"),
        (["dolly_in"], "A dolly out shot of the woman.", "dolly out"),
        (["dolly_out"], "The camera slowly pushes in on her face.", "pushes in"),
        (["truck_right"], "The camera trucks left alongside her.", "trucks left"),
        (["pedestal_up"], "The camera cranes down to street level.", "cranes down"),
        (["zoom_in"], "The shot zooms out to show the whole street.", "zooms out"),
        (["orbit_left"], "The camera orbits right around the woman.", "orbits right"),
        (["roll_cw"], "The frame rolls counter-clockwise.", "rolls counter-clockwise"),
        (["roll_ccw"], "The frame rolls clockwise as she waves.", "rolls clockwise"),
    ],
)
def test_camera_direction_flags_the_opposite_direction(
    labels: list[str], text: str, words: str
) -> None:
    rec = record(camera=camera(labels))
    flags = [f for f in cross_check(caption(camera=text), rec) if f.check == "camera_direction"]
    assert len(flags) == 1
    assert flags[0].component == "camera"
    assert flags[0].words == words
    assert flags[0].fact == f"camera labels: {labels[0]} (estimated from the video)"


def test_camera_direction_quiet_when_direction_agrees_or_is_negated() -> None:
    rec = record(camera=camera(["pan_left", "tilt_up"]))
    for text in (
        "The camera pans left while tilting up over the street.",
        "The camera does not pan right; it pans left and tilts up.",
        "Rather than panning right, the shot pans to the left and tilts upwards.",
    ):
        assert cross_check(caption(camera=text), rec) == [], text


def test_camera_direction_needs_a_camera_condition() -> None:
    rec = record(pose=pose(1))
    flags = cross_check(caption(camera="The camera pans right, then zooms in."), rec)
    assert "camera_direction" not in checks(flags) and "camera_motion" not in checks(flags)


def test_camera_direction_fact_names_the_source() -> None:
    rec = record(camera=camera(["dolly_in"], source="realestate10k"))
    (flag,) = cross_check(caption(camera="The camera dollies out of the room."), rec)
    assert flag.fact == "camera labels: dolly_in (imported from a RealEstate10K camera file)"


# --------------------------------------------------------------------------- camera_motion


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("The camera pans left to follow her.", "pans left"),
        ("A tracking shot of the woman walking.", "tracking shot"),
        ("The camera zooms in on her face.", "zooms in"),
        ("Handheld footage of the street.", "Handheld"),
        ("A medium shot; the camera slowly moves closer.", "camera slowly moves"),
    ],
)
def test_camera_motion_on_a_static_clip(text: str, words: str) -> None:
    rec = record(camera=camera(["static"]))
    flags = cross_check(caption(camera=text), rec)
    assert checks(flags) == ["camera_motion"]
    assert words in flags[0].words
    assert flags[0].fact == "camera labels: static (estimated from the video)"


@pytest.mark.parametrize(
    "text",
    [
        "A medium shot. No pan, tilt, roll, translation or zoom.",
        "The camera does not move during the shot.",
        "A locked frame, without panning or zooming.",
        "A static camera with no zoom frames her from the waist up.",
        "The camera never moves and there is no camera movement at all.",
        "The camera stays still and doesn't pan left or right.",
        "A static shot; instead of zooming in, the framing stays wide.",
    ],
)
def test_camera_motion_negations_are_quiet(text: str) -> None:
    rec = record(camera=camera(["static"]))
    assert cross_check(caption(camera=text), rec) == []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("A static camera frames the woman.", "static camera"),
        ("The camera does not move as she waves.", "camera does not move"),
        ("The camera remains stationary throughout the shot.", "camera remains stationary"),
    ],
)
def test_camera_motion_static_claim_on_a_moving_clip(text: str, words: str) -> None:
    rec = record(camera=camera(["pan_left"]))
    flags = cross_check(caption(camera=text), rec)
    assert checks(flags) == ["camera_motion"]
    assert flags[0].words == words
    assert flags[0].fact == "camera labels: pan_left (estimated from the video)"


def test_moving_clip_quiet_on_moving_text_and_negated_stillness() -> None:
    rec = record(camera=camera(["pan_left"]))
    for text in (
        "The camera slowly pans left; it is not a static shot.",
        "The camera is still moving left as the shot pans left.",
        "The camera remains fixed on the woman while it pans left.",
    ):
        assert cross_check(caption(camera=text), rec) == [], text


def test_shaky_only_clip_is_neither_static_nor_moving() -> None:
    rec = record(camera=camera(["shaky"]))
    text = "The handheld camera shakes but stays in place."
    assert cross_check(caption(camera=text), rec) == []


# --------------------------------------------------------------------------- noise words


@pytest.mark.parametrize(
    "text",
    [
        "A static shot of a kitchen: a frying pan on the stove and a red truck outside.",
        "A still frame of a frying pan over the fire and a red truck left by the door.",
        "A fixed camera shows a zoom lens on the table and a dolly near the wall.",
    ],
)
def test_nouns_that_are_also_camera_moves_do_not_fire(text: str) -> None:
    assert cross_check(caption(camera=text), record(camera=camera(["static"]))) == []


def test_nouns_do_not_fire_direction_on_a_moving_clip() -> None:
    rec = record(camera=camera(["pan_left"]))
    text = "The camera pans left past a frying pan; a red truck right outside stays parked."
    assert cross_check(caption(camera=text), rec) == []


# --------------------------------------------------------------------------- off_topic


def test_issue_example_camera_component_about_a_waving_woman() -> None:
    rec = record(camera=camera(["static"]))
    text = "A woman in a red coat waves at someone across the street and smiles."
    flags = cross_check(caption(camera=text), rec)
    assert checks(flags) == ["off_topic"]
    (flag,) = flags
    assert flag.component == "camera"
    assert flag.words == text
    assert "camera labels: static (estimated from the video)" in flag.fact


def test_off_topic_without_camera_condition_and_quiet_on_shot_words() -> None:
    flags = cross_check(caption(camera="She smiles warmly at her friend."), record())
    assert checks(flags) == ["off_topic"]
    assert "camera labels" not in flags[0].fact
    for text in ("A close-up of her face.", "Wide framing at eye level.", "The view is wide."):
        assert cross_check(caption(camera=text), record()) == [], text


# --------------------------------------------------------------------------- subject_count


@pytest.mark.parametrize(
    ("people", "text", "words"),
    [
        (1, "Two people stand side by side on the street.", "Two people"),
        (1, "A man and a woman talk on the corner.", "A man and a woman"),
        (2, "A single woman stands alone on the street.", "A single woman"),
        (1, "A group of children plays on the pavement.", "A group of children"),
        (3, "2 adults walk along the street.", "2 adults"),
        (0, "A man in a grey suit.", "A man"),
    ],
)
def test_subject_count_against_pose(people: int, text: str, words: str) -> None:
    rec = record(pose=pose(people))
    flags = cross_check(caption(main_object=text, action="Nothing moves."), rec)
    assert checks(flags) == ["subject_count"]
    assert flags[0].component == "main_object"
    assert flags[0].words == words
    assert flags[0].fact.startswith("pose: ")


@pytest.mark.parametrize(
    ("people", "typical", "text"),
    [
        (2, 2, "Two people, a man and a woman, stand on the street."),
        (2, 1, "A man stands on the street; later a woman joins him."),
        (2, 2, "A man is playing with his son."),
        (3, 3, "One man holds a cup while another reads."),
        (1, 1, "A woman in a red coat; up to three people pass behind her."),
        (1, 1, "She holds two cups and three books."),
    ],
)
def test_subject_count_quiet_on_consistent_or_vague_counts(
    people: int, typical: int, text: str
) -> None:
    assert cross_check(caption(main_object=text), record(pose=pose(people, typical))) == []


@pytest.mark.parametrize(
    ("labels", "text", "words"),
    [
        (("dog",), "Three dogs run across the lawn.", "Three dogs"),
        (("person", "dog"), "Two people sit on a bench.", "Two people"),
        (("person", "dog"), "Two people walk their dog.", "Two people"),
        (("person", "person", "person"), "Two women chat on the street.", "Two women"),
        (("person",), "A man and a dog walk along the street.", "A man and a dog"),
    ],
)
def test_subject_count_against_identities(labels: tuple[str, ...], text: str, words: str) -> None:
    rec = record(identities=identities(*labels))
    flags = cross_check(caption(main_object=text), rec)
    assert checks(flags) == ["subject_count"]
    assert flags[0].words == words
    assert flags[0].fact.startswith(f"identities: {len(labels)} main subject")


@pytest.mark.parametrize(
    ("labels", "text"),
    [
        (("person", "dog"), "A man and a dog walk along the street."),
        (("person", "person", "dog"), "Two people walk their dog."),  # dog named: not under
        (("person", "person", "dog"), "Two children play with a dog."),
        (("person", "person", "person"), "Five people stand in line."),  # 3 is the cap
        (("person",), "A woman in a red coat."),
    ],
)
def test_subject_count_identities_quiet(labels: tuple[str, ...], text: str) -> None:
    assert cross_check(caption(main_object=text), record(identities=identities(*labels))) == []


# --------------------------------------------------------------------------- people_without_pose


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("A man walks across the kitchen.", "man"),
        ("She pours coffee into a mug.", "She"),
        ("Two children jump on the bed.", "children"),
    ],
)
def test_people_without_pose(text: str, words: str) -> None:
    rec = record(pose=pose(0))
    flags = cross_check(caption(action=text, main_object="A mug of coffee."), rec)
    assert checks(flags) == ["people_without_pose"]
    assert flags[0].component == "action"
    assert flags[0].words.startswith(words)
    assert flags[0].fact == "pose: no person detected in any of the 16 sampled frames"


def test_people_without_pose_quiet() -> None:
    empty = record(pose=pose(0))
    for text in (
        "No person is visible; coffee streams into a white mug.",
        "Steam rises from the mug without anyone in view.",
        "A man-made fountain sprays water into the air.",
    ):
        assert cross_check(caption(action=text, main_object="A mug."), empty) == [], text
    one = record(pose=pose(1))
    assert cross_check(caption(action="A man walks across the kitchen."), one) == []
    nopose = record(camera=camera(["static"]))
    assert cross_check(caption(action="A man walks across the kitchen."), nopose) == []


# --------------------------------------------------------------------------- near_copy


def test_near_copy_flags_copied_components() -> None:
    text = "A woman in a red coat stands on a busy street and waves at a friend across the road."
    parts = caption(dense="Evening light on a street.", main_object=text)
    flags = cross_check({**parts, "action": text.replace("busy", "crowded")}, record())
    assert checks(flags) == ["near_copy"]
    assert flags[0].component == "main_object~action"
    assert flags[0].words.startswith("a woman in a red coat stands on a")
    assert len(flags[0].words) <= CrossCheckSettings().words_max_chars


def test_near_copy_threshold_and_short_components() -> None:
    a = "A woman in a red coat stands on a busy street and waves at a friend."
    b = "A woman in a red coat stands on a quiet road and smiles at her dog."
    parts = caption(dense="Evening light on a street.", main_object=a, action=b)
    assert cross_check(parts, record()) == []
    strict = CrossCheckSettings(near_copy_ratio=0.5)
    assert checks(cross_check(parts, record(), strict)) == ["near_copy"]
    short = caption(style="Warm colours.", background="Warm colours.")
    assert cross_check(short, record()) == []


# --------------------------------------------------------------------------- settings


def test_settings_switch_checks_off_and_forbid_unknown_keys() -> None:
    rec = record(camera=camera(["static"]))
    bad = caption(camera="The camera pans left.")
    assert checks(cross_check(bad, rec)) == ["camera_motion"]
    assert cross_check(bad, rec, CrossCheckSettings(camera_motion=False)) == []
    with pytest.raises(ValidationError):
        CrossCheckSettings(near_copy_ratios=0.5)  # type: ignore[call-arg]
    assert set(CHECKS) <= set(CrossCheckSettings.model_fields)


def test_camera_checks_can_read_the_dense_component() -> None:
    rec = record(camera=camera(["static"]))
    parts = caption(dense=NEUTRAL["dense"] + " A handheld tracking shot follows her.")
    assert cross_check(parts, rec) == []
    flags = cross_check(parts, rec, CrossCheckSettings(camera_components=("camera", "dense")))
    assert [(f.check, f.component) for f in flags] == [("camera_motion", "dense")]


def test_every_component_name_is_accepted() -> None:
    assert set(NEUTRAL) == set(CAPTION_COMPONENTS)
    partial = {"camera": "A static shot."}
    assert cross_check(partial, record(camera=camera(["static"]), pose=pose(0))) == []


def test_grounded_facts_of_two_conditions_are_not_a_miscount() -> None:
    # pose sees two people, identities kept a cup: two measurements, both quoted verbatim
    rec = record(camera=camera(["static"]), pose=pose(2), identities=identities("cup"))
    parts = grounded(rec)
    assert "2 distinct people" in parts["main_object"]
    assert cross_check(parts, rec) == []
    # ... but a claim added to the quoted facts is still read
    parts["main_object"] += " Three cups stand on the table."
    assert checks(cross_check(parts, rec)) == ["subject_count"]


def test_grounded_text_of_another_record_is_checked() -> None:
    static = record(camera=camera(["static"]), pose=pose(1), identities=identities("person"))
    parts = grounded(static)
    moving = record(camera=camera(["pan_left"]), pose=pose(0), identities=identities("person"))
    found = {(f.check, f.component) for f in cross_check(parts, moving)}
    assert ("camera_motion", "camera") in found
    assert ("people_without_pose", "action") in found
