"""`Retriever`: documents in, normalized-cosine FAISS top-k, DuckDB metadata join, cross-encoder rerank, hits out.

The facade over three parts: the open `Generation` (DuckDB store, FAISS index, manifest; their life on disk),
the `Searcher` (the query pipeline, over a `CandidateSearch`) and `maintenance` (stats, verify, tune, rebuild,
re-embed). DuckDB is the source of truth; the FAISS file is a derived snapshot, checked by sha256 on open, brought
up to date from the changelog, or rebuilt from the stored vectors. docs/architecture.md maps the modules.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import maintenance, runtime
from .candidates import CandidateSearch
from .config import RetrieverConfig
from .documents import Document, validate_documents
from .embedding import Embedder
from .errors import InputError
from .filters import compile_where
from .generation import Generation
from .inputs import check_ids, check_k, check_mode, check_queries, check_query
from .lexical import LexicalIndex
from .manifest import Manifest
from .metadata_fields import check_documents
from .models_in_use import ModelsInUse
from .prepared import Prepared, prepare
from .results import DeleteReport, Hit, UpsertReport, VerifyReport
from .searcher import Searcher, SearchTrace
from .sharding import is_sharded
from .store import Store
from .vector_index import VectorIndex
from .vectors import as_unit_vectors


class Retriever:
    """Open with :meth:`create` or :meth:`open`; use as a context manager so it saves and closes."""

    def __init__(self, generation: Generation, embedder: Embedder | None = None):
        self._gen = generation
        self._models = ModelsInUse(generation.config, embedder)
        self.candidates = CandidateSearch(generation)
        self.searcher = Searcher(generation, self.candidates, self._models, generation.config.cache)

    # ------------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike, config: RetrieverConfig | None = None, *, shards: int | None = None):
        """Make a new, empty index at `path` (which must not exist or be an empty directory). `shards=N` makes a
        sharded index (N complete indexes, documents routed by a stable hash of their id; see `sharded`): a
        `ShardedRetriever`, with the same methods."""
        if shards is not None:
            from .sharded import ShardedRetriever

            return ShardedRetriever.create(path, config, shards)
        config = config or RetrieverConfig()
        if not isinstance(config, RetrieverConfig):
            raise InputError(f"config must be a RetrieverConfig, got {type(config).__name__}")
        root = Path(path)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise InputError(f"{root} already exists and is not empty; open it with Retriever.open, or pick a new path")
        runtime.configure_from(config.runtime)
        embedder = Embedder.from_config(config.embedding)
        record = maintenance.embedder_record(embedder, embedder.fingerprint())
        return cls(Generation.create(root, config, record), embedder)

    @classmethod
    def open(cls, path: str | os.PathLike, config: RetrieverConfig | None = None, *, read_only: bool = False,
             overrides: dict[str, dict] | None = None) -> "Retriever":
        """Open an index. `config` may change search-time settings (rerank, runtime, ingest, chunking); a different
        embedding model is refused (use :meth:`reembed`). `overrides` instead changes some settings of the config
        stored with the index, e.g. ``{"rerank": {"budget_ms": 500}}``, whichever generation is opened.

        Read-only opens can run in many processes at once, beside one writer: a writer that finds readers on the
        current generation writes into a copy, and readers move to it on their next open (or server reload) after
        the writer closes or calls :meth:`publish`. A sharded directory (a `shards.json` at the top) opens as a
        `ShardedRetriever`: the same methods, over every shard."""
        if is_sharded(path):
            from .sharded import ShardedRetriever

            return ShardedRetriever.open(path, config, read_only=read_only, overrides=overrides)
        return cls(Generation.open(Path(path), config, overrides, read_only=read_only))

    def save(self) -> None:
        """Write the FAISS snapshot (temp file, fsync, rename; the old one kept as .prev), then the manifest."""
        self._gen.save()

    def close(self) -> None:
        """Save (writers), wait for searches in flight, and release the files. A writer that wrote into a copy of
        the generation readers held hands the copy over to them."""
        self._gen.close()

    def publish(self) -> dict[str, Any]:
        """Save, and make what was saved openable by read-only processes while this one goes on writing: the saved
        generation becomes the manifest's `stable` one and writing continues in a copy. Returns the generations
        and the seconds the copy took (it is the size of the DuckDB file plus the FAISS snapshots)."""
        t0 = time.perf_counter()
        published, writing = self._gen.publish()
        return {"published": published, "writing": writing, "seconds": round(time.perf_counter() - t0, 3)}

    def backup(self, dest: str | os.PathLike):
        """A verified backup of this index in `dest` (a new or empty folder), consistent while it is being served
        and written: it holds every write acknowledged before the call. Returns a BackupReport; check one with
        `retriever verify DEST`, bring it back with `retriever restore DEST DIR`."""
        from .backup import take_backup

        self._gen.check_writable()
        return take_backup(self.path, dest, [("", self)])

    def copy_to(self, dest: str | os.PathLike) -> dict[str, Any]:
        """This index copied into the folder `dest` under the write lock (the part of a backup each writer
        takes): {files: {path: {bytes, sha256}}, generation, seq, documents, vectors}."""
        return self._gen.copy_to(Path(dest))

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def models(self) -> ModelsInUse:
        """The embedder and cross-encoder in use (shards of a sharded index share one)."""
        return self._models

    def adopt_models(self, other: "Retriever") -> None:
        """Share `other`'s loaded embedder and cross-encoder when the settings match (a server's reload swaps
        generations without loading the weights again). The fingerprint check still runs on first use."""
        self._models.adopt(other._models, self.config, other.config)

    # ------------------------------------------------------------------------------------- public faces
    @property
    def path(self) -> Path:
        return self._gen.root

    @property
    def config(self) -> RetrieverConfig:
        return self._gen.config

    @config.setter
    def config(self, value: RetrieverConfig) -> None:
        self._gen.config = value

    @property
    def read_only(self) -> bool:
        return self._gen.read_only

    @property
    def recovered(self) -> str | None:
        """Why the FAISS snapshot was repaired on open, or None."""
        return self._gen.recovered

    @property
    def generation(self) -> int:
        """The index generation this object reads and writes (see `persistence`)."""
        return self._gen.number

    @property
    def manifest(self) -> Manifest:
        """The typed manifest of the generation this object has open."""
        return self._gen.manifest

    @property
    def stored_config(self) -> RetrieverConfig:
        """The settings stored with the index (what `open` without a config would use)."""
        return RetrieverConfig.from_dict(self._gen.manifest.config)

    @property
    def store(self) -> Store:
        """The DuckDB store (the source of truth). Read from it; write through upsert/delete."""
        return self._gen.store

    @property
    def vector_index(self) -> VectorIndex:
        """The FAISS index derived from the store."""
        return self._gen.index

    @property
    def lexical_index(self) -> LexicalIndex:
        """The lexical arm (tantivy BM25 over the stored chunk text) derived from the store."""
        return self._gen.lexical

    @property
    def embedder(self) -> Embedder:
        return self._models.embedder

    @property
    def reranker(self):
        return self._models.reranker

    @property
    def fallbacks(self) -> int:
        """ANN searches that came back short and were completed by an exact scan."""
        return self.candidates.fallbacks

    def checked_embedder(self) -> Embedder:
        """The embedder, checked once against the fingerprint the index was built with."""
        return self._models.checked_embedder(self._gen)

    def clear_caches(self) -> None:
        """Empty the query-embedding and rerank-score caches (benchmarks measuring cold work call this)."""
        self.searcher.clear_caches()

    def cache_stats(self) -> dict[str, dict[str, int]]:
        return self.searcher.cache_stats()

    def __len__(self) -> int:
        """Number of documents (a chunked document counts once)."""
        return self._gen.store.count_parents()

    def __repr__(self) -> str:
        return f"Retriever({str(self.path)!r}, documents={len(self)}, model={self.config.embedding.model!r})"

    # --------------------------------------------------------------------------------------------- writes
    def upsert(self, documents: Iterable[Document], *, show_progress: bool = False) -> UpsertReport:
        """Add or replace documents (by id). All records are validated before anything is embedded or written;
        the batch lands in one transaction. Texts longer than the model's sequence length become chunks."""
        self._gen.check_writable()
        t0 = time.perf_counter()
        docs = validate_documents(documents)
        if not docs:
            return UpsertReport(0, 0, 0, 0, 0, 0.0)
        check_documents(self._gen.store.fields, docs)  # declared metadata fields, before anything is embedded
        prepared = prepare(docs, self.checked_embedder(), self.config.chunking, show_progress=show_progress)
        return self.write_prepared(prepared, t0=t0)

    def write_prepared(self, prepared: Prepared, *, t0: float | None = None) -> UpsertReport:
        """Write documents chunked and embedded by `prepared.prepare` (with this index's embedder) in one
        transaction: the second half of `upsert`, for sharded indexes and distributed ingest."""
        self._gen.check_writable()
        t0 = time.perf_counter() if t0 is None else t0
        if not prepared.keys:
            return UpsertReport(0, 0, 0, 0, 0, 0.0)
        result = self._gen.upsert(prepared.keys, prepared.rows, prepared.vectors)
        self.searcher.forget(result.removed_vids)
        replaced = len(result.replaced_keys)
        return UpsertReport(documents=len(prepared.keys), added=len(prepared.keys) - replaced, updated=replaced,
                            vectors=len(prepared.rows), chunked=prepared.chunked, seconds=time.perf_counter() - t0)

    def delete(self, ids: Iterable[str]) -> DeleteReport:
        """Remove documents (and their chunks) by id; they stop appearing in results immediately."""
        self._gen.check_writable()
        ids = check_ids(ids)
        if not ids:
            return DeleteReport(0)
        result = self._gen.delete(ids)
        self.searcher.forget(result.removed_vids)
        missing = tuple(i for i in dict.fromkeys(ids) if i not in result.replaced_keys)
        return DeleteReport(deleted=len(result.replaced_keys), missing=missing, vectors=len(result.removed_vids))

    # ---------------------------------------------------------------------------------------------- reads
    def get(self, id: str) -> Document | None:
        """The stored record with this id (a chunk has the id ``"{parent}#chunk-{i}"``), or None."""
        if not isinstance(id, str):
            raise InputError(f"id = {id!r} is a {type(id).__name__}; ids are strings")
        row = self._gen.store.get(id)
        return None if row is None else Document(row.id, row.text, row.metadata)

    def search(self, query: str, k: int = 10, filters: dict | None = None, rerank: bool = True, *,
               mode: str | None = None) -> list[Hit]:
        """Top-k hits for a query: k distinct documents (`[retrieval] results = "documents"`, the default) or k
        chunks. With `filters`, only matching documents are searched by either arm, so the result holds
        min(k, matches) hits. `mode` ("dense", "lexical", "hybrid") overrides `[retrieval] mode` for this call.
        `rerank=False` skips the cross-encoder (and never loads it)."""
        query, k, mode = check_query(query), check_k(k), check_mode(mode)
        return self.searcher.search([query], k, compile_where(filters), rerank=rerank, mode=mode)[0][0]

    def search_batch(self, queries: Sequence[str], k: int = 10, filters: dict | None = None,
                     rerank: bool = True, *, mode: str | None = None) -> list[list[Hit]]:
        """`search` for several queries at once: one embedding batch, one FAISS call, one rerank batch."""
        queries, k, mode = check_queries(queries), check_k(k), check_mode(mode)
        return self.searcher.search(queries, k, compile_where(filters), rerank=rerank, mode=mode)[0]

    def search_traced(self, queries: Sequence[str], k: int = 10, filters: dict | None = None,
                      rerank: bool = True, *, rerank_budget_ms: float | None = None, record: bool = True,
                      mode: str | None = None) -> tuple[list[list[Hit]], SearchTrace]:
        """`search_batch` plus a `SearchTrace`: milliseconds per stage (embed, search, join, rerank), whether the
        hits were reranked, whether the rerank time budget ran out (the hits are then in retrieval order), and
        with `record` (the default) the query vectors and each query's candidates in retrieval order as (id,
        document id, cosine) and every arm's ranked document ids (`trace.arms`: both arms run when recording).
        `rerank_budget_ms` overrides `[rerank] budget_ms` for this call (0 = no budget); `trace.notes` says
        when a query's lexical part was only stop words."""
        queries, k, mode = check_queries(queries), check_k(k), check_mode(mode)
        return self.searcher.search(queries, k, compile_where(filters), rerank=rerank, budget_ms=rerank_budget_ms,
                                    record=record, mode=mode)

    def search_by_vector(self, vector, k: int = 10, filters: dict | None = None) -> list[Hit]:
        """Top-k by cosine for a raw vector (lists, float64, non-contiguous accepted; normalized here)."""
        k = check_k(k)
        self._gen.check_open()
        q = as_unit_vectors(vector, self._gen.index.dim, what="query vector")
        if len(q) != 1:
            raise InputError(f"search_by_vector takes one vector, got {len(q)}; use a loop or search_batch")
        return self.searcher.search_vectors(None, q, k, compile_where(filters))[0]

    # ---------------------------------------------------------------------------------------- maintenance
    def stats(self) -> dict[str, Any]:
        return maintenance.stats(self._gen, self._models, self.cache_stats(), self.fallbacks)

    def index_status(self) -> dict[str, Any]:
        """The built index: kind, parameters, why it was chosen, training, masked share, search settings, and
        warnings about maintenance that is due (retraining, compaction, a kind `auto` would now change)."""
        return maintenance.index_status(self._gen, self.fallbacks)

    def verify(self, *, check_model: bool = True) -> VerifyReport:
        """Check the index against its source of truth; returns problems instead of raising."""
        return maintenance.verify(self._gen, self._models, self.fallbacks, check_model=check_model)

    def tune(self, target_recall: float = 0.95, k: int = 10, *, sample: int = 1000,
             queries: Sequence[str] | None = None, seed: int = 0):
        """Find the cheapest nprobe / ef_search / PQ re-score depth reaching `target_recall` (ANN recall@k against
        exact search) and store it in the manifest, where every later open picks it up (a non-zero
        index.nprobe / index.ef_search / index.rescore in the config still wins). Returns a TuneReport;
        nothing is stored when the target is not reached."""
        from .tuning import tune

        self._gen.check_writable()
        query_vectors = self.checked_embedder().encode(list(queries)) if queries else None
        with self._gen.write_lock:
            report = tune(self.candidates.search, self._gen.store, self._gen.index, target_recall, k,
                          sample=sample, query_vectors=query_vectors, seed=seed)
            maintenance.store_tuning(self._gen, report, report.k)
        return report

    def rebuild(self, index: dict | None = None, *, codebook=None) -> int:
        """Rebuild FAISS from the vectors stored in DuckDB (no re-embedding), retraining IVF/PQ on a fresh sample,
        compacting masked HNSW vectors, and re-deciding `auto`; then save. `index` changes [index] settings,
        e.g. ``rebuild({"kind": "hnsw"})``: they are checked against the corpus before any work. `codebook` (a
        `codebook.SharedCodebook`, what a sharded index passes its shards) replaces the training. Returns the
        vector count."""
        self._gen.check_writable()
        return maintenance.rebuild(self._gen, index, codebook)

    def adopt_codebook(self, codebook) -> None:
        """Rebuild FAISS from the stored vectors with a sharded index's one IVF/PQ training (`codebook`), saved at
        the next save; the lexical arm and the store are untouched."""
        self._gen.check_writable()
        maintenance.adopt_codebook(self._gen, codebook)

    @property
    def closed(self) -> bool:
        return self._gen.closed

    @property
    def shared_training(self) -> bool:
        """True for a shard of a sharded index: its IVF/PQ index is trained with its siblings', not alone."""
        return self._gen.shared_training

    @shared_training.setter
    def shared_training(self, value: bool) -> None:
        self._gen.shared_training = bool(value)

    def add_metadata_fields(self, fields: dict[str, str]) -> dict[str, Any]:
        """Filter these metadata fields ({name: type}, e.g. ``{"year": "int", "tags": "list[str]"}``) through
        typed, indexed columns from now on: they are filled from the stored metadata in one transaction (a stored
        value of another type refuses the step, naming its document; nothing changes) and recorded in the
        manifest's `[metadata] fields`. Filters give the same rows as before, faster. Returns what was added."""
        self._gen.check_writable()
        return maintenance.add_metadata_fields(self._gen, fields)

    def reembed(self, model: str, *, batch_size: int | None = None, backend: str | None = None,
                show_progress: bool = False) -> dict[str, Any]:
        """Re-embed every stored text with `model` (by `backend`, default: the configured one) into a new index
        generation. The current generation stays the one in use until the new one is complete (manifest switch
        last); then the old one is removed."""
        self._gen.check_writable()
        return maintenance.reembed(self._gen, self._models, self.searcher, model, batch_size=batch_size,
                                   backend=backend, show_progress=show_progress)

