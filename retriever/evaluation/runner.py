"""Run a labeled query set through a Retriever: quality per stage, index error against exact search, and
latency per stage for single queries and under concurrent callers.

Relevance is judged per document: a chunk counts for its parent, and a parent counts once, at its best rank.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from ..knn import exact_topk, knn_intersection
from ..searcher import STAGES
from .metrics import dedupe, mean_metrics, query_metrics
from .queries import LabeledQuery

REPORT_FORMAT = "rag-retriever-eval/1"
DEFAULT_KS = (1, 5, 10, 20)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not len(values):
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "n": int(len(a))}


ARMS = ("dense", "lexical", "fused")  # quality of each arm, side by side, whatever the mode evaluated


def evaluate(retriever, queries: Sequence[LabeledQuery], *, ks: Sequence[int] = DEFAULT_KS, rerank: bool = True,
             concurrency: int = 4, concurrent_queries: int = 40,
             progress: Callable[[int, int], None] | None = None, mode: str | None = None) -> dict[str, Any]:
    """The full report (see `report.py` for how it is written). `concurrency` 0 skips the concurrent run. `mode`
    is the one evaluated (default `[retrieval] mode`); the dense and lexical arms and their fusion are measured
    beside it in every run (`metrics.dense`, `.lexical`, `.fused`), `metrics.retrieval` is the mode's list before
    the rerank and `metrics.final` what the search returned."""
    if not queries:
        raise InputError("the query set is empty; give at least one labeled query")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise InputError(f"ks = {ks} must be positive integers, e.g. 1,5,10,20")
    kmax = ks[-1]
    store = retriever.store
    corpus_ids = store.document_ids()
    row_ids, vectors = store.ids_and_vectors()  # in vid order; the exact reference is by row position
    position = {rid: i for i, rid in enumerate(row_ids)}
    exact_index = retriever.vector_index.kind == "flat"

    # warm-up, untimed: model loads and the fingerprint check must not count as a query's latency
    mode = mode or retriever.config.retrieval.mode
    retriever.search(queries[0].query, k=kmax, rerank=rerank, mode=mode)
    per_query: dict[str, dict[str, Any]] = {}
    stage_ms: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
    final_all, retrieval_all, ann_all = {}, {}, {}
    arms_all: dict[str, dict[str, dict[str, float]]] = {a: {} for a in ARMS}
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        hits, trace = retriever.search_traced([q.query], k=kmax, rerank=rerank, record=True, mode=mode)
        total = (time.perf_counter() - t0) * 1000
        hits = hits[0]
        for stage, ms in trace.stage_ms().items():
            stage_ms[stage].append(ms)
        stage_ms["total"].append(total)
        final_docs = dedupe([h.document_id for h in hits])
        cands = trace.candidates[0]
        retrieval_docs = dedupe(trace.arms["retrieval"][0])
        final_all[q.id] = query_metrics(final_docs, q.relevant, ks)
        retrieval_all[q.id] = query_metrics(retrieval_docs, q.relevant, ks)
        for arm in ARMS:
            arms_all[arm][q.id] = query_metrics(dedupe(trace.arms[arm][0]), q.relevant, ks)
        # index error: the vectors FAISS returned against exact search over every stored vector
        exact = exact_topk(trace.query_vectors[:1], vectors, np.arange(len(row_ids)), kmax)[1]
        by_cosine = sorted(cands, key=lambda c: -c[2])[:kmax]
        approx = np.array([[position.get(cid, -1) for cid, _, _ in by_cosine]], np.int64).reshape(1, -1)
        ann_all[q.id] = {f"ann_recall@{k}": knn_intersection(approx, exact[:, :k], k) for k in ks}
        relevant = [d for d, g in q.relevant.items() if g > 0]
        first = next((r for r, d in enumerate(final_docs, 1) if q.relevant.get(d, 0) > 0), None)
        first_retrieval = next((r for r, d in enumerate(retrieval_docs, 1) if q.relevant.get(d, 0) > 0), None)
        per_query[q.id] = {
            "query": q.query,
            "relevant": relevant,
            "missing_relevant": [d for d in relevant if d not in corpus_ids],
            "results": final_docs[:kmax],
            "n_results": len(hits),
            "first_relevant_rank": first,
            "first_relevant_rank_retrieval": first_retrieval,
            "final": final_all[q.id],
            "retrieval": retrieval_all[q.id],
            "total_ms": total,
        }
        if progress:
            progress(i + 1, len(queries))

    final, retrieval, ann = mean_metrics(final_all), mean_metrics(retrieval_all), mean_metrics(ann_all)
    arms = {arm: mean_metrics(v) for arm, v in arms_all.items()}
    latency: dict[str, Any] = {"single": {s: percentiles(v) for s, v in stage_ms.items()}}
    if concurrency and concurrency > 0:
        latency["concurrent"] = _concurrent(retriever, queries[:max(1, concurrent_queries)], kmax, rerank, concurrency)

    stats = retriever.stats()
    report = {
        "format": REPORT_FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "index": {k: stats[k] for k in ("path", "documents", "vectors", "dim", "embedding_model", "rerank_model",
                                        "index_kind", "generation")},
        "settings": {"ks": ks, "rerank": bool(rerank and retriever.config.rerank.enabled), "mode": mode,
                     "results": retriever.config.retrieval.results,
                     "rerank_candidates": retriever.config.rerank.candidates,
                     "rerank_max_length": retriever.config.rerank.max_length, "concurrency": concurrency},
        "n_queries": len(queries),
        "metrics": {"final": final, "retrieval": retrieval, **arms, "ann": ann, "ann_is_exact_index": exact_index},
        "latency_ms": latency,
        "rerank_cost_ms_per_query": float(np.mean(stage_ms["rerank"])) if stage_ms["rerank"] else 0.0,
        "missing_relevant": {qid: r["missing_relevant"] for qid, r in per_query.items() if r["missing_relevant"]},
        "empty_results": [qid for qid, r in per_query.items() if r["n_results"] == 0],
        "per_query": per_query,
    }
    report["flat"] = flatten(report)
    return report


def _concurrent(retriever, queries, k: int, rerank: bool, callers: int) -> dict[str, Any]:
    """`callers` threads searching at once: total latency percentiles, throughput, and per-stage percentiles."""
    def one(q: LabeledQuery) -> tuple[float, dict[str, Any]]:
        t = time.perf_counter()
        _, trace = retriever.search_traced([q.query], k=k, rerank=rerank, record=False)
        return (time.perf_counter() - t) * 1000, trace

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=callers) as pool:
        results = list(pool.map(one, queries))
    wall = time.perf_counter() - t0
    stages = {s: percentiles([tr.stage_ms()[s] for _, tr in results]) for s in STAGES}
    return {"callers": callers, "queries": len(queries), "queries_per_s": len(queries) / wall,
            **percentiles([ms for ms, _ in results]), "stages": stages}


def flatten(report: dict[str, Any]) -> dict[str, float]:
    """Every gateable number under the name a gate file uses ("recall@10", "retrieval.recall@10", "p95_ms")."""
    flat: dict[str, float] = {}
    m = report["metrics"]
    flat.update(m["final"])
    flat.update({f"retrieval.{k}": v for k, v in m["retrieval"].items()})
    for arm in ARMS:
        flat.update({f"{arm}.{k}": v for k, v in m.get(arm, {}).items()})
    flat.update({f"final.{k}": v for k, v in m["final"].items()})
    if report["settings"]["rerank"]:
        flat.update({f"reranked.{k}": v for k, v in m["final"].items()})
    flat.update(m["ann"])
    single = report["latency_ms"]["single"]
    for pct in ("p50_ms", "p95_ms", "p99_ms"):
        flat[pct] = single["total"][pct]
        for stage in STAGES:
            flat[f"{stage}.{pct}"] = single[stage][pct]
        if "concurrent" in report["latency_ms"]:
            conc = report["latency_ms"]["concurrent"]
            flat[f"concurrent.{pct}"] = conc[pct]
            for stage, v in conc["stages"].items():
                flat[f"concurrent.{stage}.{pct}"] = v[pct]
    return flat
