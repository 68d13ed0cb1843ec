#!/usr/bin/env python
"""Beyond one process: distributed ingest on Ray, and search over 4 shards against the unsharded index, in one run.

    python benchmarks/bench_sharded.py                  # the full fitz-gov corpus (5,010 documents)
    python benchmarks/bench_sharded.py --docs 1000 --queries 40 --skip-serve      # a smoke run

1. Ingest (`retriever.ingest.ingest`, the code behind `retriever ingest`) of the corpus into a new 4-shard index:
   in-process (`engine="local"`), then on Ray with 1 and 2 embedding actors (`engine="ray"`), each timed from
   the call to its return (file read, validation, model loads, embedding, writes, save). The Ray cluster is
   started once before (`ray.init(num_cpus=2, include_dashboard=False)`, not timed): a job joins a running
   cluster. Ray's overhead at 1 worker is (ray1 - local) / local; the target is at most 15%.
2. In-process search: the unsharded index and the 4-shard index of the same documents (both ingested
   in-process, same batches), p50/p95 over distinct labeled fitz-gov queries with caches cleared before every
   call, the two interleaved query by query; without rerank (dense and the default hybrid) and with. The
   fan-out and merge may add at most 5 ms p95.
3. Through HTTP: `retriever serve` (uvicorn, in-process) on the unsharded index against `retriever serve
   --engine ray` (Ray Serve: a router and 1 reader + 1 writer per shard) on the 4-shard index, client-side
   latency of POST /v1/search with distinct queries (each query text is sent once to each server), interleaved.
   The Serve path may add at most 15 ms p95.

Everything goes to benchmarks/results/bench_sharded.json; docs/scaling.md quotes the numbers.
"""
from __future__ import annotations

import common  # first: offline hubs, quiet warnings, the repository on sys.path

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from common import RESULTS, ROOT, fmt, latency, log, machine, perf, pick_evenly, table, write_json  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from serverproc import call, free_port  # noqa: E402


def write_corpus(path: Path, docs) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.id, "text": d.text, **d.metadata}, ensure_ascii=False) + "\n")
    return path


def timed_ingest(data: Path, index: Path, **kw) -> dict:
    from retriever.ingest import ingest

    shutil.rmtree(index, ignore_errors=True)
    t0 = perf()
    rep = ingest(data, index, **kw)
    wall = perf() - t0
    log(f"  {kw.get('engine', 'local')} workers={kw.get('workers', 1)} shards={kw.get('shards')}: "
        f"{rep.documents} docs in {wall:.1f} s ({rep.documents / wall:.1f} docs/s)")
    return {"seconds": round(wall, 2), "docs_per_s": round(rep.documents / wall, 2), "documents": rep.documents,
            "vectors": rep.vectors, "batches": rep.batches}


def search_latency(flat, sharded, queries: list[str], **kw) -> dict:
    """Interleaved single-query latency of both indexes; caches cleared before every call."""
    out = {"unsharded": [], "sharded": []}
    for i, q in enumerate(queries):
        order = [("unsharded", flat), ("sharded", sharded)][:: 1 if i % 2 == 0 else -1]
        for name, r in order:
            r.clear_caches()
            t0 = perf()
            r.search(q, k=10, **kw)
            out[name].append(perf() - t0)
    return {name: latency(s) for name, s in out.items()}


def http_latency(ports: dict[str, int], queries: list[str], rerank: bool) -> dict:
    out = {name: [] for name in ports}
    names = list(ports)
    for i, q in enumerate(queries):
        for name in names[i % 2:] + names[: i % 2]:
            t0 = perf()
            status, body = call(ports[name], "POST", "/v1/search", {"query": q, "k": 10, "rerank": rerank})
            out[name].append(perf() - t0)
            if status != 200 or body.get("partial"):
                raise RuntimeError(f"{name}: {status} {str(body)[:300]}")
    return {name: latency(s) for name, s in out.items()}


def start_server(index: Path, port: int, *args: str, log_path: Path) -> subprocess.Popen:
    code = "import sys; from retriever.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(index), "--port", str(port), "--log-level",
                             "warning", *args], cwd=ROOT, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if call(port, "GET", "/readyz", timeout=5)[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server not ready: {log_path.read_text()[-2000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=0, help="fitz-gov documents (default 0: all)")
    p.add_argument("--queries", type=int, default=100, help="distinct queries per latency row (default 100)")
    p.add_argument("--skip-serve", action="store_true", help="leave out the HTTP rows")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_sharded.json")
    args = p.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from retriever import Retriever, RetrieverConfig
    from retriever.datasets import fitz_gov_documents, fitz_gov_queries, fitz_gov_subset

    docs = fitz_gov_documents() if not args.docs else fitz_gov_subset(args.docs)[0]
    ids = {d.id for d in docs}
    labeled = [q for q in fitz_gov_queries() if set(q.relevant) <= ids]
    texts = list(dict.fromkeys(q.query for q in labeled))
    work = Path(tempfile.mkdtemp(prefix="bench-sharded-"))
    data = write_corpus(work / "corpus.jsonl", docs)
    log(f"{len(docs)} documents, {len(texts)} distinct labeled queries; work dir {work}")
    res: dict = {"machine": machine("ray", "faiss", "duckdb", "onnxruntime"), "documents": len(docs),
                 "commit_every": RetrieverConfig().ingest.commit_every}

    log("starting a local Ray cluster (2 CPUs, no dashboard; not timed)")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    log("ingest")
    ing = {"local": timed_ingest(data, work / "local4", shards=4),
           "ray_1_worker": timed_ingest(data, work / "ray1", shards=4, engine="ray", workers=1),
           "ray_2_workers": timed_ingest(data, work / "ray2", shards=4, engine="ray", workers=2),
           "unsharded_local": timed_ingest(data, work / "flat")}
    ing["ray_overhead_1_worker"] = round(ing["ray_1_worker"]["seconds"] / ing["local"]["seconds"] - 1, 4)
    res["ingest"] = ing

    with Retriever.open(work / "flat", read_only=True) as flat, \
            Retriever.open(work / "local4", read_only=True) as sharded:
        st, sst = flat.stats(), sharded.stats()
        res["disk"] = {"unsharded_bytes": st["disk_bytes"], "sharded_bytes": sst["disk_bytes"],
                       "per_shard": [s["disk_bytes"] for s in sst["shard_stats"]],
                       "bytes_per_document": round(st["disk_bytes"] / st["documents"], 1)}
        picked = pick_evenly(texts, 3 * args.queries)
        plain, hybrid, reranked = picked[0::3], picked[1::3], picked[2::3][: max(20, args.queries // 2)]
        for q in texts[:3]:  # warm-up: model sessions, page cache
            flat.search(q, k=10), sharded.search(q, k=10)
        log("in-process search")
        res["search"] = {
            "dense_no_rerank": search_latency(flat, sharded, plain, rerank=False, mode="dense"),
            "hybrid_no_rerank": search_latency(flat, sharded, hybrid, rerank=False),
            "hybrid_rerank": search_latency(flat, sharded, reranked, rerank=True),
        }

    if not args.skip_serve:
        log("HTTP: retriever serve (unsharded) vs serve --engine ray (4 shards)")
        env_address = os.environ.get("RAY_ADDRESS")
        os.environ["RAY_ADDRESS"] = address
        ports = {"unsharded": free_port(), "ray_serve_4_shards": free_port()}
        procs = [start_server(work / "flat", ports["unsharded"], log_path=work / "flat.log"),
                 start_server(work / "local4", ports["ray_serve_4_shards"], "--engine", "ray",
                              log_path=work / "ray.log")]
        try:
            used = set(picked) | set(texts[:3])  # the warm-up queries' embeddings are cached on both servers
            rest = [t for t in texts if t not in used]
            http_plain, http_rr = rest[: args.queries], rest[args.queries: args.queries + max(20, args.queries // 2)]
            for q in texts[:3]:
                http_latency(ports, [q], rerank=True)
            res["http"] = {"no_rerank": http_latency(ports, http_plain, rerank=False),
                           "rerank": http_latency(ports, http_rr, rerank=True)}
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if env_address is None:
                os.environ.pop("RAY_ADDRESS", None)
    ray.shutdown()
    write_json(args.out, res)
    shutil.rmtree(work, ignore_errors=True)
    report(res)


def side_by_side(rows: dict, keys: tuple[str, str], labels: tuple[str, str], spec: str) -> str:
    """One line per row: n, p50 and p95 of the baseline (keys[0]) and the other, and the p95 the other adds."""
    out = []
    for name, v in rows.items():
        a, b = v[keys[0]], v[keys[1]]
        out.append([name, a["n"], fmt(a["p50_ms"], spec), fmt(b["p50_ms"], spec), fmt(a["p95_ms"], spec),
                    fmt(b["p95_ms"], spec), fmt(b["p95_ms"] - a["p95_ms"], "+" + spec)])
    x, y = labels
    return table(["row", "n", f"p50 {x}", f"p50 {y}", f"p95 {x}", f"p95 {y}", "p95 added"], out)


def report(res: dict) -> None:
    ing = res["ingest"]
    rows = [[name, fmt(v["seconds"]), fmt(v["docs_per_s"]), fmt(v["docs_per_s"] / 2, ".1f")]
            for name, v in ing.items() if isinstance(v, dict)]
    print(f"\ningest of {res['documents']} fitz-gov documents (4 shards unless 'unsharded'; batches of "
          f"{res['commit_every']}), wall seconds, 2 cores")
    print(table(["run", "seconds", "docs/s", "docs/s per core"], rows))
    print(f"Ray overhead at 1 worker: {ing['ray_overhead_1_worker'] * 100:+.1f}% of in-process (target <= +15%)")
    print("\nin-process search, k=10, distinct queries, caches cleared (ms)")
    print(side_by_side(res["search"], ("unsharded", "sharded"), ("unsharded", "4 shards"), ".2f"))
    print("target: fan-out and merge add at most 5 ms p95 in-process")
    if "http" in res:
        print("\nHTTP POST /v1/search, client-side (ms)")
        print(side_by_side(res["http"], ("unsharded", "ray_serve_4_shards"), ("serve", "Ray Serve"), ".1f"))
        print("target: the Serve path adds at most 15 ms p95")
    d = res["disk"]
    print(f"\ndisk: unsharded {d['unsharded_bytes'] / 1e6:.1f} MB ({d['bytes_per_document']:.0f} B/document), "
          f"4 shards {d['sharded_bytes'] / 1e6:.1f} MB ({', '.join(f'{b / 1e6:.1f}' for b in d['per_shard'])} MB)")


if __name__ == "__main__":
    main()
