"""``any2cap export --format sft|webdataset``: the same reviewed instances as the Parquet
export, written as ShareGPT JSONL + media (checked against LLaMA-Factory's documented
sharegpt format) and as WebDataset tar shards (read back with the ``webdataset`` package),
exactly once, and checked by ``shards verify``."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Literal

import av
import pytest
from pydantic import BaseModel, ConfigDict

from any2capins.annotators.camera import parse_realestate10k
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.storage import ArtifactStore
from any2capins.schemas import CAPTION_COMPONENTS, Record, ReviewState, make_instance_id
from any2capins.workflows.export import ExportError, Reviewed, export_shards, verify_shards
from any2capins.workflows.export.formats.sft import SftFormat
from any2capins.workflows.export.run import export_run
from any2capins.workflows.review import open_store
from tests.instance_fixtures import PROMPTS, make_instance_run

HUMAN_CAMERA = "The camera trucks right past a grey cube on a glowing gradient."
HUMAN_DENSE = "A grey square slides right across a gradient while a white block stays put."


# LLaMA-Factory's data/README.md, sharegpt format: the dataset_info.json entry and a line
class Columns(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: str = "conversations"
    system: str | None = None
    tools: str | None = None
    images: str | None = None
    videos: str | None = None
    audios: str | None = None


class Tags(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str | None = None
    function_tag: str | None = None
    system_tag: str | None = None


class DatasetInfoEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_name: str
    formatting: Literal["alpaca", "sharegpt"] = "alpaca"
    ranking: bool = False
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None
    columns: Columns | None = None
    tags: Tags | None = None


def _read_sharegpt(out: Path, info: dict[str, DatasetInfoEntry]) -> list[dict[str, Any]]:
    """Every line of every dataset, read the way the entry says, with its checks: roles
    alternate user/assistant, placeholders match the media lists, every media file exists."""
    lines = []
    for entry in info.values():
        assert entry.formatting == "sharegpt" and entry.columns and entry.tags
        target = out / entry.file_name
        files = sorted(target.iterdir()) if target.is_dir() else [target]
        assert files and {f.suffix for f in files} == {".jsonl"}  # one file type per folder
        for f in files:
            for text in f.read_text().splitlines():
                line = json.loads(text)
                messages = line[entry.columns.messages]
                roles = [m[entry.tags.role_tag] for m in messages]
                assert roles == [entry.tags.user_tag, entry.tags.assistant_tag]
                content = "".join(m[entry.tags.content_tag] for m in messages)
                images = line[entry.columns.images or "images"]
                videos = line[entry.columns.videos or "videos"]
                assert content.count("<image>") == len(images)
                assert content.count("<video>") == len(videos)
                for path in images + videos:
                    assert not Path(path).is_absolute() and (out / path).is_file(), path
                lines.append(line)
    return lines


def _re10k(url: str, frames: int = 16) -> str:
    rows = [url]
    for i in range(frames):
        m = [1, 0, 0, -0.1 * i, 0, 1, 0, 0, 0, 0, 1, -0.05 * i]
        rows.append(f"{i * 83333} 0.8 1.1 0.5 0.5 0 0 " + " ".join(f"{v:.6f}" for v in m))
    return "\n".join(rows) + "\n"


def _records(run: Path) -> list[Record]:
    """The fixture's records, their camera trajectories as RealEstate10K text (what the
    camera annotator writes)."""
    rundir = RunDir(str(run))
    store = ArtifactStore(rundir.artifacts_uri())
    records = sorted(rundir.records(), key=lambda r: r.clip.start_s)
    out = []
    for r in records:
        if r.conditions.camera is not None:
            ref = store.put(
                r.clip_id,
                "camera",
                "trajectory.txt",
                _re10k(r.clip.source_uri).encode(),
                "text/plain",
            )
            camera = r.conditions.camera.model_copy(update={"trajectory": ref})
            r = r.model_copy(
                update={"conditions": r.conditions.model_copy(update={"camera": camera})}
            )
            rundir.save_record(r)
        out.append(r)
    return out


def _review(records: list[Record], clip2: str = "rejected") -> list[Reviewed]:
    """clip 0 edited (camera prompt, dense caption), 1 accepted, 2 as given, 3 accepted."""
    edits = {"short_prompt:camera": HUMAN_CAMERA, "dense": HUMAN_DENSE}
    states = [("edited", edits), ("accepted", {}), (clip2, {}), ("accepted", {})]
    return [
        Reviewed(r, ReviewState(status=s, reviewer="ann", edits=e))
        for r, (s, e) in zip(records, states, strict=True)
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_instance_run(tmp_path_factory.mktemp("formats") / "run")
    _records(root)
    return root


def _records_of(run: Path) -> list[Record]:
    return sorted(RunDir(str(run)).records(), key=lambda r: r.clip.start_s)


def _expected(records: list[Record], clips: tuple[int, ...] = (0, 1)) -> dict[str, str]:
    """instance id -> instance key of the exported instances of CLIPS."""
    keys = {
        0: ["camera", "depth", "identities", "camera+depth"],
        1: ["depth", "pose"],
        2: ["camera"],
    }
    return {make_instance_id(records[c].clip_id, k.split("+")): k for c in clips for k in keys[c]}


def test_sft_lines_load_under_the_sharegpt_schema(run: Path, tmp_path: Path) -> None:
    records = _records_of(run)
    out = tmp_path / "sft"
    report = export_shards(_review(records), str(out), format="sft")
    assert report.new_rows == 6 and report.incomplete == [] and report.no_instances == 1
    assert verify_shards(str(out)) == []
    raw = json.loads((out / "dataset_info.json").read_text())
    info = {name: DatasetInfoEntry.model_validate(e) for name, e in raw.items()}
    assert sorted(info) == [
        "any2capins_camera",
        "any2capins_camera_depth",
        "any2capins_depth",
        "any2capins_identities",
        "any2capins_pose",
    ]
    assert info["any2capins_camera"].model_dump(exclude_defaults=True) == {
        "file_name": "camera",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images", "videos": "videos"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    }
    lines = {str(line["instance_id"]): line for line in _read_sharegpt(out, info)}
    expected = _expected(records)
    assert sorted(lines) == sorted(expected)
    counts = {"camera": (0, 0), "depth": (0, 1), "identities": (1, 0), "pose": (0, 1)}
    counts["camera+depth"] = (0, 1)
    for iid, key in expected.items():
        line = lines[iid]
        user, assistant = (m["content"] for m in line["messages"])
        assert (len(line["images"]), len(line["videos"])) == counts[key]
        caption = json.loads(assistant)
        assert list(caption) == list(CAPTION_COMPONENTS)
        if "camera" in key.split("+"):
            text = user.split("Camera trajectory (RealEstate10K):\n", 1)[1]
            assert len(parse_realestate10k(text)) == 16
        else:
            assert "Camera" not in user
        if key == "camera+depth":
            assert user.index("Depth: <video>") < user.index("Camera trajectory")
    cam0 = lines[make_instance_id(records[0].clip_id, ["camera"])]
    user0, answer0 = (m["content"] for m in cam0["messages"])
    assert user0.startswith(HUMAN_CAMERA + "\n") and json.loads(answer0)["dense"] == HUMAN_DENSE
    pose = lines[make_instance_id(records[1].clip_id, ["pose"])]
    assert pose["messages"][0]["content"].startswith(PROMPTS["pose"] + "\nPose: <video>")
    # media once per content: clip 0's depth preview serves depth and camera+depth
    depth0 = lines[make_instance_id(records[0].clip_id, ["depth"])]["videos"]
    both0 = lines[make_instance_id(records[0].clip_id, ["camera", "depth"])]["videos"]
    assert depth0 == both0
    media = sorted(p.name for p in (out / "media").iterdir())
    referenced = {
        Path(p).name for line in lines.values() for p in [*line["images"], *line["videos"]]
    }
    assert media == sorted(referenced)

    # incremental: nothing the second time; clip 2 accepted adds its one instance
    again = export_shards(_review(records), str(out), format="sft")
    assert again.new_rows == 0 and again.skipped_already_exported == 6
    later = export_shards(_review(records, clip2="accepted"), str(out), format="sft")
    assert later.new_rows == 1 and later.total_rows == 7
    assert verify_shards(str(out)) == []

    # verify catches a changed line and a missing media file
    shard = next((out / "pose").glob("*.jsonl"))
    shard.write_bytes(shard.read_bytes().replace(b"Pose: <video>", b"Pose: <video><video>"))
    problems = verify_shards(str(out))
    assert any("pose/part-00001.jsonl: sha256" in p for p in problems)
    assert any("2 <video> placeholders for 1 files" in p for p in problems)
    (out / depth0[0]).unlink()
    assert any(f"media {depth0[0]} is missing" in p for p in verify_shards(str(out)))


def test_sft_options_crops_and_camera_path(run: Path, tmp_path: Path) -> None:
    records = _records_of(run)
    out = tmp_path / "sft"
    fmt = SftFormat(identities="crops", camera="path")
    assert export_shards(_review(records), str(out), format=fmt).new_rows == 6
    assert verify_shards(str(out)) == []
    ident = json.loads(next((out / "identities").glob("*.jsonl")).read_text())
    assert len(ident["images"]) == 2 and ident["messages"][0]["content"].count("<image>") == 2
    cam = json.loads(next((out / "camera").glob("*.jsonl")).read_text())
    path = cam["messages"][0]["content"].split("(RealEstate10K file): ", 1)[1].strip()
    assert path.startswith("media/") and len(parse_realestate10k((out / path).read_text())) == 16


def test_webdataset_shards_read_back_every_instance(run: Path, tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset")
    records = _records_of(run)
    out = tmp_path / "wds"
    report = export_shards(_review(records), str(out), format="webdataset")
    assert report.new_rows == 6 and report.incomplete == []
    assert verify_shards(str(out)) == []
    urls = sorted(str(p) for p in out.glob("*/*.tar"))
    samples = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
    expected = _expected(records)
    assert sorted(samples) == sorted(expected)
    want = {
        "depth": {"depth.npy", "depth.preview.mp4"},
        "pose": {"pose.npy", "pose.rendering.mp4"},
        "identities": {
            "reference.png",
            "identities.identities0.crop.png",
            "identities.identities1.crop.png",
        },
        "camera": {"camera.txt"},
    }
    for iid, key in expected.items():
        s = samples[iid]
        files = {k for k in s if not k.startswith("__")}
        conds = set().union(*(want[t] for t in key.split("+")))
        assert files == {"mp4", "json", "txt"} | conds, (key, files)
        meta = json.loads(s["json"])
        assert meta["instance_id"] == iid and meta["condition_types"] == key.split("+")
        assert s["txt"].decode() == meta["short_prompt"]
        assert list(meta["caption"]) == list(CAPTION_COMPONENTS)
        assert set(meta["suitability"]) and meta["provenance"]["run_id"]
        with av.open(io.BytesIO(s["mp4"]), mode="r") as clip:
            frames = [f for f in clip.decode(video=0)]
        assert abs(len(frames) - 24) <= 1 and (frames[0].width, frames[0].height) == (320, 240)
    cam0 = json.loads(samples[make_instance_id(records[0].clip_id, ["camera"])]["json"])
    assert cam0["short_prompt"] == HUMAN_CAMERA and cam0["caption"]["dense"] == HUMAN_DENSE
    assert (
        len(
            parse_realestate10k(
                samples[make_instance_id(records[0].clip_id, ["camera"])]["camera.txt"].decode()
            )
        )
        == 16
    )
    # keys are sorted within a shard
    for url in urls:
        with tarfile.open(url) as tar:
            keys = [n.split(".", 1)[0] for n in tar.getnames()]
        assert keys == sorted(keys)

    # incremental: nothing new, then one more shard for clip 2's instance
    again = export_shards(_review(records), str(out), format="webdataset")
    assert again.new_rows == 0 and again.new_shards == []
    later = export_shards(_review(records, clip2="accepted"), str(out), format="webdataset")
    assert later.new_rows == 1 and later.new_shards == ["camera/part-00002.tar"]
    assert verify_shards(str(out)) == []

    # verify catches a corrupted tar
    shard = out / "depth" / "part-00001.tar"
    data = bytearray(shard.read_bytes())
    data[0:8] = b"XXXXXXXX"  # the first member's name: its header checksum no longer holds
    shard.write_bytes(bytes(data))
    problems = verify_shards(str(out))
    assert any(p.startswith("depth/part-00001.tar: sha256") for p in problems), problems
    assert any("depth/part-00001.tar: not readable as a tar file" in p for p in problems)
    # a tar that lost a sample's member (rewritten whole, the manifest unchanged)
    shard = out / "pose" / "part-00001.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(shard, "w") as tar:
        for m, body in members:
            if not m.name.endswith(".mp4"):
                tar.addfile(m, io.BytesIO(body))
    problems = verify_shards(str(out))
    assert any("pose/part-00001.tar: sample" in p and "lacks mp4" in p for p in problems)


def test_one_format_per_folder(run: Path, tmp_path: Path) -> None:
    records = _records_of(run)
    out = tmp_path / "shards"
    export_shards(_review(records), str(out))
    with pytest.raises(ExportError, match="holds parquet shards, not sft"):
        export_shards(_review(records), str(out), format="sft")
    with pytest.raises(ExportError, match="parquet only"):
        export_shards(_review(records), str(tmp_path / "x"), format="sft", embed_payloads=False)
    # --rewrite replaces the folder's format
    report = export_shards(_review(records), str(out), format="sft", rewrite=True)
    assert report.new_rows == 6 and verify_shards(str(out)) == []
    assert not list(out.glob("*/*.parquet"))


def test_export_run_sft_from_the_review_store(tmp_path: Path) -> None:
    run = make_instance_run(tmp_path / "run")
    records = _records(run)
    store = open_store(str(run))
    store.ingest()
    ann = store.add_user("ann", "annotator", None)
    while (view := store.claim(ann)) is not None:
        if view.clip_id == records[2].clip_id:
            store.decide(ann, view.id, "reject", view.version, reason="bad_clip")
        else:
            store.decide(ann, view.id, "accept", view.version)
    store.close()
    out = tmp_path / "sft"
    data = export_run(str(run), str(out), format="sft").as_json()
    assert data["new_rows"] == 6 and data["incomplete"] == []
    assert (out / "dataset_info.json").is_file() and not (out / "README.md").exists()
    assert verify_shards(str(out)) == []
    assert export_run(str(run), str(out), format="sft").as_json()["new_rows"] == 0
