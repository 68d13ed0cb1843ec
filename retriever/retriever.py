"""`Retriever`: documents in, normalized-cosine FAISS top-k, DuckDB metadata join, cross-encoder rerank, hits out.

DuckDB is the source of truth (ids, text, metadata, vectors, changelog); the FAISS file is a derived snapshot
that is checked by sha256 on open, brought up to date from the changelog, or rebuilt from the stored vectors.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import runtime
from .config import RetrieverConfig
from .documents import CHUNK_SEPARATOR, Document, chunk_documents, validate_documents
from .embedding import Embedder
from .caches import LRUCache, RerankScoreCache
from .errors import IndexMismatchError, InputError, RetrieverError
from .filters import compile_filter
from .locks import ReadWriteLock
from .index_plan import (
    MIN_POINTS_PER_CENTROID, TRAINED_KINDS, IndexPlan, check_settings, plan_index, retrain_due, training_sample_size,
)
from .models import file_sha256
from .persistence import (
    FORMAT_VERSION, MANIFEST, PREVIOUS, SNAPSHOT, STORE, ReaderMark, WriterLock, copy_generation, fsync_dir,
    generation_dir, generations, has_readers, read_manifest, write_json_atomic,
)
from .rerank import Reranker
from .results import DeleteReport, Hit, UpsertReport, VerifyReport
from .store import Store, StoreBusy
from .vector_index import DEFAULT_RESCORE, VectorIndex
from .vectors import as_unit_vectors

log = logging.getLogger("retriever")

MAX_K = 10_000
MAX_QUERY_CHARS = 20_000
# index settings that shape the built index; changing one is a rebuild (the rest are search-time settings)
BUILD_SETTINGS = ("kind", "hnsw_m", "ef_construction", "nlist", "pq_m", "pq_nbits", "opq", "train_sample",
                  "memory_budget_mb")
MASKED_SHARE_WARN = 0.2


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_index(store: Store, dim: int, cfg, plan: IndexPlan) -> tuple[VectorIndex, dict | None]:
    """A new index of `plan` over every vector in DuckDB; IVF/PQ train first on a seeded random sample of them.
    Returns (index, training record for the manifest or None). FAISS gets every core while it builds."""
    vids, vecs = store.vectors()
    trained = None
    sample = None
    if plan.kind in TRAINED_KINDS:
        size = training_sample_size(cfg, plan, len(vids))
        pick = np.sort(np.random.default_rng(0).choice(len(vids), size, replace=False)) if size < len(vids) else None
        sample = vecs if pick is None else vecs[pick]
        trained = {"vectors": int(len(vids)), "sample": int(len(sample)), "at": _now()}
    t0 = time.perf_counter()
    with runtime.all_cores():
        index = VectorIndex.build(dim, plan, vids, vecs, sample)
    if trained is not None:
        trained["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("built a %s index over %d vectors in %.1f s", plan.kind, len(vids), time.perf_counter() - t0)
    return index, trained


def _replace_rows(scores: np.ndarray, vids: np.ndarray, rows: np.ndarray, new_scores: np.ndarray,
                  new_vids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, vids) with `rows` replaced by a second search's results (widened so both fit; empty slots -1)."""
    width = max(scores.shape[1], new_vids.shape[1])
    scores = np.pad(scores, ((0, 0), (0, width - scores.shape[1])), constant_values=-np.inf)
    vids = np.pad(vids, ((0, 0), (0, width - vids.shape[1])), constant_values=-1)
    scores[rows], vids[rows] = -np.inf, -1
    scores[rows, :new_vids.shape[1]], vids[rows, :new_vids.shape[1]] = new_scores, new_vids
    return scores, vids


def _index_meta(plan: IndexPlan, requested: str, trained: dict | None, tuned: dict | None = None) -> dict:
    return {**plan.to_dict(), "requested": requested, "metric": "inner_product", "normalized": True,
            "trained": trained, "tuned": tuned}


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InputError(f"k = {k!r} must be a positive integer (the number of hits to return)")
    if k <= 0:
        raise InputError(f"k = {k} must be at least 1")
    if k > MAX_K:
        raise InputError(f"k = {k} is above the limit of {MAX_K}; page through results with filters instead")
    return int(k)


def _check_query(query: Any, where: str = "query") -> str:
    if not isinstance(query, str):
        raise InputError(f"{where} must be a string, got {type(query).__name__}")
    if not query.strip():
        raise InputError(f"{where} is empty; give the text to search for")
    if len(query) > MAX_QUERY_CHARS:
        raise InputError(f"{where} is {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
    return query


def _check_ids(ids: Any) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, Iterable):
        raise InputError(f"ids must be a list of string ids, e.g. ['doc-1'], got {type(ids).__name__}")
    ids = list(ids)
    for i, x in enumerate(ids):
        if not isinstance(x, str):
            raise InputError(f"ids[{i}] = {x!r} is a {type(x).__name__}; ids are strings (use str(...))")
    return ids


class Retriever:
    """Open with :meth:`create` or :meth:`open`; use as a context manager so it saves and closes."""

    def __init__(self, root: Path, manifest: dict, store: Store, index: VectorIndex, config: RetrieverConfig,
                 *, read_only: bool, lock: WriterLock | None, recovered: str | None):
        self.path = root
        self._manifest = manifest
        self._store = store
        self._index = index
        self.config = config
        self.read_only = read_only
        self._lock = lock
        self._reader_mark: ReaderMark | None = None  # read-only: the generation this process serves
        self.recovered = recovered  # why the FAISS snapshot was repaired on open, or None
        # one write at a time (embedding happens before, outside both locks); `_rw` makes a write's DuckDB commit
        # and FAISS update one step for searches, which hold its read side from the filter to the row fetch
        self._write_lock = threading.RLock()
        self._rw = ReadWriteLock()
        self._saved_seq = (manifest.get("snapshot") or {}).get("seq", -1) if recovered is None else -1
        self._fingerprint_checked = False
        self._closed = False
        self.embedder = Embedder.from_config(config.embedding)
        self.reranker = Reranker.from_config(config)
        self._query_cache = LRUCache(config.cache.query_embeddings)
        self._score_cache = RerankScoreCache(config.cache.rerank_scores)
        self.fallbacks = 0  # ANN searches that came back short and were completed by an exact scan
        self._pending_warned = False
        self._apply_search_settings()

    def _apply_search_settings(self) -> None:
        """nprobe / ef_search / rescore: the config's when set (non-zero), else the values `tune` stored, else the
        kind's defaults."""
        tuned = ((self._manifest.get("index") or {}).get("tuned") or {}).get("params") or {}
        cfg = self.config.index
        self._index.nprobe = cfg.nprobe or tuned.get("nprobe", 0)
        self._index.ef_search = cfg.ef_search or tuned.get("ef_search", 0)
        self._rescore = cfg.rescore or tuned.get("rescore", 0) or DEFAULT_RESCORE

    # ------------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike, config: RetrieverConfig | None = None) -> "Retriever":
        """Make a new, empty index at `path` (which must not exist or be an empty directory)."""
        config = config or RetrieverConfig()
        if not isinstance(config, RetrieverConfig):
            raise InputError(f"config must be a RetrieverConfig, got {type(config).__name__}")
        root = Path(path)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise InputError(f"{root} already exists and is not empty; open it with Retriever.open, or pick a new path")
        runtime.configure_from(config.runtime)
        embedder = Embedder.from_config(config.embedding)
        dim = embedder.dim
        check_settings(config.index, dim)
        plan = plan_index(config.index, dim, 0, strict=False)
        fingerprint = embedder.fingerprint()
        root.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(root)
        lock.acquire()
        gen = 1
        gdir = generation_dir(root, gen)
        gdir.mkdir()
        store = Store.create(gdir / STORE, dim)
        index = VectorIndex(dim, plan)
        manifest = cls._new_manifest(config, embedder, fingerprint, gen, plan)
        r = cls(root, manifest, store, index, config, read_only=False, lock=lock, recovered=None)
        r.embedder = embedder
        r._fingerprint_checked = True
        r._saved_seq = -1
        r.save()
        return r

    @staticmethod
    def _new_manifest(config: RetrieverConfig, embedder: Embedder, fingerprint: dict, generation: int,
                      plan: IndexPlan) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "generation": generation,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config.to_dict(),
            "embedder": {"name": embedder.name, "backend": embedder.backend, "dim": embedder.dim,
                         "max_seq_length": embedder.max_seq_length, "fingerprint": fingerprint},
            "index": _index_meta(plan, config.index.kind, None),
            "counts": {"documents": 0, "vectors": 0},
            "snapshot": None,
            "previous": None,
        }

    @classmethod
    def open(cls, path: str | os.PathLike, config: RetrieverConfig | None = None, *, read_only: bool = False,
             overrides: dict[str, dict] | None = None) -> "Retriever":
        """Open an index. `config` may change search-time settings (rerank, runtime, ingest, chunking); a different
        embedding model is refused (use :meth:`reembed`). `overrides` instead changes some settings of the config
        stored with the index, e.g. ``{"rerank": {"budget_ms": 500}}``, whichever generation is opened.

        Read-only opens can run in many processes at once, beside one writer: a writer that finds readers on the
        current generation writes into a copy, and readers move to it on their next open (or server reload) after
        the writer closes or calls :meth:`publish`."""
        root = Path(path)
        if read_only:
            return cls._open_reader(root, config, overrides)
        read_manifest(root)  # the right error for a missing or foreign directory, before a lock file is made there
        lock = WriterLock(root)
        lock.acquire()
        store = None
        try:
            manifest = read_manifest(root)  # read under the lock: the last writer may have just switched generations
            config = cls._check_config(root, manifest, config, overrides)
            runtime.configure_from(config.runtime)
            cls._remove_stale_generations(root, manifest)
            if has_readers(generation_dir(root, manifest["generation"])):
                manifest = cls._fork(root, manifest)
            try:
                store = Store.open(generation_dir(root, manifest["generation"]) / STORE)
            except StoreBusy:  # a reader opened it after the check above
                manifest = cls._fork(root, manifest)
                store = Store.open(generation_dir(root, manifest["generation"]) / STORE)
            index, recovered = cls._checked_index(root, manifest, store, config, mmap=False)
        except BaseException:
            if store is not None:
                store.close()
            lock.release()
            raise
        r = cls(root, manifest, store, index, config, read_only=False, lock=lock, recovered=recovered)
        if recovered:
            log.warning("%s: %s", root, recovered)
            r.save()
        return r

    @classmethod
    def _open_reader(cls, root: Path, config: RetrieverConfig | None, overrides: dict | None) -> "Retriever":
        """The current generation, or the `stable` one the manifest names while a writer holds the current one."""
        for attempt in range(5):
            manifest = read_manifest(root)
            candidates = [manifest] + ([manifest["stable"]] if manifest.get("stable") else [])
            busy = None
            for m in candidates:
                gdir = generation_dir(root, m["generation"])
                mark = ReaderMark(gdir)
                mark.acquire()
                store = None
                try:
                    if not gdir.is_dir():
                        raise FileNotFoundError(gdir)
                    cfg = cls._check_config(root, m, config, overrides)
                    runtime.configure_from(cfg.runtime)
                    store = Store.open(gdir / STORE, read_only=True)
                    index, recovered = cls._checked_index(root, m, store, cfg, mmap=cfg.index.mmap)
                except StoreBusy as e:
                    mark.release()
                    busy = e
                    continue
                except FileNotFoundError:  # removed by a writer after we read the manifest: read it again
                    mark.release()
                    break
                except BaseException:
                    if store is not None:
                        store.close()
                    mark.release()
                    raise
                r = cls(root, m, store, index, cfg, read_only=True, lock=None, recovered=recovered)
                r._reader_mark = mark
                if recovered:
                    log.warning("%s: %s", root, recovered)
                return r
            else:
                raise RetrieverError(
                    f"{root}: generation {manifest['generation']} is open for writing in another process that started "
                    f"before any reader, and no earlier generation is published; open it read-only after that writer "
                    f"closes (or calls publish), or start readers first"
                ) from busy
            time.sleep(0.05 * (attempt + 1))
        raise RetrieverError(f"{root}: its generations kept changing while opening; try again")

    @staticmethod
    def _check_config(root: Path, manifest: dict, config: RetrieverConfig | None,
                      overrides: dict | None = None) -> RetrieverConfig:
        stored = RetrieverConfig.from_dict(manifest["config"], source=str(root / MANIFEST))
        # the path that embedded the stored vectors (indexes from before backends existed: torch)
        embedded_by = manifest["embedder"].get("backend", "torch")
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
        for key in BUILD_SETTINGS:
            want, have = getattr(config.index, key), getattr(stored.index, key)
            if want != have:
                raise InputError(
                    f"{root} was built with index.{key} = {have!r}, not {want!r}; open it with index.{key} = "
                    f"{have!r}, or change the index: `retriever rebuild {root} --set {key}={want}` "
                    f"(search-time settings such as nprobe and ef_search may differ freely)"
                )
        return config

    @classmethod
    def _checked_index(cls, root: Path, manifest: dict, store: Store, config: RetrieverConfig, *, mmap: bool):
        dim = manifest["embedder"]["dim"]
        gdir = generation_dir(root, manifest["generation"])
        if store.dim != dim:
            raise IndexMismatchError(f"{gdir / STORE} holds {store.dim}-d vectors but the manifest says {dim}")
        return cls._load_index(gdir, manifest, store, config.index, mmap=mmap)

    @staticmethod
    def _fork(root: Path, manifest: dict) -> dict:
        """Copy the current generation (readers hold it) to a new one and point the manifest at the copy, keeping
        the old one under `stable` for readers. The manifest moves before any write lands in the copy, so an
        acknowledged write is always in the generation the manifest names."""
        source = manifest["generation"]
        target = max(generations(root) + [source]) + 1
        t0 = time.perf_counter()
        copy_generation(root, source, target)
        stable = {k: v for k, v in manifest.items() if k != "stable"}
        forked = {**stable, "generation": target, "stable": stable, "forked_from": source}
        write_json_atomic(root / MANIFEST, forked)
        log.info("%s: generation %d is in use by readers; writing into a copy, generation %d (%.2f s)",
                 root, source, target, time.perf_counter() - t0)
        return forked

    @staticmethod
    def _remove_stale_generations(root: Path, manifest: dict) -> None:
        """Leftovers of an interrupted save, re-embed or fork, and generations no reader serves any more (the
        writer lock is held, so no other process is writing them)."""
        keep = {manifest["generation"], (manifest.get("stable") or {}).get("generation")}
        for n in generations(root):
            gdir = generation_dir(root, n)
            if n not in keep and not has_readers(gdir):
                shutil.rmtree(gdir, ignore_errors=True)
        for tmp in [*root.glob(f".{MANIFEST}.tmp-*"),
                    *generation_dir(root, manifest["generation"]).glob(f".{SNAPSHOT}.tmp-*")]:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _load_index(gdir: Path, manifest: dict, store: Store, cfg, *, mmap: bool = False
                    ) -> tuple[VectorIndex, str | None]:
        """The snapshot whose checksum the manifest vouches for, brought up to date from the changelog; or a
        rebuild from the vectors in DuckDB when no snapshot can be trusted. Returns (index, why repaired).

        HNSW cannot remove vectors: the ones FAISS holds but DuckDB no longer does are masked. With `mmap`
        (read-only opens) the snapshot is memory-mapped unless the changelog has to be replayed into it."""
        dim = manifest["embedder"]["dim"]
        plan = IndexPlan.from_dict(manifest.get("index"))
        pruned = store.pruned_upto()
        problems = []
        for name in (SNAPSHOT, PREVIOUS):
            f = gdir / name
            if not f.is_file():
                problems.append(f"{name} is missing")
                continue
            sha = file_sha256(f)
            for label in ("snapshot", "previous"):
                meta = manifest.get(label)
                if meta and meta["sha256"] == sha and meta["seq"] >= pruned:
                    break
            else:
                problems.append(f"{name} does not match the manifest's checksum")
                continue
            added, deleted = store.changes_since(meta["seq"])
            try:
                index = VectorIndex.read(f, dim, plan, mmap=mmap and not (len(added) or len(deleted)))
            except Exception as e:  # faiss raises RuntimeError on a damaged file
                problems.append(f"{name} is unreadable ({str(e).splitlines()[0]})")
                continue
            if len(deleted):
                index.remove(deleted)
            if len(added):
                have = set(index.all_ids().tolist())
                vids, vecs = store.vectors(v for v in added.tolist() if v not in have)
                index.add(vids, vecs)
            store_vids = store.vids()
            if index.kind == "hnsw":
                gone = np.setdiff1d(index.all_ids(), store_vids)
                if len(gone):
                    index.mask(gone)
            if np.array_equal(np.sort(index.ids()), store_vids):
                why = None if name == SNAPSHOT else f"{SNAPSHOT} was not usable ({'; '.join(problems)}); used {PREVIOUS}"
                if why is None and (len(added) or len(deleted)):
                    why = f"replayed {len(added)} additions and {len(deleted)} deletions logged after the last save"
                return index, why
            problems.append(f"{name} plus the changelog does not match the documents table")
        if plan.kind in TRAINED_KINDS and store.count() < MIN_POINTS_PER_CENTROID * plan.params["nlist"]:
            plan = IndexPlan("flat", {}, f"{store.count()} vectors are too few to retrain nlist = "
                             f"{plan.params['nlist']}; searching exactly until `retriever rebuild`", pending=plan.kind)
        index, _ = build_index(store, dim, cfg, plan)
        return index, f"rebuilt the FAISS index from the {len(index)} vectors in DuckDB ({'; '.join(problems)})"

    def save(self) -> None:
        """Write the FAISS snapshot (temp file, fsync, rename; the old one kept as .prev), then the manifest."""
        if self.read_only or self._closed:
            return
        with self._write_lock:
            self._build_when_due()
            seq = self._store.last_seq()
            if seq == self._saved_seq:
                return
            self._store.checkpoint()
            gdir = generation_dir(self.path, self._manifest["generation"])
            tmp = gdir / f".{SNAPSHOT}.tmp-{os.getpid()}"
            with self._rw.read():
                self._index.write(tmp)
                ntotal = len(self._index)
            sha = file_sha256(tmp)
            if (gdir / SNAPSHOT).exists():
                os.replace(gdir / SNAPSHOT, gdir / PREVIOUS)
            os.replace(tmp, gdir / SNAPSHOT)
            fsync_dir(gdir)
            manifest = dict(self._manifest)
            manifest["previous"] = manifest.get("snapshot")
            manifest["snapshot"] = {"seq": seq, "sha256": sha, "ntotal": ntotal,
                                    "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            manifest["counts"] = {"documents": self._store.count_parents(), "vectors": len(self._index),
                                  "masked": self._index.masked}
            write_json_atomic(self.path / MANIFEST, manifest)
            self._manifest = manifest
            self._saved_seq = seq
            if manifest["previous"]:
                self._store.prune_changelog(manifest["previous"]["seq"])

    def _build_when_due(self) -> None:
        """An index that waits for data (an IVF kind on a corpus too small to train, or `auto` still exact) is
        built at the first save where the corpus supports it. Other changes of kind wait for `rebuild`."""
        if self._index.kind != "flat":
            return
        n = self._store.count()
        plan = plan_index(self.config.index, self._index.dim, n, strict=False)
        if plan.kind == "flat":
            if plan.pending and n and not self._pending_warned:
                log.warning("%s: %s", self.path, plan.reason)
                self._pending_warned = True
            self._manifest["index"] = _index_meta(plan, self.config.index.kind, None, self._manifest["index"].get("tuned"))
            return
        log.warning("%s: building the %s index now that the corpus has %d vectors", self.path, plan.kind, n)
        index, trained = build_index(self._store, self._index.dim, self.config.index, plan)
        self._swap_index(index, _index_meta(plan, self.config.index.kind, trained))

    def _swap_index(self, index: VectorIndex, meta: dict) -> None:
        with self._rw.write():
            self._index = index
            self._manifest = {**self._manifest, "index": meta}
            self._apply_search_settings()
        self._saved_seq = -1

    def close(self) -> None:
        """Save (writers), wait for searches in flight, and release the files. A writer that wrote into a copy of
        the generation readers held hands the copy over to them (the manifest's `stable` entry is dropped)."""
        if self._closed:
            return
        try:
            self.save()
        finally:
            with self._rw.write():
                self._closed = True
                self._store.close()
            if self._reader_mark:
                self._reader_mark.release()
            if self._lock:
                try:
                    self._hand_over()
                finally:
                    self._lock.release()

    def _hand_over(self) -> None:
        # even when the save failed the generation is whole: DuckDB committed every write and its changelog
        # brings the older snapshot up to date on open
        if self._manifest.get("stable"):
            manifest = {k: v for k, v in self._manifest.items() if k not in ("stable", "forked_from")}
            write_json_atomic(self.path / MANIFEST, manifest)
            self._manifest = manifest
        self._remove_stale_generations(self.path, self._manifest)

    def publish(self) -> dict[str, Any]:
        """Save, and make what was saved openable by read-only processes while this one goes on writing: the saved
        generation becomes the manifest's `stable` one and writing continues in a copy. Returns the generations
        and the seconds the copy took (it is the size of the DuckDB file plus the FAISS snapshots)."""
        self._require_writable()
        t0 = time.perf_counter()
        with self._write_lock:
            self.save()
            with self._rw.write():
                published = self._manifest["generation"]
                self._store.close()
                try:
                    manifest = self._fork(self.path, self._manifest)
                except BaseException:
                    self._store = Store.open(generation_dir(self.path, published) / STORE)
                    raise
                self._store = Store.open(generation_dir(self.path, manifest["generation"]) / STORE)
                self._manifest = manifest
            self._remove_stale_generations(self.path, manifest)
        return {"published": published, "writing": manifest["generation"],
                "seconds": round(time.perf_counter() - t0, 3)}

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # public faces for the modules around the facade (server, evaluation, benchmarks); reads only
    @property
    def manifest(self):
        """The typed manifest of the generation this object has open."""
        from .manifest import Manifest

        return Manifest.from_dict(self._manifest)

    @property
    def stored_config(self) -> RetrieverConfig:
        """The settings stored with the index (what `open` without a config would use)."""
        return RetrieverConfig.from_dict(self._manifest["config"])

    @property
    def store(self) -> Store:
        """The DuckDB store (the source of truth). Read from it; write through upsert/delete."""
        return self._store

    @property
    def vector_index(self) -> VectorIndex:
        """The FAISS index derived from the store."""
        return self._index

    @property
    def generation(self) -> int:
        """The index generation this object reads and writes (see `persistence`)."""
        return self._manifest["generation"]

    def adopt_models(self, other: "Retriever") -> None:
        """Share `other`'s loaded embedder and cross-encoder when the settings match (a server's reload swaps
        generations without loading the weights again). The fingerprint check still runs on first use."""
        if other.config.embedding == self.config.embedding:
            self.embedder = other.embedder
        if (other.reranker.key, other.config.rerank.batch_size) == (self.reranker.key, self.config.rerank.batch_size):
            self.reranker = other.reranker

    def clear_caches(self) -> None:
        """Empty the query-embedding and rerank-score caches (benchmarks measuring cold work call this)."""
        self._query_cache.clear()
        self._score_cache.clear()

    def cache_stats(self) -> dict[str, dict[str, int]]:
        return {"query_embeddings": self._query_cache.stats(), "rerank_scores": self._score_cache.stats()}

    def __len__(self) -> int:
        """Number of documents (a chunked document counts once)."""
        return self._store.count_parents()

    def __repr__(self) -> str:
        return f"Retriever({str(self.path)!r}, documents={len(self)}, model={self.config.embedding.model!r})"

    # --------------------------------------------------------------------------------------------- writes
    def _require_writable(self) -> None:
        if self._closed:
            raise RetrieverError(f"{self.path} is closed; open it again with Retriever.open")
        if self.read_only:
            raise RetrieverError(f"{self.path} was opened read-only; open it with read_only=False to write")

    def _embedder(self) -> Embedder:
        """The embedder, checked once against the fingerprint the index was built with."""
        if not self._fingerprint_checked:
            stored = self._manifest["embedder"]
            if self.embedder.dim != stored["dim"] or not Embedder.same_weights(self.embedder.fingerprint(),
                                                                              stored["fingerprint"]):
                raise IndexMismatchError(
                    f"the model {self.embedder.name!r} now gives different embeddings than when {self.path} was built "
                    f"(dimension {self.embedder.dim} vs {stored['dim']}, or other weights under the same name); "
                    f"restore the original model, or re-embed: `retriever reembed {self.path} --model {self.embedder.name}`"
                )
            self._fingerprint_checked = True
        return self.embedder

    def _max_tokens(self, embedder: Embedder) -> int:
        limit = embedder.max_content_tokens()
        wanted = self.config.chunking.max_tokens
        return min(wanted, limit) if wanted else limit

    def upsert(self, documents: Iterable[Document], *, show_progress: bool = False) -> UpsertReport:
        """Add or replace documents (by id). All records are validated before anything is embedded or written;
        the batch lands in one transaction. Texts longer than the model's sequence length become chunks."""
        self._require_writable()
        t0 = time.perf_counter()
        docs = validate_documents(documents)
        if not docs:
            return UpsertReport(0, 0, 0, 0, 0, 0.0)
        embedder = self._embedder()
        max_tokens = self._max_tokens(embedder)
        overlap = min(self.config.chunking.overlap, max_tokens // 2)
        pieces = chunk_documents(docs, embedder.token_spans, max_tokens=max_tokens, overlap=overlap)
        vectors = embedder.encode([p.text for p in pieces], show_progress_bar=show_progress)
        rows = [(p.id, p.metadata["parent_id"] if CHUNK_SEPARATOR in p.id else None, p.text, p.metadata)
                for p in pieces]
        order = {p.id: i for i, p in enumerate(pieces)}
        with self._write_lock, self._rw.write():
            result = self._store.upsert([d.id for d in docs], rows, vectors)
            self._index.remove(result.removed_vids)
            self._index.add(result.added_vids, vectors[[order[i] for i in result.added_ids]])
            self._score_cache.drop_vids(result.removed_vids.tolist())
        replaced = len(result.replaced_keys)
        chunked = len({row[1] for row in rows if row[1] is not None})
        return UpsertReport(documents=len(docs), added=len(docs) - replaced, updated=replaced, vectors=len(pieces),
                            chunked=chunked, seconds=time.perf_counter() - t0)

    def delete(self, ids: Iterable[str]) -> DeleteReport:
        """Remove documents (and their chunks) by id; they stop appearing in results immediately."""
        self._require_writable()
        ids = _check_ids(ids)
        if not ids:
            return DeleteReport(0)
        with self._write_lock, self._rw.write():
            result = self._store.delete(ids)
            self._index.remove(result.removed_vids)
            self._score_cache.drop_vids(result.removed_vids.tolist())
        missing = tuple(i for i in dict.fromkeys(ids) if i not in result.replaced_keys)
        return DeleteReport(deleted=len(result.replaced_keys), missing=missing, vectors=len(result.removed_vids))

    # -------------------------------------------------------------------------------------------- reads
    def get(self, id: str) -> Document | None:
        """The stored record with this id (a chunk has the id ``"{parent}#chunk-{i}"``), or None."""
        if not isinstance(id, str):
            raise InputError(f"id = {id!r} is a {type(id).__name__}; ids are strings")
        row = self._store.get(id)
        return None if row is None else Document(row.id, row.text, row.metadata)

    def search(self, query: str, k: int = 10, filters: dict | None = None, rerank: bool = True) -> list[Hit]:
        """Top-k hits for a query. With `filters`, only matching documents are searched, so the result holds
        min(k, matches) hits. `rerank=False` skips the cross-encoder (and never loads it)."""
        return self.search_batch([_check_query(query)], k=k, filters=filters, rerank=rerank)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10, filters: dict | None = None,
                     rerank: bool = True) -> list[list[Hit]]:
        """`search` for several queries at once: one embedding batch, one FAISS call, one rerank batch."""
        return self.search_traced(queries, k=k, filters=filters, rerank=rerank)[0]

    def search_traced(self, queries: Sequence[str], k: int = 10, filters: dict | None = None,
                      rerank: bool = True, *, rerank_budget_ms: float | None = None
                      ) -> tuple[list[list[Hit]], dict[str, Any]]:
        """`search_batch` plus a trace: milliseconds per stage (embed, search, join, rerank), whether the hits
        were reranked, whether the rerank time budget ran out (`rerank_timed_out`: the hits are then in retrieval
        order), the query vectors, and each query's candidates in retrieval order as (id, parent id, cosine).

        `rerank_budget_ms` overrides `[rerank] budget_ms` for this call (0 = no budget)."""
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise InputError("queries must be a list of strings; for a single query use search()")
        queries = [_check_query(q, f"queries[{i}]") for i, q in enumerate(queries)]
        k = _check_k(k)
        if filters is not None:
            compile_filter(filters)  # a malformed filter fails before the model runs
        trace: dict[str, Any] = {}
        if not queries:
            return [], trace
        self._check_open()
        t0 = time.perf_counter()
        q = self._embed_queries(queries)
        trace["embed_ms"] = (time.perf_counter() - t0) * 1000
        trace["query_vectors"] = q
        return self._search_vectors(queries, q, k, filters, rerank, trace, rerank_budget_ms), trace

    def _embed_queries(self, queries: list[str]) -> np.ndarray:
        """Query vectors, from the cache where the same text was embedded by the same model and backend."""
        embedder = self._embedder()
        key = (embedder.name, embedder.backend, embedder.max_seq_length)
        cached = [self._query_cache.get((key, text)) for text in queries]
        missing = [i for i, v in enumerate(cached) if v is None]
        if missing:
            texts = list(dict.fromkeys(queries[i] for i in missing))  # a repeated query is embedded once
            by_text = dict(zip(texts, embedder.encode_queries(texts)))
            for i in missing:
                cached[i] = by_text[queries[i]]
            for text, vec in by_text.items():
                vec.setflags(write=False)
                self._query_cache.put((key, text), vec)
        return np.stack(cached).astype(np.float32, copy=True)

    def search_by_vector(self, vector, k: int = 10, filters: dict | None = None) -> list[Hit]:
        """Top-k by cosine for a raw vector (lists, float64, non-contiguous accepted; normalized here)."""
        k = _check_k(k)
        self._check_open()
        q = as_unit_vectors(vector, self._index.dim, what="query vector")
        if len(q) != 1:
            raise InputError(f"search_by_vector takes one vector, got {len(q)}; use a loop or search_batch")
        return self._search_vectors(None, q, k, filters, rerank=False)[0]

    def _check_open(self) -> None:
        if self._closed:
            raise RetrieverError(f"{self.path} is closed; open it again with Retriever.open")

    def _allowed(self, filters: dict | None) -> np.ndarray | None:
        if filters is None or filters == {}:
            return None
        sql, params = compile_filter(filters)
        return self._store.filter_vids(sql, params)

    def _exact(self, q: np.ndarray, n: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-n by cosine over the vectors in DuckDB (all of them, or the allowed vids)."""
        vids, vecs = self._store.vectors(allowed)
        if not len(vids):
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        sims = q @ vecs.T
        n = min(n, len(vids))
        top = np.argsort(-sims, axis=1, kind="stable")[:, :n]
        return np.take_along_axis(sims, top, axis=1), vids[top]

    def _rescored(self, q: np.ndarray, vids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Re-rank approximate (PQ) candidates by their exact cosine, from the vectors in DuckDB."""
        uniq = np.unique(vids[vids >= 0])
        have, vecs = self._store.vectors(uniq)
        pos = {int(v): i for i, v in enumerate(have)}
        out_s = np.full((len(q), n), -np.inf, np.float32)
        out_v = np.full((len(q), n), -1, np.int64)
        for r, row in enumerate(vids):
            cand = [v for v in dict.fromkeys(row.tolist()) if v in pos]
            if not cand:
                continue
            sims = vecs[[pos[v] for v in cand]] @ q[r]
            order = np.argsort(-sims, kind="stable")[:n]
            out_s[r, :len(order)] = sims[order]
            out_v[r, :len(order)] = np.asarray(cand, np.int64)[order]
        return out_s, out_v

    def _ann(self, q: np.ndarray, n: int, allowed: np.ndarray | None, *, nprobe: int | None = None,
             ef_search: int | None = None, rescore: int | None = None, fallback: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, vids) of the n nearest per query; vid -1 marks an empty slot. Scores are exact cosines on
        every kind (PQ candidates are re-scored). A search that comes back with fewer than min(n, matches)
        hits (a selective filter on HNSW/IVF) is completed by an exact scan, and counted in `fallbacks`."""
        if allowed is not None and len(allowed) <= self.config.index.exact_filter_threshold:
            if not len(allowed):
                return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
            return self._exact(q, n, allowed)
        with self._rw.read():
            index = self._index
            live = len(index)
            if live == 0:
                return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
            want = n * (rescore or self._rescore) if index.lossy else n
            scores, vids = index.search(q, want, allowed, nprobe=nprobe, ef_search=ef_search)
        if index.lossy:
            scores, vids = self._rescored(q, vids, n)
        if not fallback:
            return scores, vids
        expected = min(n, live if allowed is None else len(allowed))
        short = np.flatnonzero((vids >= 0).sum(axis=1) < expected)
        if len(short) and allowed is None and index.kind != "flat":
            # unfiltered and short (tiny IVF lists, or many masked HNSW vectors): widen the search in RAM
            # before falling back to a scan of every vector in DuckDB
            with self._rw.read():
                ws, wv = index.search(q[short], want, None, nprobe=1 << 30,
                                      ef_search=min(max(int(index.index.ntotal), 1), max(16 * want, 1024)))
            if index.lossy:
                ws, wv = self._rescored(q[short], wv, n)
            scores, vids = _replace_rows(scores, vids, short, ws, wv)
            short = np.flatnonzero((vids >= 0).sum(axis=1) < expected)
        if len(short):
            self.fallbacks += len(short)
            log.debug("%d of %d searches came back short; completing them exactly", len(short), len(q))
            scores, vids = _replace_rows(scores, vids, short, *self._exact(q[short], n, allowed))
        return scores, vids

    def _search_vectors(self, queries: list[str] | None, q: np.ndarray, k: int, filters: dict | None,
                        rerank: bool, trace: dict[str, Any] | None = None, rerank_budget_ms: float | None = None
                        ) -> list[list[Hit]]:
        trace = {} if trace is None else trace
        do_rerank = bool(rerank) and self.config.rerank.enabled and queries is not None
        n = max(k, self.config.rerank.candidates) if do_rerank else k
        t0 = time.perf_counter()
        # the filter, the FAISS search and the row fetch see one state: a write lands before or after them
        with self._rw.read():
            self._check_open()
            allowed = self._allowed(filters)
            scores, vids = self._ann(q, n, allowed)
            t1 = time.perf_counter()
            rows = self._store.fetch(np.unique(vids[vids >= 0]).tolist())
        candidates = [[(rows[int(v)], float(s)) for s, v in zip(srow, vrow) if v >= 0 and int(v) in rows]
                      for srow, vrow in zip(scores, vids)]
        t2 = time.perf_counter()
        trace.update(search_ms=(t1 - t0) * 1000, join_ms=(t2 - t1) * 1000, rerank_ms=0.0, reranked=do_rerank,
                     rerank_timed_out=False)
        trace["candidates"] = [[(r.id, r.metadata.get("parent_id", r.id) if CHUNK_SEPARATOR in r.id else r.id, cos)
                                for r, cos in c] for c in candidates]
        flat = None
        if do_rerank:
            budget = self.config.rerank.budget_ms if rerank_budget_ms is None else rerank_budget_ms
            flat = self._rerank_scores(queries, candidates, budget / 1000 if budget else None)
            trace["rerank_ms"] = (time.perf_counter() - t2) * 1000
            if flat is None:  # over budget: retrieval order, and the trace says so
                trace.update(reranked=False, rerank_timed_out=True)
        if flat is None:
            return [[Hit(r.id, r.text, r.metadata, rank, cos, cos, None)
                     for rank, (r, cos) in enumerate(c[:k], 1)] for c in candidates]
        out, start = [], 0
        for c in candidates:
            rs = flat[start:start + len(c)]
            start += len(c)
            order = sorted(range(len(c)), key=lambda i: (-rs[i], i))[:k]
            out.append([Hit(c[i][0].id, c[i][0].text, c[i][0].metadata, rank, float(rs[i]), c[i][1], float(rs[i]))
                        for rank, i in enumerate(order, 1)])
        return out

    def _rerank_scores(self, queries: list[str], candidates, budget_s: float | None) -> np.ndarray | None:
        """Cross-encoder scores of every (query, candidate) pair of the batch, flat; cached scores are reused
        and only the rest go to the model, in one length-sorted run. None when the budget ran out."""
        keys = [(query, row.vid) for query, c in zip(queries, candidates) for row, _ in c]
        texts = [row.text for c in candidates for row, _ in c]
        model_key = self.reranker.key
        flat = self._score_cache.get_many(model_key, keys)
        todo = {}  # the same pair twice in a batch (a repeated query) is scored once
        for i, s in enumerate(flat):
            if s is None:
                todo.setdefault(keys[i], []).append(i)
        if todo:
            firsts = [idx[0] for idx in todo.values()]
            scores = self.reranker.score_pairs([(keys[i][0], texts[i]) for i in firsts], budget_s=budget_s)
            if scores is None:
                return None
            for idx, score in zip(todo.values(), scores):
                for i in idx:
                    flat[i] = float(score)
            self._score_cache.put_many(model_key, [keys[i] for i in firsts], scores)
        return np.asarray(flat, dtype=np.float32)

    # ------------------------------------------------------------------------------------ maintenance
    def stats(self) -> dict[str, Any]:
        gdir = generation_dir(self.path, self._manifest["generation"])
        disk = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        snap = self._manifest.get("snapshot") or {}
        last = self._store.last_seq()
        return {
            "path": str(self.path),
            "documents": len(self),
            "vectors": len(self._index),
            "dim": self._index.dim,
            "embedding_model": self.config.embedding.model,
            "embedding_backend": self.embedder.backend,
            "rerank_model": self.config.rerank.model,
            "rerank_backend": self.reranker.backend,
            "caches": self.cache_stats(),
            "index_kind": self._index.kind,
            "index": self.index_status(),
            "generation": self._manifest["generation"],
            "format_version": self._manifest["format_version"],
            "created_at": self._manifest.get("created_at"),
            "snapshot_seq": snap.get("seq"),
            "changelog_seq": last,
            "unsaved_changes": last != self._saved_seq,
            "disk_bytes": disk,
            "store_bytes": (gdir / STORE).stat().st_size if (gdir / STORE).exists() else 0,
            "snapshot_bytes": (gdir / SNAPSHOT).stat().st_size if (gdir / SNAPSHOT).exists() else 0,
            "read_only": self.read_only,
            "recovered": self.recovered,
            "threads": runtime.current(),
        }

    def index_status(self) -> dict[str, Any]:
        """The built index: kind, parameters, why it was chosen, training, masked share, search settings, and
        warnings about maintenance that is due (retraining, compaction, a kind `auto` would now change)."""
        meta = self._manifest.get("index") or {}
        with self._rw.read():
            index = self._index
            live, masked = len(index), index.masked
            effective = index.effective()
        total = live + masked
        out = {
            "kind": index.kind, "requested": meta.get("requested", self.config.index.kind),
            "params": meta.get("params", {}), "reason": meta.get("reason", ""), "pending": meta.get("pending"),
            "trained": meta.get("trained"), "tuned": meta.get("tuned"),
            "search": {**effective, **({"rescore": self._rescore} if index.lossy else {})},
            "masked": masked, "masked_share": round(masked / total, 4) if total else 0.0,
            "mmapped": index.mmapped, "fallbacks": self.fallbacks,
        }
        warnings = []
        if out["pending"]:
            warnings.append(out["reason"])
        due = retrain_due(IndexPlan(index.kind), meta.get("trained"), live, self.config.index.retrain_growth)
        if due:
            warnings.append(due)
        if out["masked_share"] >= MASKED_SHARE_WARN:
            warnings.append(f"{masked:,} of {total:,} HNSW vectors ({out['masked_share']:.0%}) are deleted and masked; "
                            f"`retriever rebuild {self.path}` compacts them")
        if self.config.index.kind == "auto":
            now = plan_index(self.config.index, index.dim, live, strict=False)
            if now.kind != index.kind and not now.pending:
                warnings.append(f"auto would now choose {now.kind} ({now.reason}); `retriever rebuild {self.path}`")
        tuned = out["tuned"]
        if tuned and tuned.get("vectors") and live >= self.config.index.retrain_growth * tuned["vectors"]:
            warnings.append(f"search settings were tuned on {tuned['vectors']:,} vectors, the corpus now has "
                            f"{live:,}; run `retriever tune {self.path}` again")
        out["warnings"] = warnings
        return out

    def verify(self, *, check_model: bool = True) -> VerifyReport:
        """Check the index against its source of truth; returns problems instead of raising."""
        problems: list[str] = []
        checks: dict[str, Any] = {}
        gdir = generation_dir(self.path, self._manifest["generation"])
        snap = self._manifest.get("snapshot")
        on_disk = gdir / SNAPSHOT
        if not on_disk.is_file():
            problems.append(f"{on_disk} is missing (run `retriever rebuild {self.path}`)")
        elif snap and file_sha256(on_disk) != snap["sha256"]:
            problems.append(f"{on_disk} does not match the manifest's sha256 (run `retriever rebuild {self.path}`)")
        checks["snapshot_checksum"] = not problems
        with self._rw.read():
            faiss_ids = np.sort(self._index.ids())
            store_vids = self._store.vids()
            same = np.array_equal(faiss_ids, store_vids)
            checks["ids_match"] = bool(same)
            checks["faiss_ntotal"] = int(len(faiss_ids))
            checks["duckdb_rows"] = int(len(store_vids))
            if not same:
                problems.append(f"FAISS holds {len(faiss_ids)} ids, DuckDB {len(store_vids)} rows, and they differ "
                                f"(run `retriever rebuild {self.path}`)")
            elif len(store_vids):
                sample = store_vids[np.linspace(0, len(store_vids) - 1, min(64, len(store_vids))).astype(int)]
                vids, vecs = self._store.vectors(sample)
                decoded = np.stack([self._index.reconstruct(v) for v in vids])
                if self._index.lossy:  # PQ codes decode to approximations of the stored vectors
                    cos = float(np.mean(np.sum(decoded * vecs, axis=1) /
                                        np.maximum(np.linalg.norm(decoded, axis=1), 1e-12)))
                    checks["pq_decoded_cosine"] = cos
                    if cos < 0.5:
                        problems.append(f"PQ codes decode to vectors with mean cosine {cos:.2f} to DuckDB's "
                                        f"(run `retriever rebuild {self.path}`)")
                else:
                    err = float(np.abs(decoded - vecs).max())
                    checks["vector_max_abs_diff"] = err
                    if err > 1e-5:
                        problems.append(f"FAISS vectors differ from DuckDB's by {err:.2g} "
                                        f"(run `retriever rebuild {self.path}`)")
                norms = np.linalg.norm(vecs, axis=1)
                checks["unit_norm"] = bool(np.allclose(norms, 1.0, atol=1e-4))
                if not checks["unit_norm"]:
                    problems.append("stored vectors are not unit length (run `retriever rebuild`)")
        if check_model:
            try:
                self._fingerprint_checked = False
                self._embedder()
                checks["model_fingerprint"] = True
            except IndexMismatchError as e:
                checks["model_fingerprint"] = False
                problems.append(str(e))
        return VerifyReport(ok=not problems, problems=tuple(problems), checks=checks,
                            warnings=tuple(self.index_status()["warnings"]))

    def tune(self, target_recall: float = 0.95, k: int = 10, *, sample: int = 1000,
             queries: Sequence[str] | None = None, seed: int = 0):
        """Find the cheapest nprobe / ef_search / PQ re-score depth reaching `target_recall` (ANN recall@k against
        exact search) and store it in the manifest, where every later open picks it up (a non-zero
        index.nprobe / index.ef_search / index.rescore in the config still wins). Returns a TuneReport;
        nothing is stored when the target is not reached."""
        from .tuning import tune

        self._require_writable()
        with self._write_lock:
            report = tune(self, target_recall, k, sample=sample, queries=queries, seed=seed)
            if report.chosen is not None and report.chosen.params:
                c = report.chosen
                tuned = {"params": dict(c.params), "target_recall": report.target, "k": k, "recall": round(c.recall, 4),
                         "recall_labeled": None if c.recall_labeled is None else round(c.recall_labeled, 4),
                         "p50_ms": round(c.p50_ms, 3), "vectors": report.vectors, "sample": report.sample,
                         "labeled_queries": report.labeled, "at": _now()}
                manifest = {**self._manifest, "index": {**self._manifest["index"], "tuned": tuned}}
                write_json_atomic(self.path / MANIFEST, manifest)
                with self._rw.write():
                    self._manifest = manifest
                    self._apply_search_settings()
                overridden = [key for key in c.params if getattr(self.config.index, key)]
                if overridden:
                    log.warning("index.%s is set in the config and overrides the tuned value", overridden[0])
        return report

    def rebuild(self, index: dict | None = None) -> int:
        """Rebuild FAISS from the vectors stored in DuckDB (no re-embedding), retraining IVF/PQ on a fresh sample,
        compacting masked HNSW vectors, and re-deciding `auto`; then save. `index` changes [index] settings,
        e.g. ``rebuild({"kind": "hnsw"})``: they are checked against the corpus before any work. Returns the
        vector count."""
        self._require_writable()
        config = self.config.replace(index=index) if index else self.config
        with self._write_lock:
            n = self._store.count()
            plan = plan_index(config.index, self._index.dim, n, strict=True)
            old = self._manifest.get("index") or {}
            built, trained = build_index(self._store, self._index.dim, config.index, plan)
            same = old.get("kind") == plan.kind and old.get("params") == plan.params
            self.config = config
            self._manifest = {**self._manifest, "config": config.to_dict()}
            self._swap_index(built, _index_meta(plan, config.index.kind, trained, old.get("tuned") if same else None))
            self.save()
        return n

    def reembed(self, model: str, *, batch_size: int | None = None, backend: str | None = None,
                show_progress: bool = False) -> dict[str, Any]:
        """Re-embed every stored text with `model` (by `backend`, default: the configured one) into a new index
        generation. The current generation stays the one in use until the new one is complete (manifest switch
        last); then the old one is removed."""
        self._require_writable()
        if not isinstance(model, str) or not model.strip():
            raise InputError("model must be a sentence-transformers model name or path, or a builtin: name")
        t0 = time.perf_counter()
        emb_cfg = {"model": model}
        if backend is not None:
            emb_cfg["backend"] = backend
        if batch_size:
            emb_cfg["batch_size"] = batch_size
        config = self.config.replace(embedding=emb_cfg)
        embedder = Embedder.from_config(config.embedding)
        dim, fingerprint = embedder.dim, embedder.fingerprint()
        with self._write_lock:
            old_gen = self._manifest["generation"]
            new_gen = old_gen + 1
            gdir = generation_dir(self.path, new_gen)
            if gdir.exists():
                shutil.rmtree(gdir)
            gdir.mkdir()
            store = Store.create(gdir / STORE, dim)
            total = self._store.count()
            done = 0
            try:
                check_settings(config.index, dim)
                for batch in self._store.iter_texts(batch=max(256, config.embedding.batch_size * 8)):
                    vecs = embedder.encode([t for _, _, _, t, _ in batch], show_progress_bar=show_progress)
                    store.upsert([i for _, i, _, _, _ in batch], [(i, p, t, m) for _, i, p, t, m in batch], vecs)
                    done += len(batch)
                    log.info("reembed: %d/%d", done, total)
                plan = plan_index(config.index, dim, store.count(), strict=False)
                index, trained = build_index(store, dim, config.index, plan)
            except BaseException:
                store.close()
                shutil.rmtree(gdir, ignore_errors=True)
                raise
            manifest = self._new_manifest(config, embedder, fingerprint, new_gen, plan)
            manifest["index"]["trained"] = trained
            manifest["created_at"] = self._manifest.get("created_at")
            manifest["reembedded_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            if self._manifest.get("stable"):  # readers still serve that one until this writer closes
                manifest["stable"] = self._manifest["stable"]
            old_store = self._store
            with self._rw.write():
                self._store, self._index = store, index
                self._manifest, self.config = manifest, config
                self.embedder, self._fingerprint_checked = embedder, True
                self.reranker = Reranker.from_config(config)
                self.clear_caches()  # the new file numbers vids afresh
                self._apply_search_settings()
            self._saved_seq = -1
            self.save()  # the manifest now points at the new generation
            old_store.close()
            if not has_readers(generation_dir(self.path, old_gen)):
                shutil.rmtree(generation_dir(self.path, old_gen), ignore_errors=True)
        return {"generation": new_gen, "vectors": done, "dim": dim, "model": model, "backend": embedder.backend,
                "seconds": round(time.perf_counter() - t0, 2)}
