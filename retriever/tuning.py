"""`retriever tune`: the cheapest search setting (nprobe, efSearch, PQ re-score depth) that reaches a target
ANN recall@k against exact search, measured on a sample of stored vectors used as queries (and on a labeled
query set when given).

Recall here is *index* recall: the share of the exact top-k (by cosine over every vector in DuckDB) that the
approximate search returns. The exact-scan fallback for short results is off while measuring, so the number
is the index's own.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import InputError
from .inputs import check_k
from .knn import exact_topk, knn_intersection

HNSW_EF = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
PQ_RESCORE = (1, 2, 4, 8, 16, 32)
SINGLE_QUERIES = 200


@dataclass(frozen=True)
class TuneRow:
    params: dict[str, int]
    recall: float                 # on the sample of stored vectors
    recall_labeled: float | None  # on the labeled queries, when given
    p50_ms: float                 # one query at a time
    batch_qps: float              # all sample queries in one call

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.params.items()) or "exact"


@dataclass
class TuneReport:
    kind: str
    k: int
    target: float
    vectors: int
    sample: int
    labeled: int
    rows: list[TuneRow] = field(default_factory=list)
    chosen: TuneRow | None = None
    seconds: float = 0.0
    note: str = ""

    @property
    def reached(self) -> bool:
        return self.chosen is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reached"] = self.reached
        return d

    def table(self) -> str:
        lab = self.labeled > 0
        head = f"{'setting':<24} {'recall@' + str(self.k):>10}" + (f" {'labeled':>8}" if lab else "") + \
               f" {'p50 ms':>8} {'batch q/s':>10}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            mark = " *" if r is self.chosen else ""
            lines.append(f"{r.label + mark:<24} {r.recall:>10.4f}" +
                         (f" {r.recall_labeled:>8.4f}" if lab else "") + f" {r.p50_ms:>8.3f} {r.batch_qps:>10,.0f}")
        return "\n".join(lines)


def _grid(index, k: int) -> list[list[dict[str, int]]]:
    """Settings in increasing cost; a list of 1-D ladders (one per PQ re-score depth)."""
    if index.kind == "hnsw":
        efs = sorted({max(k, e) for e in HNSW_EF})
        return [[{"ef_search": e} for e in efs]]
    if index.ivf is not None:
        nlist = int(index.ivf.nlist)
        probes = sorted({min(nlist, 2 ** i) for i in range(0, 17)} | {nlist})
        if index.lossy:
            return [[{"nprobe": p, "rescore": r} for p in probes] for r in PQ_RESCORE]
        return [[{"nprobe": p} for p in probes]]
    return []


Search = Callable[..., tuple[np.ndarray, np.ndarray]]  # CandidateSearch.search


def _measure(search: Search, q: np.ndarray, k: int, params: dict[str, int]) -> tuple[np.ndarray, float, float]:
    t0 = time.perf_counter()
    _, found = search(q, k, None, fallback=False, **params)
    batch_qps = len(q) / max(time.perf_counter() - t0, 1e-9)
    times = []
    for row in q[:SINGLE_QUERIES]:
        t0 = time.perf_counter()
        search(row[None, :], k, None, fallback=False, **params)
        times.append((time.perf_counter() - t0) * 1000)
    return found, float(np.median(times)), batch_qps


def tune(search: Search, store, index, target_recall: float = 0.95, k: int = 10, sample: int = 1000,
         query_vectors: np.ndarray | None = None, seed: int = 0) -> TuneReport:
    """Explore the search settings of `index` in increasing cost through `search` (a CandidateSearch's) and pick
    the cheapest reaching the target on the sample of `store`'s vectors (and on `query_vectors`, labeled queries
    already embedded, when given). Stores nothing: :meth:`Retriever.tune` does."""
    if isinstance(target_recall, bool) or not isinstance(target_recall, (int, float)) or not 0 < target_recall <= 1:
        raise InputError(f"target recall = {target_recall!r} must be a number in (0, 1], e.g. 0.95")
    k = check_k(k)
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise InputError(f"sample = {sample!r} must be a positive number of stored vectors to use as queries")
    t_start = time.perf_counter()
    vids, vecs = store.vectors()
    if len(vids) < 2:
        raise InputError(f"the index holds {len(vids)} vectors; add documents before tuning")
    n_sample = min(sample, len(vids))
    pick = np.sort(np.random.default_rng(seed).choice(len(vids), n_sample, replace=False))
    q_sample = vecs[pick]
    q_labeled = query_vectors if query_vectors is not None and len(query_vectors) else None
    truth = exact_topk(q_sample, vecs, vids, k)[1]
    truth_l = exact_topk(q_labeled, vecs, vids, k)[1] if q_labeled is not None else None
    report = TuneReport(index.kind, k, float(target_recall), len(vids), n_sample,
                        0 if q_labeled is None else len(q_labeled))

    def row(params: dict[str, int]) -> TuneRow:
        found, p50, qps = _measure(search, q_sample, k, params)
        rec_l = None
        if q_labeled is not None:
            rec_l = knn_intersection(search(q_labeled, k, None, fallback=False, **params)[1], truth_l)
        return TuneRow(params, knn_intersection(found, truth), rec_l, p50, qps)

    ladders = _grid(index, k)
    if not ladders:
        report.chosen = row({})
        report.rows.append(report.chosen)
        report.note = "a flat index is exact; nothing to tune"
        report.seconds = time.perf_counter() - t_start
        return report
    best: list[TuneRow] = []
    for ladder in ladders:
        for params in ladder:
            r = row(params)
            report.rows.append(r)
            if r.recall >= target_recall and (r.recall_labeled is None or r.recall_labeled >= target_recall):
                best.append(r)  # the first that reaches the target on this ladder: more costs more
                break
    if best:
        # one ladder: its first setting to reach the target; PQ: the fastest of those across re-score depths
        report.chosen = best[0] if len(best) == 1 else min(best, key=lambda x: x.p50_ms)
    else:
        top = max(report.rows, key=lambda x: min(x.recall, x.recall_labeled if x.recall_labeled is not None else 1))
        report.note = (f"no setting reached recall@{k} {target_recall}; the best was {top.recall:.4f} at {top.label}. "
                       f"Rebuild with a finer index (more PQ sub-quantizers or bits, fewer/larger IVF lists, a "
                       f"larger HNSW M) or use kind = 'flat'")
    report.seconds = time.perf_counter() - t_start
    return report
