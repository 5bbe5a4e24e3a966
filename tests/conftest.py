"""Shared fixtures: paths to the repository's demo clips and the optional shared data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_CLIPS = REPO / "demo" / "clips"
SHARED_DATA = Path(os.environ.get("ANY2CAP_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    folder = SHARED_DATA / "videos"
    if not any(folder.glob("*.mp4")):
        pytest.skip(f"real clips not present at {folder} (set ANY2CAP_SHARED_DATA)")
    return folder


@pytest.fixture(scope="session")
def demo_clips() -> Path:
    clips = sorted(DEMO_CLIPS.glob("*.mp4"))
    assert clips, f"demo clips missing from {DEMO_CLIPS}"
    return DEMO_CLIPS


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One embedded Ray for the in-process tests (starting Ray costs seconds)."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        pytest.skip("in-process Ray tests start their own local Ray; unset RAY_ADDRESS")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield
    ray.shutdown()
