"""The query side of a sharded index: `ShardedSearcher` runs the retrieval stages (filter, dense arm, lexical arm,
fetch, chunks collapsed to documents) on every shard in parallel, on the query vectors embedded once, and merges
their lists per arm by score (unit vectors: cosines compare across shards; BM25 uses each shard's own term
statistics), before the one fusion and one rerank `Searcher` does. Row ids (vids) are per shard: the merge
relabels them ``vid * N + shard`` so rows, passages and the rerank-score cache never mix two shards' rows.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from .errors import ShardUnavailable
from .models_in_use import ModelsInUse
from .searcher import Searcher, SearchTrace
from .store import Row


def relabel(result, shard: int, n: int):
    """One shard's (candidates, orders, rows) with its vids made unique across shards: vid * n + shard."""
    cands, orders, rows = result
    new_rows = {v * n + shard: Row(v * n + shard, r.id, r.text, r.metadata) for v, r in rows.items()}
    for c in cands.values():  # the passages are this call's own: relabelled in place (dataclasses.replace cost
        for p in c.passages.values():  # ~1 ms a query at 4 shards)
            p.vid = p.vid * n + shard
        c.passages = {p.vid: p for p in c.passages.values()}
    return cands, orders, new_rows


def merge(results: list[tuple]) -> tuple:
    """The shards' (candidates, orders, rows) of one query as one: each arm's documents by score, best first
    (ties: the shard's own order, then the lower shard), ranks renumbered."""
    cands, rows, orders = {}, {}, {}
    for c, _, r in results:
        cands.update(c)
        rows.update(r)
    for arm in ("dense", "lexical"):
        entries = [(-c[key].scores[arm], pos, s, key) for s, (c, o, _) in enumerate(results)
                   for pos, key in enumerate(o.get(arm, ()))]
        if not any(arm in o for _, o, _ in results):
            continue
        entries.sort()
        orders[arm] = [key for *_, key in entries]
        for rank, key in enumerate(orders[arm]):
            cands[key].ranks[arm] = rank
    return cands, orders, rows


class ShardedSearcher(Searcher):
    """The query pipeline of `Searcher` with its retrieval stages fanned out to shard searchers."""

    def __init__(self, shards: Sequence[Searcher], models: ModelsInUse, cache_config):
        super().__init__(shards[0].generation, None, models, cache_config)
        self.shards = list(shards)
        self._pool = ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="shard")

    def retrieve(self, queries, q, depth, where, arms, documents, trace):
        n = len(self.shards)
        traces = [SearchTrace(mode=trace.mode, results=trace.results, query_vectors=trace.query_vectors)
                  for _ in range(n)]
        futures = [self._pool.submit(s.retrieve, queries, q, depth, where, arms, documents, t)
                   for s, t in zip(self.shards, traces)]
        nq = len(q) if q is not None else len(queries)
        per_shard, missed = [], []
        for s, f in enumerate(futures):
            try:
                per_shard.append(f.result())
            except ShardUnavailable:  # only remote shards raise it; an in-process shard's failure propagates
                missed.append(s)
                per_shard.append([({}, {}, {}) for _ in range(nq)])
        if len(missed) == n:
            raise ShardUnavailable(f"no shard of {n} answered; the index is unavailable, retry shortly")
        trace.missed_shards = missed
        t0 = time.perf_counter()
        out = [merge([relabel(per_shard[s][i], s, n) for s in range(n)]) for i in range(nq)]
        for stage in ("search_ms", "lexical_ms", "join_ms"):  # the shards ran side by side: the slowest counts
            setattr(trace, stage, getattr(trace, stage) + max(getattr(t, stage) for t in traces))
        for t in traces:
            trace.notes.extend(x for x in t.notes if x not in trace.notes)
        if traces[0].candidates is not None:
            trace.candidates = [sorted((c for t in traces for c in (t.candidates or [[]] * nq)[i]), key=lambda c: -c[2])
                                for i in range(nq)]
        trace.join_ms += (time.perf_counter() - t0) * 1000
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
