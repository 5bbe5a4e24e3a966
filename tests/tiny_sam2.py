"""Test-time stand-ins for the identities stage's models, so no test downloads anything.

- :func:`tiny_sam2`: a randomly initialised SAM 2 video model (~1.3 M parameters) from the
  real ``Sam2VideoConfig`` / ``Sam2HieraDetConfig`` classes at 128 px, saved with its
  ``Sam2VideoProcessor`` and loadable through ``from_pretrained`` like
  ``facebook/sam2.1-hiera-tiny``. Its masks are meaningless but real model outputs.
- :func:`tiny_coco_detector`: the DWPose YOLOX signature (1x3x640x640 -> 1x8400x85) from
  :mod:`tests.tiny_models`, with a COCO class per box so dogs and cups can be found too.
- :func:`tiny_grounding_dino`: a randomly initialised Grounding DINO (~0.4 M parameters; real
  ``GroundingDinoConfig`` with small Swin and BERT configs) with a word-level BERT tokenizer,
  loadable through ``AutoModelForZeroShotObjectDetection.from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from any2capins.annotators.identities.detector import COCO_CLASSES
from tests.tiny_models import _constant_graph, detector_output

Box = tuple[float, float, float, float]

SAM2_SIZE = 128


def save_sam2(model: Any, folder: Path, size: int) -> Path:
    """Save a SAM 2 video model with the video processor the stage loads, at ``size``."""
    from transformers import Sam2ImageProcessor, Sam2VideoProcessor, Sam2VideoVideoProcessor

    processor = Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(
            size={"height": size, "width": size},
            mask_size={"height": size // 4, "width": size // 4},
        ),
        video_processor=Sam2VideoVideoProcessor(size={"height": size, "width": size}),
        target_size=size,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_sam2(folder: Path, seed: int = 0, size: int = SAM2_SIZE) -> Path:
    """Save a tiny random SAM 2 (config.json, model.safetensors, processor_config.json).

    Constraints of the architecture that the sizes respect: the memory attention's
    cross-attention reads 64-channel memories (hard-wired), so ``memory_encoder_output_channels``
    stays 64; the object pointers are split into memory-sized chunks, so the FPN width is a
    multiple (2x) of it; a global-attention block may not be a pooling block.
    """
    import torch
    from transformers import (
        Sam2HieraDetConfig,
        Sam2VideoConfig,
        Sam2VideoModel,
        Sam2VisionConfig,
    )

    hidden = 128
    backbone = Sam2HieraDetConfig(
        hidden_size=16,
        num_attention_heads=1,
        image_size=[size, size],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
        fpn_hidden_size=hidden,
    )
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": hidden, "image_size": size, "patch_size": 16},
        mask_decoder_config={
            "hidden_size": hidden,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
        image_size=size,
        num_maskmem=3,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[size // 16, size // 16],
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
        max_object_pointers_in_encoder=4,
    )
    torch.manual_seed(seed)
    model = Sam2VideoModel(config)
    return save_sam2(model, folder, size)


def detector_rows(
    boxes: Sequence[Box], labels: Sequence[str], scores: Sequence[float] | None = None
) -> np.ndarray:
    """Raw YOLOX rows that decode to ``boxes`` (640x640 letterboxed input) of ``labels``."""
    rows = detector_output(boxes, scores)
    hit = np.flatnonzero(rows[:, 4] > 0)
    # detector_output writes rows in anchor order; match them back to the boxes by centre.
    for box, label in zip(boxes, labels, strict=True):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        offset = (640 // 8) ** 2 + (640 // 16) ** 2
        idx = offset + min(19, int(cy // 32)) * 20 + min(19, int(cx // 32))
        assert idx in hit
        rows[idx, 5:] = 0.0
        rows[idx, 5 + COCO_CLASSES.index(label)] = 1.0
    return rows


def tiny_coco_detector(
    path: Path,
    boxes: Sequence[Box],
    labels: Sequence[str],
    scores: Sequence[float] | None = None,
) -> Path:
    """A YOLOX-signature ONNX detector that always finds ``boxes`` as ``labels``."""
    return _constant_graph(
        path, (3, 640, 640), {"output": detector_rows(boxes, labels, scores)}, False, "tiny_yolox"
    )


GROUNDING_WORDS = ("a", "person", "dog", "ball", "juggling", "coffee", "pot", "cup", "the")


def tiny_grounding_dino(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random Grounding DINO with its processor (image processor + tokenizer).

    The decoder needs two layers: transformers ties the later box heads to the first one.
    """
    import torch
    from transformers import (  # type: ignore[attr-defined]  # lazily exported
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *GROUNDING_WORDS]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            image_size=64,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=4,
            out_indices=[2, 3, 4],  # type: ignore[call-arg]  # a backbone-mixin property
        ),
        text_config=BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        num_queries=20,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        d_model=32,
        max_text_len=32,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    GroundingDinoProcessor(  # type: ignore[no-untyped-call]
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=tokenizer,
    ).save_pretrained(folder)
    return folder
