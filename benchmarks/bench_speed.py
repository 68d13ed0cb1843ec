#!/usr/bin/env python
"""Speed and quality side by side: our pipeline vs LlamaIndex, LangChain and the bare loop, one command, one run.

    python benchmarks/bench_speed.py                                   # everything, defaults (see README)
    python benchmarks/bench_speed.py --pipelines ours,bare --queries 50
    python benchmarks/bench_speed.py --quick                           # smoke run: tiny corpus, 3 queries
    python benchmarks/bench_speed.py --wait-idle 300   # before each pipeline wait up to 5 min for a quiet machine

Peers install as benchmark-only extras: `pip install -c constraints.txt -e ".[bench-llama-index,bench-langchain]"`;
a missing peer's row says what to install and the others still run.

Setting for all: embedder all-MiniLM-L6-v2 and cross-encoder ms-marco-MiniLM-L-12-v2 from the same local folders
(`retriever.models.resolve_*`, offline), the cross-encoder keeps 10, torch on 2 threads. Peers retrieve 20
candidates and rerank at the model's own max_length (512), as their users would; ours runs its shipped
`[rerank] candidates` and `max_length` (chosen by benchmarks/rerank_curve.py on separate holdout queries; the run
prints them).

Pipelines (each in its own subprocess, so peak RSS and thread settings are per pipeline):
  ours         Retriever with the shipped defaults (`RetrieverConfig()`, i.e. configs/default.toml):
               search(q, k=10, rerank=True); retrieve-only is search(q, k=20, rerank=False).
  ours-serial  the defaults with `[rerank] pair_workers = 1`: one pair at a time on every core, the reranker before
               pairs ran side by side (same scores; the baseline of that change).
  ours-fp32    the defaults with `[embedding] backend = "torch"` and `[rerank] backend = "torch"` (the fp32 reference
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
  2. queries   a fresh index of `fitz_gov_subset(--docs)` (build time reported, not in the table); 3 warm-up
               queries; then `--queries` labeled queries (distinct texts, picked evenly): retrieve-only single
               (top-20 -> unique documents, keep 10), retrieve + rerank single, retrieve + rerank in batches of
               `--batch` (ours: search_batch; bare: one encode/search/predict; langchain, llama-index: a loop).
               recall@10 and MRR@10 at document level (`hit.document_id`; `common.quality`).
  Ours: `clear_caches()` before every timed phase; no text repeats within a phase, so every number is cold work.
Output: one table, a targets block, and every raw number in benchmarks/results/speed.json.
"""
from __future__ import annotations

import common  # first: offline hubs, quiet warnings, the repository on sys.path

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from common import Phase, document_ids, fmt, latency, log, peak_rss_mb, perf, quality  # noqa: E402
from peers import KEEP, PIPELINES, TOP_K, PeerUnavailable, Pipeline  # noqa: E402
from retriever import runtime  # noqa: E402

EMBEDDER = "builtin:all-MiniLM-L6-v2"
RERANKER = "builtin:ms-marco-MiniLM-L-12-v2"
THREADS = 2
SPEED_QUERIES = 200  # default --queries; rerank_curve.py keeps its holdout out of the queries this picks
ALL = ["ours", "ours-serial", "ours-fp32", "bare", "langchain", "llama-index"]
PEERS = ["bare", "langchain", "llama-index"]
QUICK = {"docs": 50, "queries": 3, "batch": 2, "ingest_docs": 50, "ingest_queries": 10}


# ------------------------------------------------------------------------------------------------- ours
class OursPipeline(Pipeline):
    """Our Retriever behind the peers' surface (see peers.py). Every `build` is a fresh index directory that
    shares the models already loaded by a small warm-up index (`adopt_models`), so model load is never timed."""

    batch_note = "Retriever.search_batch: one embedding batch, one FAISS call, one rerank batch"

    def __init__(self, variant: str, tmp: Path):
        from retriever import Retriever, RetrieverConfig

        self.Retriever = Retriever
        self.tmp = tmp
        self.config = RetrieverConfig()
        self.config_note = "shipped defaults (RetrieverConfig())"
        if variant == "ours-fp32":
            self.config = self.config.replace(embedding={"backend": "torch"}, rerank={"backend": "torch"})
            self.config_note = 'defaults + [embedding] backend = "torch", [rerank] backend = "torch"'
        if variant == "ours-serial":
            self.config = self.config.replace(rerank={"pair_workers": 1})
            self.config_note = "defaults + [rerank] pair_workers = 1"
        rr = self.config.rerank
        self.config_note += f"; rerank {rr.candidates} candidates at {rr.max_length} tokens"
        self.r = None
        self.fresh = False
        self.builds = 0
        self.last_upsert = None
        self.warm = Retriever.create(tmp / "warm", self.config)

    def prepare(self) -> None:
        """A fresh empty index directory sharing the loaded models."""
        if self.r is not None:
            self.r.close()
        self.builds += 1
        self.r = self.Retriever.create(self.tmp / f"index{self.builds}", self.config)
        self.r.adopt_models(self.warm)
        self.fresh = True

    def build(self, docs) -> None:
        if not self.fresh:
            self.prepare()
        self.fresh = False
        self.last_upsert = self.r.upsert(docs)
        self.r.save()

    def clear_caches(self) -> None:
        for r in (self.warm, self.r):
            if r is not None:
                r.clear_caches()

    def retrieve(self, query: str) -> list[str]:
        return document_ids(self.r.search(query, k=TOP_K, rerank=False))

    def search(self, query: str) -> list[str]:
        return document_ids(self.r.search(query, k=KEEP, rerank=True))

    def search_batch(self, queries: list[str]) -> list[list[str]]:
        return [document_ids(h) for h in self.r.search_batch(queries, k=KEEP, rerank=True)]

    def info(self) -> dict:
        up, cfg = self.last_upsert, self.config.to_dict()
        return {"config": self.config_note, "vectors": up.vectors if up else None,
                "chunked_docs": up.chunked if up else None,
                **{k: cfg.get(k) for k in ("embedding", "rerank", "chunking", "runtime")}}

    def close(self) -> None:
        for r in (self.r, self.warm):
            if r is not None:
                r.close()


def make_pipeline(name: str, tmp: Path) -> Pipeline:
    from retriever.models import resolve_embedder, resolve_reranker

    if name in ("ours", "ours-serial", "ours-fp32"):
        return OursPipeline(name, tmp)
    import torch

    torch.set_num_threads(THREADS)  # ours sets its own through [runtime] torch_threads (0 = one per core)
    return PIPELINES[name](str(resolve_embedder(EMBEDDER)), str(resolve_reranker(RERANKER)))


# -------------------------------------------------------------------------------------------- child phases
def timed_build(p: Pipeline, docs) -> Phase:
    """A fresh index of `docs`; only the indexing is timed (ours creates its empty directory first, untimed)."""
    p.prepare()
    p.clear_caches()
    with Phase() as ph:
        p.build(docs)
    return ph


def warm_up(p: Pipeline, docs, queries: list[str]) -> None:
    """Tiny index, every call once: lazy model loads and first-call overheads happen here, untimed."""
    p.build(docs[:16])
    for q in queries:
        p.retrieve(q)
        p.search(q)
    p.search_batch(queries)


def phase_ingest(p: Pipeline, args) -> dict:
    from retriever.datasets import fitz_gov_subset

    docs, labeled = fitz_gov_subset(args.ingest_docs or 10**9)  # beyond the corpus size: all of it
    log(f"  ingest: {len(docs)} documents")
    ph = timed_build(p, docs)
    queries = common.pick_evenly(labeled, args.ingest_queries)
    p.clear_caches()
    with Phase() as qph:
        rankings = [p.retrieve(q.query) for q in queries]
    out = {"docs": len(docs), "seconds": ph.wall, "docs_per_s": len(docs) / ph.wall, "phase": ph.record(),
           "vectors": p.info().get("vectors"), "retrieve_quality": quality(rankings, queries),
           "recall_queries_seconds": qph.wall, "peak_rss_mb_after": peak_rss_mb()}
    log(f"  ingest: {out['docs_per_s']:.1f} docs/s ({ph.wall:.1f} s, {out['vectors']} vectors, others' share "
        f"{ph.others}); recall@10 {out['retrieve_quality']['recall@10']:.3f} on {len(queries)} queries")
    return out


def timed(p: Pipeline, fn, items) -> tuple[list[float], list, dict]:
    """fn over the items, each call timed, after clearing the caches; (seconds, outputs, phase record)."""
    p.clear_caches()
    with Phase() as ph:
        seconds, out = common.time_each(fn, items)
    return seconds, out, ph.record()


def phase_queries(p: Pipeline, args, docs, queries, warm: list[str]) -> dict:
    ph = timed_build(p, docs)
    out: dict = {"docs": len(docs), "queries": len(queries), "build": ph.record(), "index": p.info()}
    for q in warm:
        p.retrieve(q)
        p.search(q)
    log(f"  queries: {len(docs)} documents indexed in {ph.wall:.1f} s; timing {len(queries)} queries")
    texts = [q.query for q in queries]
    for name, fn in (("retrieve", p.retrieve), ("rerank", p.search)):
        secs, rankings, rec = timed(p, fn, texts)
        out[name] = {"latency": latency(secs), "quality": quality(rankings, queries), "phase": rec}
        log(f"  {name} p50 {out[name]['latency']['p50_ms']:.1f} ms, p95 {out[name]['latency']['p95_ms']:.1f} ms, "
            f"MRR@10 {out[name]['quality']['mrr@10']:.3f}")
    if p.batch_is_loop:
        # no batch API: a batch is the same loop of single searches, already timed above (ms per query = its mean)
        single = out["rerank"]
        lat = {**single["latency"], "batch": args.batch, "ms_per_query": single["latency"]["mean_ms"],
               "reused_single": True}
        out["rerank_batched"] = {"latency": lat, "quality": single["quality"], "phase": single["phase"],
                                 "how": p.batch_note + "; the single-query loop's numbers, not timed twice"}
    else:
        chunks = [texts[i:i + args.batch] for i in range(0, len(texts), args.batch)]
        secs, outs, rec = timed(p, p.search_batch, chunks)
        lat = {**latency(secs), "batch": args.batch, "ms_per_query": sum(secs) * 1000.0 / len(texts)}
        out["rerank_batched"] = {"latency": lat, "quality": quality([r for o in outs for r in o], queries),
                                 "phase": rec, "how": p.batch_note}
    log(f"  batched (x{args.batch}) {lat['ms_per_query']:.1f} ms/query")
    return out


def run_child(args) -> dict:
    from retriever.datasets import fitz_gov_subset

    name = args.pipeline
    res: dict = {"pipeline": name}
    docs, labeled = fitz_gov_subset(args.docs)
    pool = common.distinct_texts(labeled)
    queries = common.pick_evenly(pool, args.queries)
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
        res["threads"] = runtime.current()
        res["config"] = p.config_note
        log(f"{name}: models loaded and warm in {res['load_and_warm_s']:.1f} s; threads {res['threads']}")
        if not args.skip_ingest:
            res["ingest"] = phase_ingest(p, args)
        res["queries"] = phase_queries(p, args, docs, queries, warm)
        res["batch_note"] = p.batch_note
        res["peak_rss_mb"] = peak_rss_mb()
        return res
    finally:
        if p is not None:
            p.close()
        shutil.rmtree(tmp, ignore_errors=True)


# -------------------------------------------------------------------------------------------- parent
def run_one(name: str, args) -> dict:
    fd, tmp_out = tempfile.mkstemp(prefix=f"bench-speed-{name}-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--pipeline", name, "--child-out", tmp_out,
           "--docs", str(args.docs), "--queries", str(args.queries), "--batch", str(args.batch),
           "--ingest-docs", str(args.ingest_docs or 0), "--ingest-queries", str(args.ingest_queries)]
    if args.skip_ingest:
        cmd.append("--skip-ingest")
    busy = common.wait_idle(args.wait_idle) if args.wait_idle > 0 else None
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


COLUMNS = [("ingest d/s", "ingest_dps", ".1f"), ("5k R@10", "ingest_recall", ".3f"), ("ret p50", "ret_p50", ".1f"),
           ("ret p95", "ret_p95", ".1f"), ("rr p50", "rr_p50", ".1f"), ("rr p95", "rr_p95", ".1f"),
           ("batch ms/q", "batch_ms", ".1f"), ("R@10", "recall", ".3f"), ("MRR@10", "mrr", ".3f"),
           ("peak MB", "peak_mb", ".0f")]


def print_report(results: dict, tg: dict, args) -> None:
    nums = {k: row_numbers(v) for k, v in results.items()}
    ours_rr, bare_ingest = get(nums, "ours", "rr_p95"), get(nums, "bare", "ingest_dps")
    ingest_n = next((get(r, "ingest", "docs") for r in results.values() if get(r, "ingest", "docs")), None)
    q_n = next((get(r, "queries", "queries") for r in results.values() if get(r, "queries", "queries")), None)
    print(f"\nbench_speed: ingest {ingest_n or 'skipped'} documents; queries on fitz_gov_subset({args.docs}), "
          f"{q_n} distinct labeled queries, batches of {args.batch}; peers top-{TOP_K} -> rerank -> {KEEP}; "
          f"latencies in ms; R@10/MRR@10 document level, reranked, single queries")
    ok = [name for name, res in results.items() if "queries" in res]
    print(common.table(
        ["pipeline", *(h for h, _, _ in COLUMNS), "rr p95 /ours", "ingest /bare"],
        [[name, *(fmt(nums[name][k], s) for _, k, s in COLUMNS), fmt(ratio(nums[name]["rr_p95"], ours_rr), ".2f"),
          fmt(ratio(nums[name]["ingest_dps"], bare_ingest), ".2f")] for name in ok]))
    for name, res in results.items():
        if name not in ok:
            print(f"  {name}: {res.get('unavailable') or res.get('error')}")
        if res.get("config"):
            print(f"  {name}: {res['config']}")
        if res.get("batch_note") and name in PEERS:
            print(f"  {name} batched: {res['batch_note']}")
    phases = {f"{name} {'/'.join(path[:-1])}": get(res, *path) for name, res in results.items() for path in
              (("ingest", "phase"), ("queries", "retrieve", "phase"), ("queries", "rerank", "phase"),
               ("queries", "rerank_batched", "phase")) if get(res, *path)}
    warning = common.busy_warning(phases)
    if warning:
        print("  " + warning)
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
              f"{fmt(d, '+.4f')} (target >= -0.01)")
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
    started = common.machine()
    results = {n: run_one(n, args) for n in names}
    tg = targets({n: row_numbers(r) for n, r in results.items() if "queries" in r})
    report = {"machine_start": started, "machine_end": common.machine(),
              "settings": {"embedder": EMBEDDER, "reranker": RERANKER, "top_k": TOP_K, "keep": KEEP,
                           "torch_threads": THREADS, "docs": args.docs, "queries": args.queries, "batch": args.batch,
                           "ingest_docs": args.ingest_docs or "all", "ingest_queries": args.ingest_queries,
                           "skip_ingest": args.skip_ingest, "quick": args.quick},
              "pipelines": results, "targets": tg}
    print_report(results, tg, args)
    common.write_json(args.out, report)
    print(f"\nJSON: {args.out}")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pipelines", default=",".join(ALL), help=f"comma-separated, from {','.join(ALL)}")
    ap.add_argument("--docs", type=int, default=1000, help="fitz_gov_subset size for the query phase")
    ap.add_argument("--queries", type=int, default=SPEED_QUERIES, help="distinct labeled queries timed (picked evenly)")
    ap.add_argument("--batch", type=int, default=16, help="queries per search_batch call")
    ap.add_argument("--ingest-docs", type=int, default=0, help="0 = the full corpus (5,010); N = fitz_gov_subset(N)")
    ap.add_argument("--ingest-queries", type=int, default=500, help="labeled queries for the ingest index's recall")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each pipeline wait up to S seconds for the other processes to go quiet")
    ap.add_argument("--out", type=Path, default=common.RESULTS / "speed.json")
    ap.add_argument("--pipeline", help=argparse.SUPPRESS)    # child mode: run one pipeline
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    return args


def main() -> None:
    args = parse_args()
    if args.pipeline:
        common.write_json(Path(args.child_out), run_child(args))
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
