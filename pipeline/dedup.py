"""Near-duplicate grouping over every clip of a run: the global step between the two phases.

Each clip carries K 64-bit perceptual hashes (``Record.phashes``, one per evenly spaced
frame). Two clips are near-duplicates when the hashes at *every* frame position are within
``max_distance`` bits of each other (the distance reported is the largest of the K).

Candidates come from multi-index hashing, not all pairs: the first hash of each clip is cut
into ``max_distance + 1`` chunks, and two hashes within ``max_distance`` bits agree exactly
on at least one chunk (pigeonhole). Clips are bucketed on each chunk and compared inside the
buckets only. With 64-bit hashes and ``max_distance`` 6 that is 7 chunks of 9-10 bits: on
100K random hashes about 200 clips a bucket, instead of 5e9 pairs.

Groups are formed greedily in keep order (longest, then sharpest, ..., then clip_id): the
best clip not yet placed keeps every unplaced clip within distance of it, so each dropped
clip is within ``max_distance`` of the clip it names. The result depends only on the set of
clips, not on the order rows arrive in, so Ray and the plain loop give the same groups.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from any2capins.pipeline.curation import NEAR_DUPLICATE, DedupConfig
from any2capins.schemas import FilterDecision, Record

HASH_BITS = 64
_BLOCK = 2048  # rows per block when comparing inside a large bucket (bounds memory)


@dataclass(frozen=True)
class DedupKey:
    """What the global step needs of one clip: small, so 100K of them fit the driver."""

    clip_id: str
    source_uri: str
    hashes: tuple[int, ...]
    duration_s: float
    sharpness: float | None
    pixels: int

    @classmethod
    def of(cls, record: Record) -> DedupKey | None:
        if not record.phashes:
            return None
        return cls(
            clip_id=record.clip_id,
            source_uri=record.clip.source_uri,
            hashes=tuple(int(h, 16) for h in record.phashes),
            duration_s=record.clip.duration_s,
            sharpness=record.scores.get("sharpness"),
            pixels=record.clip.width * record.clip.height,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "clip_id": self.clip_id,
            "source_uri": self.source_uri,
            "hashes": [f"{h:016x}" for h in self.hashes],
            "duration_s": self.duration_s,
            "sharpness": self.sharpness,
            "pixels": self.pixels,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DedupKey:
        return cls(
            clip_id=data["clip_id"],
            source_uri=data["source_uri"],
            hashes=tuple(int(h, 16) for h in data["hashes"]),
            duration_s=float(data["duration_s"]),
            sharpness=data["sharpness"],
            pixels=int(data["pixels"]),
        )


def hash_matrix(hashes: Sequence[Sequence[int]]) -> np.ndarray:
    """[N, K] uint64; clips with another count of hashes are resampled to the common K."""
    if not hashes:
        return np.zeros((0, 1), np.uint64)
    k = Counter(len(h) for h in hashes).most_common(1)[0][0]
    rows = []
    for h in hashes:
        if len(h) != k:
            picks = np.round(np.linspace(0, len(h) - 1, k)).astype(int)
            h = [h[i] for i in picks]
        rows.append(h)
    return np.array(rows, dtype=np.uint64).reshape(len(hashes), k)


def _popcount(x: np.ndarray) -> np.ndarray:
    counted: np.ndarray = np.bitwise_count(x)
    return counted


def chunks(max_distance: int) -> list[tuple[int, int]]:
    """(shift, mask) of ``max_distance + 1`` near-equal bit chunks covering 64 bits."""
    n = min(max_distance + 1, HASH_BITS)
    bounds = np.linspace(0, HASH_BITS, n + 1).round().astype(int)
    return [(int(lo), (1 << int(hi - lo)) - 1) for lo, hi in itertools.pairwise(bounds)]


def _pairs_in_bucket(members: np.ndarray, values: np.ndarray, max_distance: int) -> np.ndarray:
    """Pairs (i < j, as [M, 2] row indices) inside one bucket within ``max_distance``."""
    found = []
    for start in range(0, len(members), _BLOCK):
        block = values[start : start + _BLOCK]
        # compare the block with itself and everything after it: each pair once
        rest = values[start:]
        close = _popcount(block[:, None] ^ rest[None, :]) <= max_distance
        a, b = np.nonzero(close)
        b = b + start
        a = a + start
        keep = b > a
        found.append(np.stack([members[a[keep]], members[b[keep]]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def candidate_pairs(first: np.ndarray, max_distance: int) -> np.ndarray:
    """Every pair (i < j) whose hashes in ``first`` ([N] uint64) are within the distance,
    by bucketing on each chunk (multi-index hashing). [M, 2] int64, sorted, unique."""
    n = len(first)
    found: list[np.ndarray] = []
    for shift, mask in chunks(max_distance):
        values = (first >> np.uint64(shift)) & np.uint64(mask)
        order = np.argsort(values, kind="stable")
        ordered = values[order]
        cuts = np.flatnonzero(np.diff(ordered)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [n]])
        big = ends - starts > 1
        for s, e in zip(starts[big], ends[big], strict=True):
            members = np.sort(order[s:e])
            pairs = _pairs_in_bucket(members, first[members], max_distance)
            if len(pairs):
                found.append(pairs)
    if not found:
        return np.zeros((0, 2), np.int64)
    both = np.concatenate(found).astype(np.int64)
    codes = np.unique(both[:, 0] * n + both[:, 1])
    unique: np.ndarray = np.stack([codes // n, codes % n], axis=1)
    return unique


def pair_distances(matrix: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The largest per-frame Hamming distance of each pair."""
    if len(pairs) == 0:
        return np.zeros(0, np.int64)
    xor = matrix[pairs[:, 0]] ^ matrix[pairs[:, 1]]
    largest: np.ndarray = _popcount(xor).max(axis=1).astype(np.int64)
    return largest


def near_duplicate_pairs(matrix: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs within ``max_distance`` at every frame: candidates from the first frame's
    multi-index, then every frame checked. Returns (pairs [M, 2], distances [M])."""
    pairs = candidate_pairs(np.ascontiguousarray(matrix[:, 0]), max_distance)
    distances = pair_distances(matrix, pairs)
    keep = distances <= max_distance
    return pairs[keep], distances[keep]


def brute_force_pairs(matrix: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """The same answer by comparing all pairs (blockwise): the reference for tests."""
    n = len(matrix)
    found, dists = [], []
    for start in range(0, n, 256):
        block = matrix[start : start + 256]
        distance = _popcount(block[:, None, :] ^ matrix[None, :, :]).max(axis=2)
        a, b = np.nonzero(distance <= max_distance)
        a = a + start
        keep = b > a
        found.append(np.stack([a[keep], b[keep]], axis=1))
        dists.append(distance[a[keep] - start, b[keep]])
    if not found:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    return np.concatenate(found).astype(np.int64), np.concatenate(dists).astype(np.int64)


@dataclass(frozen=True)
class Group:
    keep: str
    duplicates: tuple[tuple[str, int], ...]  # (clip_id, distance to the kept clip)


def _priority(key: DedupKey, keep: Sequence[str]) -> tuple[Any, ...]:
    parts: list[Any] = []
    for rule in keep:
        if rule == "longest":
            parts.append(-round(key.duration_s, 3))
        elif rule == "sharpest":
            parts.append((key.sharpness is None, -(key.sharpness or 0.0)))
        elif rule == "largest":
            parts.append(-key.pixels)
    return (*parts, key.clip_id)


def group_clips(
    keys: Iterable[DedupKey], max_distance: int, keep: Sequence[str], *, brute_force: bool = False
) -> list[Group]:
    """Groups of near-duplicates (two clips or more), each with the clip that stays."""
    ordered = sorted(keys, key=lambda k: k.clip_id)
    matrix = hash_matrix([k.hashes for k in ordered])
    find = brute_force_pairs if brute_force else near_duplicate_pairs
    pairs, distances = find(matrix, max_distance)
    neighbours: dict[int, dict[int, int]] = {}
    for (a, b), d in zip(pairs.tolist(), distances.tolist(), strict=True):
        neighbours.setdefault(a, {})[b] = d
        neighbours.setdefault(b, {})[a] = d
    rank = sorted(neighbours, key=lambda i: _priority(ordered[i], keep))
    placed: set[int] = set()
    groups = []
    for i in rank:
        if i in placed:
            continue
        placed.add(i)
        members = sorted(
            ((ordered[j].clip_id, d) for j, d in neighbours[i].items() if j not in placed)
        )
        if not members:
            continue
        placed.update(j for j in neighbours[i] if j not in placed)
        groups.append(Group(ordered[i].clip_id, tuple(members)))
    return groups


def dedup_run(
    keys: Iterable[DedupKey], config: DedupConfig, stage: str, *, drop: bool = True
) -> tuple[dict[str, Any], dict[str, FilterDecision]]:
    """The global step: groups (what RUN_DIR/dedup_groups.json holds) and a filtered row per
    dropped clip (none when ``drop`` is False: score-only runs record the groups only)."""
    started = time.perf_counter()
    keys = list(keys)
    by_id = {k.clip_id: k for k in keys}
    groups = group_clips(keys, config.max_distance, config.keep)
    decisions: dict[str, FilterDecision] = {}
    if drop:
        for g in groups:
            for clip_id, distance in g.duplicates:
                decisions[clip_id] = FilterDecision(
                    clip_id=clip_id,
                    source_uri=by_id[clip_id].source_uri,
                    rule=f"{NEAR_DUPLICATE} of {g.keep}",
                    score="phash_distance",
                    value=float(distance),
                    threshold=f"<= {config.max_distance}",
                    stage=stage,
                )
    summary = {
        "stage": stage,
        "max_distance": config.max_distance,
        "keep": list(config.keep),
        "dropped": bool(drop),
        "clips": len(keys),
        "groups_count": len(groups),
        "duplicates": sum(len(g.duplicates) for g in groups),
        "seconds": round(time.perf_counter() - started, 4),
        "groups": [
            {
                "keep": g.keep,
                "source_uri": by_id[g.keep].source_uri,
                "duplicates": [
                    {"clip_id": c, "source_uri": by_id[c].source_uri, "distance": d}
                    for c, d in g.duplicates
                ],
            }
            for g in groups
        ],
    }
    return summary, decisions


__all__ = [
    "DedupKey",
    "Group",
    "brute_force_pairs",
    "candidate_pairs",
    "chunks",
    "dedup_run",
    "group_clips",
    "hash_matrix",
    "near_duplicate_pairs",
]
