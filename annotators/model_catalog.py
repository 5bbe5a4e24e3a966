"""The default models of the model stages, in one table: what each is, which stage uses it,
where it is published, roughly how big it is, its licence and how to point a stage elsewhere.

The stage modules take their default hub ids and override variables from here, and
``any2cap models list`` / ``any2cap models fetch`` (workflows/models_cli.py) read the same
table. Nothing here imports huggingface_hub until a function needs it, so the stage modules
stay cheap to import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from any2capins.annotators._models import (
    fetch_hint,
    hf_offline,
    hub_file,
    looks_like_path,
    model_folder_problem,
)

# Default hub references (``owner/repo`` for transformers folders, ``owner/repo:file`` for
# single files) and the environment variables that override them.
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
DEFAULT_DETECTOR = "yzd-v/DWPose:yolox_l.onnx"
DEFAULT_POSE_MODEL = "yzd-v/DWPose:dw-ll_ucoco_384.onnx"
DEFAULT_SAM2 = "facebook/sam2.1-hiera-tiny"
DEFAULT_GROUNDING = "IDEA-Research/grounding-dino-tiny"
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
# The LAION "improved aesthetic predictor" head (sac+logos+ava1-l14-linearMSE.pth from
# github.com/christophschuhmann/improved-aesthetic-predictor), as TRL publishes it on the Hub.
DEFAULT_AESTHETIC_HEAD = "trl-lib/ddpo-aesthetic-predictor:aesthetic-model.pth"

ENV_DEPTH_MODEL = "ANY2CAP_DEPTH_MODEL"
ENV_DWPOSE_DET = "ANY2CAP_DWPOSE_DET"
ENV_DWPOSE_POSE = "ANY2CAP_DWPOSE_POSE"
ENV_YOLOX_MODEL = "ANY2CAP_YOLOX_MODEL"
ENV_SAM2_MODEL = "ANY2CAP_SAM2_MODEL"
ENV_GROUNDING_MODEL = "ANY2CAP_GROUNDING_MODEL"
ENV_CLIP_MODEL = "ANY2CAP_CLIP_MODEL"
ENV_AESTHETIC_HEAD = "ANY2CAP_AESTHETIC_HEAD"

# What a transformers folder needs (config, processor/tokenizer files, safetensors weights,
# the model card for its licence); skips the duplicate .bin/.pt/.onnx/.msgpack weights some
# repos also carry (facebook/sam2.1-* ships the original .pt checkpoint as well).
FOLDER_PATTERNS: tuple[str, ...] = ("*.json", "*.safetensors", "*.txt", "README.md")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    stages: tuple[str, ...]
    ref: str  # "owner/repo" (folder) or "owner/repo:file" (single file)
    size: str  # approximate download
    license: str
    env: str  # environment variable that overrides the stage's setting
    param: str  # the stage's recipe param
    what: str
    optional: bool = False  # only some recipes use it; fetched only when named

    @property
    def repo(self) -> str:
        return self.ref.partition(":")[0]

    @property
    def filename(self) -> str | None:
        """The file of a single-file model; None for a transformers folder."""
        return self.ref.partition(":")[2] or None


DEFAULT_MODELS: tuple[ModelEntry, ...] = (
    ModelEntry(
        "depth",
        ("depth",),
        DEFAULT_DEPTH_MODEL,
        "~99 MB",
        "Apache-2.0",
        ENV_DEPTH_MODEL,
        "model",
        "Depth Anything V2 Small (transformers folder)",
    ),
    ModelEntry(
        "dwpose-detector",
        ("pose",),
        DEFAULT_DETECTOR,
        "~217 MB",
        "Apache-2.0",
        ENV_DWPOSE_DET,
        "detector",
        "YOLOX-L person detector (ONNX; the same file as yolox)",
    ),
    ModelEntry(
        "dwpose-pose",
        ("pose",),
        DEFAULT_POSE_MODEL,
        "~134 MB",
        "Apache-2.0",
        ENV_DWPOSE_POSE,
        "pose_model",
        "DWPose-L whole-body keypoints, 384x288 (ONNX)",
    ),
    ModelEntry(
        "yolox",
        ("identities",),
        DEFAULT_DETECTOR,
        "~217 MB",
        "Apache-2.0",
        ENV_YOLOX_MODEL,
        "detector_model",
        "YOLOX-L COCO detector (ONNX; the same file as dwpose-detector)",
    ),
    ModelEntry(
        "sam2",
        ("identities",),
        DEFAULT_SAM2,
        "~160 MB",
        "Apache-2.0",
        ENV_SAM2_MODEL,
        "sam2_model",
        "SAM 2.1 Hiera-Tiny video segmenter (transformers folder)",
    ),
    ModelEntry(
        "grounding-dino",
        ("identities",),
        DEFAULT_GROUNDING,
        "~690 MB",
        "Apache-2.0",
        ENV_GROUNDING_MODEL,
        "grounding_model",
        "Grounding DINO Tiny, open-vocabulary boxes; used only with open_vocabulary",
        optional=True,
    ),
    ModelEntry(
        "clip-vit-l14",
        ("aesthetics",),
        DEFAULT_CLIP_MODEL,
        "~1.7 GB",
        "MIT",
        ENV_CLIP_MODEL,
        "clip_model",
        "OpenAI CLIP ViT-L/14, image embeddings for the aesthetic predictor (transformers folder)",
    ),
    ModelEntry(
        "aesthetic-predictor",
        ("aesthetics",),
        DEFAULT_AESTHETIC_HEAD,
        "~3.7 MB",
        "Apache-2.0",
        ENV_AESTHETIC_HEAD,
        "head",
        "LAION improved aesthetic predictor MLP head, sac+logos+ava1-l14-linearMSE (torch)",
    ),
)

MODELS_BY_NAME: dict[str, ModelEntry] = {m.name: m for m in DEFAULT_MODELS}
STAGES: tuple[str, ...] = tuple(dict.fromkeys(s for m in DEFAULT_MODELS for s in m.stages))


def select(names: list[str]) -> list[ModelEntry]:
    """Models by model name or stage name (a stage: its non-optional models); no names: every
    non-optional model. Order follows the table; each model once. ``KeyError`` names the
    first unknown name."""
    if not names:
        return [m for m in DEFAULT_MODELS if not m.optional]
    chosen: set[str] = set()
    for name in names:
        if name in MODELS_BY_NAME:
            chosen.add(name)
        elif name in STAGES:
            chosen.update(m.name for m in DEFAULT_MODELS if name in m.stages and not m.optional)
        else:
            raise KeyError(name)
    return [m for m in DEFAULT_MODELS if m.name in chosen]


def known_names() -> list[str]:
    return list(dict.fromkeys([*MODELS_BY_NAME, *STAGES]))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it (HF_HUB_CACHE, else
    HF_HOME/hub, else ~/.cache/huggingface/hub), read when it was imported."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_cache_folder(repo: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return hub_cache_dir() / repo_folder_name(repo_id=repo, repo_type="model")


def cached_file(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return Path(found) if isinstance(found, str) else None


def cached_folder(repo: str) -> tuple[Path | None, str]:
    """The complete cached snapshot of a transformers folder, or None and why not. Complete
    means what huggingface_hub's snapshot listing (when it has one) says, plus config.json
    and at least one weights file."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(repo, local_files_only=True, allow_patterns=list(FOLDER_PATTERNS))
        )
    except Exception as e:  # noqa: BLE001 - not cached, incomplete: all mean "not here"
        return None, _first_line(e)
    if not (folder / "config.json").is_file():
        return None, f"{folder} holds no config.json"
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        return None, f"{folder} holds no weights (*.safetensors)"
    return folder, ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def default_status(entry: ModelEntry) -> dict[str, Any]:
    """Where the default (hub) model is looked for and whether it is in the cache."""
    name = entry.filename
    if name is not None:
        found = cached_file(entry.repo, name)
        return {
            "looked_for": str(found or repo_cache_folder(entry.repo)),
            "present": found is not None,
            "detail": "" if found else "not in the Hugging Face cache",
        }
    folder, why = cached_folder(entry.repo)
    return {
        "looked_for": str(folder or repo_cache_folder(entry.repo)),
        "present": folder is not None,
        "detail": why,
    }


def status(entry: ModelEntry) -> dict[str, Any]:
    """One row of ``any2cap models list``: the table's facts plus where the model is looked
    for on this machine (the override variable's value when it is set, else the Hugging Face
    cache) and whether it is there. Nothing is downloaded."""
    row: dict[str, Any] = {
        "name": entry.name,
        "stages": list(entry.stages),
        "id": entry.ref,
        "size": entry.size,
        "license": entry.license,
        "env": entry.env,
        "param": entry.param,
        "optional": entry.optional,
        "what": entry.what,
    }
    override = os.environ.get(entry.env)
    row["source"] = f"{entry.env}={override}" if override else "default"
    if not override:
        return {**row, **default_status(entry)}
    if looks_like_path(override):
        path = Path(override).expanduser()
        if entry.filename is not None:
            ok = path.is_file()
            detail = "" if ok else f"no such file {path}"
        else:
            problem = model_folder_problem(str(path), local=True)
            ok, detail = problem is None, problem or ""
        return {**row, "looked_for": str(path), "present": ok, "detail": detail}
    # The variable names another hub model: look for that one in the cache.
    other = hub_file(override) if entry.filename is not None else None
    if other is not None:
        found = cached_file(*other)
        where = found or repo_cache_folder(other[0])
        return {**row, "looked_for": str(where), "present": found is not None, "detail": ""}
    if entry.filename is None:
        folder, why = cached_folder(override)
        where = folder or repo_cache_folder(override)
        return {**row, "looked_for": str(where), "present": folder is not None, "detail": why}
    return {**row, "looked_for": override, "present": False, "detail": "not a file or hub file"}


class FetchError(Exception):
    """A model could not be downloaded; the message is one line saying what to do.
    ``unreachable`` is why the Hub could not be reached at all (then the next models are
    not tried: each would wait through huggingface_hub's retries again)."""

    def __init__(self, message: str, unreachable: str | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def offline_advice(entry: ModelEntry) -> str:
    kind = "file" if entry.filename else "folder"
    how = (
        f"`hf download {entry.repo} {entry.filename} --local-dir DIR`"
        if entry.filename
        else f"`hf download {entry.repo} --local-dir DIR`"
    )
    target = f"DIR/{entry.filename}" if entry.filename else "DIR"
    return (
        f"on a machine with network access run `any2cap models fetch {entry.name}` (or "
        f"{how}), copy the {kind} to this machine and set {entry.env}={target} "
        f"(or the stage's `{entry.param}` param)"
    )


def fetch(entry: ModelEntry, unreachable: str | None = None) -> tuple[Path, bool]:
    """Download the default model into the Hugging Face cache unless it is already there.
    Returns (where it is, whether anything was downloaded); :class:`FetchError` otherwise.
    ``unreachable``: an earlier fetch found the Hub unreachable for this reason, so a model
    not yet cached fails at once. huggingface_hub shows its own progress bars on stderr."""
    before = default_status(entry)
    if before["present"]:
        return Path(before["looked_for"]), False
    if unreachable is not None:
        raise FetchError(
            f"{entry.name}: not downloaded: the Hub could not be reached ({unreachable}); "
            f"{offline_advice(entry)}.",
            unreachable,
        )
    if hf_offline():
        raise FetchError(
            f"{entry.name}: cannot download {entry.ref}: HF_HUB_OFFLINE is set. Unset it, "
            f"or {offline_advice(entry)}."
        )
    import httpx
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        if entry.filename is not None:
            path = Path(hf_hub_download(entry.repo, entry.filename))
        else:
            path = Path(snapshot_download(entry.repo, allow_patterns=list(FOLDER_PATTERNS)))
    except Exception as e:
        from huggingface_hub import constants

        network = isinstance(e, (LocalEntryNotFoundError, httpx.TransportError))
        raise FetchError(
            f"{entry.name}: could not download {entry.ref} from {constants.ENDPOINT} "
            f"({_first_line(e)}); "
            f"{offline_advice(entry)}.",
            _first_line(e) if network else None,
        ) from e
    return path, True


__all__ = [
    "DEFAULT_AESTHETIC_HEAD",
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_DEPTH_MODEL",
    "DEFAULT_DETECTOR",
    "DEFAULT_GROUNDING",
    "DEFAULT_MODELS",
    "DEFAULT_POSE_MODEL",
    "DEFAULT_SAM2",
    "ENV_AESTHETIC_HEAD",
    "ENV_CLIP_MODEL",
    "ENV_DEPTH_MODEL",
    "ENV_DWPOSE_DET",
    "ENV_DWPOSE_POSE",
    "ENV_GROUNDING_MODEL",
    "ENV_SAM2_MODEL",
    "ENV_YOLOX_MODEL",
    "FOLDER_PATTERNS",
    "MODELS_BY_NAME",
    "STAGES",
    "FetchError",
    "ModelEntry",
    "fetch",
    "fetch_hint",
    "known_names",
    "select",
    "status",
]
