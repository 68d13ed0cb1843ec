"""Crash-safe files: write to a temporary file, fsync, rename, fsync the folder. The manifest goes last.

An index directory::

    index_dir/
      manifest.json           the pointer to the current generation and everything about it (written last)
      .lock                   held by the one writer process
      gen-000001/
        store.duckdb          documents(vid, id, parent_id, text, metadata, vector), changelog, info
        vectors.faiss         the FAISS snapshot the manifest's checksum covers
        vectors.faiss.prev    the previous good snapshot
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from .errors import IndexCorruptError, InputError, RetrieverError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORE = "store.duckdb"
SNAPSHOT = "vectors.faiss"
PREVIOUS = "vectors.faiss.prev"


def generation_dir(root: Path, generation: int) -> Path:
    return root / f"gen-{generation:06d}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not root.is_dir():
        raise InputError(f"{root} is not a directory; pass an index directory made by `retriever ingest` or Retriever.create")
    if not path.is_file():
        raise InputError(f"{root} has no {MANIFEST}; it is not a rag-retriever index (create one with `retriever ingest`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise IndexCorruptError(f"{path} is unreadable ({e}); restore it from a backup") from None
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise RetrieverError(
            f"{path}: format_version {version!r} is not supported by this rag-retriever (it reads {FORMAT_VERSION}); "
            "upgrade or downgrade rag-retriever to the version that wrote it"
        )
    return data


class WriterLock:
    """One writer per index directory (an advisory lock on ``.lock``, released when the process dies)."""

    def __init__(self, root: Path):
        self.path = root / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RetrieverError(
                f"{self.path.parent} is open for writing in another process; close it there or open this one read-only"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
