"""Ranking metrics for retrieval evaluation: recall@k, hit_rate@k, precision@k, mrr@k, ndcg@k.

Pure Python (no heavy imports). The definitions are the standard ones and match trec_eval /
pytrec_eval (``recall_k``, ``success_k``, ``P_k``, ``recip_rank`` on the run cut to the top k,
``ndcg_cut_k``); tests/test_metrics.py checks this query by query against pytrec_eval.

Conventions, for one query:

* ``ranked`` is the list of retrieved document ids, best first. Ties must already be resolved by
  the caller: the list order *is* the ranking (two documents with the same score rank in the order
  given). No scores are looked at.
* Duplicates are removed first (:func:`dedupe`): a document counts once, at its best (first) rank,
  and the later copies are dropped, so they neither count twice nor push later documents down.
  ``[x, a, a, b]`` is scored as ``[x, a, b]``. This is what happens when several chunks of one parent
  document are mapped back to the document id.
* ``relevant`` maps document id -> graded relevance. A grade > 0 is relevant (binary judgements use
  1); a grade <= 0, or an id absent from the mapping, is not relevant and has gain 0.
* An empty ranked list is a miss: every metric is 0. A query without any relevant document scores
  0 on every metric (its recall is defined as 0, not undefined).
"""
from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence

__all__ = ["METRICS", "dedupe", "mean_metrics", "parse_metric_name", "query_metrics"]

METRICS = ("recall", "hit_rate", "precision", "mrr", "ndcg")

_ALLOWED = ", ".join(f"{m}@k" for m in METRICS)
# Lowercase names only; k in ASCII digits without a leading zero, so each metric has one spelling.
_NAME_RE = re.compile(r"(" + "|".join(METRICS) + r")@([1-9][0-9]*)")


def parse_metric_name(name: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ``("ndcg", 10)``. Case-sensitive; raises ValueError for anything else."""
    if not isinstance(name, str):
        raise TypeError(f"metric name must be a str, got {type(name).__name__}")
    m = _NAME_RE.fullmatch(name)
    if m is None:
        raise ValueError(f"unknown metric {name!r}; use one of {_ALLOWED} with k a positive integer")
    return m.group(1), int(m.group(2))


def dedupe(ranked: Sequence[str]) -> list[str]:
    """Keep the first (best-ranked) occurrence of each id, preserving order."""
    if isinstance(ranked, (str, bytes)):
        raise TypeError("ranked must be a sequence of document ids, not a single string")
    seen: set[str] = set()
    out: list[str] = []
    for doc_id in ranked:
        if doc_id not in seen:
            seen.add(doc_id)
            out.append(doc_id)
    return out


def _check_ks(ks: Sequence[int]) -> list[int]:
    if isinstance(ks, (str, bytes)):
        raise TypeError("ks must be a sequence of positive integers")
    out = []
    for k in ks:
        if isinstance(k, bool):
            raise TypeError(f"k must be a positive integer, got {k!r}")
        try:
            k_int = operator.index(k)  # int and numpy integers; rejects floats like 10.0
        except TypeError:
            raise TypeError(f"k must be a positive integer, got {k!r}") from None
        if k_int < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        out.append(k_int)
    return out


def query_metrics(ranked: Sequence[str], relevant: Mapping[str, float], ks: Sequence[int]) -> dict[str, float]:
    """Every metric in METRICS at every k in ``ks`` for one query, keyed ``"<metric>@<k>"``.

    See the module docstring for the conventions (dedupe first, list order decides ties,
    grade <= 0 is not relevant, empty run -> all 0).

    * recall@k    = |relevant in top k| / |relevant|  (0 if the query has no relevant document)
    * hit_rate@k  = 1 if any relevant document is in the top k, else 0
    * precision@k = |relevant in top k| / k  (divides by k even if fewer than k were returned)
    * mrr@k       = 1 / rank of the first relevant document in the top k, else 0
    * ndcg@k      = DCG@k / IDCG@k, gain = grade, discount 1 / log2(rank + 1); IDCG from all relevant
      grades sorted descending and cut at k; 0 if IDCG is 0 (trec_eval's ndcg_cut_k)
    """
    ks = _check_ks(ks)
    docs = dedupe(ranked)

    def gain(doc_id: str) -> float:
        g = relevant.get(doc_id, 0.0)
        return float(g) if g > 0 else 0.0

    gains = [gain(d) for d in docs]
    ideal = sorted((float(g) for g in relevant.values() if g > 0), reverse=True)
    n_relevant = len(ideal)
    first_hit = next((i + 1 for i, g in enumerate(gains) if g > 0), None)

    out: dict[str, float] = {}
    for k in ks:
        top = gains[:k]
        hits = sum(1 for g in top if g > 0)
        dcg = 0.0
        for i, g in enumerate(top):
            if g > 0:
                dcg += g / math.log2(i + 2)
        idcg = 0.0
        for i, g in enumerate(ideal[:k]):
            idcg += g / math.log2(i + 2)
        out[f"recall@{k}"] = hits / n_relevant if n_relevant else 0.0
        out[f"hit_rate@{k}"] = 1.0 if hits else 0.0
        out[f"precision@{k}"] = hits / k
        out[f"mrr@{k}"] = 1.0 / first_hit if first_hit is not None and first_hit <= k else 0.0
        out[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
    return out


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Arithmetic mean over queries of each metric (``{qid: {metric: value}}`` -> ``{metric: mean}``).

    Every query must report the same metric names; raises ValueError on no queries or a mismatch.
    """
    if not per_query:
        raise ValueError("mean_metrics needs at least one query")
    items = iter(per_query.items())
    first_qid, first = next(items)
    names = list(first)
    for qid, scores in items:
        if set(scores) != set(names):
            raise ValueError(
                f"query {qid!r} has metrics {sorted(scores)}, but query {first_qid!r} has {sorted(names)}"
            )
    n = len(per_query)
    return {name: math.fsum(scores[name] for scores in per_query.values()) / n for name in names}
