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
from .errors import IndexMismatchError, InputError, RetrieverError
from .filters import compile_filter
from .models import file_sha256
from .persistence import (
    FORMAT_VERSION, MANIFEST, PREVIOUS, SNAPSHOT, STORE, WriterLock, fsync_dir, generation_dir, read_manifest,
    write_json_atomic,
)
from .rerank import Reranker
from .results import DeleteReport, Hit, UpsertReport, VerifyReport
from .store import Store
from .vector_index import VectorIndex
from .vectors import as_unit_vectors

log = logging.getLogger("retriever")

MAX_K = 10_000
MAX_QUERY_CHARS = 20_000


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
        self.recovered = recovered  # why the FAISS snapshot was repaired on open, or None
        self._write_lock = threading.RLock()
        self._index_lock = threading.RLock()
        self._saved_seq = (manifest.get("snapshot") or {}).get("seq", -1) if recovered is None else -1
        self._fingerprint_checked = False
        self._closed = False
        self.embedder = Embedder.from_config(config.embedding)
        self.reranker = Reranker.from_config(config)

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
        runtime.configure(config.runtime.torch_threads, config.runtime.faiss_threads)
        embedder = Embedder.from_config(config.embedding)
        dim = embedder.dim
        fingerprint = embedder.fingerprint()
        root.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(root)
        lock.acquire()
        gen = 1
        gdir = generation_dir(root, gen)
        gdir.mkdir()
        store = Store.create(gdir / STORE, dim)
        index = VectorIndex(dim, config.index.kind)
        manifest = cls._new_manifest(config, embedder, fingerprint, gen)
        r = cls(root, manifest, store, index, config, read_only=False, lock=lock, recovered=None)
        r.embedder = embedder
        r._fingerprint_checked = True
        r._saved_seq = -1
        r.save()
        return r

    @staticmethod
    def _new_manifest(config: RetrieverConfig, embedder: Embedder, fingerprint: dict, generation: int) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "generation": generation,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config.to_dict(),
            "embedder": {"name": embedder.name, "dim": embedder.dim, "max_seq_length": embedder.max_seq_length,
                         "fingerprint": fingerprint},
            "index": {"kind": config.index.kind, "params": {}, "metric": "inner_product", "normalized": True},
            "counts": {"documents": 0, "vectors": 0},
            "snapshot": None,
            "previous": None,
        }

    @classmethod
    def open(cls, path: str | os.PathLike, config: RetrieverConfig | None = None, *, read_only: bool = False) -> "Retriever":
        """Open an index. `config` may change search-time settings (rerank, runtime, ingest, chunking); a different
        embedding model is refused (use :meth:`reembed`)."""
        root = Path(path)
        manifest = read_manifest(root)
        stored = RetrieverConfig.from_dict(manifest["config"], source=str(root / MANIFEST))
        if config is None:
            config = stored
        else:
            if not isinstance(config, RetrieverConfig):
                raise InputError(f"config must be a RetrieverConfig, got {type(config).__name__}")
            if config.embedding.model != stored.embedding.model:
                raise IndexMismatchError(
                    f"{root} was embedded with {stored.embedding.model!r}, not {config.embedding.model!r}; "
                    f"open it with embedding.model = {stored.embedding.model!r}, or re-embed it: "
                    f"`retriever reembed {root} --model {config.embedding.model}`"
                )
            if config.index.kind != stored.index.kind:
                raise InputError(
                    f"{root} holds a {stored.index.kind!r} index, not {config.index.kind!r}; keep index.kind = "
                    f"{stored.index.kind!r} (changing the kind of an existing index is a rebuild)"
                )
        runtime.configure(config.runtime.torch_threads, config.runtime.faiss_threads)
        lock = None
        if not read_only:
            lock = WriterLock(root)
            lock.acquire()
        try:
            if not read_only:
                cls._remove_stale_generations(root, manifest["generation"])
            gdir = generation_dir(root, manifest["generation"])
            store = Store.open(gdir / STORE, read_only=read_only)
            dim = manifest["embedder"]["dim"]
            if store.dim != dim:
                raise IndexMismatchError(f"{gdir / STORE} holds {store.dim}-d vectors but the manifest says {dim}")
            index, recovered = cls._load_index(gdir, manifest, store, config.index.kind)
        except BaseException:
            if lock:
                lock.release()
            raise
        r = cls(root, manifest, store, index, config, read_only=read_only, lock=lock, recovered=recovered)
        if recovered:
            log.warning("%s: %s", root, recovered)
            if not read_only:
                r.save()
        return r

    @staticmethod
    def _remove_stale_generations(root: Path, current: int) -> None:
        """Leftovers of an interrupted save or re-embed: other generations and temporary files (the writer lock
        is held, so no other process is writing them)."""
        for d in root.glob("gen-*"):
            if d.is_dir() and d != generation_dir(root, current):
                shutil.rmtree(d, ignore_errors=True)
        for tmp in [*root.glob(f".{MANIFEST}.tmp-*"), *generation_dir(root, current).glob(f".{SNAPSHOT}.tmp-*")]:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _load_index(gdir: Path, manifest: dict, store: Store, kind: str) -> tuple[VectorIndex, str | None]:
        """The snapshot whose checksum the manifest vouches for, brought up to date from the changelog; or a
        rebuild from the vectors in DuckDB when no snapshot can be trusted. Returns (index, why repaired)."""
        dim = manifest["embedder"]["dim"]
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
            try:
                index = VectorIndex.read(f, dim, kind)
            except Exception as e:  # faiss raises RuntimeError on a damaged file
                problems.append(f"{name} is unreadable ({str(e).splitlines()[0]})")
                continue
            added, deleted = store.changes_since(meta["seq"])
            if len(deleted):
                index.remove(deleted)
            if len(added):
                have = set(index.ids().tolist())
                vids, vecs = store.vectors(v for v in added.tolist() if v not in have)
                index.add(vids, vecs)
            if np.array_equal(np.sort(index.ids()), store.vids()):
                why = None if name == SNAPSHOT else f"{SNAPSHOT} was not usable ({'; '.join(problems)}); used {PREVIOUS}"
                if why is None and (len(added) or len(deleted)):
                    why = f"replayed {len(added)} additions and {len(deleted)} deletions logged after the last save"
                return index, why
            problems.append(f"{name} plus the changelog does not match the documents table")
        vids, vecs = store.vectors()
        index = VectorIndex.build(dim, kind, vids, vecs)
        return index, f"rebuilt the FAISS index from the {len(vids)} vectors in DuckDB ({'; '.join(problems)})"

    def save(self) -> None:
        """Write the FAISS snapshot (temp file, fsync, rename; the old one kept as .prev), then the manifest."""
        if self.read_only or self._closed:
            return
        with self._write_lock:
            seq = self._store.last_seq()
            if seq == self._saved_seq:
                return
            self._store.checkpoint()
            gdir = generation_dir(self.path, self._manifest["generation"])
            tmp = gdir / f".{SNAPSHOT}.tmp-{os.getpid()}"
            with self._index_lock:
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
            manifest["counts"] = {"documents": self._store.count_parents(), "vectors": ntotal}
            write_json_atomic(self.path / MANIFEST, manifest)
            self._manifest = manifest
            self._saved_seq = seq
            if manifest["previous"]:
                self._store.prune_changelog(manifest["previous"]["seq"])

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.save()
        finally:
            self._closed = True
            self._store.close()
            if self._lock:
                self._lock.release()

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        with self._write_lock:
            result = self._store.upsert([d.id for d in docs], rows, vectors)
            order = {p.id: i for i, p in enumerate(pieces)}
            with self._index_lock:
                self._index.remove(result.removed_vids)
                self._index.add(result.added_vids, vectors[[order[i] for i in result.added_ids]])
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
        with self._write_lock:
            result = self._store.delete(ids)
            with self._index_lock:
                self._index.remove(result.removed_vids)
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
                      rerank: bool = True) -> tuple[list[list[Hit]], dict[str, Any]]:
        """`search_batch` plus a trace for evaluation: milliseconds per stage (embed, search, join, rerank), the
        query vectors, and each query's candidates in retrieval order as (id, parent id, cosine)."""
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise InputError("queries must be a list of strings; for a single query use search()")
        queries = [_check_query(q, f"queries[{i}]") for i, q in enumerate(queries)]
        k = _check_k(k)
        trace: dict[str, Any] = {}
        if not queries:
            return [], trace
        self._check_open()
        t0 = time.perf_counter()
        q = self._embedder().encode(queries)
        trace["embed_ms"] = (time.perf_counter() - t0) * 1000
        trace["query_vectors"] = q
        allowed = self._allowed(filters)
        return self._search_vectors(queries, q, k, allowed, rerank, trace), trace

    def search_by_vector(self, vector, k: int = 10, filters: dict | None = None) -> list[Hit]:
        """Top-k by cosine for a raw vector (lists, float64, non-contiguous accepted; normalized here)."""
        k = _check_k(k)
        self._check_open()
        q = as_unit_vectors(vector, self._index.dim, what="query vector")
        if len(q) != 1:
            raise InputError(f"search_by_vector takes one vector, got {len(q)}; use a loop or search_batch")
        return self._search_vectors(None, q, k, self._allowed(filters), rerank=False)[0]

    def _check_open(self) -> None:
        if self._closed:
            raise RetrieverError(f"{self.path} is closed; open it again with Retriever.open")

    def _allowed(self, filters: dict | None) -> np.ndarray | None:
        if filters is None or filters == {}:
            return None
        sql, params = compile_filter(filters)
        return self._store.filter_vids(sql, params)

    def _ann(self, q: np.ndarray, n: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, vids) of the n nearest per query; vid -1 marks an empty slot."""
        if allowed is not None and len(allowed) <= self.config.index.exact_filter_threshold:
            if not len(allowed):
                return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
            vids, vecs = self._store.vectors(allowed)
            sims = q @ vecs.T
            n = min(n, len(vids))
            top = np.argsort(-sims, axis=1, kind="stable")[:, :n]
            return np.take_along_axis(sims, top, axis=1), vids[top]
        with self._index_lock:
            if len(self._index) == 0:
                return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
            return self._index.search(q, n, allowed)

    def _search_vectors(self, queries: list[str] | None, q: np.ndarray, k: int, allowed: np.ndarray | None,
                        rerank: bool, trace: dict[str, Any] | None = None) -> list[list[Hit]]:
        trace = {} if trace is None else trace
        do_rerank = bool(rerank) and self.config.rerank.enabled and queries is not None
        n = max(k, self.config.rerank.candidates) if do_rerank else k
        t0 = time.perf_counter()
        scores, vids = self._ann(q, n, allowed)
        t1 = time.perf_counter()
        rows = self._store.fetch(np.unique(vids[vids >= 0]).tolist())
        candidates = [[(rows[int(v)], float(s)) for s, v in zip(srow, vrow) if v >= 0 and int(v) in rows]
                      for srow, vrow in zip(scores, vids)]
        t2 = time.perf_counter()
        trace.update(search_ms=(t1 - t0) * 1000, join_ms=(t2 - t1) * 1000, rerank_ms=0.0, reranked=do_rerank)
        trace["candidates"] = [[(r.id, r.metadata.get("parent_id", r.id) if CHUNK_SEPARATOR in r.id else r.id, cos)
                                for r, cos in c] for c in candidates]
        if not do_rerank:
            return [[Hit(r.id, r.text, r.metadata, rank, cos, cos, None)
                     for rank, (r, cos) in enumerate(c[:k], 1)] for c in candidates]
        pairs = [(query, row.text) for query, c in zip(queries, candidates) for row, _ in c]
        flat = self.reranker.score_pairs(pairs)
        trace["rerank_ms"] = (time.perf_counter() - t2) * 1000
        out, start = [], 0
        for c in candidates:
            rs = flat[start:start + len(c)]
            start += len(c)
            order = sorted(range(len(c)), key=lambda i: (-rs[i], i))[:k]
            out.append([Hit(c[i][0].id, c[i][0].text, c[i][0].metadata, rank, float(rs[i]), c[i][1], float(rs[i]))
                        for rank, i in enumerate(order, 1)])
        return out

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
            "rerank_model": self.config.rerank.model,
            "index_kind": self._index.kind,
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
        with self._index_lock:
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
                err = max(float(np.abs(self._index.reconstruct(v) - x).max()) for v, x in zip(vids, vecs))
                checks["vector_max_abs_diff"] = err
                if err > 1e-5:
                    problems.append(f"FAISS vectors differ from DuckDB's by {err:.2g} (run `retriever rebuild {self.path}`)")
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
        return VerifyReport(ok=not problems, problems=tuple(problems), checks=checks)

    def rebuild(self) -> int:
        """Rebuild FAISS from the vectors stored in DuckDB (no re-embedding) and save. Returns the vector count."""
        self._require_writable()
        with self._write_lock:
            vids, vecs = self._store.vectors()
            index = VectorIndex.build(self._index.dim, self.config.index.kind, vids, vecs)
            with self._index_lock:
                self._index = index
            self._saved_seq = -1
            self.save()
        return len(vids)

    def reembed(self, model: str, *, batch_size: int | None = None, show_progress: bool = False) -> dict[str, Any]:
        """Re-embed every stored text with `model` into a new index generation. The current generation stays
        the one in use until the new one is complete (manifest switch last); then the old one is removed."""
        self._require_writable()
        if not isinstance(model, str) or not model.strip():
            raise InputError("model must be a sentence-transformers model name or path, or a builtin: name")
        t0 = time.perf_counter()
        emb_cfg = {"model": model}
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
            index = VectorIndex(dim, config.index.kind)
            total = self._store.count()
            done = 0
            try:
                for batch in self._store.iter_texts(batch=max(256, config.embedding.batch_size * 8)):
                    vecs = embedder.encode([t for _, _, _, t, _ in batch], show_progress_bar=show_progress)
                    res = store.upsert([i for _, i, _, _, _ in batch],
                                       [(i, p, t, m) for _, i, p, t, m in batch], vecs)
                    order = {row[1]: j for j, row in enumerate(batch)}
                    index.add(res.added_vids, vecs[[order[i] for i in res.added_ids]])
                    done += len(batch)
                    log.info("reembed: %d/%d", done, total)
            except BaseException:
                store.close()
                shutil.rmtree(gdir, ignore_errors=True)
                raise
            manifest = self._new_manifest(config, embedder, fingerprint, new_gen)
            manifest["created_at"] = self._manifest.get("created_at")
            manifest["reembedded_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            old_store = self._store
            with self._index_lock:
                self._store, self._index = store, index
                self._manifest, self.config = manifest, config
                self.embedder, self._fingerprint_checked = embedder, True
                self.reranker = Reranker.from_config(config)
            self._saved_seq = -1
            self.save()  # the manifest now points at the new generation
            old_store.close()
            shutil.rmtree(generation_dir(self.path, old_gen), ignore_errors=True)
        return {"generation": new_gen, "vectors": done, "dim": dim, "model": model,
                "seconds": round(time.perf_counter() - t0, 2)}
