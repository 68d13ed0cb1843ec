#!/usr/bin/env python
"""FAISS index kinds of `retriever.vector_index.VectorIndex` side by side, on 384-d vectors.

    python benchmarks/bench_index.py                     # 100k and 1M vectors (~17 min on 2 idle cores)
    python benchmarks/bench_index.py --sizes 100000      # 100k only (~4 min)
    python benchmarks/bench_index.py --quick             # 20k vectors, fewer settings, no OPQ (~1 min smoke run)

For each size: build time (and the IVF/PQ training part of it), bytes per vector in RAM (`nbytes()` and the
RSS growth measured around the build) and on disk (written file), recall@10 against exact search for
held-out synthetic queries and for the real fitz-gov query embeddings, single-query latency (p50/p95, 1 FAISS
thread) and batched queries/s (1 thread; 2 threads as an extra column) for each kind at 2-3 search settings.
`flat` is the exact baseline; a plain numpy `queries @ X.T` + argpartition top-10 on the same float32 matrix
is the floor. For the largest size, each kind is also written, read back plainly and memory-mapped (open time,
RSS). `ivf_pq` results are re-scored exactly as the product does (top k*rescore candidates re-ranked by true
cosine); the exact vectors come from the in-RAM float32 matrix here, and the cost of fetching them from
DuckDB (`Store.vectors`) is measured separately on a store holding the 100k vectors.

Data: synthetic with the cluster structure of real embeddings (see `Synth` and benchmarks/README.md): the
fitz-gov documents embedded with the real model (cached in benchmarks/results/fitz_gov_embeddings.npy),
each synthetic vector = normalize(doc_embedding[random doc] + low-rank noise + isotropic noise).

Threads as in the product: builds/trains with every core, searches with ONE FAISS thread (torch owns the
cores at query time). Progress goes to stderr with timestamps; one table is printed at the end; every number
goes to <out>/index.json and the recall-vs-queries/s plot to <out>/index_recall_qps.png.
"""
from __future__ import annotations

from benchenv import ROOT, Phase, machine_busy_seconds  # first: offline hubs, quiet warnings, the repository on sys.path

import os  # noqa: E402

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


import faiss  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from retriever.config import IndexConfig  # noqa: E402
from retriever.index_plan import default_nlist, default_nprobe, plan_index, training_sample_size  # noqa: E402
from retriever.vector_index import VectorIndex  # noqa: E402

perf = time.perf_counter
DIM = 384
K = 10
SEED = 20240601
CORES = max(1, len(os.sched_getaffinity(0)))
BUILD_THREADS = CORES   # the product builds/trains with every core ...
SEARCH_THREADS = 1      # ... and searches with one FAISS thread


# ---------------------------------------------------------------------------------------------- helpers

T_START = perf()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{perf() - T_START:6.0f}s] {msg}", file=sys.stderr, flush=True)


def rss_bytes() -> int:
    """Current resident set size (anonymous + file-backed pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_parts() -> dict:
    """RssAnon / RssFile in bytes (mapped index files show up as RssFile)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:", "VmHWM:")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) * 1024
    return out


_LIBC = None


def trim_heap() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc malloc_trim), so RSS deltas measure
    live memory rather than what the allocator kept from earlier phases."""
    global _LIBC
    gc.collect()
    try:
        if _LIBC is None:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def wait_idle(limit_s: float, threshold: float = 0.1) -> float | None:
    """Wait up to limit_s seconds until the other processes use < threshold of the cores over 5 s."""
    t_end = perf() + limit_s
    busy = None
    while True:
        b0 = machine_busy_seconds()
        time.sleep(5)
        b1 = machine_busy_seconds()
        if b0 is None or b1 is None:
            return None
        busy = (b1 - b0) / (5 * CORES)
        if busy < threshold or perf() >= t_end:
            return busy
        log(f"waiting for the machine to go quiet: other processes use {busy:.0%} of the cores")


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to clear_refs) so the next peak is this phase's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    return rss_parts().get("VmHWM")


def set_threads(n: int) -> None:
    faiss.omp_set_num_threads(n)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    """Mean over queries of |found[:k] & truth[:k]| / k (vids; -1 slots never match)."""
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k]):
        hits += len(np.intersect1d(f[f >= 0], t, assume_unique=False))
    return hits / (k * len(truth))


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def pick_evenly(n_items: int, n: int) -> np.ndarray:
    if n <= 0 or n >= n_items:
        return np.arange(n_items)
    return np.unique(np.linspace(0, n_items - 1, n).round().astype(int))


# ------------------------------------------------------------------------------------------------- data

def embeddings_cache(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """The fitz-gov documents and labeled queries embedded with the product's default model, cached as .npy."""
    from retriever.datasets import fitz_gov_documents, fitz_gov_queries

    docs = fitz_gov_documents()
    queries = fitz_gov_queries()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"docs": out / "fitz_gov_embeddings.npy", "queries": out / "fitz_gov_query_embeddings.npy"}
    texts = {"docs": [d.text for d in docs], "queries": [q.query for q in queries]}
    arrays = {}
    embedder = None
    for name, path in paths.items():
        if path.is_file():
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (len(texts[name]), DIM) and arr.dtype == np.float32:
                log(f"real {name}: {arr.shape[0]:,} embeddings from {path}")
                arrays[name] = arr
                continue
            log(f"{path} has shape {arr.shape}, expected ({len(texts[name])}, {DIM}): re-embedding")
        if embedder is None:
            from retriever.config import EmbeddingConfig
            from retriever.embedding import Embedder

            embedder = Embedder.from_config(EmbeddingConfig())
        log(f"embedding {len(texts[name]):,} fitz-gov {name} with {embedder.name} (~40 docs/s; cached afterwards)")
        t0 = perf()
        arr = np.ascontiguousarray(embedder.encode(texts[name]), dtype=np.float32)
        log(f"  {len(arr):,} in {perf() - t0:.0f}s -> {path}")
        np.save(path, arr, allow_pickle=False)
        arrays[name] = arr
    return arrays["docs"], arrays["queries"]


@dataclass
class Synth:
    """Synthetic 384-d unit vectors with the cluster structure of real embeddings.

    x = normalize(a_j + s_j * t * (sqrt(f) * n_lr + sqrt(1-f) * n_iso)), with
      a_j    a real fitz-gov document embedding, j uniform over the 5,010 documents (the cluster centres)
      n_lr   Gaussian in a fixed random `rank`-dimensional subspace (orthonormal basis from a seeded QR), scaled
             to unit expected norm: every cluster is stretched along the same few directions (real embedding
             sets are anisotropic, with a low local intrinsic dimension)
      n_iso  isotropic Gaussian over all 384 dimensions, unit expected norm
      f      `lowrank_frac`, the share of the noise variance in the subspace
      s_j    the noise scale of cluster j: `scale` * lognormal(0, `spread`) (some topics are tighter than others)
      t      per point: lognormal(0, `point_spread`) (a few points sit near the centre, a few far out)
    Calibrated so that a synthetic set of the real corpus's size (5,010) has the real corpus's median top-1
    neighbour cosine (0.79 vs 0.80); its median 10th-neighbour cosine is lower (0.40 vs 0.47), because the
    noise also moves the centres apart. The 100k/1M sets are denser samples of the same distribution, so their
    neighbours are closer (as in a larger real corpus); the run prints all of these.
    The points are generated in fixed chunks from one seeded stream, so the first 100k of the 1M set are the
    100k set; the held-out queries come from another stream (same distribution, never in the index).
    """

    anchors: np.ndarray
    seed: int = SEED
    scale: float = 0.45
    lowrank_frac: float = 0.8
    rank: int = 16
    spread: float = 0.25
    point_spread: float = 0.3
    chunk: int = 50_000
    basis: np.ndarray = field(init=False)
    cluster_scale: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 1])
        q, _ = np.linalg.qr(rng.standard_normal((DIM, self.rank)))
        self.basis = np.ascontiguousarray(q.T, dtype=np.float32)            # (rank, DIM), orthonormal rows
        self.cluster_scale = (self.scale * rng.lognormal(0.0, self.spread, len(self.anchors))).astype(np.float32)

    def describe(self) -> dict:
        return {"centres": int(len(self.anchors)), "scale": self.scale, "lowrank_frac": self.lowrank_frac,
                "rank": self.rank, "spread": self.spread, "point_spread": self.point_spread, "seed": self.seed,
                "chunk": self.chunk}

    def sample(self, n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, DIM) float32 unit rows and their cluster ids; `stream` 0 = index points, 1 = held-out queries."""
        rng = np.random.default_rng([self.seed, 100 + stream])
        out = np.empty((n, DIM), np.float32)
        centre = np.empty(n, np.int64)
        a = np.float32(np.sqrt(self.lowrank_frac))
        b = np.float32(np.sqrt((1.0 - self.lowrank_frac) / DIM))
        for lo in range(0, n, self.chunk):
            m = min(self.chunk, n - lo)
            j = rng.integers(0, len(self.anchors), m)
            z = rng.standard_normal((m, self.rank), dtype=np.float32) * np.float32(1.0 / np.sqrt(self.rank))
            x = rng.standard_normal((m, DIM), dtype=np.float32)
            x *= b
            x += a * (z @ self.basis)
            x *= (self.cluster_scale[j] * rng.lognormal(0.0, self.point_spread, m).astype(np.float32))[:, None]
            x += self.anchors[j]
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[lo:lo + m] = x
            centre[lo:lo + m] = j
        return out, centre


def exact_topk(queries: np.ndarray, base: np.ndarray, k: int, *, threads: int = CORES,
               exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (faiss.IndexFlatIP, blocked over the base by FAISS). Returns (scores, rows)."""
    set_threads(threads)
    idx = faiss.IndexFlatIP(DIM)
    idx.add(base)
    s, i = idx.search(np.ascontiguousarray(queries), k + int(exclude_self))
    if exclude_self:
        s, i = s[:, 1:], i[:, 1:]
    return s, i


def nn_stats(scores: np.ndarray) -> dict:
    """Median cosine of the 1st and 10th nearest neighbour, and the 10th-percentile of the 1st."""
    return {"top1_median": round(float(np.median(scores[:, 0])), 4),
            "top10_median": round(float(np.median(scores[:, K - 1])), 4),
            "top1_p10": round(float(np.percentile(scores[:, 0], 10)), 4),
            "top1_minus_top10_median": round(float(np.median(scores[:, 0] - scores[:, K - 1])), 4)}


# ---------------------------------------------------------------------------------------------- search

@dataclass
class Variant:
    """One index to build: a label, its IndexConfig, and the search settings to sweep over it."""
    label: str
    cfg: IndexConfig
    settings: list[dict]


def variants(size: int, quick: bool, opq: bool) -> list[Variant]:
    """The builds and search settings per size (chosen so at least one setting per kind reaches recall@10 >= 0.95
    on the synthetic queries; see README)."""
    big = size >= 500_000
    nlist = 0                           # the product's default, about 4*sqrt(n): 1,264 at 100k, 4,000 at 1M
    out = [Variant("flat", IndexConfig(kind="flat"), [{}])]
    if quick:
        out += [
            Variant("hnsw", IndexConfig(kind="hnsw", hnsw_m=32, ef_construction=100),
                    [{"ef_search": 32}, {"ef_search": 128}]),
            Variant("ivf_flat", IndexConfig(kind="ivf_flat"), [{"nprobe": 8}, {"nprobe": 32}]),
            Variant("ivf_pq", IndexConfig(kind="ivf_pq"), [{"nprobe": 32, "rescore": 4}, {"nprobe": 32, "rescore": 16}]),
        ]
        return out
    efs = [16, 32, 64, 128, 256] if big else [16, 32, 64, 128]
    # nprobe: a few cheap settings and the product's default (2*sqrt(nlist): 72 at 100k, 128 at 1M)
    probes = [2, 8, 32, default_nprobe(nlist or default_nlist(size))]
    # rescore 1 = FAISS's own top 10 (PQ recall); 4 = the product's default; 16, 32 = deeper re-scoring
    pq = [{"nprobe": 8, "rescore": 1}, {"nprobe": 8, "rescore": 4}, {"nprobe": 8, "rescore": 16},
          {"nprobe": 8, "rescore": 32}, {"nprobe": 32, "rescore": 4}, {"nprobe": 32, "rescore": 16}]
    out += [
        Variant("hnsw", IndexConfig(kind="hnsw", hnsw_m=32, ef_construction=100), [{"ef_search": e} for e in efs]),
        Variant("ivf_flat", IndexConfig(kind="ivf_flat", nlist=nlist), [{"nprobe": p} for p in probes]),
        Variant("ivf_pq", IndexConfig(kind="ivf_pq", nlist=nlist), pq),
    ]
    if opq:
        out.append(Variant("ivf_pq+opq", IndexConfig(kind="ivf_pq", nlist=nlist, opq=True), pq))
    return out


def setting_label(s: dict) -> str:
    short = {"ef_search": "ef", "nprobe": "np", "rescore": "rs"}
    return " ".join(f"{short[k]}={v}" for k, v in s.items()) if s else "exact"


class Searcher:
    """One search path (a VectorIndex at one setting, or the numpy floor): top-K vids for a query block."""

    def __init__(self, X: np.ndarray, vi: VectorIndex | None = None, setting: dict | None = None):
        self.X = X
        self.vi = vi
        self.s = dict(setting or {})
        self.rescore = int(self.s.pop("rescore", 0))

    def __call__(self, q: np.ndarray) -> np.ndarray:
        if self.vi is None:
            return numpy_topk(self.X, q, K)
        if not self.rescore:
            return self.vi.search(q, K, **self.s)[1]
        # the product's ivf_pq path: top K*rescore candidates by PQ score, re-ranked by the exact cosine
        # (the product reads the exact vectors from DuckDB; here they come from the float32 matrix in RAM)
        _, cand = self.vi.search(q, K * self.rescore, **self.s)
        out = np.empty((len(q), K), np.int64)
        for lo in range(0, len(q), 256):                              # bounded gather buffer
            c = cand[lo:lo + 256]
            vecs = self.X[np.maximum(c, 1) - 1]                       # vid = row + 1; -1 slots masked below
            exact = np.einsum("qcd,qd->qc", vecs, q[lo:lo + 256])
            exact[c < 0] = -np.inf
            top = np.argsort(-exact, axis=1, kind="stable")[:, :K]
            out[lo:lo + 256] = np.take_along_axis(c, top, axis=1)
        return out


def numpy_topk(X: np.ndarray, q: np.ndarray, k: int, block: int = 64) -> np.ndarray:
    """The floor: `q @ X.T` then argpartition top-k (query blocks keep the score matrix small). Returns vids."""
    out = np.empty((len(q), k), np.int64)
    for lo in range(0, len(q), block):
        s = q[lo:lo + block] @ X.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1)
        out[lo:lo + block] = np.take_along_axis(part, order, axis=1) + 1
    return out


def time_single(fn: Searcher, Q: np.ndarray, n_max: int, budget_s: float) -> dict:
    """One query per call, 1 thread: per-query latency until n_max queries or budget_s seconds (>= 30 queries)."""
    for i in range(min(5, len(Q))):                                 # warm-up
        fn(Q[i:i + 1])
    lat = []
    t_end = perf() + budget_s
    with Phase() as ph:
        for i in range(min(n_max, len(Q))):
            t0 = perf()
            fn(Q[i:i + 1])
            lat.append(perf() - t0)
            if perf() > t_end and len(lat) >= 30:
                break
    mean = float(np.mean(lat))
    return {"n": len(lat), "p50_ms": percentile_ms(lat, 50), "p95_ms": percentile_ms(lat, 95),
            "mean_ms": mean * 1000, "qps": 1.0 / mean, "others_share": ph.others}


def time_batch(fn: Searcher, Q: np.ndarray, threads: int, min_s: float = 1.0) -> tuple[dict, np.ndarray]:
    """All queries in one call with `threads` threads (FAISS OpenMP and numpy BLAS); repeated until min_s seconds
    (at most 5 runs); the median run counts."""
    set_threads(threads)
    runs = []
    found = None
    try:
        with threadpool_limits(limits=threads, user_api="blas"), Phase() as ph:
            while True:
                t0 = perf()
                found = fn(Q)
                runs.append(perf() - t0)
                if sum(runs) >= min_s or len(runs) >= 5:
                    break
    finally:
        set_threads(SEARCH_THREADS)
    t = float(np.median(runs))
    return {"threads": threads, "n": len(Q), "runs": len(runs), "s": t, "qps": len(Q) / t,
            "others_share": ph.others}, found


# ---------------------------------------------------------------------------------------------- builds

def build_index(var: Variant, X: np.ndarray, vids: np.ndarray, seed: int) -> tuple[VectorIndex, dict]:
    """Build with every core as the product does; time the whole build and its training part; RSS around it."""
    n = len(X)
    plan = plan_index(var.cfg, DIM, n, strict=True)
    n_train = training_sample_size(var.cfg, plan, n)
    trim_heap()
    rss0 = rss_bytes()                       # before the training sample: RSS growth = what the index keeps
    sample = None
    if n_train:
        rng = np.random.default_rng([seed, 7, n])
        sample = X[np.sort(rng.choice(n, n_train, replace=False))]

    train_s = [0.0]
    orig_train = VectorIndex.train

    def timed_train(self, vectors):
        t0 = perf()
        try:
            return orig_train(self, vectors)
        finally:
            train_s[0] += perf() - t0

    set_threads(BUILD_THREADS)
    peak_ok = reset_peak_rss()
    VectorIndex.train = timed_train
    try:
        with Phase() as ph:
            vi = VectorIndex.build(DIM, plan, vids, X, train_vectors=sample)
    finally:
        VectorIndex.train = orig_train
        set_threads(SEARCH_THREADS)
    peak = peak_rss_bytes() if peak_ok else None
    del sample
    trim_heap()
    rss1 = rss_bytes()
    t0 = perf()
    nbytes = vi.nbytes()
    nbytes_s = perf() - t0
    info = {"plan": plan.to_dict(), "train_sample": n_train, "build_s": ph.wall, "train_s": train_s[0],
            "add_s": ph.wall - train_s[0], "build_cpu_s": ph.cpu, "build_others_share": ph.others,
            "nbytes": nbytes, "nbytes_per_vector": nbytes / n, "nbytes_call_s": nbytes_s,
            "rss_growth_bytes": rss1 - rss0, "rss_growth_per_vector": (rss1 - rss0) / n,
            "peak_rss_over_start_bytes": (peak - rss0) if peak is not None else None,
            "describe": vi.describe()}
    return vi, info


def disk_and_mmap(vi: VectorIndex, var: Variant, plan, n: int, tmp: Path, Q: np.ndarray, setting: dict,
                  do_reads: bool) -> dict:
    """Write the index (bytes/vector on disk); for the largest size also read it back plainly and memory-mapped."""
    path = tmp / f"{var.label}.faiss"
    t0 = perf()
    vi.write(path)
    out = {"write_s": perf() - t0, "file_bytes": path.stat().st_size, "disk_per_vector": path.stat().st_size / n,
           "setting": setting_label(setting)}
    if do_reads:
        s = dict(setting)
        s.pop("rescore", None)
        for mode in ("read", "mmap"):
            trim_heap()
            r0 = rss_parts()
            t0 = perf()
            vi2 = VectorIndex.read(path, DIM, plan, mmap=(mode == "mmap"))
            open_s = perf() - t0
            r1 = rss_parts()
            set_threads(SEARCH_THREADS)
            t0 = perf()
            vi2.search(Q[:1], K, **s)
            first_ms = (perf() - t0) * 1000
            t0 = perf()
            vi2.search(Q, K, **s)
            batch_s = perf() - t0
            r2 = rss_parts()
            out[mode] = {"open_s": open_s, "mmapped": vi2.mmapped,
                         "rss_anon_after_open": r1["RssAnon"] - r0["RssAnon"],
                         "rss_file_after_open": r1["RssFile"] - r0["RssFile"],
                         "rss_after_open": (r1["RssAnon"] + r1["RssFile"]) - (r0["RssAnon"] + r0["RssFile"]),
                         "rss_after_queries": (r2["RssAnon"] + r2["RssFile"]) - (r0["RssAnon"] + r0["RssFile"]),
                         "first_query_ms": first_ms, "batch_qps": len(Q) / batch_s}
            del vi2
        out["page_cache_note"] = "file just written: its pages are in the page cache (warm open)"
    path.unlink()
    return out


def store_fetch(X: np.ndarray, tmp: Path, reps: int) -> dict:
    """Cost of the product's re-scoring fetch: `Store.vectors(vids)` on a DuckDB file holding these vectors."""
    from retriever.store import Store

    n = len(X)
    path = tmp / "store.duckdb"
    t0 = perf()
    store = Store.create(path, DIM)
    step = 50_000
    for lo in range(0, n, step):
        ids = [f"d{i}" for i in range(lo, min(n, lo + step))]
        store.upsert(ids, [(i, None, f"synthetic document {i}", {}) for i in ids], X[lo:lo + step])
    store.checkpoint()
    fill_s = perf() - t0
    rng = np.random.default_rng([SEED, 9])
    out = {"vectors": n, "fill_s": fill_s, "file_bytes": path.stat().st_size}
    for m in (K * 4, K * 16):
        lat = []
        for r in range(reps + 3):
            want = rng.choice(n, m, replace=False) + 1
            t0 = perf()
            got_vids, vecs = store.vectors(want)
            dt = perf() - t0
            if r >= 3:
                lat.append(dt)
        assert np.array_equal(got_vids, np.sort(want)) and np.allclose(vecs, X[got_vids - 1]), "store vectors mismatch"
        out[f"vids_{m}"] = {"n": len(lat), "p50_ms": percentile_ms(lat, 50), "p95_ms": percentile_ms(lat, 95)}
    store.close()
    path.unlink()
    return out


# ------------------------------------------------------------------------------------------------ report

def fmt(v, spec: str = ".3g", none: str = "-") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return none
    return format(v, spec)


def render_table(rows: list[dict]) -> str:
    cols = [("size", "size"), ("kind", "kind"), ("setting", "setting"), ("build_s", "build s"),
            ("train_s", "train s"), ("ram_bpv", "B/vec RAM"), ("rss_bpv", "B/vec RSS"), ("disk_bpv", "B/vec disk"),
            ("recall_syn", "R@10 syn"), ("recall_real", "R@10 real"), ("p50_ms", "1q p50 ms"),
            ("p95_ms", "1q p95 ms"), ("qps1", "1q qps"), ("bqps1", "batch qps 1t"), ("bqps2", "batch qps 2t")]
    cells = []
    for r in rows:
        cells.append([
            f"{r['size']:,}", r["kind"], r["setting"],
            fmt(r.get("build_s"), ".1f"), fmt(r.get("train_s"), ".1f"),
            fmt(r.get("ram_bpv"), ",.0f"), fmt(r.get("rss_bpv"), ",.0f"), fmt(r.get("disk_bpv"), ",.0f"),
            fmt(r.get("recall_syn"), ".4f"), fmt(r.get("recall_real"), ".4f"),
            fmt(r.get("p50_ms"), ".3f"), fmt(r.get("p95_ms"), ".3f"),
            fmt(r.get("qps1"), ",.0f"), fmt(r.get("bqps1"), ",.0f"), fmt(r.get("bqps2"), ",.0f"),
        ])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))
    out = [line([h for _, h in cols]), line(["-" * w for w in widths])]
    prev_size = None
    for r, c in zip(rows, cells):
        if prev_size is not None and r["size"] != prev_size:
            out.append("")
        prev_size = r["size"]
        out.append(line(c))
    return "\n".join(out)


def render_mmap(results: list[dict]) -> str:
    lines = []
    hdr = f"{'size':>9}  {'kind':<11} {'setting':<12} {'mode':<5} {'open s':>7} {'RSS MB open':>11} {'(file)':>8} " \
          f"{'RSS MB +1k q':>12} {'1st q ms':>9} {'batch qps':>10}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for size_res in results:
        for b in size_res["builds"]:
            d = b.get("disk", {})
            for mode in ("read", "mmap"):
                m = d.get(mode)
                if not m:
                    continue
                lines.append(f"{size_res['size']:>9,}  {b['label']:<11} {d['setting']:<12} {mode:<5} {m['open_s']:>7.2f} "
                             f"{m['rss_after_open'] / 2**20:>11.1f} {m['rss_file_after_open'] / 2**20:>8.1f} "
                             f"{m['rss_after_queries'] / 2**20:>12.1f} {m['first_query_ms']:>9.2f} "
                             f"{m['batch_qps']:>10,.0f}" + ("" if m["mmapped"] or mode == "read" else "  (not mapped)"))
    return "\n".join(lines) if len(lines) > 2 else ""


MISS_FLOOR = 3e-4   # plot recall >= 0.9997 (and exact search) at this miss rate


def plot(rows: list[dict], sizes: list[int], path: Path) -> None:
    """Recall@10 (x) vs queries/s (y, log), one line per kind, one column per size; top row: held-out synthetic
    queries, bottom row: real fitz-gov queries (their recall, at the speed measured with the synthetic queries).
    Solid: one query per call; dashed: 1,000-query batches; both with 1 FAISS thread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    colors = {k: plt.get_cmap("tab10")(i) for i, k in enumerate(kinds)}
    panels = [("recall_syn", "held-out synthetic queries"), ("recall_real", "real fitz-gov queries")]
    fig, axes = plt.subplots(len(panels), len(sizes), figsize=(7.5 * len(sizes), 5.2 * len(panels)), squeeze=False)
    for col, size in enumerate(sizes):
        for row, (key, what) in enumerate(panels):
            ax = axes[row][col]
            for kind in kinds:
                pts = [r for r in rows if r["size"] == size and r["kind"] == kind]
                pts = [(r[key] if r.get(key) is not None else (1.0 if kind == "numpy" else None), r) for r in pts]
                pts = sorted((p for p in pts if p[0] is not None), key=lambda p: p[0])
                if not pts:
                    continue
                x = [max(1.0 - p[0], MISS_FLOOR) for p in pts]
                ax.plot(x, [p[1]["qps1"] for p in pts], "o-", color=colors[kind], label=f"{kind} single")
                ax.plot(x, [p[1]["bqps1"] for p in pts], "s--", color=colors[kind], alpha=0.6, label=f"{kind} batched")
                for rec, r in pts:
                    if r["setting"] not in ("exact", "q @ X.T"):
                        ax.annotate(r["setting"], (max(1.0 - rec, MISS_FLOOR), r["qps1"]), fontsize=6, color=colors[kind],
                                    xytext=(3, 3), textcoords="offset points")
            ax.set_yscale("log")
            ax.set_xscale("log")           # x is the miss rate 1 - recall, log-scaled and reversed: 0.99 vs 0.999 shows
            ax.invert_xaxis()
            ticks = [t for t in (0.5, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, MISS_FLOOR)]
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{1 - t:g}" if t > MISS_FLOOR else f">={1 - t:g}" for t in ticks], fontsize=7)
            ax.minorticks_off()
            worst = max([1.0 - (r.get(key) or 1.0) for r in rows if r["size"] == size] + [0.01])
            ax.set_xlim(min(worst * 1.5, 0.6), MISS_FLOOR * 0.8)
            ax.set_xlabel(f"recall@10 vs exact, {what} (log scale of 1 - recall)")
            ax.set_ylabel("queries/s, 1 thread (log)")
            ax.set_title(f"{size:,} vectors x {DIM}-d: {what}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6, loc="lower left", ncol=2)
    fig.suptitle("VectorIndex kinds: recall@10 vs queries/s\n(solid: one query per call, dashed: 1,000-query batch; "
                 "speed measured on the synthetic queries)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------- main

def run_size(size: int, args, synth: Synth, real_q: np.ndarray, tmp: Path, largest: bool,
             store_size: int | None) -> dict:
    log(f"=== {size:,} vectors: generating")
    with Phase() as ph:
        X, _ = synth.sample(size, stream=0)
        Qs, _ = synth.sample(args.queries, stream=1)
    vids = np.arange(1, size + 1, dtype=np.int64)                      # DuckDB vids start at 1: row = vid - 1
    res: dict = {"size": size, "generate_s": ph.wall, "builds": []}
    log(f"  generated in {ph.wall:.1f}s; ground truth (exact top-{K}, faiss IndexFlatIP, {CORES} threads)")
    with Phase() as ph:
        gt_s_scores, gt_s = exact_topk(Qs, X, K)
        gt_r_scores, gt_r = exact_topk(real_q, X, K)
    gt_s, gt_r = gt_s + 1, gt_r + 1
    set_threads(SEARCH_THREADS)
    res["ground_truth_s"] = ph.wall
    res["nn_synthetic_queries"] = nn_stats(gt_s_scores)
    res["nn_real_queries"] = nn_stats(gt_r_scores)
    log(f"  ground truth in {ph.wall:.1f}s; held-out synthetic queries: NN cosine {res['nn_synthetic_queries']}; "
        f"real queries: {res['nn_real_queries']}")

    rows = []

    def measure(kind: str, setting: dict, searcher: Searcher, budget: float) -> dict:
        label = setting_label(setting)
        r: dict = {"size": size, "kind": kind, "setting": label, "params": setting}
        single = time_single(searcher, Qs, args.single, budget)
        b1, found = time_batch(searcher, Qs, SEARCH_THREADS)
        r["recall_syn"] = recall_at_k(found, gt_s)
        b2 = None
        if not args.no_two_threads and CORES > 1:
            b2, _ = time_batch(searcher, Qs, CORES)
        set_threads(CORES)                       # results do not depend on threads: the real-query recall uses all
        with threadpool_limits(limits=CORES, user_api="blas"):
            r["recall_real"] = recall_at_k(searcher(real_q), gt_r) if kind != "numpy" else None
        set_threads(SEARCH_THREADS)
        r.update({"single": single, "batch_1t": b1, "batch_2t": b2, "p50_ms": single["p50_ms"],
                  "p95_ms": single["p95_ms"], "qps1": single["qps"], "bqps1": b1["qps"],
                  "bqps2": b2["qps"] if b2 else None})
        log(f"  {kind:<10} {label:<12} recall@10 syn {r['recall_syn']:.4f} real {fmt(r['recall_real'], '.4f')}  "
            f"1q p50 {single['p50_ms']:.3f} ms ({single['n']} q)  batch {b1['qps']:,.0f} q/s (1t)"
            + (f" {b2['qps']:,.0f} q/s (2t)" if b2 else ""))
        return r

    # the floor: numpy on the same float32 matrix, BLAS limited to the same threads
    log("  numpy floor (queries @ X.T + argpartition)")
    with threadpool_limits(limits=SEARCH_THREADS, user_api="blas"):
        r = measure("numpy", {}, Searcher(X), args.single_budget)
    r["setting"] = "q @ X.T"
    rows.append(r)

    for var in variants(size, args.quick, not args.no_opq):
        log(f"  building {var.label} ({var.cfg.kind}) with {BUILD_THREADS} threads")
        vi, info = build_index(var, X, vids, SEED)
        info["label"] = var.label
        log(f"  built {var.label} in {info['build_s']:.1f}s (train {info['train_s']:.1f}s; plan {info['plan']['params']}); "
            f"{info['nbytes_per_vector']:.0f} B/vector, RSS +{info['rss_growth_per_vector']:.0f} B/vector")
        for i, setting in enumerate(var.settings):
            r = measure(var.label, setting, Searcher(X, vi, setting), args.single_budget)
            if i == 0:
                r.update({"build_s": info["build_s"], "train_s": info["train_s"] if var.cfg.kind != "flat" and
                          var.cfg.kind != "hnsw" else None, "ram_bpv": info["nbytes_per_vector"],
                          "rss_bpv": info["rss_growth_per_vector"]})
            rows.append(r)
        plan = vi.plan
        info["disk"] = disk_and_mmap(vi, var, plan, size, tmp, Qs, var.settings[-1], do_reads=largest)
        rows[-len(var.settings)]["disk_bpv"] = info["disk"]["disk_per_vector"]
        info["settings"] = var.settings
        res["builds"].append(info)
        del vi
        gc.collect()

    if store_size == size:
        log(f"  DuckDB re-score fetch: Store.vectors(vids) on a store holding {size:,} vectors")
        res["store_fetch"] = store_fetch(X, tmp, reps=args.store_reps)
        sf = res["store_fetch"]
        log(f"  store filled in {sf['fill_s']:.1f}s; vectors(40 vids) p50 {sf['vids_40']['p50_ms']:.2f} ms, "
            f"vectors(160 vids) p50 {sf['vids_160']['p50_ms']:.2f} ms")
    res["rows"] = rows
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated index sizes")
    ap.add_argument("--quick", action="store_true", help="20k vectors only, fewer settings (~2 min smoke run)")
    ap.add_argument("--queries", type=int, default=1000, help="held-out synthetic queries (batched and recall)")
    ap.add_argument("--real-queries", type=int, default=0, help="real fitz-gov queries for recall (0 = all 2,812)")
    ap.add_argument("--single", type=int, default=1000, help="most queries timed one at a time per setting")
    ap.add_argument("--single-budget", type=float, default=8.0, help="seconds of single-query timing per setting")
    ap.add_argument("--store-reps", type=int, default=50, help="Store.vectors calls timed per candidate count")
    ap.add_argument("--no-opq", action="store_true",
                    help="skip the ivf_pq + OPQ build (never in --quick: OPQ training is the slowest build, and "
                         "OpenMP makes it many times slower when another process is busy)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="first wait up to S seconds for the other processes to go quiet")
    ap.add_argument("--no-two-threads", action="store_true", help="skip the batched 2-thread column")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output directory")
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from <out>/index.json")
    args = ap.parse_args()
    if args.replot:
        report = json.loads((args.out / "index.json").read_text())
        rows = [r for res in report["sizes"] for r in res["rows"]]
        plot(rows, [res["size"] for res in report["sizes"]], args.out / "index_recall_qps.png")
        print(args.out / "index_recall_qps.png")
        return
    sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.quick:
        args.single_budget = min(args.single_budget, 3.0)
        args.store_reps = min(args.store_reps, 20)
    args.out.mkdir(parents=True, exist_ok=True)
    set_threads(SEARCH_THREADS)
    log(f"bench_index: sizes {sizes}, {args.queries} synthetic queries, {CORES} cores, faiss {faiss.__version__}")

    if args.wait_idle:
        busy = wait_idle(args.wait_idle)
        log(f"starting; other processes use {fmt(busy, '.0%')} of the cores")
    t_all = perf()
    docs, real_q_all = embeddings_cache(ROOT / "benchmarks" / "results")   # the cache stays here whatever --out
    real_q = np.ascontiguousarray(real_q_all[pick_evenly(len(real_q_all), args.real_queries)])
    synth = Synth(docs)

    # does the generator look like the real data? median 1st / 10th neighbour cosine, real vs synthetic
    log("nearest-neighbour cosine: real documents vs synthetic sets")
    nn = {"real_docs_vs_docs": nn_stats(exact_topk(docs, docs, K, exclude_self=True)[0]),
          "real_queries_vs_docs": nn_stats(exact_topk(real_q, docs, K)[0])}
    small, _ = synth.sample(len(docs), stream=2)
    nn["synthetic_same_size_vs_itself"] = nn_stats(exact_topk(small, small, K, exclude_self=True)[0])
    nn["real_queries_vs_synthetic_same_size"] = nn_stats(exact_topk(real_q, small, K)[0])
    del small
    for k_, v in nn.items():
        log(f"  {k_:<32} {v}")
    set_threads(SEARCH_THREADS)

    # the DuckDB fetch is measured once, on the 100k store (or the smallest size when that is <= 200k)
    store_size = 100_000 if 100_000 in sizes else (min(sizes) if min(sizes) <= 200_000 else None)
    tmp = Path(tempfile.mkdtemp(prefix="bench_index_", dir=args.out))
    results = []
    try:
        for size in sizes:
            results.append(run_size(size, args, synth, real_q, tmp, largest=(size == max(sizes)),
                                    store_size=store_size))
            gc.collect()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = perf() - t_all

    rows = [r for res in results for r in res["rows"]]
    report = {
        "command": " ".join(sys.argv),
        "machine": {"cores": CORES, "platform": platform.platform(), "python": platform.python_version(),
                    "faiss": faiss.__version__, "numpy": np.__version__, "loadavg_end": list(os.getloadavg())},
        "threads": {"build": BUILD_THREADS, "search": SEARCH_THREADS},
        "k": K, "dim": DIM, "synthetic_queries": args.queries, "real_queries": len(real_q),
        "generator": synth.describe(), "nn_cosine": nn, "total_s": total,
        "sizes": results,
    }
    (args.out / "index.json").write_text(json.dumps(report, indent=1, default=float))
    plot(rows, sizes, args.out / "index_recall_qps.png")

    others = [x for res in results for b in res["builds"] for x in [b["build_others_share"]] if x is not None]
    others += [r["single"]["others_share"] for r in rows if r["single"]["others_share"] is not None]
    print()
    print(f"bench_index: {DIM}-d synthetic vectors (fitz-gov cluster structure), k={K}, {args.queries} held-out "
          f"synthetic queries, {len(real_q)} real fitz-gov queries; builds {BUILD_THREADS} threads, searches "
          f"{SEARCH_THREADS} thread (batch 2t column: {CORES})")
    print("NN cosine medians (top-1 / top-10): " + "; ".join(
        f"{k_} {v['top1_median']:.3f}/{v['top10_median']:.3f}" for k_, v in nn.items()))
    for res in results:
        print(f"  {res['size']:,}: held-out synthetic queries {res['nn_synthetic_queries']['top1_median']:.3f}/"
              f"{res['nn_synthetic_queries']['top10_median']:.3f}; real queries "
              f"{res['nn_real_queries']['top1_median']:.3f}/{res['nn_real_queries']['top10_median']:.3f}")
    print()
    print(render_table(rows))
    mm = render_mmap(results)
    if mm:
        print()
        print("largest size: plain read vs memory-mapped open (RSS growth of this process; page cache warm)")
        print(mm)
    for res in results:
        sf = res.get("store_fetch")
        if sf:
            print()
            print(f"ivf_pq re-score fetch from DuckDB (Store.vectors on {sf['vectors']:,} vectors, not included above): "
                  f"40 vids p50 {sf['vids_40']['p50_ms']:.2f} ms / p95 {sf['vids_40']['p95_ms']:.2f} ms; "
                  f"160 vids p50 {sf['vids_160']['p50_ms']:.2f} ms / p95 {sf['vids_160']['p95_ms']:.2f} ms")
    if others and max(others) > 0.1:
        print(f"\nWARNING: other processes used up to {max(others):.0%} of the cores during timed phases; "
              f"absolute times are inflated (see others_share in index.json)")
    print(f"\ntotal {total / 60:.1f} min; JSON {args.out / 'index.json'}; plot {args.out / 'index_recall_qps.png'}")


if __name__ == "__main__":
    main()
