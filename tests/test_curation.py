"""Curation before conditions: recipe filters decided right after their scoring stage,
filtered rows (not failures, not records), re-deciding without re-scoring, score-only runs,
and near-duplicate removal across the whole run (Ray and the plain loop alike)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np
import pytest
from typer.testing import CliRunner

import any2capins.annotators
from any2capins.annotators import Annotator, AnnotatorConfig, ClipInput, FrameSampling, Resources
from any2capins.annotators.dedup_hash import clip_phashes, phash
from any2capins.pipeline.build import RunReport, run_build
from any2capins.pipeline.curation import parse_rule
from any2capins.pipeline.dedup import (
    DedupKey,
    brute_force_pairs,
    chunks,
    group_clips,
    hash_matrix,
    near_duplicate_pairs,
)
from any2capins.pipeline.recipe import RecipeError, ResolvedRecipe, resolve_recipe
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.sources import list_sources
from any2capins.workflows.cli import app
from bench.dedup import synthetic_hashes
from tests import media


class MotionScoreConfig(AnnotatorConfig):
    missing_for: str = ""  # source file names containing this get no score


class MotionScore(Annotator):
    """Test-only scoring stage: mean absolute frame difference -> scores.motion_fraction,
    written as a whole ``scores`` dict (the engine merges it with earlier scores)."""

    name: ClassVar[str] = "motion_score"
    Config: ClassVar[type[AnnotatorConfig]] = MotionScoreConfig
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=8, max_side=128)
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.25, batch_size=4)
    writes: ClassVar[tuple[str, ...]] = ("scores",)
    config: MotionScoreConfig

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        out: list[dict[str, Any] | BaseException] = []
        for item in batch:
            skip = self.config.missing_for
            if skip and skip in Path(item.clip.source_uri).name:
                out.append({"scores": {}})
                continue
            frames = item.frames.astype(np.float32) / 255.0
            motion = float(np.abs(np.diff(frames, axis=0)).mean())
            out.append({"scores": {"motion_fraction": round(motion, 5)}})
        return out


class SharpnessScore(Annotator):
    """Test-only: a second scoring stage writing one dotted score (scores.sharpness)."""

    name: ClassVar[str] = "sharpness_score"
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=2, max_side=128)
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.25, batch_size=4)
    writes: ClassVar[tuple[str, ...]] = ("scores.sharpness",)

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        return [
            {"scores.sharpness": float(np.abs(np.diff(i.frames.astype(np.float32), axis=2)).mean())}
            for i in batch
        ]


# Ray workers cannot import this test module by name: send its classes by value.
@pytest.fixture(scope="module", autouse=True)
def _pickle_by_value() -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # type: ignore[no-untyped-call]


REGISTRY: dict[str, type[Annotator]] = {
    **any2capins.annotators.BUILTIN_ANNOTATORS,
    "motion_score": MotionScore,
    "sharpness_score": SharpnessScore,
}


def recipe(curation: dict[str, Any] | None = None, dedup_stage: bool = False) -> dict[str, Any]:
    stages: list[dict[str, Any]] = [
        {"annotator": "motion_score", "resources": {"batch_size": 2}},
        {"annotator": "sharpness_score"},
    ]
    if dedup_stage:
        stages.append({"annotator": "dedup_hash"})
    stages.append({"annotator": "keyframes", "sampling": {"num_frames": 2, "max_side": 128}})
    data: dict[str, Any] = {"name": "curation-test", "stages": stages}
    if curation is not None:
        data["curation"] = curation
    return data


def resolve(curation: dict[str, Any] | None = None, dedup_stage: bool = False) -> ResolvedRecipe:
    return resolve_recipe(recipe(curation, dedup_stage), REGISTRY)


def build(resolved: ResolvedRecipe, src: Path, out: Path, executor: str = "local") -> RunReport:
    return run_build(resolved, list_sources(str(src)), str(out), executor=executor)


def markers(out: Path, stage: str) -> set[str]:
    return set(RunDir(str(out)).markers(stage))  # the stage's marker log (pipeline/partlog.py)


def clip_ids(out: Path, folder: str) -> set[str]:
    return {p.stem for p in (out / folder).glob("*.json")}


@pytest.fixture
def moving_and_static(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    media.make_video(src / "moving.mp4", seconds=1.5, pattern="moving")
    media.make_video(src / "static.mp4", seconds=1.5, pattern="static")
    return src


# ----------------------------------------------------------------- recipe validation


@pytest.mark.parametrize(
    ("curation", "message"),
    [
        ({"keep": {"motion_fraction": "=> 0.05"}}, "curation.keep.motion_fraction: '=> 0.05'"),
        ({"keep": {"motion_fraction": ">= lots"}}, "curation.keep.motion_fraction: 'lots'"),
        ({"keep": {"motion_fraction": 0.05}}, "curation.keep.motion_fraction"),
        ({"dedup": {"max_distance": "far"}}, "curation.dedup.max_distance"),
        ({"dedup": {"keep": ["prettiest"]}}, "curation.dedup.keep[0]"),
        ({"dedup": {"enabled": True}}, "curation.dedup: no stage writes phashes"),
        ({"score_only": True, "threshold": 1}, "curation.threshold"),
    ],
)
def test_bad_curation_is_refused_naming_the_key(curation: dict[str, Any], message: str) -> None:
    with pytest.raises(RecipeError) as info:
        resolve(curation)
    assert message in str(info.value)


def test_rule_on_a_score_no_stage_writes_is_refused() -> None:
    # motion_score declares the whole ``scores`` dict, so only a recipe without it can tell
    data = recipe({"keep": {"aesthetic": ">= 4.5"}})
    data["stages"] = data["stages"][1:]
    with pytest.raises(RecipeError, match=r"curation.keep.aesthetic: no stage .* scores.aesthetic"):
        resolve_recipe(data, REGISTRY)


def test_rules_parse_and_thresholds_stay_out_of_stage_hashes() -> None:
    rule = parse_rule("cuts", "== 0")
    assert (rule.op, rule.threshold, rule.text) == ("==", 0.0, "cuts == 0")
    assert parse_rule("x", "<=0.5").passes(0.5) and not parse_rule("x", "< 0.5").passes(0.5)
    assert not parse_rule("x", ">= 0").passes(float("nan"))
    a = resolve({"keep": {"motion_fraction": ">= 0.01"}})
    b = resolve({"keep": {"motion_fraction": ">= 0.5", "sharpness": "> 1"}, "score_only": True})
    plain = resolve(None)
    assert [s.config_hash for s in a.stages] == [s.config_hash for s in plain.stages]
    assert [s.config_hash for s in b.stages] == [s.config_hash for s in plain.stages]
    # decided right after the stage that writes the score; nothing attached in score-only
    assert a.stages[0].filters is not None and a.stages[0].filters.due == {"motion_fraction"}
    assert all(s.filters is None for s in b.stages)


# ----------------------------------------------------------------- filters


def test_filtered_clip_skips_later_stages_and_a_new_threshold_redecides(
    moving_and_static: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    report = build(resolve({"keep": {"motion_fraction": ">= 0.01"}}), moving_and_static, out)
    assert report.failed == 0 and report.records_ok == 1 and report.records_filtered == 1
    assert report.clips_in == 2
    (decision,) = report.filtered
    assert Path(decision.source_uri).name == "static.mp4"
    assert decision.rule == "motion_fraction >= 0.01" and decision.score == "motion_fraction"
    assert decision.value is not None and decision.value < 0.01
    assert (decision.threshold, decision.stage) == (">= 0.01", "motion_score")
    assert report.filtered_by_rule == {"motion_fraction >= 0.01": 1}
    assert report.kept_by_rule == {"motion_fraction >= 0.01": 1}
    static_id = decision.clip_id
    # not a failure, not a record; later stages never ran on it
    assert clip_ids(out, "failures") == set()
    assert clip_ids(out, "filtered") == {static_id}
    assert static_id not in clip_ids(out, "records") and len(clip_ids(out, "records")) == 1
    assert static_id in markers(out, "motion_score")
    assert static_id not in markers(out, "sharpness_score") | markers(out, "keyframes")
    assert RunDir(str(out)).load_report()["filtered"][0]["rule"] == "motion_fraction >= 0.01"
    # the kept record carries both stages' scores (a dict write merges, it does not replace)
    (kept,) = RunDir(str(out)).records()
    assert set(kept.scores) == {"motion_fraction", "sharpness"}

    # the same recipe again: decisions honoured from the markers, nothing re-scored
    again = build(resolve({"keep": {"motion_fraction": ">= 0.01"}}), moving_and_static, out)
    assert again.records_filtered == 1 and again.stages["motion_score"].clips == 0
    assert again.stages["motion_score"].skipped == 2

    # a looser threshold: re-decided without re-scoring, the static clip comes back
    looser = build(resolve({"keep": {"motion_fraction": ">= 0"}}), moving_and_static, out)
    assert looser.records_filtered == 0 and looser.records_ok == 2 and looser.filtered == []
    assert looser.stages["motion_score"].clips == 0
    assert looser.stages["motion_score"].skipped == 2
    assert looser.stages["keyframes"].clips == 1 and looser.stages["keyframes"].skipped == 1
    assert clip_ids(out, "filtered") == set() and static_id in clip_ids(out, "records")
    assert static_id in markers(out, "keyframes")

    # a stricter one drops both: a record that was there goes, so review and export never see it
    strict = build(resolve({"keep": {"motion_fraction": ">= 0.9"}}), moving_and_static, out)
    assert strict.records_filtered == 2 and strict.records_ok == 0
    assert clip_ids(out, "records") == set() and len(clip_ids(out, "filtered")) == 2
    assert strict.stages["motion_score"].clips == 0


def test_rule_on_a_later_score_is_decided_after_its_own_stage(
    moving_and_static: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    report = build(resolve({"keep": {"sharpness": "> 1000"}}), moving_and_static, out)
    assert report.records_filtered == 2
    assert {d.stage for d in report.filtered} == {"sharpness_score"}
    assert markers(out, "keyframes") == set() and len(markers(out, "sharpness_score")) == 2


def test_score_only_records_scores_and_drops_nothing(
    moving_and_static: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    curation = {"keep": {"motion_fraction": ">= 0.01"}, "score_only": True}
    report = build(resolve(curation), moving_and_static, out)
    assert report.records_ok == 2 and report.records_filtered == 0 and report.filtered == []
    assert report.would_filter_by_rule == {"motion_fraction >= 0.01": 1}
    assert clip_ids(out, "filtered") == set() and len(markers(out, "keyframes")) == 2
    assert all("motion_fraction" in r.scores for r in RunDir(str(out)).records())


def test_missing_score_is_dropped_with_value_none_by_default(
    moving_and_static: Path, tmp_path: Path
) -> None:
    data = recipe({"keep": {"motion_fraction": ">= 0"}})
    data["stages"][0]["params"] = {"missing_for": "static"}
    out = tmp_path / "run"
    report = build(resolve_recipe(data, REGISTRY), moving_and_static, out)
    (decision,) = report.filtered
    assert decision.value is None and decision.stage == "motion_score"
    assert Path(decision.source_uri).name == "static.mp4"

    data["curation"]["missing"] = "keep"
    kept = build(resolve_recipe(data, REGISTRY), moving_and_static, out)
    assert kept.records_ok == 2 and kept.records_filtered == 0
    assert any("'motion_fraction' missing after stage 'motion_score'" in w for w in kept.warnings)
    assert clip_ids(out, "filtered") == set()


def test_cli_prints_rules_and_runs_show_lists_filtered(
    moving_and_static: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import any2capins.workflows.recipes

    monkeypatch.setattr(any2capins.workflows.recipes, "all_annotators", lambda: REGISTRY)
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe({"keep": {"motion_fraction": ">= 0.01"}})))
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["build", str(path), "-i", str(moving_and_static), "-o", str(out)]
    result = runner.invoke(app, [*args, "--executor", "local", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "curation" in result.stdout and "motion_fraction >= 0.01" in result.stdout
    shown = runner.invoke(app, ["runs", "show", str(out), "--json"])
    data = json.loads(shown.stdout)
    assert [f["rule"] for f in data["filtered"]] == ["motion_fraction >= 0.01"]
    assert data["filtered_by_rule"] == {"motion_fraction >= 0.01": 1}
    # every clip filtered is not "every clip failed"
    path.write_text(json.dumps(recipe({"keep": {"motion_fraction": ">= 0.9"}})))
    result = runner.invoke(app, [*args, "--executor", "local", "--no-progress"])
    assert result.exit_code == 0 and "every clip failed" not in result.output


# ----------------------------------------------------------------- near-duplicates


def reencode(src: Path, dst: Path, width: int, height: int, bit_rate: int) -> Path:
    """The same video at another size and bitrate (a re-upload), with PyAV."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        in_stream = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=in_stream.average_rate)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bit_rate
        for frame in inp.decode(in_stream):
            image = frame.to_ndarray(format="rgb24")
            small = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(width, height)
            small.pts, small.time_base = frame.pts, frame.time_base
            out.mux(stream.encode(small))
        out.mux(stream.encode(None))
    return dst


@pytest.fixture
def duplicates(tmp_path: Path) -> Path:
    src = tmp_path / "dups"
    src.mkdir()
    original = media.make_video(src / "a_original.mp4", seconds=1.5, pattern="moving")
    shutil.copy(original, src / "b_copy.mp4")
    reencode(original, src / "c_reencoded.mp4", 256, 192, 150_000)
    media.make_video(src / "d_other.mp4", seconds=1.5, pattern="scenes")  # half the same
    media.make_video(src / "e_static.mp4", seconds=1.5, pattern="static")
    return src


DEDUP = {"keep": {"motion_fraction": ">= 0.01"}, "dedup": {"max_distance": 6}}


def _groups(out: Path) -> list[tuple[str, list[str]]]:
    groups = RunDir(str(out)).load_dedup_groups()
    assert groups is not None
    names = {r.clip_id: Path(r.clip.source_uri).name for r in RunDir(str(out)).records()}
    names |= {f.clip_id: Path(f.source_uri).name for f in RunDir(str(out)).filtered()}
    return [
        (names[g["keep"]], sorted(names[d["clip_id"]] for d in g["duplicates"]))
        for g in groups["groups"]
    ]


def test_near_duplicates_grouped_one_kept_on_ray_and_in_the_loop(
    ray_session: None, duplicates: Path, tmp_path: Path
) -> None:
    resolved = resolve(DEDUP, dedup_stage=True)
    reports = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        reports[executor] = report = build(resolved, duplicates, out, executor)
        assert report.failed == 0 and report.clips_in == 5
        assert report.filtered_by_rule == {"motion_fraction >= 0.01": 1, "near-duplicate": 2}
        kept_names = {Path(r.clip.source_uri).name for r in RunDir(str(out)).records()}
        (group,) = _groups(out)
        keeper, dropped = group
        # the original and its copy last exactly as long; the re-encode may differ by a frame
        assert {keeper, *dropped} == {"a_original.mp4", "b_copy.mp4", "c_reencoded.mp4"}
        assert kept_names == {keeper, "d_other.mp4"}
        by_name = {Path(f.source_uri).name: f for f in report.filtered}
        keeper_id = next(
            r.clip_id for r in RunDir(str(out)).records() if r.clip.source_uri.endswith(keeper)
        )
        for name in dropped:
            decision = by_name[name]
            assert decision.rule == f"near-duplicate of {keeper_id}"
            assert decision.stage == "dedup_hash" and decision.value is not None
            assert decision.value <= 6 and decision.threshold == "<= 6"
            # later stages never ran on the dropped duplicates
            assert decision.clip_id not in markers(out, "keyframes")
        assert "e_static.mp4" in by_name and by_name["e_static.mp4"].stage == "motion_score"
        assert report.dedup["clips"] == 4 and report.dedup["duplicates"] == 2
    assert _groups(tmp_path / "local") == _groups(tmp_path / "ray")

    # a re-run resumes: the same groups, nothing hashed again
    again = build(resolved, duplicates, tmp_path / "local")
    assert again.stages["dedup_hash"].clips == 0 and again.stages["dedup_hash"].skipped == 4
    assert again.filtered_by_rule == reports["local"].filtered_by_rule
    # score-only: the groups are recorded, nothing is dropped
    only = build(
        resolve({**DEDUP, "score_only": True}, dedup_stage=True), duplicates, tmp_path / "o"
    )
    assert only.records_filtered == 0 and only.records_ok == 5 and only.dedup["duplicates"] == 2


def test_phash_survives_rescaling_and_tells_scenes_apart() -> None:
    a = media.frame_image(5, 36, 320, 240, "moving")
    small = np.asarray(
        av.VideoFrame.from_ndarray(a, format="rgb24").reformat(160, 120).to_ndarray(format="rgb24")
    )
    other = media.frame_image(30, 36, 320, 240, "scenes")
    assert bin(phash(a) ^ phash(small)).count("1") <= 4
    assert bin(phash(a) ^ phash(other)).count("1") > 12
    frames = np.stack([a, a, other])
    assert len(clip_phashes(frames, 4)) == 4 and len(clip_phashes(frames[:1], 4)) == 4


@pytest.mark.parametrize("max_distance", [0, 3, 6, 7, 10])
def test_multi_index_grouping_equals_brute_force(max_distance: int) -> None:
    bounds = chunks(max_distance)
    assert len(bounds) == max_distance + 1 and sum(bin(m).count("1") for _, m in bounds) == 64
    matrix = synthetic_hashes(2000, seed=max_distance, max_distance=max_distance)
    fast, fast_d = near_duplicate_pairs(matrix, max_distance)
    slow, slow_d = brute_force_pairs(matrix, max_distance)
    assert len(slow) > 50  # the planted duplicates are there
    assert sorted(map(tuple, fast.tolist())) == sorted(map(tuple, slow.tolist()))
    assert dict(zip(map(tuple, fast.tolist()), fast_d.tolist(), strict=True)) == dict(
        zip(map(tuple, slow.tolist()), slow_d.tolist(), strict=True)
    )
    rng = np.random.default_rng(1)
    keys = [
        DedupKey(
            f"clip-{i:05d}", "", tuple(int(h) for h in row), float(rng.integers(1, 4)), None, 1
        )
        for i, row in enumerate(matrix)
    ]
    groups = group_clips(keys, max_distance, ["longest", "sharpest"])
    assert groups == group_clips(keys, max_distance, ["longest"], brute_force=True)
    # every dropped clip is within the distance of the clip it names, and never kept
    by_id = {k.clip_id: k for k in keys}
    dropped = [c for g in groups for c, _ in g.duplicates]
    assert len(dropped) == len(set(dropped)) and not set(dropped) & {g.keep for g in groups}
    for g in groups:
        for clip_id, d in g.duplicates:
            xor = hash_matrix([by_id[g.keep].hashes]) ^ hash_matrix([by_id[clip_id].hashes])
            assert int(np.bitwise_count(xor).max()) == d <= max_distance
            assert by_id[g.keep].duration_s >= by_id[clip_id].duration_s


def test_card_plots_each_score_with_its_threshold() -> None:
    from any2capins.workflows.export.card import _score_lines, _score_png, score_distributions

    rows: list[dict[str, Any]] = [{"clip_id": "a"}, {"clip_id": "a"}, {"clip_id": "b"}]
    rows.append({"clip_id": "c", "scores": None})
    scores = {"a": {"aesthetic": 5.0, "cuts": 0.0}, "b": {"aesthetic": 6.0}, "c": {}}
    dist = score_distributions(rows, scores, {"keep": {"aesthetic": ">= 4.5"}})
    assert dist["aesthetic"]["values"] == [5.0, 6.0]  # once per clip, not per instance
    assert dist["aesthetic"]["condition"] == ">= 4.5" and dist["cuts"]["condition"] is None
    # a shards' own scores column wins over the passed scores
    own = score_distributions([{"clip_id": "a", "scores": [("aesthetic", 1.0)]}], scores, None)
    assert own["aesthetic"]["values"] == [1.0]
    assert _score_png("aesthetic", [5.0, 6.0], ">= 4.5")[:4] == b"\x89PNG"
    text = "\n".join(_score_lines(dist))
    assert "| aesthetic | 2 |" in text and ">= 4.5" in text and "score_aesthetic.png" in text
