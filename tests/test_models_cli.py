"""``any2cap models list`` / ``any2cap models fetch`` against a small Hugging Face Hub stand-in:
a real HTTP server on 127.0.0.1 answering the endpoints huggingface_hub calls (model info,
tree listing, HEAD/GET ``resolve``), serving the tiny test models under the real repo ids.
huggingface_hub is not mocked; the CLI runs in a subprocess so HF_ENDPOINT / HF_HOME /
HF_HUB_OFFLINE are read the way they are in real use (at import)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from any2capins.annotators import model_catalog as catalog
from tests.tiny_models import tiny_depth_model, tiny_dwpose

REPO = Path(__file__).resolve().parents[1]
DEPTH_REPO = catalog.DEFAULT_DEPTH_MODEL
DWPOSE_REPO = "yzd-v/DWPose"
CARD = "---\nlicense: apache-2.0\n---\n# tiny stand-in\n"


class FakeHub:
    """The Hub endpoints ``hf_hub_download`` and ``snapshot_download`` use, over real HTTP."""

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.hits: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                hub.serve(self, body=False)

            def do_GET(self) -> None:
                hub.serve(self, body=True)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def take_hits(self) -> list[tuple[str, str]]:
        with self.lock:
            hits, self.hits = self.hits, []
        return hits

    def serve(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(req.path).path)
        with self.lock:
            self.hits.append((req.command, path))
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/") :]
            for marker in ("/revision/", "/tree/"):
                if marker in rest:
                    repo, _, rev = rest.partition(marker)
                    if repo not in self.repos:
                        return self.send(req, 404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
                    files = self.repos[repo]
                    data: Any
                    if marker == "/revision/":
                        data = {
                            "id": repo,
                            "sha": self.commit(repo),
                            "private": False,
                            "siblings": [{"rfilename": n} for n in sorted(files)],
                        }
                    else:
                        data = [self.tree_entry(n, files[n]) for n in sorted(files)]
                    raw = json.dumps(data).encode()
                    return self.send(req, 200, raw, {"Content-Type": "application/json"}, body)
        if "/resolve/" in path:
            repo, _, rest = path.lstrip("/").partition("/resolve/")
            rev, _, name = rest.partition("/")
            if repo not in self.repos:
                return self.send(req, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)
            commit = self.commit(repo)
            if rev not in ("main", commit):
                return self.send(req, 404, b"", {"X-Error-Code": "RevisionNotFound"}, body)
            if name not in self.repos[repo]:
                headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
                return self.send(req, 404, b"", headers, body)
            content = self.repos[repo][name]
            headers = {
                "X-Repo-Commit": commit,
                "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                "Content-Type": "application/octet-stream",
            }
            return self.send(req, 200, content, headers, body)
        self.send(req, 404, b"", {}, body)

    @staticmethod
    def tree_entry(name: str, content: bytes) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "file",
            "path": name,
            "size": len(content),
            "oid": hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest(),
        }
        if name.endswith((".safetensors", ".onnx", ".bin")):
            entry["lfs"] = {
                "oid": hashlib.sha256(content).hexdigest(),
                "size": len(content),
                "pointerSize": 134,
            }
        return entry

    @staticmethod
    def send(
        req: BaseHTTPRequestHandler, code: int, data: bytes, headers: dict[str, str], body: bool
    ) -> None:
        req.send_response(code)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body:
            req.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeHub, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("hub-files")
    depth_dir = tiny_depth_model(root / "depth")
    det, pose = tiny_dwpose(root / "dwpose")
    depth_files = {p.name: p.read_bytes() for p in depth_dir.iterdir() if p.is_file()}
    depth_files["README.md"] = CARD.encode()
    depth_files[".gitattributes"] = b"*.safetensors filter=lfs\n"
    # Duplicate weights a repo may also carry: not needed, so not fetched.
    depth_files["pytorch_model.bin"] = b"unused duplicate weights"
    repos = {
        DEPTH_REPO: depth_files,
        DWPOSE_REPO: {
            "yolox_l.onnx": det.read_bytes(),
            "dw-ll_ucoco_384.onnx": pose.read_bytes(),
            "README.md": CARD.encode(),
        },
    }
    hub = FakeHub(repos)
    try:
        yield hub, {"depth_dir": depth_dir, "repos": repos}
    finally:
        hub.close()


def _env(hub_url: str, hf_home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "ANY2CAP_", "HUGGING_FACE")) and k != "TRANSFORMERS_OFFLINE"
    }
    env.update(
        HF_ENDPOINT=hub_url,
        HF_HOME=str(hf_home),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        HF_HUB_DISABLE_TELEMETRY="1",
        COLUMNS="400",
    )
    env.update(extra)
    return env


def models(
    hub_url: str, hf_home: Path, *args: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "any2capins.workflows.cli", "models", *args],
        cwd=REPO,
        env=_env(hub_url, hf_home, **extra),
        capture_output=True,
        text=True,
        timeout=180,
    )


def python(
    hub_url: str, hf_home: Path, code: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=_env(hub_url, hf_home, **extra),
        capture_output=True,
        text=True,
        timeout=300,
    )


def rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return {r["name"]: r for r in json.loads(result.stdout)}


def test_list_with_nothing_cached(served: tuple[FakeHub, dict[str, Any]], tmp_path: Path) -> None:
    hub, files = served
    hub.take_hits()
    hf_home = tmp_path / "hf"
    listed = rows(models(hub.url, hf_home, "list", "--json"))
    assert list(listed) == [m.name for m in catalog.DEFAULT_MODELS]
    for name, r in listed.items():
        entry = catalog.MODELS_BY_NAME[name]
        assert not r["present"] and r["source"] == "default"
        assert r["id"] == entry.ref and r["env"] == entry.env and r["license"] == entry.license
        assert r["looked_for"].startswith(str(hf_home / "hub" / "models--"))
    assert listed["grounding-dino"]["optional"]
    # HF_HUB_CACHE wins over HF_HOME, as in huggingface_hub.
    other = tmp_path / "elsewhere"
    listed = rows(models(hub.url, hf_home, "list", "--json", HF_HUB_CACHE=str(other)))
    assert listed["sam2"]["looked_for"] == str(other / "models--facebook--sam2.1-hiera-tiny")
    # An override variable pointing at a local copy is where the model is looked for.
    listed = rows(
        models(
            hub.url,
            hf_home,
            "list",
            "--json",
            ANY2CAP_DEPTH_MODEL=str(files["depth_dir"]),
            ANY2CAP_DWPOSE_DET=str(tmp_path / "missing.onnx"),
        )
    )
    assert listed["depth"]["present"] and listed["depth"]["looked_for"] == str(files["depth_dir"])
    assert listed["depth"]["source"] == f"ANY2CAP_DEPTH_MODEL={files['depth_dir']}"
    assert not listed["dwpose-detector"]["present"]
    assert "no such file" in listed["dwpose-detector"]["detail"]
    table = models(hub.url, hf_home, "list")
    assert table.returncode == 0
    assert "depth-anything/Depth-Anything-V2-Small-hf" in table.stdout
    assert "any2cap models fetch" in table.stderr
    assert hub.take_hits() == []  # listing never touches the network


def test_fetch_depth_lands_in_the_cache_and_the_build_finds_it(
    served: tuple[FakeHub, dict[str, Any]], tmp_path: Path
) -> None:
    hub, files = served
    hf_home = tmp_path / "hf"
    probe = (
        "from any2capins.annotators.depth import DepthAnnotator, DepthConfig\n"
        "DepthAnnotator.preflight(DepthConfig())\n"
        "a = DepthAnnotator(DepthConfig())\n"
        "print('version', a.model_version)\n"
    )
    # Offline and not cached: the build's error names the fetch command.
    before = python(hub.url, hf_home, probe, HF_HUB_OFFLINE="1")
    assert before.returncode != 0
    assert "any2cap models fetch depth" in before.stderr
    hub.take_hits()

    fetched = models(hub.url, hf_home, "fetch", "depth")
    assert fetched.returncode == 0, fetched.stderr
    hits = hub.take_hits()
    commit = hub.commit(DEPTH_REPO)
    snapshot = hf_home / "hub" / "models--depth-anything--Depth-Anything-V2-Small-hf"
    snapshot = snapshot / "snapshots" / commit
    assert f"downloaded to {snapshot}" in fetched.stdout
    assert "ANY2CAP_DEPTH_MODEL=" in fetched.stdout
    served_files = files["repos"][DEPTH_REPO]
    wanted = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"}
    assert {p.name for p in snapshot.iterdir()} == wanted
    for name in wanted:
        assert (snapshot / name).read_bytes() == served_files[name]
    assert ("GET", f"/api/models/{DEPTH_REPO}/revision/main") in hits
    assert ("GET", f"/api/models/{DEPTH_REPO}/tree/{commit}") in hits
    downloads = {p.rsplit("/", 1)[-1] for m, p in hits if m == "GET" and "/resolve/" in p}
    assert downloads == wanted

    listed = rows(models(hub.url, hf_home, "list", "--json"))
    assert listed["depth"]["present"] and listed["depth"]["looked_for"] == str(snapshot)
    assert not listed["sam2"]["present"]

    again = models(hub.url, hf_home, "fetch", "depth")
    assert again.returncode == 0, again.stderr
    assert f"already present at {snapshot}" in again.stdout
    assert hub.take_hits() == []  # nothing downloaded, not even asked

    after = python(hub.url, hf_home, probe, HF_HUB_OFFLINE="1")
    assert after.returncode == 0, after.stderr
    assert f"version {commit}" in after.stdout
    assert hub.take_hits() == []


def test_fetch_pose_files_and_the_shared_detector(
    served: tuple[FakeHub, dict[str, Any]], tmp_path: Path
) -> None:
    hub, files = served
    hf_home = tmp_path / "hf"
    probe = (
        "from any2capins.annotators.pose import PoseAnnotator, PoseConfig\n"
        "from any2capins.annotators.identities.detector import detector_file\n"
        "PoseAnnotator.preflight(PoseConfig())\n"
        "print('yolox', detector_file('yzd-v/DWPose:yolox_l.onnx'))\n"
    )
    before = python(hub.url, hf_home, probe, HF_HUB_OFFLINE="1")
    assert before.returncode != 0 and "any2cap models fetch pose" in before.stderr
    hub.take_hits()

    fetched = models(hub.url, hf_home, "fetch", "pose")
    assert fetched.returncode == 0, fetched.stderr
    snapshot = hf_home / "hub" / "models--yzd-v--DWPose" / "snapshots" / hub.commit(DWPOSE_REPO)
    for name in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"):
        assert (snapshot / name).read_bytes() == files["repos"][DWPOSE_REPO][name]
        assert f"downloaded to {snapshot / name}" in fetched.stdout
    assert not (snapshot / "README.md").exists()  # single files only
    gets = sorted(p for m, p in hub.take_hits() if m == "GET")
    assert gets == [
        f"/{DWPOSE_REPO}/resolve/main/dw-ll_ucoco_384.onnx",
        f"/{DWPOSE_REPO}/resolve/main/yolox_l.onnx",
    ]
    # The identities stage's detector is the same file: already there.
    shared = models(hub.url, hf_home, "fetch", "yolox")
    assert shared.returncode == 0 and "already present" in shared.stdout
    assert hub.take_hits() == []
    listed = rows(models(hub.url, hf_home, "list", "--json"))
    assert all(listed[n]["present"] for n in ("dwpose-detector", "dwpose-pose", "yolox"))
    after = python(hub.url, hf_home, probe, HF_HUB_OFFLINE="1")
    assert after.returncode == 0, after.stderr
    assert f"yolox {snapshot / 'yolox_l.onnx'}" in after.stdout


def test_fetch_offline_is_a_clear_error(
    served: tuple[FakeHub, dict[str, Any]], tmp_path: Path
) -> None:
    hub, _ = served
    hub.take_hits()
    result = models(hub.url, tmp_path / "hf", "fetch", "depth", "sam2", HF_HUB_OFFLINE="1")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert errors[0].startswith("error: depth: ") and "HF_HUB_OFFLINE" in errors[0]
    assert "ANY2CAP_DEPTH_MODEL=DIR" in errors[0]
    assert errors[1].startswith("error: sam2: ") and "ANY2CAP_SAM2_MODEL=DIR" in errors[1]
    assert hub.take_hits() == []


def test_fetch_unreachable_hub_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Closed port: the folder model fails first, the file model is then not retried.
    result = models(f"http://127.0.0.1:{port}", tmp_path / "hf", "fetch", "depth", "dwpose-pose")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert errors[0].startswith("error: depth: could not download")
    assert f"127.0.0.1:{port}" in errors[0] and "ANY2CAP_DEPTH_MODEL=DIR" in errors[0]
    assert errors[1].startswith("error: dwpose-pose: not downloaded: the Hub could not be")
    assert "ANY2CAP_DWPOSE_POSE=DIR/dw-ll_ucoco_384.onnx" in errors[1]


def test_unknown_name_exits_2(served: tuple[FakeHub, dict[str, Any]], tmp_path: Path) -> None:
    hub, _ = served
    hub.take_hits()
    result = models(hub.url, tmp_path / "hf", "fetch", "depth", "midas")
    assert result.returncode == 2
    assert "'midas'" in result.stderr
    for name in (*catalog.MODELS_BY_NAME, "pose", "identities"):
        assert name in result.stderr
    assert hub.take_hits() == [] and not (tmp_path / "hf").exists()


def test_selection_by_model_and_stage() -> None:
    names = [m.name for m in catalog.select([])]
    assert names == [
        "depth",
        "dwpose-detector",
        "dwpose-pose",
        "yolox",
        "sam2",
        "clip-vit-l14",
        "aesthetic-predictor",
    ]
    assert [m.name for m in catalog.select(["identities"])] == ["yolox", "sam2"]
    assert [m.name for m in catalog.select(["pose", "depth"])] == [
        "depth",
        "dwpose-detector",
        "dwpose-pose",
    ]
    assert [m.name for m in catalog.select(["grounding-dino", "sam2"])] == [
        "sam2",
        "grounding-dino",
    ]
    with pytest.raises(KeyError):
        catalog.select(["nope"])


def test_catalog_is_what_the_stages_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from any2capins.annotators.depth import DepthConfig, depth_license
    from any2capins.annotators.identities.annotator import IdentitiesConfig
    from any2capins.annotators.identities.grounding import GROUNDING_LICENSE
    from any2capins.annotators.identities.segmenter import SAM2_LICENSE
    from any2capins.annotators.pose import PoseConfig
    from any2capins.annotators.pose._condition import _license
    from any2capins.annotators.yolox import DETECTOR_LICENSE

    for m in catalog.DEFAULT_MODELS:
        monkeypatch.delenv(m.env, raising=False)
    by = catalog.MODELS_BY_NAME
    depth, pose, ident = DepthConfig(), PoseConfig(), IdentitiesConfig()
    assert depth.model == by["depth"].ref
    assert depth_license(depth.model) == by["depth"].license
    assert (pose.detector, pose.pose_model) == (by["dwpose-detector"].ref, by["dwpose-pose"].ref)
    assert _license(pose.detector, None) == by["dwpose-detector"].license
    assert _license(pose.pose_model, None) == by["dwpose-pose"].license
    assert ident.detector_model == by["yolox"].ref and by["yolox"].license == DETECTOR_LICENSE
    assert ident.sam2_model == by["sam2"].ref and by["sam2"].license == SAM2_LICENSE
    assert ident.grounding_model == by["grounding-dino"].ref
    assert by["grounding-dino"].license == GROUNDING_LICENSE
    # Each override variable is the one its stage reads.
    for name, config, field in (
        ("depth", DepthConfig, "model"),
        ("dwpose-detector", PoseConfig, "detector"),
        ("dwpose-pose", PoseConfig, "pose_model"),
        ("yolox", IdentitiesConfig, "detector_model"),
        ("sam2", IdentitiesConfig, "sam2_model"),
        ("grounding-dino", IdentitiesConfig, "grounding_model"),
    ):
        entry = by[name]
        assert entry.param == field
        monkeypatch.setenv(entry.env, "/some/where")
        assert getattr(config(), field) == "/some/where"
        monkeypatch.delenv(entry.env)
