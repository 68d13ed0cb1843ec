"""Crash-safe files: write to a temporary file, fsync, rename, fsync the folder. The manifest goes last.

An index directory::

    index_dir/
      manifest.json           the pointer to the current generation and everything about it (written last)
      .lock                   held by the one writer process
      gen-000001/
        .readers              share-locked by every read-only process serving this generation
        store.duckdb          documents(vid, id, parent_id, text, metadata, vector), changelog, info
        vectors.faiss         the FAISS snapshot the manifest's checksum covers
        vectors.faiss.prev    the previous good snapshot
        lexical/              the tantivy BM25 index of the stored text (the manifest's `lexical` record)

Several read-only processes (servers) and one writer share a directory by generations: DuckDB lets a file be open
read-write by one process or read-only by many, never both. A writer that finds readers on the current generation
copies it to a new one and writes there; the manifest then points at the new generation and keeps the one readers
can open under ``stable``. Readers move over on reload once the writer has released it (on close or publish).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import IndexCorruptError, InputError, RetrieverError, WriterBusy

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORE = "store.duckdb"
SNAPSHOT = "vectors.faiss"
PREVIOUS = "vectors.faiss.prev"
READERS = ".readers"
# what a generation holds (the DuckDB write-ahead log exists after a writer died before checkpointing)
GENERATION_FILES = (STORE, f"{STORE}.wal", SNAPSHOT, PREVIOUS)


def generation_dir(root: Path, generation: int) -> Path:
    return root / f"gen-{generation:06d}"


def generation_number(path: Path) -> int | None:
    name = path.name
    if path.is_dir() and name.startswith("gen-") and name[4:].isdigit():
        return int(name[4:])
    return None


def generations(root: Path) -> list[int]:
    return sorted(n for n in map(generation_number, root.glob("gen-*")) if n is not None)


def copy_generation(root: Path, source: int, target: int) -> Path:
    """Copy a generation's files (no process may be writing `source`); fsynced before it is returned."""
    src, dst = generation_dir(root, source), generation_dir(root, target)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir()
    for name in GENERATION_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            with open(dst / name, "rb+") as f:
                os.fsync(f.fileno())
    from .lexical import copy_lexical

    copy_lexical(src, dst)
    fsync_dir(dst)
    fsync_dir(root)
    return dst


def has_readers(gdir: Path) -> bool:
    """True while some process holds a :class:`ReaderMark` on this generation."""
    try:
        fd = os.open(gdir / READERS, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock too
    return False


class ReaderMark:
    """A read-only process marks the generation it serves (a shared lock, dropped when the process dies), so a
    writer copies it instead of waiting, and nobody removes it while it is in use."""

    def __init__(self, gdir: Path):
        self.path = gdir / READERS
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:  # a read-only file system: nothing can write here either
            return
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
            raise WriterBusy(
                f"{self.path.parent} is open for writing in another process; close it there or open this one read-only"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
