"""Resume without touching every clip: the probe cache, the finished-clip index and the plan.

A re-run must find out what is left to do without probing every source and reading every
marker. Two logs in the run directory (:class:`any2capins.pipeline.partlog.PartLog`) make that one
read each:

* ``index/probe``: source key -> the source's probe (VideoInfo) and its clip spans. The key
  is the URI, the span asked for, the span settings, and the file's size and version
  (mtime on a file system, ETag or mtime on an object store), so a changed file is probed
  again. A source whose store reports no version is never cached.
* ``index/done``: clip id -> the build signature it finished under and its summary row
  (what the run report needs). The finalizer appends a batch's entries only after every
  record of that batch is written (atomically, fsync'd), so an entry here always has its
  record; a kill between the two costs one clip's re-assembly from markers, never a loss.

:func:`plan_resume` then splits the sources: those whose every clip is done under the
current signature become summary rows straight away (no Ray task, no file per clip), the
rest go to the engine with their cached probe. Failures are never "done": they are retried.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec

from any2capins.pipeline.recipe import ResolvedRecipe
from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import make_clip_id

# stat() of remote sources in parallel: each is one HEAD request
_STAT_THREADS = 32


def _version(info: dict[str, Any]) -> str | None:
    for name in (
        "ETag",
        "etag",
        "e_tag",
        "mtime",
        "LastModified",
        "Last-Modified",
        "last_modified",
        "created",
    ):
        value = info.get(name)
        if value not in (None, ""):
            return str(value)
    return None


def stat_source(uri: str) -> tuple[int, str] | None:
    """(size, version) of a source, or None when it cannot be told (missing, no version)."""
    try:
        if "://" not in uri or uri.startswith("file://"):
            st = os.stat(uri.removeprefix("file://"))
            return st.st_size, str(st.st_mtime_ns)
        fs, path = fsspec.core.url_to_fs(uri)
        info = fs.info(path)
    except Exception:  # noqa: BLE001 - unknown version: probe it, and the probe reports why
        return None
    version = _version(info)
    size = info.get("size")
    return None if version is None or size is None else (int(size), version)


def source_key(item: dict[str, Any], spans: dict[str, Any], stat: tuple[int, str]) -> str:
    """The probe cache key of one source item (see the module docstring)."""
    raw = json.dumps(
        [item["source_uri"], item["start_s"], item["end_s"], spans, stat[0], stat[1]],
        sort_keys=True,
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def build_signature(resolved: ResolvedRecipe) -> str:
    """What a finished clip must have been built with to be skipped whole: the recipe hash
    (it is in every record's provenance) and every stage's config hash."""
    raw = json.dumps(
        [
            resolved.recipe_hash,
            [(s.name, s.config_hash) for s in resolved.stages],
            sorted(resolved.left_out.items()),
        ]
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def done_entry(row: dict[str, Any], signature: str, stages: list[str]) -> str:
    """The done log's value for a finalized ok or filtered summary row."""
    ran = list(json.loads(row["stage_seconds"])) + json.loads(row["skipped"])
    return json.dumps(
        {
            "sig": signature,
            "source_uri": row["source_uri"],
            "stages": [s for s in stages if s in ran],
            "dataset": row["dataset"],
            "warnings": row["warnings"],
            "filtered": row.get("filtered") or "",
        }
    )


def _resumed_row(clip_id: str, entry: dict[str, Any]) -> dict[str, str]:
    return {
        "source_uri": entry["source_uri"],
        "clip_id": clip_id,
        "probe": "",
        "record": "",
        "failure": "",
        "stage_seconds": "{}",
        "skipped": json.dumps(entry["stages"]),
        "dataset": entry["dataset"],
        "warnings": entry["warnings"],
        "filtered": entry["filtered"],
        "source_key": "",
    }


@dataclass
class ResumePlan:
    """Sources split into finished (their summary rows) and still to run."""

    finished_rows: list[dict[str, str]] = field(default_factory=list)
    finished_sources: int = 0
    todo: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _stats(uris: list[str]) -> list[tuple[int, str] | None]:
    remote = sum(1 for u in uris if "://" in u and not u.startswith("file://"))
    if remote < 8:
        return [stat_source(u) for u in uris]
    with ThreadPoolExecutor(_STAT_THREADS) as pool:
        return list(pool.map(stat_source, uris))


def plan_resume(
    resolved: ResolvedRecipe,
    items: Iterable[dict[str, Any]],
    run_dir: RunDir,
    whole_clips: bool = True,
) -> ResumePlan:
    """Split ``items`` (SourceItem rows) by what the run directory already holds.

    Every item to run gets its ``source_key`` and, when the probe cache has it, its cached
    ``probe_cache`` entry. With ``whole_clips`` False (a recipe with a global step that needs
    every clip, near-duplicate removal) every source runs, still with its cached probe.
    """
    import time

    t0 = time.perf_counter()
    items = list(items)
    spans = resolved.recipe.spans.model_dump(mode="json")
    probes = run_dir.probe_log().load()
    done = run_dir.done_log().load() if whole_clips else {}
    signature = build_signature(resolved)
    plan = ResumePlan()
    for item, stat in zip(items, _stats([str(i["source_uri"]) for i in items]), strict=True):
        item = {**item, "source_key": "", "probe_cache": ""}
        if item.get("problem") or stat is None:
            plan.todo.append(item)
            continue
        key = source_key(item, spans, stat)
        item["source_key"] = key
        cached = probes.get(key)
        if cached is None:
            plan.todo.append(item)
            continue
        item["probe_cache"] = cached
        rows = []
        for start, end in json.loads(cached)["spans"]:
            entry_json = done.get(make_clip_id(str(item["source_uri"]), start, end))
            entry = json.loads(entry_json) if entry_json else None
            if entry is None or entry["sig"] != signature:
                break
            rows.append(_resumed_row(make_clip_id(str(item["source_uri"]), start, end), entry))
        else:
            plan.finished_rows.extend(rows)
            plan.finished_sources += 1
            continue
        plan.todo.append(item)
    plan.seconds = time.perf_counter() - t0
    return plan
