"""Near-duplicate grouping at scale: multi-index hashing vs all pairs, on synthetic hashes.

Random 64-bit hashes (4 per clip, as the dedup_hash stage writes) with planted
near-duplicates: a tenth of the clips are copies of another clip with a few bits flipped per
hash (most within the distance, some just beyond it). The grouping is checked against brute
force on 2K clips; 10K and 100K are timed, with brute force timed at 10K and extrapolated
(quadratic) to 100K.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from any2capins.pipeline.dedup import DedupKey, brute_force_pairs, group_clips, near_duplicate_pairs

HASHES_PER_CLIP = 4


def synthetic_hashes(n: int, seed: int, max_distance: int, k: int = HASHES_PER_CLIP) -> np.ndarray:
    """[n, k] uint64: random hashes, then n // 10 planted copies of other rows, each hash
    with 0..max_distance bits flipped (four in five) or up to 3 bits more (one in five)."""
    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, 2**64, size=(n, k), dtype=np.uint64)
    for src, dst in rng.integers(0, n, size=(n // 10, 2)):
        row = matrix[src].copy()
        beyond = rng.random() < 0.2
        for c in range(k):
            flips = rng.integers(0, max_distance + 1) + (rng.integers(1, 4) if beyond else 0)
            for bit in rng.choice(64, size=flips, replace=False):
                row[c] ^= np.uint64(1) << np.uint64(int(bit))
        matrix[dst] = row
    return matrix


def keys_of(matrix: np.ndarray, seed: int = 0) -> list[DedupKey]:
    rng = np.random.default_rng(seed)
    durations = rng.integers(2, 20, size=len(matrix))
    return [
        DedupKey(f"clip-{i:06d}", "", tuple(int(h) for h in row), float(d), None, 1)
        for i, (row, d) in enumerate(zip(matrix, durations, strict=True))
    ]


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def run(max_distance: int = 6, sizes: tuple[int, ...] = (10_000, 100_000)) -> dict[str, Any]:
    check = synthetic_hashes(2000, seed=1, max_distance=max_distance)
    (fast, _), _ = _timed(near_duplicate_pairs, check, max_distance)
    (slow, _), _ = _timed(brute_force_pairs, check, max_distance)
    keys = keys_of(check)
    same_groups = group_clips(keys, max_distance, ["longest"]) == group_clips(
        keys, max_distance, ["longest"], brute_force=True
    )
    out: dict[str, Any] = {
        "max_distance": max_distance,
        "hashes_per_clip": HASHES_PER_CLIP,
        "check_2k": {
            "pairs": len(slow),
            "pairs_equal_brute_force": sorted(map(tuple, fast.tolist()))
            == sorted(map(tuple, slow.tolist())),
            "groups_equal_brute_force": same_groups,
        },
    }
    for n in sizes:
        matrix = synthetic_hashes(n, seed=n, max_distance=max_distance)
        keys = keys_of(matrix)
        (pairs, _), pair_s = _timed(near_duplicate_pairs, matrix, max_distance)
        groups, group_s = _timed(group_clips, keys, max_distance, ["longest", "sharpest"])
        entry = {
            "clips": n,
            "pairs": len(pairs),
            "groups": len(groups),
            "duplicates": sum(len(g.duplicates) for g in groups),
            "pairs_seconds": round(pair_s, 3),
            "group_seconds": round(group_s, 3),
        }
        if n <= 10_000:
            (_, _), brute_s = _timed(brute_force_pairs, matrix, max_distance)
            entry["brute_force_seconds"] = round(brute_s, 3)
        out[f"n{n}"] = entry
    brute_10k = out.get("n10000", {}).get("brute_force_seconds")
    if brute_10k:
        for n in sizes:
            entry = out[f"n{n}"]
            estimate = brute_10k * (n / 10_000) ** 2
            entry.setdefault("brute_force_seconds_estimated", round(estimate, 1))
            entry["ratio_multi_index_over_brute"] = round(
                entry["pairs_seconds"] / entry.get("brute_force_seconds", estimate), 4
            )
    return out


__all__ = ["keys_of", "run", "synthetic_hashes"]
