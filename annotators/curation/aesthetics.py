"""The ``aesthetics`` score: the LAION aesthetic predictor ("improved aesthetic predictor",
sac+logos+ava1-l14-linearMSE) on sampled frames.

Each frame is embedded with CLIP ViT-L/14 (transformers ``CLIPVisionModelWithProjection``,
the projected image embedding that OpenAI CLIP's ``encode_image`` returns), the embedding is
L2-normalised, and the predictor's MLP head (five linear layers, dropout between them, no
activations) maps it to a rating on the AVA 1-10 scale. The clip's score is the mean over
its frames.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import numpy as np
from pydantic import Field, model_validator

from any2capins.annotators._models import (
    fetch_hint,
    files_digest,
    hub_cache_only,
    hub_file,
    looks_like_path,
    model_folder_problem,
    torch_device,
)
from any2capins.annotators._models import model_file as find_model_file
from any2capins.annotators.base import (
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    MissingDependency,
    Resources,
)
from any2capins.annotators.curation._common import ScoreAnnotator, check_frames
from any2capins.annotators.model_catalog import (
    DEFAULT_AESTHETIC_HEAD,
    DEFAULT_CLIP_MODEL,
    ENV_AESTHETIC_HEAD,
    ENV_CLIP_MODEL,
)
from any2capins.schemas import ModelInfo

if TYPE_CHECKING:
    import torch

AESTHETIC_SCORES: tuple[str, ...] = ("aesthetic",)
STAGE = "aesthetics"

KNOWN_LICENSES: dict[str, str] = {
    DEFAULT_CLIP_MODEL: "MIT",
    "openai/clip-vit-base-patch32": "MIT",
    "openai/clip-vit-base-patch16": "MIT",
    # the upstream repository (christophschuhmann/improved-aesthetic-predictor) is Apache-2.0
    DEFAULT_AESTHETIC_HEAD: "Apache-2.0",
}

# The published head: nn.Sequential of Linear(768, 1024), Dropout, Linear(1024, 128), Dropout,
# Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1), saved as a state dict under
# ``layers.<index>``. The indices of its linear layers; the sizes are read from the weights.
HEAD_LINEAR_INDICES: tuple[int, ...] = (0, 2, 4, 6, 7)
HEAD_DROPOUTS: dict[int, float] = {1: 0.2, 3: 0.2, 5: 0.1}


class AestheticsConfig(AnnotatorConfig):
    clip_model: str = Field(
        default=DEFAULT_CLIP_MODEL,
        description=f"CLIP hub id or local folder; the env var {ENV_CLIP_MODEL} overrides it",
    )
    head: str = Field(
        default=DEFAULT_AESTHETIC_HEAD,
        description="aesthetic MLP head: a local .pth/.safetensors state dict or a hub file "
        f"'owner/repo:file'; the env var {ENV_AESTHETIC_HEAD} overrides it",
    )
    clip_license: str | None = Field(default=None, description="recorded in provenance")
    head_license: str | None = Field(default=None, description="recorded in provenance")
    model_batch_size: int = Field(default=16, ge=1, description="frames per forward pass")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when the stage's worker sees a GPU"
    )
    threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads of this worker (default: torch's)"
    )

    @model_validator(mode="before")
    @classmethod
    def _env_override(cls, data: Any) -> Any:
        # Applied when the recipe is resolved (on the driver), so the models actually used
        # are part of the stage's config hash and travel to every worker.
        if not isinstance(data, dict):
            return data
        for env, key in ((ENV_CLIP_MODEL, "clip_model"), (ENV_AESTHETIC_HEAD, "head")):
            value = os.environ.get(env)
            if value:
                data = {**data, key: value}
        return data


def _license(ref: str, override: str | None) -> str:
    return override or KNOWN_LICENSES.get(ref, "unknown")


def _clip_missing(model: str, reason: str) -> MissingDependency:
    hub_id = model if not looks_like_path(model) else DEFAULT_CLIP_MODEL
    return MissingDependency(
        f"aesthetics: CLIP model {model!r} is not available ({reason.splitlines()[0][:300]}). "
        f"On a machine with internet access run `hf download {hub_id} --local-dir DIR`, copy "
        f"DIR here and point the stage at it (params.clip_model or {ENV_CLIP_MODEL}=DIR); DIR "
        "must hold config.json, preprocessor_config.json and the weights. " + fetch_hint(STAGE)
    )


def _head_missing(head: str, reason: str) -> MissingDependency:
    return MissingDependency(
        f"aesthetics: aesthetic predictor head {head!r} is not available ({reason}). On a "
        "machine with internet access run `hf download trl-lib/ddpo-aesthetic-predictor "
        f"aesthetic-model.pth --local-dir DIR`, copy the file here and set "
        f"{ENV_AESTHETIC_HEAD}=DIR/aesthetic-model.pth (or params.head). " + fetch_hint(STAGE)
    )


def locate_clip(model: str) -> tuple[str, bool]:
    """(what ``from_pretrained`` gets, whether it is a local folder)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path), True
    if looks_like_path(model) or path.exists():
        raise _clip_missing(model, f"no model folder at {path}")
    return model, False


def check_head(head: str) -> None:
    """MissingDependency unless the head file is there (a local file, or a hub file in the
    Hugging Face cache); nothing is read or downloaded."""
    if looks_like_path(head) or hub_file(head) is None:
        path = Path(head).expanduser()
        if not path.is_file():
            raise _head_missing(head, f"no such file {path}")
        return
    if not hub_cache_only():
        return
    from huggingface_hub import try_to_load_from_cache

    repo, name = cast(tuple[str, str], hub_file(head))
    if not isinstance(try_to_load_from_cache(repo, name), str):
        raise _head_missing(head, "not in the Hugging Face cache, and builds do not download")


def load_head_state(path: Path) -> dict[str, torch.Tensor]:
    """The head's state dict from a torch file (tensors only) or a safetensors file."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise MissingDependency(f"aesthetics: {path} does not hold a state dict")
    return {str(k): v for k, v in state.items()}


def build_head(state: dict[str, torch.Tensor]) -> torch.nn.Sequential:
    """The predictor's MLP with the sizes its weights have, weights loaded (strict)."""
    import torch

    expected = {f"layers.{i}.{p}" for i in HEAD_LINEAR_INDICES for p in ("weight", "bias")}
    if set(state) != expected:
        raise MissingDependency(
            "aesthetics: the head's state dict has keys "
            f"{sorted(state)[:12]}; the LAION aesthetic predictor's are {sorted(expected)}"
        )
    layers: list[torch.nn.Module] = []
    for i in range(max(HEAD_LINEAR_INDICES) + 1):
        if i in HEAD_LINEAR_INDICES:
            out_f, in_f = state[f"layers.{i}.weight"].shape
            layers.append(torch.nn.Linear(int(in_f), int(out_f)))
        else:
            layers.append(torch.nn.Dropout(HEAD_DROPOUTS.get(i, 0.0)))
    head = torch.nn.Sequential()
    head.add_module("layers", torch.nn.Sequential(*layers))
    if int(state[f"layers.{HEAD_LINEAR_INDICES[-1]}.weight"].shape[0]) != 1:
        raise MissingDependency("aesthetics: the head's last layer does not output one rating")
    head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return head.eval()


class AestheticsAnnotator(ScoreAnnotator):
    """``aesthetic``: LAION aesthetic predictor rating (1-10 scale), mean over the frames."""

    name: ClassVar[str] = STAGE
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = AestheticsConfig
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    score_names: ClassVar[tuple[str, ...]] = AESTHETIC_SCORES
    # CLIP resizes the shorter side to 224: 448 keeps a 16:9 frame's detail for it.
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=4, max_side=448)
    # CPU by default so a recipe runs anywhere; give num_gpus (e.g. 0.25) to use a GPU.
    default_resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=4)

    config: AestheticsConfig

    @classmethod
    def preflight(cls, config: AnnotatorConfig) -> None:
        cls.check_requires()
        cfg = cast(AestheticsConfig, config)
        source, local = locate_clip(cfg.clip_model)
        problem = model_folder_problem(source, local=local)
        if problem is not None:
            raise _clip_missing(cfg.clip_model, problem)
        check_head(cfg.head)

    def setup(self) -> None:
        import torch
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            CLIPConfig,
            CLIPVisionConfig,
            CLIPVisionModelWithProjection,
        )
        from transformers.utils import logging as transformers_logging

        cfg = self.config
        self.device, self.dtype = torch_device("aesthetics", cfg.device, cfg.threads)
        source, local = locate_clip(cfg.clip_model)
        local_only = local or hub_cache_only()
        try:
            self.processor = AutoImageProcessor.from_pretrained(  # type: ignore[no-untyped-call]
                source, local_files_only=local_only
            )
            full = AutoConfig.from_pretrained(source, local_files_only=local_only)
            if isinstance(full, CLIPConfig):
                # A whole CLIP checkpoint (as published): keep its vision tower and projection.
                vision = cast(CLIPVisionConfig, full.vision_config)
                vision.projection_dim = full.projection_dim or vision.projection_dim
            elif isinstance(full, CLIPVisionConfig):
                vision = full
            else:
                raise MissingDependency(
                    f"aesthetics: {cfg.clip_model!r} is a {type(full).__name__}, not a CLIP "
                    f"model; the predictor was trained on {DEFAULT_CLIP_MODEL} embeddings"
                )
            # The published checkpoint is a whole CLIPModel: loading its vision tower alone
            # leaves the text tower's weights unused, which transformers reports as a long
            # "UNEXPECTED keys" table on every actor start. Expected here, so not shown.
            verbosity = transformers_logging.get_verbosity()
            transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
            try:
                model = CLIPVisionModelWithProjection.from_pretrained(
                    source, config=vision, local_files_only=local_only, dtype=self.dtype
                )
            finally:
                transformers_logging.set_verbosity(verbosity)
        except (OSError, ValueError) as e:
            raise _clip_missing(cfg.clip_model, str(e)) from e
        self.model = cast(Any, model).to(self.device).eval()
        head_path = find_model_file(
            cfg.head,
            "aesthetics: aesthetic predictor head",
            f"{ENV_AESTHETIC_HEAD} (or params.head)",
            released=DEFAULT_AESTHETIC_HEAD,
            stage=STAGE,
        )
        head = build_head(load_head_state(head_path))
        in_features = cast(torch.nn.Linear, head.layers[0]).in_features  # type: ignore[index]
        if in_features != vision.projection_dim:
            raise MissingDependency(
                f"aesthetics: the head takes {in_features}-d embeddings but CLIP "
                f"{cfg.clip_model!r} gives {vision.projection_dim}-d ones; pair the head with "
                "the CLIP model it was trained on"
            )
        self.head = head.to(self.device)
        self._models = [
            ModelInfo(
                model_id=cfg.clip_model,
                version=self._clip_version(source, local),
                license=_license(cfg.clip_model, cfg.clip_license),
            ),
            ModelInfo(
                model_id=cfg.head,
                version=f"sha256 {files_digest([head_path])}",
                license=_license(cfg.head, cfg.head_license),
            ),
        ]

    @staticmethod
    def _clip_version(source: str, local: bool) -> str:
        if local:
            folder = Path(source)
            files = sorted(
                p
                for p in folder.iterdir()
                if p.suffix in (".safetensors", ".bin") or p.name == "config.json"
            )
            return files_digest(files)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
        # .../snapshots/<commit>/config.json
        return Path(cached).parent.name if isinstance(cached, str) else ""

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    def rate(self, frames: list[np.ndarray]) -> np.ndarray:
        """RGB frames (any sizes) -> the predictor's rating of each, float64 [N]."""
        import torch

        ratings: list[np.ndarray] = []
        bs = self.config.model_batch_size
        for i in range(0, len(frames), bs):
            inputs = self.processor(images=frames[i : i + bs], return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, self.dtype)
            with torch.inference_mode():
                embeds = self.model(pixel_values=pixels).image_embeds.float()
                embeds = embeds / embeds.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                rating = self.head(embeds).squeeze(-1)
            ratings.append(rating.cpu().numpy().astype(np.float64))
        return np.concatenate(ratings) if ratings else np.zeros(0)

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        # One forward pass over the frames of every clip in the batch.
        frames: list[np.ndarray] = []
        owner: list[int] = []
        bad: dict[int, BaseException] = {}
        for k, item in enumerate(batch):
            try:
                check_frames(item.frames)
            except ValueError as e:
                bad[k] = e
                continue
            frames.extend(item.frames)
            owner.extend([k] * item.frames.shape[0])
        ratings = self.rate(frames)
        where = np.asarray(owner)
        out: list[dict[str, Any] | BaseException] = []
        for k in range(len(batch)):
            if k in bad:
                out.append(bad[k])
                continue
            mine = ratings[where == k]
            details = {
                "frames": str(len(mine)),
                "frame_ratings": ", ".join(f"{r:.3f}" for r in mine),
            }
            try:
                out.append(self.output({"aesthetic": round(float(mine.mean()), 4)}, details))
            except ValueError as e:
                out.append(e)
        return out


__all__ = [
    "AESTHETIC_SCORES",
    "AestheticsAnnotator",
    "AestheticsConfig",
    "build_head",
    "check_head",
    "load_head_state",
]
