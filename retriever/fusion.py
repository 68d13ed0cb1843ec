"""Ranked lists in, one ranked list out: chunks collapsed to results (documents, or chunks in chunks mode), the
dense and lexical arms fused (reciprocal rank or a convex blend of normalized scores), and the cross-encoder's
order fused with the retrieval order. Pure functions over small lists; the searcher feeds them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

ARMS = ("dense", "lexical")


@dataclass
class PassageScores:
    """One stored chunk a query matched: its rank in each arm's chunk list (0-based) and its scores."""
    vid: int
    cosine: float | None = None
    bm25: float | None = None
    dense_rank: int | None = None
    lexical_rank: int | None = None

    def order_key(self) -> tuple:
        """Best passage first: the better of its two arm ranks, then the higher cosine."""
        ranks = [r for r in (self.dense_rank, self.lexical_rank) if r is not None]
        return (min(ranks) if ranks else 1 << 30, -(self.cosine if self.cosine is not None else -2.0))


@dataclass
class Candidate:
    """One result (a document, or a chunk in chunks mode) with its passages and its rank and score in each arm."""
    key: str
    passages: dict[int, PassageScores] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)      # arm -> 0-based rank among the arm's results
    scores: dict[str, float] = field(default_factory=dict)   # arm -> best score (cosine, BM25)
    fused: float = 0.0

    def passage_order(self) -> list[PassageScores]:
        return sorted(self.passages.values(), key=PassageScores.order_key)

    @property
    def best_vid(self) -> int:
        return self.passage_order()[0].vid

    @property
    def found_by(self) -> tuple[str, ...]:
        return tuple(a for a in ARMS if a in self.ranks)

    @property
    def cosine(self) -> float | None:
        values = [p.cosine for p in self.passages.values() if p.cosine is not None]
        return max(values) if values else None

    @property
    def bm25(self) -> float | None:
        values = [p.bm25 for p in self.passages.values() if p.bm25 is not None]
        return max(values) if values else None


def collapse(arm: str, chunks: list[tuple[int, float]], key_of: dict[int, str],
             into: dict[str, Candidate]) -> list[str]:
    """Record one arm's chunk list (vid, score), best first, into `into` (key -> Candidate); returns the keys in
    the arm's order, each once (a long document is counted at its best chunk, once)."""
    order: list[str] = []
    for rank, (vid, score) in enumerate(chunks):
        key = key_of.get(vid)
        if key is None:  # deleted between the search and the fetch: never returned
            continue
        cand = into.get(key)
        if cand is None:
            cand = into[key] = Candidate(key)
        p = cand.passages.get(vid)
        if p is None:
            p = cand.passages[vid] = PassageScores(vid)
        if arm == "dense":
            p.cosine, p.dense_rank = float(score), rank
        else:
            p.bm25, p.lexical_rank = float(score), rank
        if arm not in cand.ranks:
            cand.ranks[arm] = len(order)
            cand.scores[arm] = float(score)
            order.append(key)
    return order


def fuse(lists: dict[str, list[str]], cands: dict[str, Candidate], how: str, *, rrf_k: int = 60,
         weight: float = 0.5) -> list[str]:
    """One order from the arms' orders. A single arm keeps its order (and its score). `rrf`: weight/(rrf_k + rank)
    from the dense arm plus (1 - weight)/(rrf_k + rank) from the lexical one (rank from 1; an arm that missed a
    result adds nothing). `convex`: weight * dense + (1 - weight) * lexical, each arm's scores min-max normalized
    over its list (a result an arm missed gets that arm's 0). Ties go to the better dense rank, then lexical."""
    present = [a for a in ARMS if lists.get(a)]
    keys = list(dict.fromkeys(k for a in present for k in lists[a]))
    if len(present) <= 1:
        arm = present[0] if present else None
        for key in keys:
            cands[key].fused = cands[key].scores[arm]
        return keys
    share = {"dense": weight, "lexical": 1.0 - weight}
    if how == "rrf":
        for key in keys:
            c = cands[key]
            c.fused = sum(share[a] / (rrf_k + c.ranks[a] + 1) for a in present if a in c.ranks)
    elif how == "convex":
        norm = {}
        for a in present:
            vals = [cands[k].scores[a] for k in lists[a]]
            lo, hi = min(vals), max(vals)
            norm[a] = (lo, (hi - lo) or 1.0)
        for key in keys:
            c = cands[key]
            c.fused = sum(share[a] * (c.scores[a] - norm[a][0]) / norm[a][1] for a in present if a in c.ranks)
    else:
        raise ValueError(f"unknown fusion {how!r}")
    far = 1 << 30
    return sorted(keys, key=lambda k: (-cands[k].fused, cands[k].ranks.get("dense", far),
                                       cands[k].ranks.get("lexical", far)))


def rerank_order(rerank_scores: list[float], *, how: str, rrf_k: int = 60, retrieval_weight: float = 1.0,
                 retrieval_scores: list[float] | None = None) -> list[tuple[int, float]]:
    """(position in the retrieval order, final score) of reranked results, best first.

    `cross_encoder`: by the cross-encoder's score (ties in retrieval order).
    `rrf`: 1/(rrf_k + rerank rank) + retrieval_weight/(rrf_k + retrieval rank), so the retrieval ranking keeps a
    say and a confident first hit is not sunk by one misjudged pair.
    `blend`: the cross-encoder's log-odds (its probability is a calibrated relevance estimate: trained with
    binary cross-entropy) plus retrieval_weight times the retrieval score min-max normalized over the window
    (`retrieval_scores`, in retrieval order). A confident cross-encoder overturns the retrieval order; an unsure
    one (scores near each other) leaves it."""
    n = len(rerank_scores)
    by_ce = sorted(range(n), key=lambda i: (-rerank_scores[i], i))
    if how == "cross_encoder":
        return [(i, float(rerank_scores[i])) for i in by_ce]
    if how == "blend":
        if retrieval_scores is None or len(retrieval_scores) != n:
            raise ValueError("blend needs one retrieval score per reranked result")
        lo, hi = min(retrieval_scores, default=0.0), max(retrieval_scores, default=0.0)
        norm = [(s - lo) / (hi - lo) if hi > lo else 1.0 for s in retrieval_scores]
        fused = [_logit(rerank_scores[i]) + retrieval_weight * norm[i] for i in range(n)]
        return [(i, float(fused[i])) for i in sorted(range(n), key=lambda i: (-fused[i], i))]
    ce_rank = {i: r for r, i in enumerate(by_ce, 1)}
    fused = [1.0 / (rrf_k + ce_rank[i]) + retrieval_weight / (rrf_k + i + 1) for i in range(n)]
    return [(i, float(fused[i])) for i in sorted(range(n), key=lambda i: (-fused[i], ce_rank[i]))]


def _logit(p: float, eps: float = 1e-6) -> float:
    """log(p / (1 - p)) of a probability, clipped to [eps, 1 - eps] (a saturated score stays finite)."""
    p = min(max(float(p), eps), 1.0 - eps)
    return math.log(p / (1.0 - p))
