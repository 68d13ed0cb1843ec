#!/usr/bin/env python
"""FAISS index kinds of `retriever.vector_index.VectorIndex` side by side, on 384-d vectors.

    python benchmarks/bench_index.py                     # 100k and 1M vectors
    python benchmarks/bench_index.py --sizes 100000      # 100k only
    python benchmarks/bench_index.py --quick             # 20k vectors, fewer settings, no OPQ: a smoke run

For each size: build time (and the IVF/PQ training part of it), bytes per vector in RAM (`nbytes()` and the
RSS growth measured around the build) and on disk (written file), recall@10 against exact search
(`retriever.knn.knn_intersection` against `retriever.knn.exact_topk`) for held-out synthetic queries and for the
real fitz-gov query embeddings, single-query latency (p50/p95, 1 FAISS thread) and batched queries/s (1 thread;
2 threads as an extra column) for each kind at 2-3 search settings. `flat` is the exact baseline;
`knn.exact_topk` (the package's own exact scan: one matrix product per block of queries, partition, stable sort)
on the same float32 matrix is the floor. For the largest size, each kind is also written, read back plainly and
memory-mapped (open time, RSS). `ivf_pq` results are re-scored as the product does (top k*rescore candidates
re-ranked by true cosine with `knn.exact_topk`); the exact vectors come from the in-RAM float32 matrix here, and
the cost of fetching them from DuckDB (`Store.vectors`) is measured separately on a store holding the 100k vectors.

Data: synthetic with the cluster structure of real embeddings (see `Synth` and benchmarks/README.md): the
fitz-gov documents embedded with the default embedder (cached in benchmarks/results/fitz_gov_embeddings.npy),
each synthetic vector = normalize(doc_embedding[random doc] + low-rank noise + isotropic noise).

Threads as in the product: builds/trains with every core, searches with ONE FAISS thread (the models own the
cores at query time). Progress goes to stderr with timestamps; one table is printed at the end; every number
goes to <out>/index.json and the recall-vs-queries/s plot to <out>/index_recall_qps.png.
"""
from __future__ import annotations

import common  # first: offline hubs, quiet warnings, the repository on sys.path

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from common import CORES, RESULTS, Phase, fmt, latency, log, perf  # noqa: E402
from retriever.config import IndexConfig  # noqa: E402
from retriever.index_plan import default_nlist, default_nprobe, plan_index, training_sample_size  # noqa: E402
from retriever.knn import exact_topk, knn_intersection  # noqa: E402
from retriever.vector_index import DEFAULT_RESCORE, VectorIndex  # noqa: E402

DIM = 384
K = 10
SEED = 20240601
BUILD_THREADS = CORES   # the product builds/trains with every core ...
SEARCH_THREADS = 1      # ... and searches with one FAISS thread
EXACT_BLOCK_BYTES = 256 << 20  # score block of one exact_topk call (queries x corpus float32)


# ---------------------------------------------------------------------------------------------- memory
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


def trim_heap() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc malloc_trim), so RSS deltas measure
    live memory rather than what the allocator kept from earlier phases."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to clear_refs) so the next peak is this phase's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def set_threads(n: int) -> None:
    faiss.omp_set_num_threads(n)


# ------------------------------------------------------------------------------------------------- data
def embeddings_cache(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """The fitz-gov documents and labeled queries embedded with the product's default embedder, cached as .npy."""
    from retriever.datasets import fitz_gov_documents, fitz_gov_queries

    texts = {"docs": [d.text for d in fitz_gov_documents()], "queries": [q.query for q in fitz_gov_queries()]}
    out.mkdir(parents=True, exist_ok=True)
    arrays, embedder = {}, None
    for name, items in texts.items():
        path = out / ("fitz_gov_embeddings.npy" if name == "docs" else "fitz_gov_query_embeddings.npy")
        if path.is_file():
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (len(items), DIM) and arr.dtype == np.float32:
                log(f"real {name}: {arr.shape[0]:,} embeddings from {path}")
                arrays[name] = arr
                continue
            log(f"{path} has shape {arr.shape}, expected ({len(items)}, {DIM}): re-embedding")
        if embedder is None:
            from retriever.config import EmbeddingConfig
            from retriever.embedding import Embedder

            embedder = Embedder.from_config(EmbeddingConfig())
        log(f"embedding {len(items):,} fitz-gov {name} with {embedder.name} ({embedder.backend}; cached afterwards)")
        with Phase() as ph:
            arr = np.ascontiguousarray(embedder.encode(items), dtype=np.float32)
        log(f"  {len(arr):,} in {ph.wall:.0f}s -> {path}")
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



def exact(queries: np.ndarray, X: np.ndarray, vids: np.ndarray, k: int, *, exclude_self: bool = False
          ) -> tuple[np.ndarray, np.ndarray]:
    """`knn.exact_topk` over X, in query chunks whose score block stays under EXACT_BLOCK_BYTES; with
    `exclude_self` (queries = X) each query's first hit, itself, is dropped. Returns (scores, vids)."""
    step = max(1, min(len(queries), EXACT_BLOCK_BYTES // (4 * max(1, len(X)))))
    parts = [exact_topk(queries[lo:lo + step], X, vids, k + int(exclude_self)) for lo in range(0, len(queries), step)]
    s, v = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return (s[:, 1:], v[:, 1:]) if exclude_self else (s, v)


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
    nlist = 0                           # the product's default, about 4*sqrt(n): 1,264 at 100k, 4,000 at 1M
    out = [Variant("flat", IndexConfig(kind="flat"), [{}])]
    if quick:
        return out + [
            Variant("hnsw", IndexConfig(kind="hnsw", hnsw_m=32, ef_construction=100),
                    [{"ef_search": 32}, {"ef_search": 128}]),
            Variant("ivf_flat", IndexConfig(kind="ivf_flat"), [{"nprobe": 8}, {"nprobe": 32}]),
            Variant("ivf_pq", IndexConfig(kind="ivf_pq"), [{"nprobe": 32, "rescore": 4},
                                                            {"nprobe": 32, "rescore": DEFAULT_RESCORE}]),
        ]
    efs = [16, 32, 64, 128, 256] if size >= 500_000 else [16, 32, 64, 128]
    # nprobe: a few cheap settings and the product's default (2*sqrt(nlist): 72 at 100k, 128 at 1M)
    probes = [2, 8, 32, default_nprobe(nlist or default_nlist(size))]
    # rescore 1 = FAISS's own top 10 (PQ recall); 4 and 32 around the product's default (DEFAULT_RESCORE, 16)
    pq = [{"nprobe": 8, "rescore": rs} for rs in (1, 4, DEFAULT_RESCORE, 32)]
    pq += [{"nprobe": 32, "rescore": 4}, {"nprobe": 32, "rescore": DEFAULT_RESCORE}]
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


class SearchPath:
    """One search path, a VectorIndex at one setting or (no index) the exact floor: top-K vids per query row."""

    def __init__(self, X: np.ndarray, vids: np.ndarray, vi: VectorIndex | None = None, setting: dict | None = None):
        self.X, self.vids, self.vi = X, vids, vi
        self.s = dict(setting or {})
        self.rescore = int(self.s.pop("rescore", 0))

    def __call__(self, q: np.ndarray) -> np.ndarray:
        if self.vi is None:
            return exact(q, self.X, self.vids, K)[1]
        if not self.rescore:
            return self.vi.search(q, K, **self.s)[1]
        # the product's ivf_pq path: top K*rescore candidates by PQ score, re-ranked by the exact cosine
        # (the product reads the exact vectors from DuckDB; here they come from the float32 matrix in RAM)
        _, cand = self.vi.search(q, K * self.rescore, **self.s)
        out = np.full((len(q), K), -1, np.int64)
        for i, c in enumerate(cand):
            c = c[c >= 0]
            top = exact_topk(q[i:i + 1], self.X[c - 1], c, K)[1][0]    # vid = row + 1
            out[i, :len(top)] = top
        return out


def time_single(fn: SearchPath, Q: np.ndarray, n_max: int, budget_s: float) -> dict:
    """One query per call, 1 thread: per-query latency until n_max queries or budget_s seconds (>= 30 queries)."""
    rows = [Q[i:i + 1] for i in range(min(n_max, len(Q)))]
    for q in rows[:5]:                                              # warm-up
        fn(q)
    with Phase() as ph:
        seconds, _ = common.time_each(fn, rows, max_secs=budget_s, min_items=30)
    return {**latency(seconds), "qps": len(seconds) / sum(seconds), "others_share": ph.others}


def time_batch(fn: SearchPath, Q: np.ndarray, threads: int, min_s: float = 1.0) -> tuple[dict, np.ndarray]:
    """All queries in one call with `threads` threads (FAISS OpenMP and numpy BLAS); repeated until min_s seconds
    (at most 5 runs); the median run counts."""
    set_threads(threads)
    timer = common.RepeatTimer(runs=5, max_secs=min_s)
    try:
        with threadpool_limits(limits=threads, user_api="blas"), Phase() as ph:
            for _ in timer:
                found = fn(Q)
    finally:
        set_threads(SEARCH_THREADS)
    t = timer.median()
    return {"threads": threads, "n": len(Q), "runs": len(timer.times), "s": t, "qps": len(Q) / t,
            "others_share": ph.others}, found


# ---------------------------------------------------------------------------------------------- builds
def build_index(var: Variant, X: np.ndarray, vids: np.ndarray, seed: int) -> tuple[VectorIndex, dict]:
    """`VectorIndex.build`'s steps (train on the sample, add), each timed, with every core as the product does;
    RSS around it."""
    n = len(X)
    plan = plan_index(var.cfg, DIM, n, strict=True)
    n_train = training_sample_size(var.cfg, plan, n)
    trim_heap()
    rss0 = rss_bytes()                       # before the training sample: RSS growth = what the index keeps
    sample = None
    if n_train:
        rng = np.random.default_rng([seed, 7, n])
        sample = X[np.sort(rng.choice(n, n_train, replace=False))]
    set_threads(BUILD_THREADS)
    peak_ok = reset_peak_rss()
    try:
        with Phase() as ph:
            vi = VectorIndex(DIM, plan)
            with Phase() as train:
                if not vi.is_trained:
                    vi.train(X if sample is None else sample)
            vi.add(vids, X)
    finally:
        set_threads(SEARCH_THREADS)
    peak = rss_parts().get("VmHWM") if peak_ok else None
    del sample
    trim_heap()
    rss1 = rss_bytes()
    t0 = perf()
    nbytes = vi.nbytes()
    info = {"plan": plan.to_dict(), "train_sample": n_train, "build_s": ph.wall, "train_s": train.wall,
            "add_s": ph.wall - train.wall, "build_cpu_s": ph.cpu, "build_others_share": ph.others,
            "nbytes": nbytes, "nbytes_per_vector": nbytes / n, "nbytes_call_s": perf() - t0,
            "rss_growth_bytes": rss1 - rss0, "rss_growth_per_vector": (rss1 - rss0) / n,
            "peak_rss_over_start_bytes": (peak - rss0) if peak is not None else None,
            "describe": vi.describe()}
    return vi, info


def disk_and_mmap(vi: VectorIndex, var: Variant, n: int, tmp: Path, Q: np.ndarray, setting: dict,
                  do_reads: bool) -> dict:
    """Write the index (bytes/vector on disk); for the largest size also read it back plainly and memory-mapped."""
    path = tmp / f"{var.label}.faiss"
    t0 = perf()
    vi.write(path)
    out = {"write_s": perf() - t0, "file_bytes": path.stat().st_size, "disk_per_vector": path.stat().st_size / n,
           "setting": setting_label(setting)}
    if do_reads:
        s = {k: v for k, v in setting.items() if k != "rescore"}
        for mode in ("read", "mmap"):
            trim_heap()
            r0 = rss_parts()
            t0 = perf()
            vi2 = VectorIndex.read(path, DIM, vi.plan, mmap=(mode == "mmap"))
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
    out = {"vectors": n, "fill_s": perf() - t0, "file_bytes": path.stat().st_size}
    rng = np.random.default_rng([SEED, 9])
    for m in (K * 4, K * 16):
        wants = [rng.choice(n, m, replace=False) + 1 for _ in range(reps + 3)]
        seconds, got = common.time_each(store.vectors, wants)
        got_vids, vecs = got[-1]
        assert np.array_equal(got_vids, np.sort(wants[-1])) and np.allclose(vecs, X[got_vids - 1]), \
            "store vectors mismatch"
        out[f"vids_{m}"] = latency(seconds[3:])                       # the first 3: warm-up
    store.close()
    path.unlink()
    return out


# ------------------------------------------------------------------------------------------------ report
COLUMNS = [("build_s", "build s", ".1f"), ("train_s", "train s", ".1f"), ("ram_bpv", "B/vec RAM", ",.0f"),
           ("rss_bpv", "B/vec RSS", ",.0f"), ("disk_bpv", "B/vec disk", ",.0f"), ("recall_syn", "R@10 syn", ".4f"),
           ("recall_real", "R@10 real", ".4f"), ("p50_ms", "1q p50 ms", ".3f"), ("p95_ms", "1q p95 ms", ".3f"),
           ("qps1", "1q qps", ",.0f"), ("bqps1", "batch qps 1t", ",.0f"), ("bqps2", "batch qps 2t", ",.0f")]


def render_table(rows: list[dict]) -> str:
    cells = []
    for i, r in enumerate(rows):
        if i and r["size"] != rows[i - 1]["size"]:
            cells.append([])                                          # a blank line between sizes
        cells.append([f"{r['size']:,}", r["kind"], r["setting"], *(fmt(r.get(k), s) for k, _, s in COLUMNS)])
    return common.table(["size", "kind", "setting", *(h for _, h, _ in COLUMNS)], cells, align="lll")


def render_mmap(results: list[dict]) -> str:
    cells = [[f"{res['size']:,}", b["label"], b["disk"]["setting"], mode, f"{m['open_s']:.2f}",
              f"{m['rss_after_open'] / 2**20:.1f}", f"{m['rss_file_after_open'] / 2**20:.1f}",
              f"{m['rss_after_queries'] / 2**20:.1f}", f"{m['first_query_ms']:.2f}", f"{m['batch_qps']:,.0f}",
              "" if m["mmapped"] or mode == "read" else "(not mapped)"]
             for res in results for b in res["builds"] for mode in ("read", "mmap") if (m := b["disk"].get(mode))]
    return common.table(["size", "kind", "setting", "mode", "open s", "RSS MB open", "(file)", "RSS MB +1k q",
                         "1st q ms", "batch qps", ""], cells, align="rlll") if cells else ""


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
                pts = [(r[key] if r.get(key) is not None else (1.0 if kind == "exact floor" else None), r) for r in pts]
                pts = sorted((p for p in pts if p[0] is not None), key=lambda p: p[0])
                if not pts:
                    continue
                x = [max(1.0 - p[0], MISS_FLOOR) for p in pts]
                ax.plot(x, [p[1]["qps1"] for p in pts], "o-", color=colors[kind], label=f"{kind} single")
                ax.plot(x, [p[1]["bqps1"] for p in pts], "s--", color=colors[kind], alpha=0.6, label=f"{kind} batched")
                for rec, r in pts:
                    if r["setting"] not in ("exact", "knn.exact_topk"):
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
    log(f"  generated in {ph.wall:.1f}s; ground truth (knn.exact_topk, top-{K}, BLAS {CORES} threads)")
    with Phase() as ph, threadpool_limits(limits=CORES, user_api="blas"):
        gt_s_scores, gt_s = exact(Qs, X, vids, K)
        gt_r_scores, gt_r = exact(real_q, X, vids, K)
    res["ground_truth_s"] = ph.wall
    res["nn_synthetic_queries"] = nn_stats(gt_s_scores)
    res["nn_real_queries"] = nn_stats(gt_r_scores)
    log(f"  ground truth in {ph.wall:.1f}s; held-out synthetic queries: NN cosine {res['nn_synthetic_queries']}; "
        f"real queries: {res['nn_real_queries']}")

    rows = []

    def measure(kind: str, setting: dict, path: SearchPath) -> dict:
        label = setting_label(setting)
        r: dict = {"size": size, "kind": kind, "setting": label, "params": setting}
        single = time_single(path, Qs, args.single, args.single_budget)
        b1, found = time_batch(path, Qs, SEARCH_THREADS)
        r["recall_syn"] = knn_intersection(found, gt_s, K)
        b2 = time_batch(path, Qs, CORES)[0] if not args.no_two_threads and CORES > 1 else None
        if kind != "exact floor":                 # results do not depend on threads: the real-query recall uses all
            set_threads(CORES)
            with threadpool_limits(limits=CORES, user_api="blas"):
                r["recall_real"] = knn_intersection(path(real_q), gt_r, K)
            set_threads(SEARCH_THREADS)
        r.update({"single": single, "batch_1t": b1, "batch_2t": b2, "p50_ms": single["p50_ms"],
                  "p95_ms": single["p95_ms"], "qps1": single["qps"], "bqps1": b1["qps"],
                  "bqps2": b2["qps"] if b2 else None})
        log(f"  {kind:<11} {label:<12} recall@10 syn {r['recall_syn']:.4f} real {fmt(r.get('recall_real'), '.4f')}  "
            f"1q p50 {single['p50_ms']:.3f} ms ({single['n']} q)  batch {b1['qps']:,.0f} q/s (1t)"
            + (f" {b2['qps']:,.0f} q/s (2t)" if b2 else ""))
        return r

    log("  exact floor (knn.exact_topk on the float32 matrix)")
    with threadpool_limits(limits=SEARCH_THREADS, user_api="blas"):
        rows.append(measure("exact floor", {}, SearchPath(X, vids)))
    rows[-1]["setting"] = "knn.exact_topk"

    for var in variants(size, args.quick, not args.no_opq):
        log(f"  building {var.label} ({var.cfg.kind}) with {BUILD_THREADS} threads")
        vi, info = build_index(var, X, vids, SEED)
        info["label"] = var.label
        log(f"  built {var.label} in {info['build_s']:.1f}s (train {info['train_s']:.1f}s; plan {info['plan']['params']}); "
            f"{info['nbytes_per_vector']:.0f} B/vector, RSS +{info['rss_growth_per_vector']:.0f} B/vector")
        for i, setting in enumerate(var.settings):
            r = measure(var.label, setting, SearchPath(X, vids, vi, setting))
            if i == 0:
                r.update({"build_s": info["build_s"], "train_s": info["train_s"] if vi.ivf is not None else None,
                          "ram_bpv": info["nbytes_per_vector"], "rss_bpv": info["rss_growth_per_vector"]})
            rows.append(r)
        info["disk"] = disk_and_mmap(vi, var, size, tmp, Qs, var.settings[-1], do_reads=largest)
        rows[-len(var.settings)]["disk_bpv"] = info["disk"]["disk_per_vector"]
        info["settings"] = var.settings
        res["builds"].append(info)
        del vi
        gc.collect()

    if store_size == size:
        log(f"  DuckDB re-score fetch: Store.vectors(vids) on a store holding {size:,} vectors")
        res["store_fetch"] = sf = store_fetch(X, tmp, reps=args.store_reps)
        log(f"  store filled in {sf['fill_s']:.1f}s; vectors(40 vids) p50 {sf['vids_40']['p50_ms']:.2f} ms, "
            f"vectors(160 vids) p50 {sf['vids_160']['p50_ms']:.2f} ms")
    res["rows"] = rows
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated index sizes")
    ap.add_argument("--quick", action="store_true", help="20k vectors only, fewer settings, no OPQ: a smoke run")
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
    ap.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from <out>/index.json")
    args = ap.parse_args()
    if args.replot:
        report = json.loads((args.out / "index.json").read_text())
        plot([r for res in report["sizes"] for r in res["rows"]], [res["size"] for res in report["sizes"]],
             args.out / "index_recall_qps.png")
        print(args.out / "index_recall_qps.png")
        return
    sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.quick:
        args.single_budget, args.store_reps, args.no_opq = min(args.single_budget, 3.0), min(args.store_reps, 20), True
    args.out.mkdir(parents=True, exist_ok=True)
    set_threads(SEARCH_THREADS)
    log(f"bench_index: sizes {sizes}, {args.queries} synthetic queries, {CORES} cores, faiss {faiss.__version__}")
    if args.wait_idle:
        log(f"starting; other processes use {fmt(common.wait_idle(args.wait_idle), '.0%')} of the cores")
    t_all = perf()
    docs, real_q_all = embeddings_cache(RESULTS)                         # the cache stays there whatever --out
    real_q = np.ascontiguousarray(common.pick_evenly(real_q_all, args.real_queries))
    synth = Synth(docs)

    # does the generator look like the real data? median 1st / 10th neighbour cosine, real vs synthetic
    log("nearest-neighbour cosine: real documents vs synthetic sets")
    doc_vids = np.arange(len(docs), dtype=np.int64)
    small, _ = synth.sample(len(docs), stream=2)
    with threadpool_limits(limits=CORES, user_api="blas"):
        nn = {"real_docs_vs_docs": nn_stats(exact(docs, docs, doc_vids, K, exclude_self=True)[0]),
              "real_queries_vs_docs": nn_stats(exact(real_q, docs, doc_vids, K)[0]),
              "synthetic_same_size_vs_itself": nn_stats(exact(small, small, doc_vids, K, exclude_self=True)[0]),
              "real_queries_vs_synthetic_same_size": nn_stats(exact(real_q, small, doc_vids, K)[0])}
    del small
    for k_, v in nn.items():
        log(f"  {k_:<36} {v}")

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
    common.write_json(args.out / "index.json", {
        "command": " ".join(sys.argv), "machine": common.machine("faiss", "numpy"),
        "threads": {"build": BUILD_THREADS, "search": SEARCH_THREADS},
        "k": K, "dim": DIM, "synthetic_queries": args.queries, "real_queries": len(real_q),
        "generator": synth.describe(), "nn_cosine": nn, "total_s": total, "sizes": results})
    plot(rows, sizes, args.out / "index_recall_qps.png")

    others = [b["build_others_share"] for res in results for b in res["builds"]]
    others = [x for x in others + [r["single"]["others_share"] for r in rows] if x is not None]
    print(f"\nbench_index: {DIM}-d synthetic vectors (fitz-gov cluster structure), k={K}, {args.queries} held-out "
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
        print("\nlargest size: plain read vs memory-mapped open (RSS growth of this process; page cache warm)")
        print(mm)
    for res in results:
        sf = res.get("store_fetch")
        if sf:
            print(f"\nivf_pq re-score fetch from DuckDB (Store.vectors on {sf['vectors']:,} vectors, not included above): "
                  f"40 vids p50 {sf['vids_40']['p50_ms']:.2f} ms / p95 {sf['vids_40']['p95_ms']:.2f} ms; "
                  f"160 vids p50 {sf['vids_160']['p50_ms']:.2f} ms / p95 {sf['vids_160']['p95_ms']:.2f} ms")
    if others and max(others) > 0.1:
        print(f"\nWARNING: other processes used up to {max(others):.0%} of the cores during timed phases; "
              f"absolute times are inflated (see others_share in index.json)")
    print(f"\ntotal {total / 60:.1f} min; JSON {args.out / 'index.json'}; plot {args.out / 'index_recall_qps.png'}")


if __name__ == "__main__":
    main()
