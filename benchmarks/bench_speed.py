#!/usr/bin/env python
"""Speed and quality side by side: our pipeline vs LlamaIndex, LangChain and the bare loop, one command, one run.

    python benchmarks/bench_speed.py                                   # everything, defaults (see README)
    python benchmarks/bench_speed.py --pipelines ours,bare --queries 50
    python benchmarks/bench_speed.py --ingest-docs 100 --docs 100 --queries 10 --batch 4   # smoke run
    python benchmarks/bench_speed.py --wait-idle 300   # before each pipeline wait up to 5 min for a quiet machine

Peers install as benchmark-only extras: `pip install -c constraints.txt -e ".[bench-llama-index,bench-langchain]"`;
a missing peer's row says what to install and the others still run.

Setting for all: embedder all-MiniLM-L6-v2 and cross-encoder ms-marco-MiniLM-L-12-v2 from the same local folders
(`retriever.models.resolve_*`, offline), the cross-encoder keeps 10, torch on 2 threads. Peers retrieve 20
candidates and rerank at the model's own max_length (512), as their users would; ours runs its shipped settings:
10 candidates at 128 tokens, chosen by benchmarks/rerank_curve.py on separate tuning queries.

Pipelines (each in its own subprocess, so peak RSS and thread settings are per pipeline):
  ours         Retriever with the shipped defaults (`RetrieverConfig()`, i.e. configs/default.toml):
               search(q, k=10, rerank=True); retrieve-only is search(q, k=20, rerank=False).
  ours-fp32    the same with `[embedding] backend = "torch"` and `[rerank] backend = "torch"` (the fp32 reference
               path).
  bare         sentence-transformers + faiss.IndexFlatIP + CrossEncoder, no framework (see peers.py).
  langchain    langchain-community FAISS + HuggingFaceEmbeddings, RecursiveCharacterTextSplitter(1000, 200),
               ContextualCompressionRetriever(CrossEncoderReranker(HuggingFaceCrossEncoder)) (see peers.py).
  llama-index  VectorStoreIndex on FaissVectorStore(IndexFlatIP) + HuggingFaceEmbedding, default chunking,
               SentenceTransformerRerank(top_n=10) (see peers.py).

Phases per pipeline (models loaded and warmed on a tiny index first, never timed):
  1. ingest    a fresh index of the full fitz-gov corpus (5,010 documents; `--ingest-docs N` takes the
               `fitz_gov_subset(N)` instead): documents/s (ours: upsert + save into a temp directory; peers: in
               memory); then retrieve-only recall@10 of that index on up to `--ingest-queries` labeled queries.
  2. queries   a fresh index of `fitz_gov_subset(1000)` (build time reported, not in the table); 3 warm-up
               queries; then `--queries` labeled queries (distinct texts, picked evenly): retrieve-only single
               (top-20 -> unique documents, keep 10), retrieve + rerank single, retrieve + rerank in batches of
               `--batch` (ours: search_batch; bare: one encode/search/predict; langchain, llama-index: a loop).
               recall@10 and MRR@10 at document level (a chunk counts for its parent document).
  Ours: `clear_caches()` before every timed phase, so every number is cold work.
Output: one table, a targets block, and every raw number in benchmarks/results/speed.json.
"""
from __future__ import annotations

import benchenv  # first: offline hubs, quiet warnings, the repository on sys.path
from benchenv import ROOT  # noqa: E402

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from peers import KEEP, PIPELINES, TOP_K, PeerUnavailable  # noqa: E402

perf = time.perf_counter
EMBEDDER = "builtin:all-MiniLM-L6-v2"
RERANKER = "builtin:ms-marco-MiniLM-L-12-v2"
THREADS = 2
ALL = ["ours", "ours-fp32", "bare", "langchain", "llama-index"]
PEERS = ["bare", "langchain", "llama-index"]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "speed.json"


# ---------------------------------------------------------------------------------------------- helpers

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def lat_summary(seconds: list[float]) -> dict:
    ms = [s * 1000.0 for s in seconds]
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95),
            "mean_ms": float(np.mean(ms)) if ms else None, "max_ms": max(ms) if ms else None}


def pick_evenly(items: list, n: int) -> list:
    """A deterministic spread of n items over the list (queries are sorted by id, i.e. grouped by category)."""
    if n >= len(items):
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def distinct_texts(labeled) -> list:
    """The first labeled query of each distinct text: a timed loop never repeats a query."""
    seen: set[str] = set()
    out = []
    for q in labeled:
        if q.query not in seen:
            seen.add(q.query)
            out.append(q)
    return out


def doc_ranking(doc_ids: list[str], k: int = KEEP) -> list[str]:
    """Unique parent documents in first-seen order, the first k."""
    return list(dict.fromkeys(doc_ids))[:k]


def quality(rankings: list[list[str]], labeled, k: int = KEEP) -> dict:
    rec, mrr = [], []
    for ranked, q in zip(rankings, labeled):
        rel, top = set(q.relevant), ranked[:k]
        rec.append(len(rel.intersection(top)) / len(rel) if rel else 0.0)
        mrr.append(next((1.0 / (i + 1) for i, d in enumerate(top) if d in rel), 0.0))
    return {"n": len(rec), f"recall@{k}": float(np.mean(rec)) if rec else None,
            f"mrr@{k}": float(np.mean(mrr)) if mrr else None}


def thread_state() -> dict:
    import faiss

    out = {"faiss_omp_max_threads": faiss.omp_get_max_threads()}
    if "torch" in sys.modules:
        import torch

        out["torch_num_threads"] = torch.get_num_threads()
    return out


# ------------------------------------------------------------------------------------------------- ours

class OursPipeline:
    """Our Retriever behind the peers' surface (see peers.py). Every `build` is a fresh index directory that
    shares the models already loaded by a small warm-up index (`adopt_models`), so model load is never timed."""

    batch_note = "Retriever.search_batch: one embedding batch, one FAISS call, one rerank batch"

    def __init__(self, variant: str, tmp: Path):
        from retriever import Retriever

        self.Retriever = Retriever
        self.tmp = tmp
        self.config, self.config_note = self._config(variant)
        self.r = None
        self._builds = 0
        self.warm = Retriever.create(tmp / "warm", self.config)

    @staticmethod
    def _config(variant: str):
        from retriever import RetrieverConfig

        base = RetrieverConfig()
        if variant == "ours":
            return base, "shipped defaults (RetrieverConfig())"
        return (base.replace(embedding={"backend": "torch"}, rerank={"backend": "torch"}),
                'defaults + [embedding] backend = "torch", [rerank] backend = "torch"')

    def prepare(self) -> None:
        """Untimed, before each timed `build`: a fresh empty index directory sharing the loaded models."""
        if self.r is not None:
            self.r.close()
        self._builds += 1
        self.r = self.Retriever.create(self.tmp / f"index{self._builds}", self.config)
        self.r.adopt_models(self.warm)
        self._fresh = True

    def build(self, docs) -> None:
        if not getattr(self, "_fresh", False):
            self.prepare()
        self._fresh = False
        self.last_upsert = self.r.upsert(docs)
        self.r.save()

    def clear_caches(self) -> None:
        for r in (self.warm, self.r):
            if r is not None:
                r.clear_caches()

    @staticmethod
    def _parents(hits) -> list[str]:
        return [h.metadata.get("parent_id", h.id) for h in hits]

    def retrieve(self, query: str) -> list[str]:
        return self._parents(self.r.search(query, k=TOP_K, rerank=False))

    def search(self, query: str) -> list[str]:
        return self._parents(self.r.search(query, k=KEEP, rerank=True))

    def search_batch(self, queries: list[str]) -> list[list[str]]:
        return [self._parents(h) for h in self.r.search_batch(queries, k=KEEP, rerank=True)]

    def info(self) -> dict:
        up = getattr(self, "last_upsert", None)
        cfg = self.config.to_dict()
        return {"config": self.config_note, "vectors": up.vectors if up else None,
                "chunked_docs": up.chunked if up else None,
                **{k: cfg.get(k) for k in ("embedding", "rerank", "chunking", "runtime")}}

    def close(self) -> None:
        for r in (self.r, self.warm):
            if r is not None:
                r.close()


def make_pipeline(name: str, tmp: Path):
    from retriever.models import resolve_embedder, resolve_reranker

    if name in ("ours", "ours-fp32"):
        return OursPipeline(name, tmp)
    import torch

    torch.set_num_threads(THREADS)  # ours sets its own through [runtime] torch_threads (0 = one per core)
    return PIPELINES[name](str(resolve_embedder(EMBEDDER)), str(resolve_reranker(RERANKER)))


# -------------------------------------------------------------------------------------------- child phases

def clear(p) -> None:
    if hasattr(p, "clear_caches"):
        p.clear_caches()


def timed_build(p, docs) -> benchenv.Phase:
    """A fresh index of `docs`; only the indexing is timed (ours creates its empty directory first, untimed)."""
    if hasattr(p, "prepare"):
        p.prepare()
    clear(p)
    with benchenv.Phase() as ph:
        p.build(docs)
    return ph


def warm_up(p, docs, queries: list[str]) -> None:
    """Tiny index, every call once: lazy model loads and first-call overheads happen here, untimed."""
    p.build(docs[:16])
    for q in queries:
        p.retrieve(q)
        p.search(q)
    p.search_batch(queries)


def ingest_corpus(n: int | None):
    from retriever.datasets import fitz_gov_documents, fitz_gov_queries, fitz_gov_subset

    if n:
        docs, labeled = fitz_gov_subset(n)
        if len(docs) >= n:
            return docs, labeled
    docs = fitz_gov_documents()
    ids = {d.id for d in docs}
    return docs, [q for q in fitz_gov_queries() if all(r in ids for r in q.relevant)]


def phase_ingest(p, args) -> dict:
    docs, labeled = ingest_corpus(args.ingest_docs)
    log(f"  ingest: {len(docs)} documents")
    ph = timed_build(p, docs)
    info = p.info()
    queries = pick_evenly(labeled, args.ingest_queries)
    clear(p)
    t0 = perf()
    rankings = [doc_ranking(p.retrieve(q.query)) for q in queries]
    t_q = perf() - t0
    out = {"docs": len(docs), "seconds": ph.wall, "docs_per_s": len(docs) / ph.wall, "phase": ph.record(),
           "vectors": info.get("vectors"), "retrieve_quality": quality(rankings, queries),
           "recall_queries_seconds": t_q, "peak_rss_mb_after": peak_rss_mb()}
    log(f"  ingest: {out['docs_per_s']:.1f} docs/s ({ph.wall:.1f} s, {out['vectors']} vectors, others' share "
        f"{ph.others}); recall@10 {out['retrieve_quality']['recall@10']:.3f} on {len(queries)} queries")
    return out


def timed_single(p, fn_name: str, queries) -> tuple[dict, list[list[str]], dict]:
    fn = getattr(p, fn_name)
    clear(p)
    seconds, rankings = [], []
    with benchenv.Phase() as ph:
        for q in queries:
            t0 = perf()
            ids = fn(q.query)
            seconds.append(perf() - t0)
            rankings.append(doc_ranking(ids))
    return lat_summary(seconds), rankings, ph.record()


def timed_batched(p, queries, batch: int) -> tuple[dict, list[list[str]], dict]:
    clear(p)
    seconds, rankings = [], []
    with benchenv.Phase() as ph:
        for i in range(0, len(queries), batch):
            chunk = [q.query for q in queries[i:i + batch]]
            t0 = perf()
            out = p.search_batch(chunk)
            seconds.append(perf() - t0)
            rankings.extend(doc_ranking(ids) for ids in out)
    total = sum(seconds)
    lat = {**lat_summary(seconds), "batch": batch, "ms_per_query": total * 1000.0 / len(queries)}
    return lat, rankings, ph.record()


def phase_queries(p, args, docs, queries, warm: list[str]) -> dict:
    ph = timed_build(p, docs)
    out: dict = {"docs": len(docs), "queries": len(queries), "build": ph.record(), "index": p.info()}
    for q in warm:
        p.retrieve(q)
        p.search(q)
    log(f"  queries: {len(docs)} documents indexed in {ph.wall:.1f} s; timing {len(queries)} queries")
    lat, rk, rec = timed_single(p, "retrieve", queries)
    out["retrieve"] = {"latency": lat, "quality": quality(rk, queries), "phase": rec}
    log(f"  retrieve-only p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms")
    lat, rk, rec = timed_single(p, "search", queries)
    out["rerank"] = {"latency": lat, "quality": quality(rk, queries), "phase": rec}
    log(f"  + rerank p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms, "
        f"MRR@10 {out['rerank']['quality']['mrr@10']:.3f}")
    if getattr(p, "batch_is_loop", False):
        # no batch API: a batch is the same loop of single searches, already timed above (ms per query = its mean)
        single = out["rerank"]
        lat = {**single["latency"], "batch": args.batch, "ms_per_query": single["latency"]["mean_ms"],
               "reused_single": True}
        out["rerank_batched"] = {"latency": lat, "quality": single["quality"], "phase": single["phase"],
                                 "how": p.batch_note + "; the single-query loop's numbers, not timed twice"}
    else:
        lat, rk, rec = timed_batched(p, queries, args.batch)
        out["rerank_batched"] = {"latency": lat, "quality": quality(rk, queries), "phase": rec, "how": p.batch_note}
    log(f"  batched (x{args.batch}) {lat['ms_per_query']:.1f} ms/query")
    return out


def run_child(args) -> dict:
    from retriever.datasets import fitz_gov_subset

    name = args.pipeline
    res: dict = {"pipeline": name}
    docs, labeled = fitz_gov_subset(args.docs)
    pool = distinct_texts(labeled)
    queries = pick_evenly(pool, args.queries)
    chosen = {q.query for q in queries}
    warm = [q.query for q in pool if q.query not in chosen][:3] or ["warm-up query one", "warm-up query two"]
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-speed-{name}-"))
    p = None
    try:
        t0 = perf()
        try:
            p = make_pipeline(name, tmp)
        except PeerUnavailable as e:
            return {**res, "unavailable": str(e)}
        warm_up(p, docs, warm)
        res["load_and_warm_s"] = perf() - t0
        res["threads"] = thread_state()
        if hasattr(p, "config_note"):
            res["config"] = p.config_note
        log(f"{name}: models loaded and warm in {res['load_and_warm_s']:.1f} s; threads {res['threads']}")
        if not args.skip_ingest:
            res["ingest"] = phase_ingest(p, args)
        res["queries"] = phase_queries(p, args, docs, queries, warm)
        res["batch_note"] = p.batch_note
        res["peak_rss_mb"] = peak_rss_mb()
        return res
    finally:
        if p is not None and hasattr(p, "close"):
            p.close()
        shutil.rmtree(tmp, ignore_errors=True)


# -------------------------------------------------------------------------------------------- parent

def others_busy(interval: float = 1.0) -> float | None:
    """Share of all cores that other processes used over `interval` seconds (this process sleeps meanwhile)."""
    b0 = benchenv.machine_busy_seconds()
    time.sleep(interval)
    b1 = benchenv.machine_busy_seconds()
    if b0 is None or b1 is None:
        return None
    return max(0.0, (b1 - b0) / (interval * max(1, len(os.sched_getaffinity(0)))))


def wait_idle(limit_s: float, threshold: float = 0.1) -> float | None:
    """Wait up to `limit_s` seconds for 3 quiet seconds in a row (other processes below `threshold` of the cores);
    returns the last share seen."""
    deadline, quiet, share = time.monotonic() + limit_s, 0, None
    while time.monotonic() < deadline and quiet < 3:
        share = others_busy()
        quiet = quiet + 1 if share is not None and share < threshold else 0
    return share


def run_one(name: str, args) -> dict:
    fd, tmp_out = tempfile.mkstemp(prefix=f"bench-speed-{name}-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--pipeline", name, "--child-out", tmp_out,
           "--docs", str(args.docs), "--queries", str(args.queries), "--batch", str(args.batch),
           "--ingest-docs", str(args.ingest_docs or 0), "--ingest-queries", str(args.ingest_queries)]
    if args.skip_ingest:
        cmd.append("--skip-ingest")
    busy = wait_idle(args.wait_idle) if args.wait_idle > 0 else None
    log(f"=== {name}" + (f" (other processes' share of the cores before it: {busy:.0%})" if busy is not None else ""))
    t0 = perf()
    proc = subprocess.run(cmd)
    try:
        res = json.loads(Path(tmp_out).read_text()) if proc.returncode == 0 else None
    except (OSError, ValueError):
        res = None
    finally:
        Path(tmp_out).unlink(missing_ok=True)
    if res is None:
        res = {"pipeline": name, "error": f"subprocess exited with {proc.returncode} (see the log above)"}
    res["wall_s"] = perf() - t0
    res["others_share_before"] = busy
    return res


def get(res: dict, *path, default=None):
    for key in path:
        if not isinstance(res, dict) or key not in res:
            return default
        res = res[key]
    return res


def row_numbers(res: dict) -> dict:
    return {
        "ingest_dps": get(res, "ingest", "docs_per_s"),
        "ingest_recall": get(res, "ingest", "retrieve_quality", "recall@10"),
        "ret_p50": get(res, "queries", "retrieve", "latency", "p50_ms"),
        "ret_p95": get(res, "queries", "retrieve", "latency", "p95_ms"),
        "rr_p50": get(res, "queries", "rerank", "latency", "p50_ms"),
        "rr_p95": get(res, "queries", "rerank", "latency", "p95_ms"),
        "batch_ms": get(res, "queries", "rerank_batched", "latency", "ms_per_query"),
        "recall": get(res, "queries", "rerank", "quality", "recall@10"),
        "mrr": get(res, "queries", "rerank", "quality", "mrr@10"),
        "peak_mb": res.get("peak_rss_mb"),
    }


def ratio(a, b):
    return a / b if a is not None and b else None


def targets(nums: dict[str, dict]) -> dict:
    out: dict = {}
    ours = nums.get("ours")
    peers = {k: v for k, v in nums.items() if k in PEERS and v.get("rr_p95") is not None}
    if ours and ours.get("rr_p95") is not None and peers:
        fastest = min(peers, key=lambda k: peers[k]["rr_p95"])
        best_mrr = max(peers, key=lambda k: peers[k]["mrr"])
        r = ratio(ours["rr_p95"], peers[fastest]["rr_p95"])
        d_fast = ours["mrr"] - peers[fastest]["mrr"]
        d_best = ours["mrr"] - peers[best_mrr]["mrr"]
        out["rerank_p95"] = {"ours_ms": ours["rr_p95"], "best_peer": fastest, "best_peer_ms": peers[fastest]["rr_p95"],
                             "ratio": r, "mrr_delta_vs_best_peer": d_fast, "best_mrr_peer": best_mrr,
                             "mrr_delta_vs_best_mrr_peer": d_best,
                             "pass": r <= 1 / 3 and d_fast >= -0.005 and d_best >= -0.005}
    bare, fp32 = nums.get("bare"), nums.get("ours-fp32")
    if ours and bare and ours.get("ingest_dps") and bare.get("ingest_dps"):
        r = ratio(ours["ingest_dps"], bare["ingest_dps"])
        d = (ours["ingest_recall"] - fp32["ingest_recall"]) if fp32 and fp32.get("ingest_recall") is not None else None
        out["ingest"] = {"ours_dps": ours["ingest_dps"], "bare_dps": bare["ingest_dps"], "ratio": r,
                         "recall_delta_vs_ours_fp32": d,
                         "pass": r >= 2 and d is not None and d >= -0.01}
    if ours and bare and ours.get("ret_p50") is not None and bare.get("ret_p50") is not None:
        r50, r95 = ratio(ours["ret_p50"], bare["ret_p50"]), ratio(ours["ret_p95"], bare["ret_p95"])
        out["retrieve"] = {"p50_ratio": r50, "p95_ratio": r95, "pass": r50 <= 1 and r95 <= 1}
    return out


def fmt(v, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{spec}}"


def print_report(results: dict, tg: dict, args) -> None:
    nums = {k: row_numbers(v) for k, v in results.items()}
    ours_rr = get(nums, "ours", "rr_p95")
    bare_ingest = get(nums, "bare", "ingest_dps")
    cols = [("ingest d/s", "ingest_dps", ".1f", 10), ("5k R@10", "ingest_recall", ".3f", 7),
            ("ret p50", "ret_p50", ".1f", 7), ("ret p95", "ret_p95", ".1f", 7), ("rr p50", "rr_p50", ".1f", 7),
            ("rr p95", "rr_p95", ".1f", 7), ("batch ms/q", "batch_ms", ".1f", 10), ("R@10", "recall", ".3f", 6),
            ("MRR@10", "mrr", ".3f", 6), ("peak MB", "peak_mb", ".0f", 7)]
    ingest_n = next((get(r, "ingest", "docs") for r in results.values() if get(r, "ingest", "docs")), None)
    q_n = next((get(r, "queries", "queries") for r in results.values() if get(r, "queries", "queries")), None)
    print(f"\nbench_speed: ingest {ingest_n or 'skipped'} documents; queries on fitz_gov_subset({args.docs}), "
          f"{q_n} distinct labeled queries, batches of {args.batch}; top-{TOP_K} -> rerank -> {KEEP}; "
          f"latencies in ms; R@10/MRR@10 document level, reranked, single queries")
    head = f"{'pipeline':<12}" + "".join(f" {h:>{w}}" for h, _, _, w in cols) + f" {'rr p95 /ours':>12} {'ingest /bare':>12}"
    print(head)
    print("-" * len(head))
    for name, res in results.items():
        if "unavailable" in res or "error" in res:
            print(f"{name:<12} {res.get('unavailable') or res.get('error')}")
            continue
        n = nums[name]
        line = f"{name:<12}" + "".join(f" {fmt(n[k], s, w)}" for _, k, s, w in cols)
        line += f" {fmt(ratio(n['rr_p95'], ours_rr), '.2f', 12)} {fmt(ratio(n['ingest_dps'], bare_ingest), '.2f', 12)}"
        print(line)
    for name, res in results.items():
        if res.get("config"):
            print(f"  {name}: {res['config']}")
        if res.get("batch_note") and name in PEERS:
            print(f"  {name} batched: {res['batch_note']}")
    busy = {name: max((get(res, *path, "others_share") or 0.0) for path in
                      (("ingest", "phase"), ("queries", "retrieve", "phase"), ("queries", "rerank", "phase"),
                       ("queries", "rerank_batched", "phase"))) for name, res in results.items() if "queries" in res}
    noisy = {k: v for k, v in busy.items() if v > 0.1}
    if noisy:
        print(f"  WARNING: other processes used >10% of the cores during: "
              + ", ".join(f"{k} ({v:.0%})" for k, v in noisy.items()) + " -- those times are inflated")
    print("\ntargets")
    t = tg.get("rerank_p95")
    if t:
        print(f"  {'PASS' if t['pass'] else 'MISS'}  ours rerank p95 / best peer ({t['best_peer']}) p95 = "
              f"{t['ours_ms']:.1f} / {t['best_peer_ms']:.1f} = {t['ratio']:.3f} (target <= 0.333); MRR@10 delta "
              f"{t['mrr_delta_vs_best_peer']:+.4f} vs {t['best_peer']}, {t['mrr_delta_vs_best_mrr_peer']:+.4f} vs "
              f"best-MRR peer {t['best_mrr_peer']} (target >= -0.005)")
    else:
        print("  ----  rerank p95 vs best peer: needs ours and at least one peer")
    t = tg.get("ingest")
    if t:
        d = t["recall_delta_vs_ours_fp32"]
        print(f"  {'PASS' if t['pass'] else 'MISS'}  ours ingest / bare ingest = {t['ours_dps']:.1f} / {t['bare_dps']:.1f} "
              f"docs/s = {t['ratio']:.2f}x (target >= 2); 5k recall@10 ours - ours-fp32 = "
              f"{'-' if d is None else f'{d:+.4f}'} (target >= -0.01)")
    else:
        print("  ----  ingest vs bare: needs ours, bare and the ingest phase")
    t = tg.get("retrieve")
    if t:
        print(f"  {'PASS' if t['pass'] else 'MISS'}  ours retrieve-only / bare: p50 {t['p50_ratio']:.2f}x, "
              f"p95 {t['p95_ratio']:.2f}x (target <= 1)")
    else:
        print("  ----  retrieve-only vs bare: needs ours and bare")


def run_parent(args) -> None:
    names = [n.strip() for n in args.pipelines.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL]
    if unknown:
        sys.exit(f"unknown pipeline(s) {unknown}; choose from {ALL}")
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    results = {n: run_one(n, args) for n in names}
    tg = targets({n: row_numbers(r) for n, r in results.items() if "queries" in r})
    report = {"started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "settings": {"embedder": EMBEDDER, "reranker": RERANKER, "top_k": TOP_K, "keep": KEEP,
                           "torch_threads": THREADS, "docs": args.docs, "queries": args.queries, "batch": args.batch,
                           "ingest_docs": args.ingest_docs or "all", "ingest_queries": args.ingest_queries,
                           "skip_ingest": args.skip_ingest},
              "machine": {"python": platform.python_version(), "cores": os.cpu_count(),
                          "loadavg_end": list(os.getloadavg())},
              "pipelines": results, "targets": tg}
    print_report(results, tg, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pipelines", default=",".join(ALL), help=f"comma-separated, from {','.join(ALL)}")
    ap.add_argument("--docs", type=int, default=1000, help="fitz_gov_subset size for the query phase")
    ap.add_argument("--queries", type=int, default=200, help="distinct labeled queries timed (picked evenly)")
    ap.add_argument("--batch", type=int, default=16, help="queries per search_batch call")
    ap.add_argument("--ingest-docs", type=int, default=0, help="0 = the full corpus (5,010); N = fitz_gov_subset(N)")
    ap.add_argument("--ingest-queries", type=int, default=500, help="labeled queries for the ingest index's recall")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each pipeline wait up to S seconds for the other processes to go quiet")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--pipeline", help=argparse.SUPPRESS)    # child mode: run one pipeline
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.pipeline:
        res = run_child(args)
        Path(args.child_out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
