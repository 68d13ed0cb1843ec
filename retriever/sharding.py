"""A sharded index on disk: an ordinary index directory whose top-level manifest (`shards.json`) names N shards,
each a complete index of the unsharded kind (DuckDB + FAISS + the lexical arm) in its own folder.

A document lives on shard ``shard_of(id, N)``: the first 8 bytes of the blake2b digest of its UTF-8 id, modulo N.
The hash is stable across processes, machines and Python versions (unlike ``hash()``), so an upsert or delete of
an id always lands on the shard that holds it. Chunks follow their document (they are made inside the shard).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .errors import IndexCorruptError, InputError
from .manifest import now
from .persistence import MANIFEST, fsync_dir, write_json_atomic

SHARDS = "shards.json"
SHARDS_FORMAT = "rag-retriever-shards"
SHARDS_VERSION = 1
HASH = "blake2b-64(id utf-8) mod shards"
MAX_SHARDS = 1024


def shard_of(doc_id: str, n: int) -> int:
    """The shard of a document id among `n` (stable everywhere)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def shard_dir_name(i: int) -> str:
    return f"shard-{i:04d}"


def is_sharded(path: str | Path) -> bool:
    return (Path(path) / SHARDS).is_file()


def check_shard_count(n: Any, what: str = "shards") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SHARDS:
        raise InputError(f"{what} = {n!r} must be a whole number from 1 to {MAX_SHARDS}, e.g. {what}=4")
    return n


def write_layout(root: Path, n: int) -> dict[str, Any]:
    """The top-level manifest of a new sharded index (written last by `create`, atomically)."""
    record = {"format": SHARDS_FORMAT, "version": SHARDS_VERSION, "shards": n, "hash": HASH,
              "dirs": [shard_dir_name(i) for i in range(n)], "created_at": now()}
    write_json_atomic(root / SHARDS, record)
    fsync_dir(root)
    return record


def read_layout(root: Path) -> dict[str, Any]:
    """The top-level manifest, checked: every shard folder it names holds an index."""
    import json

    path = root / SHARDS
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IndexCorruptError(f"{path} is unreadable ({e}); restore it from a backup: it names the shard folders "
                                f"{shard_dir_name(0)}...") from e
    if not isinstance(record, dict) or record.get("format") != SHARDS_FORMAT:
        raise IndexCorruptError(f"{path} is not a rag-retriever shard manifest (format {record.get('format')!r})")
    if record.get("version") != SHARDS_VERSION:
        raise IndexCorruptError(f"{path} has version {record.get('version')!r}; this release reads version "
                                f"{SHARDS_VERSION}: upgrade rag-retriever")
    n, dirs = record.get("shards"), record.get("dirs")
    if not isinstance(n, int) or not isinstance(dirs, list) or len(dirs) != n:
        raise IndexCorruptError(f"{path} names {n!r} shards but lists {dirs!r}")
    if record.get("hash") != HASH:
        raise IndexCorruptError(f"{path} routes ids by {record.get('hash')!r}; this release routes by {HASH!r}")
    missing = [d for d in dirs if not (root / d / MANIFEST).is_file()]
    if missing:
        raise IndexCorruptError(f"{root}: the shard folders {', '.join(missing)} named in {SHARDS} hold no index "
                                f"({MANIFEST} missing); restore them from a backup")
    return record
