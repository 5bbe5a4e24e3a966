"""Helpers for the review tests: run directories with records (captions, conditions and
their payload files, XSS payloads), PostgreSQL databases per test module, a live server."""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from any2capins.pipeline.rundir import RunDir, RunInfo
from any2capins.pipeline.storage import ArtifactStore
from any2capins.schemas import (
    CameraCondition,
    ClipRef,
    ClipStats,
    ColorSwatch,
    Conditions,
    DepthCondition,
    IdentitiesCondition,
    Identity,
    Keyframes,
    ModelInfo,
    PoseCondition,
    Provenance,
    Record,
    StageProvenance,
    StructuredCaption,
    make_clip_id,
    utc_now,
)
from tests.media import make_video

PG_URL = os.environ.get("ANY2CAP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = "/usr/bin/chromium"

XSS_SCRIPT = '<script>window.__xss = 1; document.title = "pwned"</script>'
XSS_IMG = '<img src=x onerror="window.__xss = 2">'

CAPTION = {
    "dense": "A grey square slides from left to right across a colourful gradient while a white "
    "block stays fixed in the top-left corner.",
    "main_object": "The main object is a flat grey square with sharp edges and no texture.",
    "background": "The background is a smooth gradient from red to blue that brightens and dims.",
    "camera": "The camera is static, framing the whole scene from the front at eye level.",
    "style": "Flat synthetic computer graphics with saturated colours and no noise.",
    "action": "The square moves steadily to the right at constant speed and never stops.",
}
SHORT_PROMPT = "A grey square glides across a glowing gradient."


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _trajectory(frames: int, dx: float) -> np.ndarray:
    """World-to-camera [R|t] per frame for a camera trucking along x (and a little forward)."""
    out = np.zeros((frames, 3, 4), np.float32)
    for i in range(frames):
        out[i, :, :3] = np.eye(3)
        center = np.array([dx * i, 0.0, 0.05 * i], np.float32)
        out[i, :, 3] = -center
    return out


@functools.cache
def _shared_media(n: int) -> tuple[Path, Path]:
    """One source clip (2 s per record) and one preview video per process: encoding them for
    every test would dominate the test time."""
    folder = Path(tempfile.mkdtemp(prefix="a2c-review-media-"))
    atexit.register(shutil.rmtree, folder, True)
    source = make_video(folder / "source.mp4", seconds=2.0 * n, fps=12, width=320, height=240)
    preview = make_video(
        folder / "preview.mp4", seconds=2.0, fps=12, width=160, height=120, pattern="static"
    )
    return source, preview


def make_run(
    root: Path,
    n: int = 6,
    *,
    captions: bool = True,
    conditions: bool = True,
    xss: bool = False,
    video: Path | None = None,
    run_id: str | None = None,
) -> Path:
    """A run directory with ``n`` records cut from one generated clip (2 s each).

    Records cycle through condition sets (all four, depth+pose, identities+camera, none) so
    the panes appear for what exists; with ``xss`` the first record's caption and labels carry
    ``<script>`` and ``<img onerror>`` payloads.
    """
    root.mkdir(parents=True, exist_ok=True)
    if video is None:
        video = _shared_media(max(n, 24))[0]
    preview = _shared_media(24)[1]
    rundir = RunDir(str(root))
    run_id = run_id or uuid.uuid4().hex[:12]
    rundir.save_info(
        RunInfo(
            recipe={"name": "review-test", "stages": []},
            recipe_hash="0" * 16,
            runs=[{"run_id": run_id, "started_at": utc_now().isoformat(), "sources": 1}],
        )
    )
    store = ArtifactStore(rundir.artifacts_uri())
    rng = np.random.default_rng(0)
    for i in range(n):
        start, end = 2.0 * i, 2.0 * (i + 1)
        clip_id = make_clip_id(str(video), start, end)
        clip = ClipRef(
            clip_id=clip_id,
            source_uri=str(video),
            start_s=start,
            end_s=end,
            fps=12,
            width=320,
            height=240,
            num_frames=24,
            codec="h264",
        )
        frames = [
            store.put(
                clip_id,
                "keyframes",
                f"{k:02d}.jpg",
                _jpeg(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)),
                "image/jpeg",
            )
            for k in range(3)
        ]
        conds = Conditions()
        sets = [
            ("depth", "pose", "identities", "camera"),
            ("depth", "pose"),
            ("identities", "camera"),
            (),
        ]
        present = sets[i % len(sets)] if conditions else ()
        label_suffix = f" {XSS_IMG}" if xss and i == 0 else ""
        if "depth" in present:
            conds.depth = DepthCondition(
                model_id="depth-anything/Depth-Anything-V2-Small-hf",
                frames=8,
                timestamps_s=[start + k * 0.25 for k in range(8)],
                normalization="uint16 over per-clip min/max",
                payload=store.put(
                    clip_id, "depth", "depth.npy", b"\x93NUMPY" + bytes(64), "application/x-npy"
                ),
                preview=store.put(
                    clip_id, "depth", "preview.mp4", preview.read_bytes(), "video/mp4"
                ),
            )
        if "pose" in present:
            conds.pose = PoseCondition(
                model_id="dwpose-onnx",
                frames=8,
                max_persons=1,
                timestamps_s=[start + k * 0.25 for k in range(8)],
                keypoints=store.put(
                    clip_id, "pose", "keypoints.npy", bytes(32), "application/x-npy"
                ),
                rendering=store.put(
                    clip_id, "pose", "rendering.mp4", preview.read_bytes(), "video/mp4"
                ),
            )
        if "identities" in present:
            crops = [
                Identity(
                    identity_id=k,
                    label=f"person {k}{label_suffix}",
                    frames_present=8,
                    mean_area_fraction=0.2,
                    crop=store.put(
                        clip_id,
                        "identities",
                        f"crop{k}.png",
                        _png(rng.integers(0, 255, (64, 48, 4), dtype=np.uint8)),
                        "image/png",
                    ),
                )
                for k in range(2)
            ]
            conds.identities = IdentitiesCondition(
                model_ids=["sam2-hiera-tiny"],
                identities=crops,
                stitched_reference=store.put(
                    clip_id,
                    "identities",
                    "stitched.png",
                    _png(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)),
                    "image/png",
                ),
            )
        if "camera" in present:
            buf = io.BytesIO()
            np.save(buf, _trajectory(16, 0.1))
            conds.camera = CameraCondition(
                source="estimated",
                frames=16,
                labels=["truck right", f"dolly in{label_suffix}"],
                description=f"The camera trucks right while moving slightly forward.{label_suffix}",
                trajectory=store.put(
                    clip_id, "camera", "trajectory.npy", buf.getvalue(), "application/x-npy"
                ),
            )
        caption = None
        short_prompt = None
        if captions:
            texts = dict(CAPTION)
            texts["dense"] = f"Clip {i}: " + texts["dense"]
            if xss and i == 0:
                texts["dense"] += f" {XSS_SCRIPT}"
                texts["style"] += f" {XSS_IMG}"
            caption = StructuredCaption(**texts)
            short_prompt = SHORT_PROMPT + (f" {XSS_SCRIPT}" if xss and i == 0 else "")
        stages = [
            StageProvenance(
                stage="keyframes",
                annotator_version="1",
                config_hash="a" * 16,
                run_id=run_id,
                seconds=0.1,
                finished_at=utc_now(),
            )
        ]
        if captions:
            stages.append(
                StageProvenance(
                    stage="caption",
                    annotator_version="1",
                    config_hash="b" * 16,
                    run_id=run_id,
                    seconds=2.5,
                    finished_at=utc_now(),
                    models=[ModelInfo(model_id="gpt-4o-2024-08-06", license="proprietary")],
                    prompt_hashes={"dense": "c" * 12, "short_prompt": "d" * 12},
                    details={"writer": "grounded" if i % 2 else "machine"},
                )
            )
        record = Record(
            clip=clip,
            stats=ClipStats(
                frames_sampled=16,
                mean_brightness=0.5,
                palette=[
                    ColorSwatch(hex="#aa3311", fraction=0.6),
                    ColorSwatch(hex="#1133aa", fraction=0.4),
                ],
                motion_magnitude=0.02,
            ),
            keyframes=Keyframes(timestamps_s=[start + 0.5 * k for k in range(3)], frames=frames),
            conditions=conds,
            caption=caption,
            short_prompt=short_prompt,
            provenance=Provenance(
                recipe="review-test", recipe_hash="0" * 16, run_id=run_id, stages=stages
            ),
        )
        rundir.save_record(record)
    return root


# PostgreSQL
def pg_available(url: str = PG_URL) -> str | None:
    """None when PostgreSQL answers at ``url``, else why not."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure means "not available", with its reason
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return None


def require_pg() -> str:
    """The test PostgreSQL URL, or skip (fail under CI=true) when it does not answer."""
    why = pg_available()
    if why is not None:
        message = f"PostgreSQL not reachable at {PG_URL} ({why}); run tools/ensure_services.sh"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return PG_URL


@contextlib.contextmanager
def fresh_pg_database(prefix: str = "review") -> Iterator[str]:
    """A new, empty database on the test server (dropped afterwards): tests never share one."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(require_pg())
    name = f"a2c_{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# live server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def record_json(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((root / "records").glob("*.json"))]
