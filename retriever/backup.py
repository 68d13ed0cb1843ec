"""Verified backups of an index: `take_backup` (a consistent copy, taken while the index is served and written),
`verify_backup` (every file against its checksum, without restoring) and `restore` (checked, copied beside the
target, verified as an index, then renamed into place).

A backup folder::

    DEST/
      backup.json         format, version, when, from where, the counts, and every file's size and sha256 (written
                          last, atomically: a folder without it is not a backup)
      index/              an index directory, but not one to open in place (a write would break its checksums):
        manifest.json     the index's manifest, as generation 1 (no hand-over to readers)
        gen-000001/       store.duckdb (checkpointed), vectors.faiss, vectors.faiss.prev, lexical/
      or, for a sharded index, index/shards.json and one such index per index/shard-NNNN/ folder.

Consistency: each index is copied by the process that writes it (`Generation.copy_to`), under its write lock
after a save and a DuckDB checkpoint, so the copy holds every write acknowledged before the backup began. Writes
wait while it copies; searches go on.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .errors import IndexCorruptError, InputError, RetrieverError, WriterBusy
from .lexical import LEXICAL
from .manifest import now
from .persistence import GENERATION_FILES, MANIFEST, fsync_dir, generation_dir, write_json_atomic
from .results import VerifyReport
from .sharding import SHARDS

BACKUP = "backup.json"
BACKUP_FORMAT = "rag-retriever-backup"
BACKUP_VERSION = 1
INDEX = "index"  # the folder inside a backup that holds the copied index
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BackupReport:
    dest: str
    files: int
    bytes: int
    documents: int
    seconds: float
    indexes: list[dict[str, Any]] = field(default_factory=list)  # per index: path, generation, seq, documents

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ copying
def copy_hashed(src: Path, dst: Path) -> dict[str, Any]:
    """Copy one file, fsynced, hashing the bytes as they are read: {bytes, sha256}."""
    h, n = hashlib.sha256(), 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(_CHUNK):
            h.update(block)
            fout.write(block)
            n += len(block)
        fout.flush()
        os.fsync(fout.fileno())
    return {"bytes": n, "sha256": h.hexdigest()}


def generation_files(gdir: Path) -> list[str]:
    """What makes a generation whole, relative to its folder: DuckDB (and its log, if a writer died before a
    checkpoint), both FAISS snapshots, and the lexical folder's files (not tantivy's lock files)."""
    names = [n for n in GENERATION_FILES if (gdir / n).is_file()]
    lex = gdir / LEXICAL
    if lex.is_dir():
        names += sorted(f"{LEXICAL}/{f.name}" for f in lex.iterdir() if f.is_file() and not f.name.endswith(".lock"))
    return names


def copy_generation_out(gdir: Path, manifest_dict: dict[str, Any], dest: Path) -> dict[str, dict]:
    """Copy the generation folder `gdir` into `dest` as a one-generation index (its manifest `manifest_dict`,
    renumbered 1, written there too). No process may write `gdir` meanwhile (the caller holds its write lock).
    Returns {relative path: {bytes, sha256}}."""
    files = {}
    target = generation_dir(dest, 1)
    for name in generation_files(gdir):
        files[f"{target.name}/{name}"] = copy_hashed(gdir / name, target / name)
    write_json_atomic(dest / MANIFEST, {**manifest_dict, "generation": 1})
    files[MANIFEST] = _file_record(dest / MANIFEST)
    return files


def _file_record(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _empty_target(path: Path, what: str, fix: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InputError(f"{what} {path} already exists and is not empty; {fix}")


def take_backup(source: Path, dest: str | os.PathLike, parts: list[tuple[str, Any]], *,
                layout: Path | None = None) -> BackupReport:
    """Back up the index at `source` into `dest` (which must not exist, or be an empty folder).

    `parts` are (folder inside the backup, an open writer with `copy_to(folder) -> record`): ("", the Retriever)
    for a plain index, ("shard-0000", shard 0's) ... for a sharded one, whose `layout` (shards.json) is copied too.
    Everything is written into a temporary folder beside `dest` and renamed into place after `backup.json`, so an
    interrupted backup leaves no folder that looks like one."""
    dest = Path(dest).absolute()
    src = Path(source).absolute()
    _empty_target(dest, "the backup destination", "pick a new folder (a backup never overwrites one)")
    if dest == src or src in dest.parents:
        raise InputError(f"the backup destination {dest} is inside the index {src}; put backups outside it")
    if not dest.parent.is_dir():
        raise InputError(f"the backup destination's folder {dest.parent} does not exist; create it first")
    t0 = time.perf_counter()
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / INDEX).mkdir(parents=True)
    try:
        files: dict[str, dict] = {}
        indexes = []
        for folder, writer in parts:
            record = writer.copy_to(str(tmp / INDEX / folder))
            files.update({f"{folder}/{k}" if folder else k: v for k, v in record.pop("files").items()})
            indexes.append({"path": folder or ".", **record})
        if layout is not None:
            files[SHARDS] = copy_hashed(layout, tmp / INDEX / SHARDS)
        body = {"format": BACKUP_FORMAT, "version": BACKUP_VERSION, "created_at": now(), "source": str(src),
                "rag_retriever": _version(), "sharded": layout is not None, "indexes": indexes,
                "documents": sum(i["documents"] for i in indexes), "files": dict(sorted(files.items()))}
        for d in sorted({(tmp / INDEX / rel).parent for rel in files}, key=lambda p: -len(p.parts)):
            fsync_dir(d)
        write_json_atomic(tmp / BACKUP, body)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BackupReport(dest=str(dest), files=len(files), bytes=sum(f["bytes"] for f in files.values()),
                        documents=body["documents"], seconds=round(time.perf_counter() - t0, 3), indexes=indexes)


def _version() -> str:
    try:
        return version("rag-retriever")
    except PackageNotFoundError:  # pragma: no cover - a source checkout without install
        return "unknown"


# ---------------------------------------------------------------------------------------------- checking
def is_backup(path: str | os.PathLike) -> bool:
    return (Path(path) / BACKUP).is_file()


def read_backup(dest: Path) -> dict[str, Any]:
    path = dest / BACKUP
    if not dest.is_dir():
        raise InputError(f"{dest} is not a folder; pass a backup folder made by `retriever backup DIR DEST`")
    if not path.is_file():
        raise InputError(f"{dest} has no {BACKUP}: it is not a backup (or its backup was interrupted); "
                         f"take one with `retriever backup DIR {dest}`")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IndexCorruptError(f"{path} is unreadable ({e}); this backup cannot be checked: take a new one") from None
    if not isinstance(body, dict) or body.get("format") != BACKUP_FORMAT or not isinstance(body.get("files"), dict):
        raise IndexCorruptError(f"{path} is not a rag-retriever backup manifest (format {body.get('format')!r} "
                                f"where {BACKUP_FORMAT!r} was expected); take a new backup")
    bad = [rel for rel in body["files"] if not isinstance(rel, str) or rel.startswith("/") or ".." in rel.split("/")]
    if bad:
        raise IndexCorruptError(f"{path} lists files outside the backup ({bad[0]!r}); it was not written by "
                                f"`retriever backup`: take a new one")
    if body.get("version") != BACKUP_VERSION:
        raise RetrieverError(f"{path} has backup version {body.get('version')!r}; this release reads version "
                             f"{BACKUP_VERSION}: use the rag-retriever release that wrote it")
    return body


def verify_backup(dest: str | os.PathLike) -> VerifyReport:
    """Check every file the backup lists (present, its size, its sha256) and that nothing unlisted sits among them;
    problems name the file. Nothing is written."""
    dest = Path(dest)
    body = read_backup(dest)
    problems, warnings = [], []
    checked = 0
    for rel, want in body["files"].items():
        path = dest / INDEX / rel
        if not path.is_file():
            problems.append(f"{path} is missing (the backup lists it)")
            continue
        got = _file_record(path)
        checked += 1
        if got["bytes"] != want.get("bytes"):
            problems.append(f"{path} has {got['bytes']} bytes where the backup recorded {want.get('bytes')}: it is "
                            f"truncated or changed")
        elif got["sha256"] != want.get("sha256"):
            problems.append(f"{path} does not match its checksum (sha256 {got['sha256'][:12]}... where the backup "
                            f"recorded {str(want.get('sha256'))[:12]}...): it is corrupt")
    listed = {dest / INDEX / rel for rel in body["files"]} | {dest / BACKUP}
    extra = sorted(str(p.relative_to(dest)) for p in dest.rglob("*")
                   if p.is_file() and p not in listed and p.name not in (".readers", ".lock"))
    if extra:
        warnings.append(f"files the backup does not list (ignored by restore): {', '.join(extra[:5])}"
                        + (" ..." if len(extra) > 5 else ""))
    checks = {"files": len(body["files"]), "checked": checked, "documents": body.get("documents"),
              "created_at": body.get("created_at"), "source": body.get("source"), "sharded": body.get("sharded")}
    return VerifyReport(ok=not problems, problems=tuple(problems), checks=checks, warnings=tuple(warnings))


# --------------------------------------------------------------------------------------------- restoring
def restore_backup(dest: str | os.PathLike, target: str | os.PathLike, *, force: bool = False) -> dict[str, Any]:
    """Restore the backup `dest` into the index folder `target`.

    The backup is checked first (nothing is written when a file is wrong). A non-empty `target` is refused unless
    `force`, and always while a process writes it. The files are copied into a folder beside `target`, checked
    again, opened read-only as an index and verified (FAISS, the lexical arm and the ids against DuckDB); only then
    is `target` replaced, by a rename. Returns what was restored."""
    dest, target = Path(dest).absolute(), Path(target).absolute()
    report = verify_backup(dest)
    if not report.ok:
        raise IndexCorruptError(f"the backup {dest} failed its check, nothing was restored: "
                                + "; ".join(report.problems))
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} is a file; restore into a folder")
    if not force:
        _empty_target(target, "the restore target", "pass --force (restore(..., force=True)) to replace it")
    _refuse_if_written(target)
    if not target.parent.is_dir():
        raise InputError(f"the restore target's folder {target.parent} does not exist; create it first")
    t0 = time.perf_counter()
    body = read_backup(dest)
    tmp = target.parent / f".{target.name}.restore-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for rel, want in body["files"].items():
            got = copy_hashed(dest / INDEX / rel, tmp / rel)
            if got["sha256"] != want["sha256"]:
                raise IndexCorruptError(f"{dest / INDEX / rel} changed while it was restored; nothing was restored")
        for d in sorted({(tmp / rel).parent for rel in body["files"]}, key=lambda p: -len(p.parts)):
            fsync_dir(d)
        verified = _verify_index(tmp)
        if not verified.ok:
            raise IndexCorruptError(f"the restored index failed verification, nothing was replaced: "
                                    + "; ".join(verified.problems))
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"restored": str(target), "from": str(dest), "documents": body.get("documents"),
            "files": len(body["files"]), "created_at": body.get("created_at"), "verify": verified.checks,
            "seconds": round(time.perf_counter() - t0, 3)}


def _verify_index(path: Path) -> VerifyReport:
    from .retriever import Retriever

    with Retriever.open(path, read_only=True) as r:
        return r.verify(check_model=False)


def _refuse_if_written(target: Path) -> None:
    """A folder some process holds the writer lock of (a server, an ingest) is never replaced."""
    from .persistence import WriterLock

    locks = [target / ".lock", *target.glob("shard-*/.lock")] if target.is_dir() else []
    for lock_file in (f for f in locks if f.is_file()):
        lock = WriterLock(lock_file.parent)
        try:
            lock.acquire()
        except WriterBusy:
            raise WriterBusy(f"{lock_file.parent} is open for writing in another process (a server or an ingest); "
                             f"stop it before restoring over it") from None
        lock.release()
