"""A per-build, per-node cache of fetched remote sources: one download per source, not per stage.

The probe and every stage need a local file to decode. A remote source (s3://, http(s)://,
memory://, ...) used to be downloaded by each of them and deleted after. Now the first use
on a node downloads it into ``<tmp>/any2cap-fetch/<run_id>/<key>`` (atomically: a temporary
file, then rename, so a concurrent actor sees the whole file or fetches its own copy) and
later uses on that node read the same file. The key is the probe cache's source key (URI +
size + version), so a source changed mid-build is fetched again.

Bounded: once the folder passes ``ANY2CAP_FETCH_CACHE_GB`` (default 20) the least recently
used files are evicted. The driver removes its node's folder when the build ends; on a
cluster, other nodes' folders are removed by the next build that starts there (any folder
of a run not touched for a day) — the OS temp cleaner gets the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from any2capins.pipeline.video import local_video

ROOT_NAME = "any2cap-fetch"
STALE_S = 24 * 3600


def _limit_bytes() -> int:
    try:
        return int(float(os.environ.get("ANY2CAP_FETCH_CACHE_GB", "20")) * 2**30)
    except ValueError:
        return 20 * 2**30


def cache_dir(run_id: str) -> str:
    return os.path.join(tempfile.gettempdir(), ROOT_NAME, run_id)


def is_remote(uri: str) -> bool:
    return "://" in uri and urlparse(uri).scheme not in ("file", "local")


@contextlib.contextmanager
def fetched(uri: str, key: str, folder: str | None) -> Iterator[str]:
    """A local path for ``uri``: as it is when local, else the node's cached copy.

    ``key`` is the source key when its version is known; else the URI alone, which the
    per-build folder makes safe enough (a source rewritten mid-build is not noticed). Without
    a ``folder`` this is :func:`any2capins.pipeline.video.local_video` (a temporary copy deleted after
    the block)."""
    key = key or uri
    if not is_remote(uri) or not folder:
        with local_video(uri) as path:
            yield path
        return
    suffix = Path(urlparse(uri).path).suffix[:16]
    name = hashlib.sha256(key.encode()).hexdigest()[:32] + suffix
    path = os.path.join(folder, name)
    if os.path.exists(path):
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the last to be evicted
    else:
        with local_video(uri, cache_dir=folder) as tmp:
            # local_video deletes its temporary after the block; renamed, it is ours
            os.replace(tmp, path)
        _evict(folder, keep=path)
    yield path


def _evict(folder: str, keep: str) -> None:
    try:
        entries = [
            e
            for e in os.scandir(folder)
            # "any2cap-*" are other actors' downloads in progress (pipeline.video._fetch)
            if e.is_file() and e.path != keep and not e.name.startswith("any2cap-")
        ]
        sizes = {e.path: e.stat() for e in entries}
    except OSError:
        return
    total = sum(st.st_size for st in sizes.values()) + os.path.getsize(keep)
    limit = _limit_bytes()
    for path, st in sorted(sizes.items(), key=lambda kv: kv[1].st_mtime):
        if total <= limit:
            break
        # an open file stays readable after unlink (POSIX): a reader mid-decode is safe
        with contextlib.suppress(OSError):
            os.unlink(path)
            total -= st.st_size


def cleanup(run_id: str) -> None:
    """Remove this build's folder on this node, and any run's folder idle for a day."""
    shutil.rmtree(cache_dir(run_id), ignore_errors=True)
    root = os.path.join(tempfile.gettempdir(), ROOT_NAME)
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            if entry.is_dir() and time.time() - entry.stat().st_mtime > STALE_S:
                shutil.rmtree(entry.path, ignore_errors=True)
