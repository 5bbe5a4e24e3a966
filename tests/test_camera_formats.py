"""Camera file formats: RealEstate10K and MotionCtrl round trips, the real shared files, and
clear errors for malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from any2capins.annotators.camera import (
    CameraFormatError,
    Trajectory,
    TrajectoryError,
    format_motionctrl,
    format_realestate10k,
    parse_motionctrl,
    parse_realestate10k,
    read_trajectory,
    write_realestate10k,
)
from any2capins.annotators.camera.formats import detect_format
from any2capins.annotators.camera.trajectory import matrix_from_rotvec, rotvec_from_matrix
from tests.conftest import SHARED_DATA

RE10K = SHARED_DATA / "camera" / "realestate10k"
MOTIONCTRL = SHARED_DATA / "camera" / "motionctrl"


def _random_trajectory(n: int = 12, seed: int = 0) -> Trajectory:
    rng = np.random.default_rng(seed)
    w2c = np.zeros((n, 3, 4))
    for i in range(n):
        w2c[i, :, :3] = matrix_from_rotvec(rng.normal(0, 0.3, 3))
        w2c[i, :, 3] = rng.normal(0, 2.0, 3)
    intr = np.tile([0.48, 0.85, 0.5, 0.5], (n, 1)) + rng.normal(0, 0.01, (n, 4))
    return Trajectory(intr, w2c, np.arange(n) / 30.0 + 12.5, source_uri="https://example.org/v")


def test_realestate10k_round_trip(tmp_path: Path) -> None:
    traj = _random_trajectory()
    text = format_realestate10k(traj)
    assert text.splitlines()[0] == "https://example.org/v"
    assert all(len(line.split()) == 19 for line in text.splitlines()[1:])
    back = parse_realestate10k(text)
    assert back.source_uri == traj.source_uri
    np.testing.assert_allclose(back.w2c, traj.w2c, atol=1e-9)
    np.testing.assert_allclose(back.intrinsics, traj.intrinsics, atol=1e-9)
    np.testing.assert_allclose(back.timestamps_s, traj.timestamps_s, atol=1e-6)
    # and through a file
    path = tmp_path / "cam.txt"
    write_realestate10k(traj, path)
    np.testing.assert_allclose(read_trajectory(path).w2c, traj.w2c, atol=1e-9)


def test_realestate10k_numeric_url_is_protected() -> None:
    traj = _random_trajectory(3).replace(source_uri="")
    text = format_realestate10k(traj, url="1234")
    assert not text.splitlines()[0].split()[0].lstrip("-").isdigit()
    assert len(parse_realestate10k(text)) == 3


def test_motionctrl_round_trip() -> None:
    traj = _random_trajectory(16)
    back = parse_motionctrl(format_motionctrl(traj), fps=10.0)
    np.testing.assert_allclose(back.w2c, traj.w2c, atol=1e-8)
    np.testing.assert_allclose(back.timestamps_s, np.arange(16) / 10.0)
    assert "assumed" in back.meta
    # nested 3x4 and 4x4 matrices are accepted too
    nested = [np.vstack([m, [0, 0, 0, 1]]).tolist() for m in traj.w2c]
    np.testing.assert_allclose(parse_motionctrl(json.dumps(nested)).w2c, traj.w2c, atol=1e-12)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("https://x\n", "no camera lines"),
        ("https://x\n1 2 3\n", "line 2"),
        ("https://x\n" + " ".join(["1"] * 18) + " x\n", "line 2"),
    ],
)
def test_realestate10k_errors_name_the_line(text: str, fragment: str) -> None:
    with pytest.raises(CameraFormatError, match=fragment):
        parse_realestate10k(text, "bad.txt")


def test_realestate10k_rejects_non_rotation() -> None:
    row = "0 0.5 0.9 0.5 0.5 0 0 " + " ".join(["2", "0", "0", "0", "0", "1", "0", "0"] + ["0"] * 4)
    with pytest.raises(CameraFormatError, match="not a rotation"):
        parse_realestate10k("u\n" + row + "\n")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not JSON"),
        ("[]", "non-empty list"),
        ("[[1, 2, 3]]", "frame 0"),
        ('[["a"]]', "frame 0"),
        (json.dumps([[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1]]), "last row"),
        (json.dumps([[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, float("nan")]]), "NaN"),
    ],
)
def test_motionctrl_errors(text: str, fragment: str) -> None:
    with pytest.raises(CameraFormatError, match=fragment):
        parse_motionctrl(text, "bad.json")


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(CameraFormatError, match="does not exist"):
        read_trajectory(tmp_path / "nope.txt")
    with pytest.raises(CameraFormatError, match="suffix"):
        detect_format("cam.yaml")


def test_trajectory_validation_and_geometry() -> None:
    traj = _random_trajectory(5)
    C = traj.centers()
    # w2c maps each centre to the camera origin
    for i in range(5):
        np.testing.assert_allclose(traj.w2c[i, :, :3] @ C[i] + traj.w2c[i, :, 3], 0, atol=1e-9)
    np.testing.assert_allclose(
        traj.c2w() @ traj.w2c_4x4(), np.tile(np.eye(4), (5, 1, 1)), atol=1e-9
    )
    rel = traj.relative_to_first()
    np.testing.assert_allclose(rel.w2c[0], np.hstack([np.eye(3), np.zeros((3, 1))]), atol=1e-9)
    scaled = traj.scaled(3.0)
    np.testing.assert_allclose(scaled.centers(), 3 * C, atol=1e-9)
    K = traj.K(640, 360)
    assert K.shape == (5, 3, 3) and np.isclose(K[0, 0, 0], traj.intrinsics[0, 0] * 640)
    with pytest.raises(TrajectoryError, match="timestamps"):
        Trajectory(traj.intrinsics, traj.w2c, traj.timestamps_s[::-1])
    with pytest.raises(TrajectoryError, match=r"\[F, 3, 4\]"):
        Trajectory(traj.intrinsics, traj.w2c[:, :2], traj.timestamps_s)
    with pytest.raises(TrajectoryError, match="focal"):
        Trajectory(-traj.intrinsics, traj.w2c, traj.timestamps_s)


def test_rotvec_round_trip_including_near_pi() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        for angle in (1e-9, 0.3, 2.0, np.pi - 1e-6):
            R = matrix_from_rotvec(axis * angle)
            np.testing.assert_allclose(matrix_from_rotvec(rotvec_from_matrix(R)), R, atol=1e-6)


@pytest.fixture(scope="module")
def realestate_files() -> list[Path]:
    files = sorted(RE10K.glob("*.txt"))
    files = [f for f in files if not f.name.startswith("LICENSE")]
    if not files:
        pytest.skip(f"RealEstate10K files not present at {RE10K} (set ANY2CAP_SHARED_DATA)")
    return files


def test_real_realestate10k_files_parse_and_round_trip(realestate_files: list[Path]) -> None:
    for path in realestate_files:
        traj = read_trajectory(path)
        assert len(traj) == 16
        assert traj.source_uri.startswith("https://www.youtube.com/")
        assert np.all(np.diff(traj.timestamps_s) > 0)
        assert np.allclose(traj.intrinsics[:, 2:], 0.5)
        back = parse_realestate10k(format_realestate10k(traj))
        np.testing.assert_allclose(back.w2c, traj.w2c, atol=1e-9)
        # the original text, number for number
        original = [line.split() for line in path.read_text().splitlines()[1:] if line.strip()]
        ours = [line.split() for line in format_realestate10k(traj).splitlines()[1:]]
        np.testing.assert_allclose(
            np.array(ours, float), np.array(original, float), atol=2e-9, rtol=0
        )


def test_real_motionctrl_files_parse() -> None:
    files = sorted(MOTIONCTRL.glob("*.json"))
    if not files:
        pytest.skip(f"MotionCtrl files not present at {MOTIONCTRL} (set ANY2CAP_SHARED_DATA)")
    assert {f.stem for f in files} == set("LRUDIO")
    for path in files:
        traj = read_trajectory(path)
        assert len(traj) == 16 and traj.meta["format"] == "motionctrl"
        np.testing.assert_allclose(traj.rotations, np.tile(np.eye(3), (16, 1, 1)), atol=1e-9)
