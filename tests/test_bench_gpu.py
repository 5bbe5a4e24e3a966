"""bench/gpu.py on a machine without CUDA: the full-size configs match the published models'
parameter counts (built on the meta device, never run), and the benchmark skips."""

from __future__ import annotations

import pytest

from bench import gpu
from bench.__main__ import Skip


def test_depth_anything_v2_small_size() -> None:
    count = gpu.depth_param_count()
    assert count == pytest.approx(gpu.DEPTH_V2_SMALL_PARAMS, rel=0.05)


def test_sam21_hiera_tiny_size() -> None:
    count = gpu.sam2_param_count()
    assert count == pytest.approx(gpu.SAM21_HIERA_TINY_PARAMS, rel=0.05)


def test_skips_without_cuda() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the skip path is not taken")
    with pytest.raises(Skip, match="no CUDA GPU"):
        gpu.run()
