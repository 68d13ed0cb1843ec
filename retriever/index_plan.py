"""Which FAISS index to build for a corpus: the `[index]` settings resolved against the dimension and the number
of vectors, checked before any work, with the reason recorded (it goes into the manifest).

Kinds: ``flat`` (exact), ``hnsw``, ``ivf_flat``, ``ivf_pq`` (optionally OPQ-rotated), and ``auto``, which picks
one from the corpus size and ``memory_budget_mb``. Every kind searches unit vectors by inner product (= cosine).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

KINDS = ("flat", "hnsw", "ivf_flat", "ivf_pq")
TRAINED_KINDS = ("ivf_flat", "ivf_pq")

# FAISS's k-means warns below 39 training points per centroid (and clusters badly); we refuse instead.
MIN_POINTS_PER_CENTROID = 39
MAX_NLIST = 65_536

# `auto`: exact search is fast enough below this many vectors (a 100k x 384 scan is ~5 ms on one core) ...
AUTO_FLAT_BELOW = 100_000
# ... HNSW up to this many (its build is ~O(n log n) and the graph costs ~2*M*4 bytes per vector), IVF above.
AUTO_HNSW_BELOW = 1_000_000


@dataclass(frozen=True)
class IndexPlan:
    """A concrete index to build: a kind of `KINDS` and its build parameters.

    ``pending`` names the kind the settings ask for when the corpus is still too small to train it (the plan
    is then an exact flat index until the corpus grows; a save builds the real one as soon as it can).
    """
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    pending: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params), "reason": self.reason, "pending": self.pending}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "IndexPlan":
        data = data or {}
        return cls(data.get("kind", "flat"), dict(data.get("params") or {}), data.get("reason", ""), data.get("pending"))


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MB"


def check_settings(cfg, dim: int) -> None:
    """Checks that need the dimension but not the corpus (run before an index is created or rebuilt)."""
    if cfg.kind in ("ivf_pq", "auto") and cfg.pq_m and dim % cfg.pq_m:
        divisors = [m for m in range(1, dim + 1) if dim % m == 0 and m <= dim // 2]
        raise ConfigError(
            f"index.pq_m = {cfg.pq_m} does not divide the dimension {dim}; product quantization splits each "
            f"vector into pq_m equal parts. Valid values for {dim}: {', '.join(map(str, divisors[-8:]))} "
            f"(or 0 to choose automatically)"
        )


def default_pq_m(dim: int) -> int:
    """8 dimensions per sub-quantizer (48 bytes a vector at 384-d with 8 bits), the usual recall/size trade."""
    for m in range(max(1, dim // 8), 0, -1):
        if dim % m == 0:
            return m
    return 1


def default_nlist(n: int) -> int:
    """About 4*sqrt(n) lists, with at least 39 training points each."""
    return max(0, min(int(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID, MAX_NLIST))


def default_nprobe(nlist: int) -> int:
    return max(1, min(nlist, 2 * math.ceil(math.sqrt(nlist))))


def plan_index(cfg, dim: int, n: int, *, strict: bool) -> IndexPlan:
    """Resolve `cfg` (an IndexConfig) for `n` vectors of dimension `dim`.

    With ``strict`` (rebuild, tune) a setting the corpus cannot support raises ConfigError naming the setting
    and its valid range. Without it (create, save) the plan falls back to exact flat search and says why, so
    ingest never fails on a corpus that is still growing.
    """
    check_settings(cfg, dim)
    kind = cfg.kind
    reason = ""
    if kind == "auto":
        kind, reason = _auto_kind(cfg, dim, n)
    if kind == "flat":
        return IndexPlan("flat", {}, reason)
    if kind == "hnsw":
        return IndexPlan("hnsw", {"m": cfg.hnsw_m, "ef_construction": cfg.ef_construction}, reason)

    def too_small(msg: str) -> IndexPlan:
        if strict:
            raise ConfigError(msg)
        return IndexPlan("flat", {}, f"{msg} Until then searches are exact (flat).", pending=kind)

    if cfg.nlist:
        nlist = cfg.nlist
        most = n // MIN_POINTS_PER_CENTROID
        if n < MIN_POINTS_PER_CENTROID * nlist:
            rule = (f"it must be between 1 and {most} for this corpus" if most >= 1
                    else f"the corpus needs at least {MIN_POINTS_PER_CENTROID} vectors for even one list")
            return too_small(
                f"index.nlist = {nlist} is too large for {n:,} vectors: each list needs {MIN_POINTS_PER_CENTROID} "
                f"training vectors, so {rule}. Lower index.nlist, or set it to 0 to choose automatically."
            )
    else:
        nlist = default_nlist(n)
        if nlist < 1:
            return too_small(
                f"index.kind = {kind!r} needs at least {MIN_POINTS_PER_CENTROID} vectors to train one list; the "
                f"corpus has {n:,}."
            )
        reason = (reason + " " if reason else "") + f"nlist = {nlist} chosen automatically (about 4*sqrt({n:,}))."
    if kind == "ivf_flat":
        return IndexPlan("ivf_flat", {"nlist": nlist}, reason)

    m = cfg.pq_m or default_pq_m(dim)
    nbits = cfg.pq_nbits
    need = MIN_POINTS_PER_CENTROID * 2 ** nbits
    if n < need:
        best = int(math.log2(n / MIN_POINTS_PER_CENTROID)) if n >= MIN_POINTS_PER_CENTROID else 0
        rule = (f"between 4 and {best}" if best > 4 else "4" if best == 4
                else f"at least 4, which needs {MIN_POINTS_PER_CENTROID * 16:,} vectors or more")
        return too_small(
            f"index.pq_nbits = {nbits} needs at least {need:,} vectors to train its {2 ** nbits} centroids per "
            f"sub-quantizer ({MIN_POINTS_PER_CENTROID} each); the corpus has {n:,}, so pq_nbits must be {rule}."
        )
    if not cfg.pq_m:
        reason = (reason + " " if reason else "") + f"pq_m = {m} chosen automatically ({dim // m} dimensions each)."
    return IndexPlan("ivf_pq", {"nlist": nlist, "m": m, "nbits": nbits, "opq": cfg.opq}, reason)


def _auto_kind(cfg, dim: int, n: int) -> tuple[str, str]:
    flat_bytes = n * dim * 4
    hnsw_bytes = n * (dim * 4 + cfg.hnsw_m * 2 * 4 * 1.1 + 16)
    budget = cfg.memory_budget_mb * 2**20 if cfg.memory_budget_mb else None
    if budget is not None and flat_bytes > budget:
        return "ivf_pq", (f"auto: the flat vectors of {n:,} x {dim} ({_mb(flat_bytes)}) exceed "
                          f"memory_budget_mb = {cfg.memory_budget_mb:,}; compressed with IVF-PQ.")
    if n < AUTO_FLAT_BELOW:
        return "flat", f"auto: {n:,} vectors < {AUTO_FLAT_BELOW:,}, exact search is fast enough."
    if n < AUTO_HNSW_BELOW and (budget is None or hnsw_bytes <= budget):
        return "hnsw", (f"auto: {AUTO_FLAT_BELOW:,} <= {n:,} vectors < {AUTO_HNSW_BELOW:,}: HNSW "
                        f"(~{_mb(hnsw_bytes)} in RAM" + (f", within the {cfg.memory_budget_mb:,} MB budget)." if budget else ")."))
    why = (f"{n:,} vectors >= {AUTO_HNSW_BELOW:,}" if n >= AUTO_HNSW_BELOW
           else f"HNSW (~{_mb(hnsw_bytes)}) would exceed memory_budget_mb = {cfg.memory_budget_mb:,}")
    return "ivf_flat", f"auto: {why}: IVF-flat (trains fast, memory-maps for serving)."


def training_sample_size(cfg, plan: IndexPlan, n: int) -> int:
    """How many stored vectors to train on: `train_sample`, or 64 per IVF list (FAISS uses at most 256) and
    enough for the PQ codebooks, never more than the corpus."""
    if plan.kind not in TRAINED_KINDS:
        return 0
    if cfg.train_sample:
        want = cfg.train_sample
        need = MIN_POINTS_PER_CENTROID * plan.params["nlist"]
        if want < need:
            raise ConfigError(
                f"index.train_sample = {want:,} is too small for nlist = {plan.params['nlist']}: it must be at least "
                f"{need:,} ({MIN_POINTS_PER_CENTROID} per list). Raise it, or set 0 to choose automatically."
            )
        return min(n, want)
    want = max(64 * plan.params["nlist"], 10_000)
    if plan.kind == "ivf_pq":
        want = max(want, 64 * 2 ** plan.params["nbits"])
    return min(n, want)


def retrain_due(plan: IndexPlan, trained: dict | None, live: int, growth: float) -> str | None:
    """A warning when the corpus has grown `growth` times past the size the index was trained on."""
    if plan.kind not in TRAINED_KINDS or not trained:
        return None
    at = trained.get("vectors") or 0
    if at and live >= growth * at:
        return (f"the corpus has grown from {at:,} vectors at training to {live:,} (>= {growth:g}x); retrain with "
                f"`retriever rebuild` so the IVF lists fit the data again")
    return None
