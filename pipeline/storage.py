"""Atomic file storage on a local folder or any fsspec URI, and the artifact store built on it.

Every file the pipeline writes goes through :meth:`Storage.write_atomic`: on a local disk a
temporary file in the same folder, fsync, then rename; on object stores a single PUT, which
is atomic there. A reader therefore sees a whole file or none, whatever kills the writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from any2capins.schemas import PayloadRef


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


class StorageBusy(RuntimeError):
    """Another process holds the folder (see :meth:`Storage.exclusive`)."""


class Storage:
    """A root folder (local path or fsspec URI) with atomic writes and simple listing."""

    def __init__(self, root: str) -> None:
        if _is_local(root):
            root = os.path.abspath(root.removeprefix("file://"))
        self.root = root.rstrip("/")
        self.fs, self._fs_root = fsspec.core.url_to_fs(self.root)
        self.local = isinstance(self.fs, LocalFileSystem)

    def uri(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    @contextlib.contextmanager
    def exclusive(self, busy: str) -> Iterator[None]:
        """Hold the folder for one writer at a time, and sweep what a killed writer left.

        On a local disk this is an flock on ``ROOT/.lock``, which the kernel releases when
        its holder dies, even by SIGKILL; with the lock held, any temporary file left over
        belongs to a writer that was killed mid-write and is deleted. Object stores have no
        such lock (and no temporaries: a write is one PUT), so there one writer per folder
        is the user's promise. ``busy`` is the message of :class:`StorageBusy`.
        """
        if not self.local:
            yield
            return
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, ".lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise StorageBusy(busy) from e
            for folder, _, files in os.walk(self.root):
                for name in files:
                    if name.startswith(".tmp-"):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(folder, name))
            yield

    def _path(self, rel: str) -> str:
        return posixpath.join(self._fs_root, rel)

    def write_atomic(self, rel: str, data: bytes) -> None:
        path = self._path(rel)
        if self.local:
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        else:
            self.fs.pipe_file(path, data)

    def read(self, rel: str) -> bytes:
        if self.local:  # plain open: fsspec's per-call overhead dominates small reads
            with open(self._path(rel), "rb") as f:
                return f.read()
        data: bytes = self.fs.cat_file(self._path(rel))
        return data

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self._path(rel)))

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(rel))

    def open(self, rel: str, mode: str = "rb") -> Any:
        return self.fs.open(self._path(rel), mode)

    def files(self, suffix: str = "") -> Iterator[str]:
        """Relative paths of every finished file below the root; temporaries are hidden."""
        root = self._path("").rstrip("/")
        try:
            found = self.fs.find(root)
        except FileNotFoundError:
            return
        for path in sorted(str(p) for p in found):
            rel = path[len(root) + 1 :]
            if rel.endswith(suffix) and not posixpath.basename(rel).startswith(".tmp-"):
                yield rel

    def list(self, rel_dir: str, suffix: str = "") -> Iterator[str]:
        """Names (not paths) of the finished files in a folder; temporaries are hidden."""
        path = self._path(rel_dir)
        try:
            # a local folder of many files lists an order of magnitude faster without fsspec
            entries = os.listdir(path) if self.local else self.fs.ls(path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in sorted(entries):
            name = posixpath.basename(str(entry).rstrip("/"))
            if name.startswith(".tmp-") or not name.endswith(suffix):
                continue
            yield name


class ArtifactStore:
    """Per-clip payload files: ``ROOT/<clip_id>/<stage>/<name>``."""

    def __init__(self, root: str) -> None:
        self.storage = Storage(root)

    def put(self, clip_id: str, stage: str, name: str, data: bytes, media_type: str) -> PayloadRef:
        if "/" in name or name.startswith("."):
            raise ValueError(f"artifact names are plain file names, got {name!r}")
        rel = f"{clip_id}/{stage}/{name}"
        self.storage.write_atomic(rel, data)
        return PayloadRef(
            uri=self.storage.uri(rel),
            media_type=media_type,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def sink(self, clip_id: str, stage: str) -> ClipArtifacts:
        return ClipArtifacts(self, clip_id, stage)


class ClipArtifacts:
    """The :class:`any2capins.annotators.ArtifactSink` handed to an annotator for one clip."""

    def __init__(self, store: ArtifactStore, clip_id: str, stage: str) -> None:
        self.store, self.clip_id, self.stage = store, clip_id, stage

    def put(self, name: str, data: bytes, media_type: str) -> PayloadRef:
        return self.store.put(self.clip_id, self.stage, name, data, media_type)


def read_payload(ref: PayloadRef, verify: bool = True) -> bytes:
    """Bytes of a payload file, checked against its recorded sha256."""
    data: bytes
    if "://" not in ref.uri or ref.uri.startswith("file://"):
        # a local file: plain open (fsspec's URL parsing costs more than a small read)
        with open(ref.uri.removeprefix("file://"), "rb") as f:
            data = f.read()
    else:
        with fsspec.open(ref.uri, "rb") as f:
            data = f.read()
    if verify and hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ValueError(f"payload {ref.uri} does not match its sha256")
    return data


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]
