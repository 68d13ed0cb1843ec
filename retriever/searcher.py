"""The query pipeline, as stages: embed (unit vectors, cached by text) → search (the dense arm: filter, ANN or
exact) and lexical (BM25 over the stored text, the same filter), both under the generation's read lock → join
(one DuckDB fetch of id, text, metadata; chunks collapsed to documents; the arms fused) → rerank (cross-encoder
scores of each result's best passage, cached by (query, vid), under an optional time budget, fused with the
retrieval order) → hits.

`[retrieval] results` says what a hit is: a document (its chunks collapsed at their best, before fusion, so a
long document is counted once) or a chunk (the pipeline before documents mode, exactly). `mode` says which arms
run; with `record` both always run, so evaluation sees every arm side by side.

Callers check their input once (`inputs`) and compile the filter once (`filters.compile_filter`); the searcher
takes both as given. The `SearchTrace` times every stage, and records the query vectors, the dense candidates
and every arm's ranked document ids only when asked (evaluation does, a search does not).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .caches import LRUCache, RerankScoreCache
from .documents import document_id
from .fusion import Candidate, collapse, fuse, rerank_order
from .results import Hit, Passage
from .store import Row

STAGES = ("embed", "search", "lexical", "join", "rerank")
CHUNK_KEYS = ("parent_id", "chunk_index", "chunk_count")  # what chunking adds to a document's metadata

Chunks = list[tuple[int, float]]  # (vid, score), best first


@dataclass
class SearchTrace:
    """Milliseconds per stage, whether the hits were reranked, and whether the rerank budget ran out (the hits are
    then in retrieval order); `notes` says what the caller should know (a lexical query of only stop words). With
    `record`: the query vectors, each query's dense candidates in retrieval order as (id, document id, cosine),
    and `arms`: each query's document ids in rank order from "dense", "lexical", "fused" (the two fused, whatever
    the mode) and "retrieval" (the mode's list, the one the reranker got; up to the rerank window)."""

    embed_ms: float = 0.0
    search_ms: float = 0.0
    lexical_ms: float = 0.0
    join_ms: float = 0.0
    rerank_ms: float = 0.0
    reranked: bool = False
    rerank_timed_out: bool = False
    mode: str = "dense"
    results: str = "documents"
    notes: list[str] = field(default_factory=list)
    query_vectors: np.ndarray | None = None
    candidates: list[list[tuple[str, str, float]]] | None = None
    arms: dict[str, list[list[str]]] | None = None
    missed_shards: list[int] = field(default_factory=list)  # shards that did not answer (Ray Serve): a partial result

    def stage_ms(self) -> dict[str, float]:
        return {s: getattr(self, f"{s}_ms") for s in STAGES}

    # the mapping view of the dict this trace used to be (``trace["reranked"]``), for callers written against it
    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key, None) if key in self.__dataclass_fields__ else None
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


class Searcher:
    def __init__(self, generation, candidates, models, cache_config):
        self._gen = generation
        self._candidates = candidates
        self._models = models
        self.query_cache = LRUCache(cache_config.query_embeddings)
        self.score_cache = RerankScoreCache(cache_config.rerank_scores)

    @property
    def generation(self):
        """The generation this searcher reads (its config, manifest and open state)."""
        return self._gen

    # ------------------------------------------------------------------------------------------ pipeline
    def search(self, queries: list[str], k: int, where: tuple[str, list] | None, *, rerank: bool = True,
               budget_ms: float | None = None, record: bool = False, mode: str | None = None
               ) -> tuple[list[list[Hit]], SearchTrace]:
        """Hits per query. `where` is a compiled filter (None: everything); `budget_ms` overrides the configured
        rerank budget (0 = none); `mode` the configured `[retrieval] mode`."""
        cfg = self._gen.config.retrieval
        trace = SearchTrace(mode=mode or cfg.mode, results=cfg.results)
        if not queries:
            return [], trace
        self._gen.check_open()
        q = None
        if trace.mode != "lexical" or record:
            t0 = time.perf_counter()
            q = self.embed(queries)
            trace.embed_ms = (time.perf_counter() - t0) * 1000
        if record:
            trace.query_vectors = q
        return self._pipeline(queries, q, k, where, rerank=rerank, budget_ms=budget_ms, trace=trace,
                              record=record), trace

    def search_vectors(self, queries: list[str] | None, q: np.ndarray, k: int, where: tuple[str, list] | None, *,
                       rerank: bool = False, budget_ms: float | None = None, trace: SearchTrace | None = None,
                       record: bool = False) -> list[list[Hit]]:
        """The dense stages after embedding, for unit query vectors (`queries` None: by vector, never reranked)."""
        cfg = self._gen.config.retrieval
        trace = SearchTrace(mode="dense", results=cfg.results) if trace is None else trace
        return self._pipeline(queries, q, k, where, rerank=rerank, budget_ms=budget_ms, trace=trace, record=record)

    def _pipeline(self, queries: list[str] | None, q: np.ndarray | None, k: int, where: tuple[str, list] | None, *,
                  rerank: bool, budget_ms: float | None, trace: SearchTrace, record: bool) -> list[list[Hit]]:
        gen = self._gen
        rcfg, cfg = gen.config.rerank, gen.config.retrieval
        documents = trace.results == "documents"
        do_rerank = bool(rerank) and rcfg.enabled and queries is not None
        window = max(k, rcfg.candidates) if do_rerank else k
        # documents mode: each arm retrieves the same depth whether or not the call reranks, so the fused order
        # of search(k) is a prefix of the order the reranker gets (and of a timed-out rerank's fallback)
        depth = max(k, cfg.candidates or rcfg.candidates) if documents else window
        arms = {"dense": trace.mode != "lexical" or record, "lexical": trace.mode != "dense" or record}
        if queries is None:
            arms["lexical"] = False
        per_query = self.retrieve(queries, q, depth, where, arms, documents, trace)
        fused_orders, cand_maps, rows_all = [], [], []
        t0 = time.perf_counter()
        if record:
            trace.arms = {"dense": [], "lexical": [], "fused": [], "retrieval": []}
        for cands, orders, rows in per_query:
            if record:  # every arm side by side, and both fused, whatever the mode
                for arm in ("dense", "lexical"):
                    trace.arms[arm].append([_document_of(rows, cands[key]) for key in orders.get(arm, [])])
                both = fuse(orders, cands, cfg.fusion, rrf_k=cfg.rrf_k, weight=cfg.weight)
                trace.arms["fused"].append([_document_of(rows, cands[key]) for key in both[:window]])
            use = {a: orders.get(a, []) for a in ("dense", "lexical") if trace.mode in (a, "hybrid")}
            order = fuse(use, cands, cfg.fusion, rrf_k=cfg.rrf_k, weight=cfg.weight)
            if record:
                trace.arms["retrieval"].append([_document_of(rows, cands[key]) for key in order[:window]])
            fused_orders.append(order)
            cand_maps.append(cands)
            rows_all.append(rows)
        trace.join_ms += (time.perf_counter() - t0) * 1000
        trace.reranked = do_rerank
        finals: list[list[tuple[Candidate, float, float | None]]] = []
        scores = None
        if do_rerank:
            t0 = time.perf_counter()
            budget = rcfg.budget_ms if budget_ms is None else budget_ms
            best_rows = [[rows[cands[key].best_vid] for key in order[:window]]
                         for order, cands, rows in zip(fused_orders, cand_maps, rows_all)]
            scores = self._rerank_scores(queries, best_rows, budget / 1000 if budget else None)
            trace.rerank_ms = (time.perf_counter() - t0) * 1000
            if scores is None:  # over budget: retrieval order, and the trace says so
                trace.reranked, trace.rerank_timed_out = False, True
        start = 0
        how = rcfg.fusion if documents else "cross_encoder"
        for order, cands in zip(fused_orders, cand_maps):
            if scores is None:
                finals.append([(cands[key], cands[key].fused, None) for key in order[:k]])
                continue
            top = order[:window]
            rs = scores[start:start + len(top)].tolist()
            start += len(top)
            ranked = rerank_order(rs, how=how, rrf_k=rcfg.rrf_k, retrieval_weight=rcfg.retrieval_weight,
                                  retrieval_scores=[cands[key].fused for key in top])
            finals.append([(cands[top[i]], final, rs[i]) for i, final in ranked[:k]])
        return [[_hit(c, rows, rank, final, ce, documents, trace.mode) for rank, (c, final, ce) in enumerate(f, 1)]
                for f, rows in zip(finals, rows_all)]

    def retrieve(self, queries: list[str] | None, q: np.ndarray | None, depth: int, where: tuple[str, list] | None,
                 arms: dict[str, bool], documents: bool, trace: SearchTrace
                 ) -> list[tuple[dict[str, Candidate], dict[str, list[str]], dict[int, Row]]]:
        """The retrieval stages, the seam a sharded index fans out at (`fanout.ShardedSearcher`). Per query: the candidates (key -> Candidate), each arm's order of keys, and the fetched rows; all on
        one state of the generation (a write lands before or after). Both arms search first, then one DuckDB
        fetch brings the rows of every chunk either found; documents mode widens an arm (4x deeper) only when it
        came back full with fewer than `depth` distinct documents."""
        gen = self._gen
        nq = len(q) if q is not None else len(queries)
        n = depth * self._chunks_per_document() if documents else depth
        found: dict[str, list[Chunks]] = {}
        rows: list[dict[int, Row]] = [{} for _ in range(nq)]
        with gen.rw.read():
            gen.check_open()
            t0 = time.perf_counter()
            allowed = None if where is None else gen.store.filter_vids(*where)
            if arms["dense"]:
                scores, vids = self._candidates.search(q, n, allowed)
                found["dense"] = [[(int(v), float(s)) for s, v in zip(sr, vr) if v >= 0]
                                  for sr, vr in zip(scores, vids)]
            t1 = time.perf_counter()
            trace.search_ms += (t1 - t0) * 1000
            if arms["lexical"]:
                found["lexical"] = [self._lexical_chunks(query, n, allowed, trace) for query in queries]
            t2 = time.perf_counter()
            trace.lexical_ms += (t2 - t1) * 1000
            wanted = sorted({v for lists in found.values() for chunks in lists for v, _ in chunks})
            fetched = gen.store.fetch(wanted)
            for i in range(nq):
                rows[i] = fetched
            trace.join_ms += (time.perf_counter() - t2) * 1000
            if documents:
                self._widen(q, queries, n, depth, allowed, found, rows, trace)
            t3 = time.perf_counter()
            out = []
            for i in range(nq):
                cands: dict[str, Candidate] = {}
                keys = _keys(rows[i], documents)
                orders = {arm: collapse(arm, lists[i], keys, cands) for arm, lists in found.items()}
                out.append((cands, orders, rows[i]))
            if "dense" in found and trace.query_vectors is not None:
                trace.candidates = [[(rows[i][v].id, document_id(rows[i][v].id, rows[i][v].metadata), s)
                                     for v, s in chunks if v in rows[i]] for i, chunks in enumerate(found["dense"])]
            if len(found) == 2 and q is not None:
                self._complete_cosines(q, out)
            trace.join_ms += (time.perf_counter() - t3) * 1000
        return out

    def _widen(self, q, queries, n: int, depth: int, allowed, found: dict[str, list[Chunks]],
               rows: list[dict[int, Row]], trace: SearchTrace) -> None:
        """Documents mode: an arm that came back full but with fewer than `depth` distinct documents (a long
        document's chunks crowd its list) is asked again, 4x deeper, until it holds `depth` or every match."""
        for arm, lists in found.items():
            for i, chunks in enumerate(lists):
                width = n
                while len(chunks) >= width and _distinct(chunks, rows[i]) < depth:
                    width *= 4
                    t0 = time.perf_counter()
                    if arm == "dense":
                        s, v = self._candidates.search(q[i:i + 1], width, allowed)
                        chunks = [(int(x), float(y)) for y, x in zip(s[0], v[0]) if x >= 0]
                        trace.search_ms += (time.perf_counter() - t0) * 1000
                    else:
                        chunks = self._lexical_chunks(queries[i], width, allowed, trace)
                        trace.lexical_ms += (time.perf_counter() - t0) * 1000
                    missing = [x for x, _ in chunks if x not in rows[i]]
                    if missing:
                        t0 = time.perf_counter()
                        rows[i] = {**rows[i], **self._gen.store.fetch(missing)}
                        trace.join_ms += (time.perf_counter() - t0) * 1000
                lists[i] = chunks

    def _lexical_chunks(self, query: str, n: int, allowed: np.ndarray | None, trace: SearchTrace) -> Chunks:
        """Chunks by BM25; a query of only stop words finds nothing, and the trace's notes say so."""
        lexical = self._gen.lexical
        if not lexical.terms(query):
            note = (f"the lexical query {query[:80]!r} has only stop words or punctuation; "
                    + ("no lexical results" if trace.mode == "lexical" else "these are the dense results"))
            if trace.mode != "dense" and note not in trace.notes:
                trace.notes.append(note)
            return []
        s, v = lexical.search(query, n, allowed)
        return [(int(x), float(y)) for y, x in zip(s, v)]

    def _complete_cosines(self, q: np.ndarray, out) -> None:
        """The exact cosine of every passage only the lexical arm found, so every hybrid hit has a
        `retrieval_score`: from the FAISS index in RAM (exact vectors), or DuckDB's vectors for PQ codes."""
        index = self._gen.index
        for i, (cands, _, _) in enumerate(out):
            todo = [p for c in cands.values() for p in c.passages.values() if p.cosine is None]
            if not todo:
                continue
            want = sorted({p.vid for p in todo})
            try:
                if index.lossy:
                    raise LookupError("PQ codes are approximate")
                cos = {v: float(index.reconstruct(v) @ q[i]) for v in want}
            except (LookupError, RuntimeError):  # faiss raises RuntimeError for an id it does not hold
                vids, vecs = self._gen.store.vectors(want)
                cos = dict(zip(vids.tolist(), (vecs @ q[i]).tolist()))
            for p in todo:
                p.cosine = cos.get(p.vid)

    def _chunks_per_document(self) -> int:
        """How many chunks to ask for per document wanted, from the counts at the last save (at least 1)."""
        counts = self._gen.manifest.counts or {}
        docs, vectors = counts.get("documents") or 0, counts.get("vectors") or 0
        return max(1, min(16, math.ceil(vectors / docs))) if docs else 2

    def embed(self, queries: list[str]) -> np.ndarray:
        """Query vectors, from the cache where the same text was embedded by the same model and backend."""
        embedder = self._models.checked_embedder(self._gen)
        key = (embedder.name, embedder.backend, embedder.max_seq_length)
        cached = [self.query_cache.get((key, text)) for text in queries]
        missing = [i for i, v in enumerate(cached) if v is None]
        if missing:
            texts = list(dict.fromkeys(queries[i] for i in missing))  # a repeated query is embedded once
            by_text = dict(zip(texts, embedder.encode_queries(texts)))
            for i in missing:
                cached[i] = by_text[queries[i]]
            for text, vec in by_text.items():
                vec.setflags(write=False)
                self.query_cache.put((key, text), vec)
        return np.stack(cached).astype(np.float32, copy=True)

    def _rerank_scores(self, queries: list[str], candidates: list[list[Row]], budget_s: float | None
                       ) -> np.ndarray | None:
        """Cross-encoder scores of every (query, passage) pair of the batch, flat; cached scores are reused and
        only the rest go to the model, in one length-sorted run. None when the budget ran out."""
        reranker = self._models.reranker
        keys = [(query, row.vid) for query, c in zip(queries, candidates) for row in c]
        texts = [row.text for c in candidates for row in c]
        flat = self.score_cache.get_many(reranker.key, keys)
        todo: dict[tuple, list[int]] = {}  # the same pair twice in a batch (a repeated query) is scored once
        for i, s in enumerate(flat):
            if s is None:
                todo.setdefault(keys[i], []).append(i)
        if todo:
            firsts = [idx[0] for idx in todo.values()]
            scores = reranker.score_pairs([(keys[i][0], texts[i]) for i in firsts], budget_s=budget_s)
            if scores is None:
                return None
            for idx, score in zip(todo.values(), scores):
                for i in idx:
                    flat[i] = float(score)
            self.score_cache.put_many(reranker.key, [keys[i] for i in firsts], scores)
        return np.asarray(flat, dtype=np.float32)

    # -------------------------------------------------------------------------------------------- caches
    def forget(self, vids: np.ndarray) -> None:
        """Drop the rerank scores of vids a write removed (their text is gone)."""
        self.score_cache.drop_vids(vids.tolist())

    def clear_caches(self) -> None:
        self.query_cache.clear()
        self.score_cache.clear()

    def cache_stats(self) -> dict[str, dict[str, int]]:
        return {"query_embeddings": self.query_cache.stats(), "rerank_scores": self.score_cache.stats()}


def _keys(rows: dict[int, Row], documents: bool) -> dict[int, str]:
    """vid -> the result it belongs to: its document (documents mode) or itself (chunks mode)."""
    return {v: (document_id(r.id, r.metadata) if documents else r.id) for v, r in rows.items()}


def _distinct(chunks: Chunks, rows: dict[int, Row]) -> int:
    return len({document_id(rows[v].id, rows[v].metadata) for v, _ in chunks if v in rows})


def _document_of(rows: dict[int, Row], cand: Candidate) -> str:
    row = rows[cand.best_vid]
    return document_id(row.id, row.metadata)


def _hit(c: Candidate, rows: dict[int, Row], rank: int, final: float, ce: float | None, documents: bool,
         mode: str) -> Hit:
    best = rows[c.best_vid]
    cosine = c.cosine if documents else c.passages[best.vid].cosine
    bm25 = c.bm25 if documents else c.passages[best.vid].bm25
    if not documents:
        return Hit(best.id, best.text, best.metadata, rank, float(final), cosine, ce, bm25, (), c.found_by)
    meta = {k: v for k, v in best.metadata.items() if k not in CHUNK_KEYS} if "parent_id" in best.metadata \
        else best.metadata
    passages = tuple(Passage(rows[p.vid].id, rows[p.vid].text, p.cosine, p.bm25, ce if p.vid == best.vid else None)
                     for p in c.passage_order())
    return Hit(document_id(best.id, best.metadata), best.text, meta, rank, float(final), cosine, ce, bm25,
               passages, c.found_by)
