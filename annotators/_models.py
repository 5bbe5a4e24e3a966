"""Where a stage's models come from, shared by the model stages: the Hugging Face offline
switch, a cheap check that a transformers model folder or hub id can be loaded here, made
before a build starts without loading anything (see ``Annotator.preflight``), and the
lookup of single-file models (ONNX graphs) by local path or hub file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from any2capins.annotators.base import MissingDependency


def hf_offline() -> bool:
    """HF_HUB_OFFLINE as set now: huggingface_hub reads it once at import, and an offline
    machine without it would retry the hub for ~20 s before failing."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_cache_only() -> bool:
    """Whether a build reads hub models from the Hugging Face cache only (the default).

    A build never downloads weights behind the user's back: `any2cap models fetch` (or
    `hf download`) puts them in the cache first, so a missing model stops the build before
    any work instead of failing, or stalling on retries, inside a worker.
    ``ANY2CAP_ALLOW_DOWNLOADS=1`` lets stages download on first use (unless HF_HUB_OFFLINE).
    """
    allowed = os.environ.get("ANY2CAP_ALLOW_DOWNLOADS", "").lower() in ("1", "true", "yes", "on")
    return hf_offline() or not allowed


def model_folder_problem(ref: str, local: bool) -> str | None:
    """Why ``from_pretrained(ref)`` would fail here, judged without loading; None when it
    looks loadable. A local folder must hold config.json; a hub id must be in the Hugging
    Face cache (see :func:`hub_cache_only`)."""
    if local:
        folder = Path(ref).expanduser()
        if not folder.is_dir():
            return f"no such folder {folder}"
        if not (folder / "config.json").is_file():
            return f"{folder} holds no config.json"
        return None
    if not hub_cache_only():
        return None
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return None
    why = "HF_HUB_OFFLINE is set" if hf_offline() else "builds do not download models"
    return f"not in the Hugging Face cache, and {why}"


def looks_like_path(ref: str) -> bool:
    """A model reference that names a local file or folder rather than a hub id."""
    return ref.startswith(("/", "./", "../", "~")) or os.path.exists(ref)


def hub_file(spec: str) -> tuple[str, str] | None:
    """``owner/repo:file`` or ``owner/repo/file`` -> (repo id, file name); None otherwise."""
    if spec.startswith(("/", ".", "~")):
        return None
    if ":" in spec:
        repo, _, name = spec.partition(":")
    else:
        parts = spec.split("/")
        repo, name = "/".join(parts[:2]), "/".join(parts[2:])
    if repo.count("/") != 1 or not all(repo.split("/")) or not name:
        return None
    return repo, name


def fetch_hint(target: str) -> str:
    """The sentence a "model missing" error ends with: how ``any2cap models fetch`` gets a
    stage's default models (or one model, by name) into the Hugging Face cache."""
    return (
        f"Or run `any2cap models fetch {target}` on a machine with network access: it puts "
        "the default model in the Hugging Face cache (HF_HOME/HF_HUB_CACHE), where the build "
        "finds it, also with HF_HUB_OFFLINE=1."
    )


def model_file(
    spec: str, what: str, setting: str, released: str | None = None, stage: str | None = None
) -> Path:
    """A single-file model (an ``.onnx`` graph): a local path, or a hub file
    ``owner/repo:file`` from the Hugging Face cache (see :func:`hub_cache_only`).

    A model that cannot be found is a :class:`MissingDependency` naming it and saying how to
    provide it: ``setting`` is where the stage is pointed at a file ("the stage's `detector`
    param"), ``released`` the hub file to fetch when a local path is missing, ``stage`` the
    name ``any2cap models fetch`` takes to get the default. Nothing weaker is ever substituted.
    """
    more = f" {fetch_hint(stage)}" if stage else ""

    def fetch(repo: str, name: str) -> str:
        return (
            f"On a machine with network access run `hf download {repo} {name} --local-dir "
            f"DIR`, copy DIR/{name} here and point {setting} at it."
        )

    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if path.is_file():
            return path
        hub = hub_file(released) if released else None
        hint = fetch(*hub) if hub else f"Point {setting} at an existing file."
        raise MissingDependency(f"{what} model file {spec} does not exist. {hint}{more}")
    hub = hub_file(spec)
    if hub is None:
        raise MissingDependency(
            f"{what} model {spec!r} is neither a local file nor a hub file "
            f"'owner/repo:file'; set {setting}."
        )
    repo, name = hub
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, name, local_files_only=hub_cache_only()))
    except Exception as e:  # offline, missing repo, auth: all mean "not here"
        first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise MissingDependency(
            f"{what} model {spec} is not available ({first}). {fetch(repo, name)}{more}"
        ) from e


def torch_device(stage: str, device: str, threads: int | None) -> tuple[Any, Any]:
    """(torch device, dtype) a torch stage runs with: ``cuda`` (fp16) when asked for or, with
    ``auto``, when the worker sees a GPU; else CPU (fp32) with ``threads`` set when given.
    ``cuda`` without a visible GPU is a MissingDependency, never a silent CPU run."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise MissingDependency(
            f"{stage}: device 'cuda' was asked for but this worker sees no CUDA GPU "
            "(give the stage num_gpus > 0, or use device: auto)"
        )
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if threads:
        torch.set_num_threads(threads)
    return torch.device("cuda" if use_cuda else "cpu"), torch.float16 if use_cuda else torch.float32


def files_digest(paths: Iterable[Path], *, with_names: bool = True) -> str:
    """A short sha256 of model files, recorded as the model's version in provenance when no
    hub revision names it: the files' contents, each preceded by its name unless
    ``with_names`` is off (a single ``.onnx`` file is known by its bytes alone)."""
    h = hashlib.sha256()
    for path in paths:
        if with_names:
            h.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
