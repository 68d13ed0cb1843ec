"""`Manifest`: the typed view of ``manifest.json``, the pointer to an index's current generation and everything
about it. It reads and writes the same JSON as before it was typed (keys, nesting and values), so every index
directory opens in both directions; keys it does not know are kept as they are.

A manifest is immutable: a change is ``m.replace(...)``, written with :meth:`Manifest.write` (temp file, fsync,
rename, fsync of the folder), which a save does last.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import RetrieverConfig
from .errors import IndexMismatchError, InputError
from .persistence import FORMAT_VERSION, MANIFEST, read_manifest, write_json_atomic

# the keys this type names; any other top-level key (e.g. `reembedded_at`) is kept in `extra`
_KNOWN = ("format_version", "generation", "created_at", "config", "embedder", "index", "counts", "snapshot",
          "previous", "stable", "forked_from", "lexical")


def now() -> str:
    """UTC, to the second: the timestamps a manifest records."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SnapshotRecord:
    """One saved FAISS snapshot: the changelog seq it covers, its checksum, its vector count."""

    seq: int
    sha256: str
    ntotal: int
    saved_at: str

    @classmethod
    def from_dict(cls, d: dict | None) -> "SnapshotRecord | None":
        return None if not d else cls(int(d["seq"]), d["sha256"], int(d.get("ntotal", 0)), d.get("saved_at", ""))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Manifest:
    format_version: int
    generation: int
    created_at: str | None
    config: dict[str, Any]        # the stored RetrieverConfig, as `RetrieverConfig.to_dict()` wrote it
    embedder: dict[str, Any]      # name, backend, dim, max_seq_length, fingerprint
    index: dict[str, Any]         # the IndexPlan plus requested kind, metric, training and tuning records
    counts: dict[str, int]
    snapshot: SnapshotRecord | None = None
    previous: SnapshotRecord | None = None
    stable: "Manifest | None" = None  # the generation read-only processes may open while a writer holds this one
    forked_from: int | None = None
    lexical: dict[str, Any] | None = None  # the lexical arm at the last save: library, analyzer, seq, chunks
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------- reading
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        return cls(
            format_version=d["format_version"], generation=int(d["generation"]), created_at=d.get("created_at"),
            config=d["config"], embedder=d["embedder"], index=d.get("index") or {},
            counts=d.get("counts") or {}, snapshot=SnapshotRecord.from_dict(d.get("snapshot")),
            previous=SnapshotRecord.from_dict(d.get("previous")),
            stable=cls.from_dict(d["stable"]) if d.get("stable") else None, forked_from=d.get("forked_from"),
            lexical=d.get("lexical"), extra={k: v for k, v in d.items() if k not in _KNOWN},
        )

    @classmethod
    def read(cls, root: Path) -> "Manifest":
        """The manifest of the index directory `root` (errors name the directory and the fix)."""
        return cls.from_dict(read_manifest(root))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format_version": self.format_version, "generation": self.generation, "created_at": self.created_at,
            "config": self.config, "embedder": self.embedder, "index": self.index, "counts": self.counts,
            "snapshot": self.snapshot.to_dict() if self.snapshot else None,
            "previous": self.previous.to_dict() if self.previous else None,
        }
        if self.stable is not None:
            d["stable"] = self.stable.to_dict()
        if self.forked_from is not None:
            d["forked_from"] = self.forked_from
        if self.lexical is not None:
            d["lexical"] = self.lexical
        d.update(self.extra)
        return d

    def write(self, root: Path) -> None:
        """Atomically replace ``root/manifest.json`` with this manifest."""
        write_json_atomic(root / MANIFEST, self.to_dict())

    def replace(self, **changes) -> "Manifest":
        return dataclasses.replace(self, **changes)

    # --------------------------------------------------------------------------------------------- facts
    @property
    def dim(self) -> int:
        return int(self.embedder["dim"])

    @property
    def embedded_by(self) -> str:
        """The backend that embedded the stored vectors (indexes from before backends existed: torch)."""
        return self.embedder.get("backend", "torch")

    @property
    def tuned_params(self) -> dict[str, int]:
        """The search settings `tune` stored (nprobe / ef_search / rescore), or {}."""
        return (self.index.get("tuned") or {}).get("params") or {}

    def unforked(self) -> "Manifest":
        """This manifest without the `stable` hand-over: what a writer leaves when readers may follow it."""
        return self.replace(stable=None, forked_from=None)

    @classmethod
    def new(cls, config_dict: dict, embedder: dict, generation: int, index: dict) -> "Manifest":
        return cls(FORMAT_VERSION, generation, now(), config_dict, embedder, index,
                   {"documents": 0, "vectors": 0})


# index settings that shape the built index; changing one is a rebuild (the rest are search-time settings)
BUILD_SETTINGS = ("kind", "hnsw_m", "ef_construction", "nlist", "pq_m", "pq_nbits", "opq", "train_sample",
                  "memory_budget_mb")


def open_config(root: Path, manifest: Manifest, config: RetrieverConfig | None,
                overrides: dict | None = None) -> RetrieverConfig:
    """The settings to open `manifest` with: the stored ones, changed by `overrides`, or `config` checked against
    them (a different model, embedding backend or build setting is refused with the command that fixes it)."""
    stored = RetrieverConfig.from_dict(manifest.config, source=str(root / MANIFEST))
    embedded_by = manifest.embedded_by
    if stored.embedding.backend != embedded_by:
        stored = stored.replace(embedding={"backend": embedded_by})
    if config is not None and overrides:
        raise InputError("pass either config or overrides to Retriever.open, not both")
    if overrides:
        if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
            raise InputError('overrides must map section names to settings, e.g. {"rerank": {"budget_ms": 500}}')
        config = stored.replace(**overrides)
    if config is None:
        return stored
    if not isinstance(config, RetrieverConfig):
        raise InputError(f"config must be a RetrieverConfig, got {type(config).__name__}")
    if config.embedding.model != stored.embedding.model:
        raise IndexMismatchError(
            f"{root} was embedded with {stored.embedding.model!r}, not {config.embedding.model!r}; "
            f"open it with embedding.model = {stored.embedding.model!r}, or re-embed it: "
            f"`retriever reembed {root} --model {config.embedding.model}`"
        )
    if config.embedding.backend != embedded_by:
        raise IndexMismatchError(
            f"{root} was embedded by the {embedded_by!r} backend, not {config.embedding.backend!r}: their vectors "
            f"differ slightly and must not mix; open it with embedding.backend = {embedded_by!r}, or re-embed it: "
            f"`retriever reembed {root} --model {stored.embedding.model} --backend {config.embedding.backend}`"
        )
    if config.metadata.fields != stored.metadata.fields:
        raise InputError(
            f"{root} has the typed metadata fields {stored.metadata.fields or '{}'}, not "
            f"{config.metadata.fields or '{}'} ([metadata] fields); open it with [metadata] fields = "
            f"{stored.metadata.fields or '{}'}, or add fields to the index from its stored metadata: "
            f"`retriever rebuild {root} --metadata NAME=TYPE` (Retriever.add_metadata_fields)"
        )
    for key in BUILD_SETTINGS:
        want, have = getattr(config.index, key), getattr(stored.index, key)
        if want != have:
            raise InputError(
                f"{root} was built with index.{key} = {have!r}, not {want!r}; open it with index.{key} = "
                f"{have!r}, or change the index: `retriever rebuild {root} --set {key}={want}` "
                f"(search-time settings such as nprobe and ef_search may differ freely)"
            )
    return config
