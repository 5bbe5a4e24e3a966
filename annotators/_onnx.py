"""onnxruntime sessions for single-image-input models (the DWPose detector and pose model):
opened once per worker, checked for an NCHW image input, run in the chunks the graph
accepts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from any2capins.annotators.base import MissingDependency


@dataclass
class OnnxModel:
    """An onnxruntime session with its single image input described."""

    session: object  # onnxruntime.InferenceSession (kept untyped: ort ships no stubs)
    input_name: str
    input_hw: tuple[int, int]
    fixed_batch: int | None  # None when the batch dimension is dynamic
    output_names: list[str]
    path: Path

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """[N, 3, H, W] float32 -> outputs, in chunks the model accepts."""
        if self.fixed_batch is None or images.shape[0] == self.fixed_batch:
            outs = self.session.run(self.output_names, {self.input_name: images})  # type: ignore[attr-defined]
            return [np.asarray(o) for o in outs]
        step = self.fixed_batch
        parts = [self.run(images[i : i + step]) for i in range(0, images.shape[0], step)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self.output_names))]

    def output_dims(self) -> list[list[int | str | None]]:
        return [list(o.shape) for o in self.session.get_outputs()]  # type: ignore[attr-defined]


def open_model(
    path: Path, providers: Sequence[str], threads: int | None, what: str, how: str = ""
) -> OnnxModel:
    """A session for ``path``; a file onnxruntime cannot load is a MissingDependency (a setup
    error, ``how`` says how to get the right one), a graph without one fixed-size 3-channel
    NCHW input a ValueError."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: shape-inference warnings flood worker logs
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as e:
        raise MissingDependency(
            f"{what} {path} cannot be loaded by onnxruntime ({type(e).__name__}: {e})"
            + (f"; {how}" if how else "")
        ) from e
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ValueError(f"{what} {path}: expected one NCHW image input, got {inputs}")
    n, c, h, w = inputs[0].shape
    if c != 3 or not isinstance(h, int) or not isinstance(w, int):
        raise ValueError(
            f"{what} {path}: expected a 3-channel input of fixed size, got {inputs[0].shape}"
        )
    return OnnxModel(
        session=session,
        input_name=inputs[0].name,
        input_hw=(h, w),
        fixed_batch=n if isinstance(n, int) and n > 0 else None,
        output_names=[o.name for o in session.get_outputs()],
        path=path,
    )


__all__ = ["OnnxModel", "open_model"]
