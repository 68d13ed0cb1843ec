"""`ShardedRetriever`: the `Retriever` surface over N shards, each a complete index (see `sharding` for the layout
and the routing hash). `Retriever.open` returns one for a sharded directory, `Retriever.create(..., shards=N)`
makes one.

A query is embedded once, here, and its retrieval stages fan out to the shards (`fanout.ShardedSearcher`: merged
per arm by score, then the same fusion and one rerank as an unsharded index). A flat sharded index therefore
returns the ids and scores of the unsharded index of the same documents in dense mode; an IVF one is trained once
for all shards (`codebook`), so it returns those of one IVF index with that codebook. The lexical arm's BM25 uses
each shard's own term statistics (as Elasticsearch's default query_then_fetch does), so lexical and hybrid scores
differ slightly from an unsharded index's.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import codebook
from .config import RetrieverConfig
from .documents import CHUNK_SEPARATOR, Document, validate_documents
from .errors import InputError, RetrieverError
from .inputs import check_ids, check_k, check_mode, check_queries, check_query
from .filters import compile_where
from .metadata_fields import check_documents
from .prepared import Prepared, prepare
from .results import DeleteReport, Hit, UpsertReport, VerifyReport
from .fanout import ShardedSearcher
from .searcher import SearchTrace
from .sharding import SHARDS, check_shard_count, read_layout, shard_dir_name, shard_of, write_layout
from .vectors import as_unit_vectors


def _sum_reports(cls, reports: list, **extra):
    fields = cls.__dataclass_fields__
    values = {f: sum(getattr(r, f) for r in reports) for f in fields if f not in extra}
    return cls(**values, **extra)


class ShardedStoreView:
    """What readers of a whole index ask of its store (the evaluation harness), over every shard's store."""

    def __init__(self, stores):
        self._stores = stores

    def document_ids(self) -> set[str]:
        return set().union(*(s.document_ids() for s in self._stores))

    def ids_and_vectors(self) -> tuple[list[str], np.ndarray]:
        parts = [s.ids_and_vectors() for s in self._stores]
        return [i for ids, _ in parts for i in ids], np.concatenate([v for _, v in parts])

    def count_parents(self) -> int:
        return sum(s.count_parents() for s in self._stores)

    def get(self, doc_id: str):
        for s in self._stores:
            row = s.get(doc_id)
            if row is not None:
                return row
        return None


class ShardedRetriever:
    """The `Retriever` surface over the shards of a sharded index directory."""

    def __init__(self, root: Path, layout: dict[str, Any], shards: list):
        self.root = root
        self.layout = layout
        self.shards = shards
        first = shards[0]
        for s in shards[1:]:  # one embedder and one cross-encoder for all, checked once
            s.adopt_models(first)
        # in-process shards (not Ray Serve's remote ones) train IVF/PQ together, on a sample across them
        self._local = all(hasattr(s, "adopt_codebook") for s in shards)
        for s in shards if self._local else ():
            s.shared_training = True
        self._models = first.models
        self.searcher = ShardedSearcher([s.searcher for s in shards], self._models, first.config.cache)

    # ------------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike, config: RetrieverConfig | None, shards: int) -> "ShardedRetriever":
        from .retriever import Retriever

        n = check_shard_count(shards)
        root = Path(path)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise InputError(f"{root} already exists and is not empty; open it with Retriever.open, or pick a new path")
        root.mkdir(parents=True, exist_ok=True)
        opened = [Retriever.create(root / shard_dir_name(i), config) for i in range(n)]
        layout = write_layout(root, n)  # last: a crash before it leaves no half-made index that opens
        return cls(root, layout, opened)

    @classmethod
    def open(cls, path: str | os.PathLike, config: RetrieverConfig | None = None, *, read_only: bool = False,
             overrides: dict[str, dict] | None = None) -> "ShardedRetriever":
        from .retriever import Retriever

        root = Path(path)
        layout = read_layout(root)
        opened = []
        try:
            for d in layout["dirs"]:
                opened.append(Retriever.open(root / d, config, read_only=read_only, overrides=overrides))
        except BaseException:
            for r in opened:
                r.close()
            raise
        return cls(root, layout, opened)

    def save(self) -> None:
        """Save every shard; first, when the corpus's IVF/PQ kind can be trained and a shard still waits for it
        (or the shards' codebooks differ), train one codebook for all of them (`codebook`)."""
        self._share_training()
        for s in self.shards:
            s.save()

    def _share_training(self) -> None:
        if self._local and not self.read_only and not any(s.closed for s in self.shards):
            codebook.share_when_due(self.shards, self.config)

    def close(self) -> None:
        """Save (writers: sharing the IVF/PQ training first, as `save`) and close every shard."""
        self.searcher.close()
        errors = []
        try:
            self._share_training()
        except Exception as e:  # the shards still save and close; the failure is reported after
            errors.append(e)
        for s in self.shards:
            try:
                s.close()
            except Exception as e:  # close every shard, then report the first failure
                errors.append(e)
        if errors:
            raise errors[0]

    def publish(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self._share_training()
        per = [s.publish() for s in self.shards]
        return {"shards": per, "seconds": round(time.perf_counter() - t0, 3)}

    def backup(self, dest: str | os.PathLike):
        """Every shard copied by its writer under its write lock, and shards.json: see `Retriever.backup`."""
        from .backup import take_backup

        if self.read_only:
            raise RetrieverError(f"{self.root} was opened read-only; a backup is taken by its writer "
                                 f"(open it with read_only=False)")
        return take_backup(self.root, dest, [(shard_dir_name(i), s) for i, s in enumerate(self.shards)],
                           layout=self.root / SHARDS)

    def __enter__(self) -> "ShardedRetriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def adopt_models(self, other) -> None:
        """Share `other`'s loaded models (a server's reload) where the settings match."""
        source = other.shards[0] if isinstance(other, ShardedRetriever) else other
        for s in self.shards:
            s.adopt_models(source)
        self._models = self.shards[0].models  # the same object, updated in place: the searcher sees it

    # ------------------------------------------------------------------------------------- public faces
    @property
    def path(self) -> Path:
        return self.root

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    def shard_for(self, doc_id: str) -> int:
        """The shard an id is routed to."""
        return shard_of(doc_id, len(self.shards))

    @property
    def config(self) -> RetrieverConfig:
        return self.shards[0].config

    @config.setter
    def config(self, value: RetrieverConfig) -> None:
        for s in self.shards:
            s.config = value

    @property
    def read_only(self) -> bool:
        return self.shards[0].read_only

    @property
    def recovered(self) -> str | None:
        said = [f"{shard_dir_name(i)}: {s.recovered}" for i, s in enumerate(self.shards) if s.recovered]
        return "; ".join(said) or None

    @property
    def generation(self) -> int:
        """The sum of the shards' generations: it grows whenever any shard publishes (see `generations`)."""
        return sum(self.generations)

    @property
    def generations(self) -> list[int]:
        return [s.generation for s in self.shards]

    @property
    def manifest(self):
        """The first shard's manifest (every shard has the same config and embedder)."""
        return self.shards[0].manifest

    @property
    def stored_config(self) -> RetrieverConfig:
        return self.shards[0].stored_config

    @property
    def store(self) -> ShardedStoreView:
        return ShardedStoreView([s.store for s in self.shards])

    @property
    def vector_index(self):
        """The first shard's FAISS index (every shard is built by the same rule; `stats()` lists each)."""
        return self.shards[0].vector_index

    @property
    def embedder(self):
        return self._models.embedder

    @property
    def reranker(self):
        return self._models.reranker

    @property
    def fallbacks(self) -> int:
        return sum(s.fallbacks for s in self.shards)

    def checked_embedder(self):
        return self._models.checked_embedder(self.shards[0].searcher.generation)

    def clear_caches(self) -> None:
        self.searcher.clear_caches()
        for s in self.shards:
            s.clear_caches()

    def cache_stats(self) -> dict[str, dict[str, int]]:
        return self.searcher.cache_stats()

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def __repr__(self) -> str:
        return (f"ShardedRetriever({str(self.root)!r}, shards={len(self.shards)}, documents={len(self)}, "
                f"model={self.config.embedding.model!r})")

    # --------------------------------------------------------------------------------------------- writes
    def _route(self, ids: Iterable[str]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for i, doc_id in enumerate(ids):
            groups.setdefault(self.shard_for(doc_id), []).append(i)
        return groups

    def upsert(self, documents: Iterable[Document], *, show_progress: bool = False) -> UpsertReport:
        """Add or replace documents, each on the shard its id hashes to. Every record is validated and the batch
        embedded once (the vectors an unsharded upsert of the batch would store) before any shard is written;
        each shard's part lands in one transaction of that shard (a crash between two shards leaves the earlier
        ones written: upserting the same batch again is idempotent)."""
        self.shards[0].searcher.generation.check_writable()
        t0 = time.perf_counter()
        docs = validate_documents(documents)
        if not docs:
            return UpsertReport(0, 0, 0, 0, 0, 0.0)
        check_documents(self.config.metadata.fields, docs)  # before any shard is written
        prepared = prepare(docs, self.checked_embedder(), self.config.chunking, show_progress=show_progress)
        return self.write_prepared(prepared, t0=t0)

    def write_prepared(self, prepared: Prepared, *, t0: float | None = None) -> UpsertReport:
        """Write a prepared batch, each shard's share in that shard's transaction."""
        t0 = time.perf_counter() if t0 is None else t0
        groups = self._route(prepared.parents)
        reports = [self.shards[s].write_prepared(prepared.select({prepared.parents[i] for i in idx}))
                   for s, idx in sorted(groups.items())]
        if not reports:
            return UpsertReport(0, 0, 0, 0, 0, 0.0)
        return _sum_reports(UpsertReport, reports, seconds=time.perf_counter() - t0)

    def delete(self, ids: Iterable[str]) -> DeleteReport:
        self.shards[0].searcher.generation.check_writable()
        ids = check_ids(ids)
        reports = [self.shards[s].delete([ids[i] for i in idx]) for s, idx in sorted(self._route(ids).items())]
        missing = {m for r in reports for m in r.missing}
        if missing:  # a record whose metadata names another parent lives on its parent's shard: ask the rest
            others = [s.delete(sorted(missing)) for s in self.shards]
            reports += others
            missing -= {m for r in others for m in sorted(missing) if m not in r.missing}
        return DeleteReport(deleted=sum(r.deleted for r in reports),
                            missing=tuple(i for i in dict.fromkeys(ids) if i in missing),
                            vectors=sum(r.vectors for r in reports))

    # ---------------------------------------------------------------------------------------------- reads
    def get(self, id: str) -> Document | None:
        if not isinstance(id, str):
            raise InputError(f"id = {id!r} is a {type(id).__name__}; ids are strings")
        # a chunk id ("{parent}#chunk-{i}") lives with its parent
        return self.shards[self.shard_for(id.split(CHUNK_SEPARATOR)[0])].get(id)

    def search(self, query: str, k: int = 10, filters: dict | None = None, rerank: bool = True, *,
               mode: str | None = None) -> list[Hit]:
        query, k, mode = check_query(query), check_k(k), check_mode(mode)
        return self.searcher.search([query], k, compile_where(filters), rerank=rerank, mode=mode)[0][0]

    def search_batch(self, queries: Sequence[str], k: int = 10, filters: dict | None = None,
                     rerank: bool = True, *, mode: str | None = None) -> list[list[Hit]]:
        queries, k, mode = check_queries(queries), check_k(k), check_mode(mode)
        return self.searcher.search(queries, k, compile_where(filters), rerank=rerank, mode=mode)[0]

    def search_traced(self, queries: Sequence[str], k: int = 10, filters: dict | None = None,
                      rerank: bool = True, *, rerank_budget_ms: float | None = None, record: bool = True,
                      mode: str | None = None) -> tuple[list[list[Hit]], SearchTrace]:
        queries, k, mode = check_queries(queries), check_k(k), check_mode(mode)
        return self.searcher.search(queries, k, compile_where(filters), rerank=rerank,
                                    budget_ms=rerank_budget_ms, record=record, mode=mode)

    def search_by_vector(self, vector, k: int = 10, filters: dict | None = None) -> list[Hit]:
        k = check_k(k)
        q = as_unit_vectors(vector, self.shards[0].vector_index.dim, what="query vector")
        if len(q) != 1:
            raise InputError(f"search_by_vector takes one vector, got {len(q)}; use a loop or search_batch")
        return self.searcher.search_vectors(None, q, k, compile_where(filters))[0]

    # ---------------------------------------------------------------------------------------- maintenance
    def stats(self) -> dict[str, Any]:
        per = [s.stats() for s in self.shards]
        first = per[0]
        summed = {key: sum(p[key] for p in per) for key in ("documents", "vectors", "disk_bytes", "store_bytes",
                                                             "snapshot_bytes")}
        return {"path": str(self.root), "shards": len(self.shards), **summed, "generation": self.generation,
                "generations": [p["generation"] for p in per], "dim": first["dim"],
                "embedding_model": first["embedding_model"], "embedding_backend": self._models.embedder.backend,
                "rerank_model": first["rerank_model"], "rerank_backend": self._models.reranker.backend,
                "caches": self.cache_stats(), "index_kind": first["index_kind"], "index": self.index_status(),
                "routing": self.layout["hash"], "unsaved_changes": any(p["unsaved_changes"] for p in per),
                "read_only": first["read_only"], "recovered": self.recovered,
                "shard_stats": [{"shard": d, **{key: p[key] for key in (
                    "documents", "vectors", "index_kind", "generation", "disk_bytes", "unsaved_changes",
                    "recovered")}, "lexical": p["lexical"]} for d, p in zip(self.layout["dirs"], per)]}

    def index_status(self) -> dict[str, Any]:
        per = [s.index_status() for s in self.shards]
        warnings = [f"{shard_dir_name(i)}: {w}" for i, p in enumerate(per) for w in p["warnings"]]
        return {**per[0], "warnings": warnings, "shards": len(per), **(codebook.status(self.shards) if self._local else {})}

    def verify(self, *, check_model: bool = True) -> VerifyReport:
        reports = [s.verify(check_model=check_model and i == 0) for i, s in enumerate(self.shards)]
        problems = tuple(f"{shard_dir_name(i)}: {p}" for i, r in enumerate(reports) for p in r.problems)
        warnings = tuple(f"{shard_dir_name(i)}: {w}" for i, r in enumerate(reports) for w in r.warnings)
        layout_ok = all(self.shard_for(doc_id) == i for i, s in enumerate(self.shards)
                        for doc_id in s.store.document_ids())
        if not layout_ok:
            problems += ("documents are on a shard their id does not hash to; re-ingest them",)
        trained = codebook.status(self.shards, computed=True) if self._local else {}
        if any(trained.get("codebooks") or ()) and not trained["shared_codebook"]:
            warnings += (f"the shards' IVF/PQ codebooks differ ({', '.join(map(str, trained['codebooks']))}): the "
                         f"merged results are not one index's; run `retriever rebuild` to train one for all",)
        checks = {"shards": len(self.shards), "routing": "ok" if layout_ok else "wrong shard",
                  **{shard_dir_name(i): ("ok" if r.ok else "problems") for i, r in enumerate(reports)}}
        return VerifyReport(ok=not problems, problems=problems, checks=checks, warnings=warnings)

    def tune(self, target_recall: float = 0.95, k: int = 10, **kw):
        return [s.tune(target_recall, k, **kw) for s in self.shards]

    def rebuild(self, index: dict | None = None) -> int:
        """Every shard rebuilt; an IVF/PQ kind trained once on a sample across the shards (`codebook`)."""
        shared = codebook.for_rebuild(self.shards, self.config, index) if self._local else None
        return sum(s.rebuild(index, codebook=shared) for s in self.shards)

    def add_metadata_fields(self, fields: dict[str, str]) -> dict[str, Any]:
        """`Retriever.add_metadata_fields` on every shard, one after the other (each shard in one transaction). A
        stored value of another type stops at its shard, naming the document: the shards before it have the fields,
        and running it again after the fix completes the rest (adding a field of the same type again is a no-op)."""
        done = []
        for i, s in enumerate(self.shards):
            try:
                done.append(s.add_metadata_fields(fields))
            except InputError as e:
                raise InputError(f"{shard_dir_name(i)}: {e} (shards {', '.join(map(shard_dir_name, range(i))) or 'none'} "
                                 f"already have the fields; fix the document and run it again)") from None
        return {**done[0], "rows": sum(d["rows"] for d in done), "shards": len(done)}

    def reembed(self, model: str, **kw) -> dict[str, Any]:
        per = [s.reembed(model, **kw) for s in self.shards]
        self.save()  # each shard trained alone on its new vectors: one codebook for all again
        for s in self.shards[1:]:
            s.adopt_models(self.shards[0])
        self._models = self.shards[0].models
        self.searcher.close()
        self.searcher = ShardedSearcher([s.searcher for s in self.shards], self._models, self.config.cache)
        return {"model": model, "shards": per}
