"""Where a stage's models come from, shared by the model stages: the Hugging Face offline
switch, and a cheap check that a transformers model folder or hub id can be loaded here,
made before a build starts without loading anything (see ``Annotator.preflight``)."""

from __future__ import annotations

import os
from pathlib import Path


def hf_offline() -> bool:
    """HF_HUB_OFFLINE as set now: huggingface_hub reads it once at import, and an offline
    machine without it would retry the hub for ~20 s before failing."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def model_folder_problem(ref: str, local: bool) -> str | None:
    """Why ``from_pretrained(ref)`` would fail here, judged without loading; None when it
    looks loadable. A local folder must hold config.json; a hub id must be in the Hugging
    Face cache when HF_HUB_OFFLINE is set (online it downloads on first use)."""
    if local:
        folder = Path(ref).expanduser()
        if not folder.is_dir():
            return f"no such folder {folder}"
        if not (folder / "config.json").is_file():
            return f"{folder} holds no config.json"
        return None
    if not hf_offline():
        return None
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return None
    return "not in the Hugging Face cache, and HF_HUB_OFFLINE is set"
