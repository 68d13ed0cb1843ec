"""The query pipeline, as stages: embed (unit vectors, cached by text) → candidates (filter, ANN or exact, under
the generation's read lock) → join (one DuckDB fetch of id, text, metadata) → rerank (cross-encoder scores,
cached by (query, vid), under an optional time budget) → hits.

Callers check their input once (`inputs`) and compile the filter once (`filters.compile_filter`); the searcher
takes both as given. The `SearchTrace` times every stage, and records the query vectors and the candidates in
retrieval order only when asked (evaluation does, a search does not).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .caches import LRUCache, RerankScoreCache
from .documents import document_id
from .results import Hit
from .store import Row

STAGES = ("embed", "search", "join", "rerank")

Candidates = list[list[tuple[Row, float]]]  # per query: (row, cosine) in retrieval order


@dataclass
class SearchTrace:
    """Milliseconds per stage, whether the hits were reranked, and whether the rerank budget ran out (the hits are
    then in retrieval order). With `record`: the query vectors, and each query's candidates in retrieval order as
    (id, document id, cosine)."""

    embed_ms: float = 0.0
    search_ms: float = 0.0
    join_ms: float = 0.0
    rerank_ms: float = 0.0
    reranked: bool = False
    rerank_timed_out: bool = False
    query_vectors: np.ndarray | None = None
    candidates: list[list[tuple[str, str, float]]] | None = None

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

    # ------------------------------------------------------------------------------------------ pipeline
    def search(self, queries: list[str], k: int, where: tuple[str, list] | None, *, rerank: bool = True,
               budget_ms: float | None = None, record: bool = False) -> tuple[list[list[Hit]], SearchTrace]:
        """Hits per query. `where` is a compiled filter (None: everything); `budget_ms` overrides the configured
        rerank budget (0 = none)."""
        trace = SearchTrace()
        if not queries:
            return [], trace
        self._gen.check_open()
        t0 = time.perf_counter()
        q = self.embed(queries)
        trace.embed_ms = (time.perf_counter() - t0) * 1000
        if record:
            trace.query_vectors = q
        return self.search_vectors(queries, q, k, where, rerank=rerank, budget_ms=budget_ms, trace=trace,
                                   record=record), trace

    def search_vectors(self, queries: list[str] | None, q: np.ndarray, k: int, where: tuple[str, list] | None, *,
                       rerank: bool = False, budget_ms: float | None = None, trace: SearchTrace | None = None,
                       record: bool = False) -> list[list[Hit]]:
        """The stages after embedding, for unit query vectors (`queries` None: by vector, never reranked)."""
        trace = SearchTrace() if trace is None else trace
        cfg = self._gen.config.rerank
        do_rerank = bool(rerank) and cfg.enabled and queries is not None
        candidates = self._retrieve(q, max(k, cfg.candidates) if do_rerank else k, where, trace)
        if record:
            trace.candidates = [[(r.id, document_id(r.id, r.metadata), cos) for r, cos in c] for c in candidates]
        trace.reranked = do_rerank
        scores = None
        if do_rerank:
            t0 = time.perf_counter()
            budget = cfg.budget_ms if budget_ms is None else budget_ms
            scores = self._rerank_scores(queries, candidates, budget / 1000 if budget else None)
            trace.rerank_ms = (time.perf_counter() - t0) * 1000
            if scores is None:  # over budget: retrieval order, and the trace says so
                trace.reranked, trace.rerank_timed_out = False, True
        return _hits(candidates, scores, k)

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

    def _retrieve(self, q: np.ndarray, n: int, where: tuple[str, list] | None, trace: SearchTrace) -> Candidates:
        """The filter, the candidate search and the row fetch, on one state: a write lands before or after them."""
        gen = self._gen
        t0 = time.perf_counter()
        with gen.rw.read():
            gen.check_open()
            allowed = None if where is None else gen.store.filter_vids(*where)
            scores, vids = self._candidates.search(q, n, allowed)
            t1 = time.perf_counter()
            rows = gen.store.fetch(np.unique(vids[vids >= 0]).tolist())
        candidates = [[(rows[int(v)], float(s)) for s, v in zip(srow, vrow) if v >= 0 and int(v) in rows]
                      for srow, vrow in zip(scores, vids)]
        trace.search_ms, trace.join_ms = (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000
        return candidates

    def _rerank_scores(self, queries: list[str], candidates: Candidates, budget_s: float | None) -> np.ndarray | None:
        """Cross-encoder scores of every (query, candidate) pair of the batch, flat; cached scores are reused and
        only the rest go to the model, in one length-sorted run. None when the budget ran out."""
        reranker = self._models.reranker
        keys = [(query, row.vid) for query, c in zip(queries, candidates) for row, _ in c]
        texts = [row.text for c in candidates for row, _ in c]
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


def _hits(candidates: Candidates, scores: np.ndarray | None, k: int) -> list[list[Hit]]:
    """The top k per query: by rerank score (ties in retrieval order) when there are scores, else by cosine."""
    if scores is None:
        return [[Hit(r.id, r.text, r.metadata, rank, cos, cos, None) for rank, (r, cos) in enumerate(c[:k], 1)]
                for c in candidates]
    out, start = [], 0
    for c in candidates:
        rs = scores[start:start + len(c)]
        start += len(c)
        order = sorted(range(len(c)), key=lambda i: (-rs[i], i))[:k]
        out.append([Hit(c[i][0].id, c[i][0].text, c[i][0].metadata, rank, float(rs[i]), c[i][1], float(rs[i]))
                    for rank, i in enumerate(order, 1)])
    return out
