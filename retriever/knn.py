"""The exact reference: brute-force top-k by inner product over unit vectors (= cosine), and the one measure of how
much of it an approximate search found. Search (exact fallback, filtered scans), tuning, evaluation, tests and
benchmarks all call these, so "exact" means one thing everywhere (after faiss `contrib/evaluation.py`:
`knn_intersection_measure`, `check_ref_knn_with_draws`).

Ties are broken by position (the order of `vids`), and vid -1 marks an empty slot in every result.
"""
from __future__ import annotations

import numpy as np

BLOCK = 256  # queries per matrix product: bounds the (queries x corpus) score block in memory


def exact_topk(queries: np.ndarray, vectors: np.ndarray, vids: np.ndarray, n: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, vids) of the n best rows of `vectors` per query, best first, each (len(queries), min(n, rows)).
    `queries` and `vectors` are unit float32 rows, so scores are cosines. Equal to a stable full sort."""
    nq, rows = len(queries), len(vids)
    n = min(int(n), rows)
    scores = np.empty((nq, n), np.float32)
    out = np.empty((nq, n), np.int64)
    if n == 0:
        return scores, out
    vids = np.asarray(vids, np.int64)
    for s in range(0, nq, BLOCK):
        sims = queries[s:s + BLOCK] @ vectors.T
        if n == rows:
            top = np.argsort(-sims, axis=1, kind="stable")
        else:  # the n-th best score per query, then a stable sort of the rows at or above it (ties included)
            kth = -np.partition(-sims, n - 1, axis=1)[:, n - 1]
            top = np.empty((len(sims), n), np.int64)
            for i, row in enumerate(sims):
                cand = np.flatnonzero(row >= kth[i])
                top[i] = cand[np.argsort(-row[cand], kind="stable")[:n]]
        scores[s:s + BLOCK] = np.take_along_axis(sims, top, axis=1)
        out[s:s + BLOCK] = vids[top]
    return scores, out


def knn_intersection(found: np.ndarray, truth: np.ndarray, k: int | None = None) -> float:
    """Mean share of each query's exact top-k (`truth`, -1 = empty slot) that `found` holds in its first k:
    ANN recall@k. A query whose truth is empty counts 1. k defaults to truth's width."""
    found, truth = np.atleast_2d(found), np.atleast_2d(truth)
    k = truth.shape[1] if k is None else k
    if not len(truth):
        return 1.0
    shares = []
    for f, t in zip(found, truth):
        t = t[:k][t[:k] >= 0]
        f = f[:k][f[:k] >= 0]
        shares.append(len(np.intersect1d(f, t)) / len(t) if len(t) else 1.0)
    return float(np.mean(shares))
