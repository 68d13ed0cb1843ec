#!/usr/bin/env python
"""HTTP service benchmark: `retriever serve` under 1, 4 and 16 concurrent clients, next to in-process search.

    python benchmarks/bench_server.py                      # fitz_gov_subset(1000); 200 requests, 48 reranked per row
    python benchmarks/bench_server.py --index /tmp/bench-idx   # build the index there once, reuse it on later runs
    python benchmarks/bench_server.py --quick              # 200 docs, tiny counts: a smoke run

What it does:
  1. builds an index of the default corpus (`common.fitz_index`: `fitz_gov_subset(docs)` with
     `RetrieverConfig()`), or reuses the one at --index;
  2. deals out query texts: every row (and every warm-up search) gets its own distinct fitz-gov labeled query
     texts (the subset's own, then the other labeled fitz-gov queries; picked evenly and dealt out interleaved, so
     every row gets the same spread of categories); no text is sent twice, within a row or across rows, so
     neither the query-embedding cache nor the rerank-score cache can answer a timed request (the server has no
     route that clears them; they stay at the shipped sizes). The cache hits seen during each row (from
     `Retriever.cache_stats()` in-process, GET /v1/stats over HTTP) are in the table: 0 proves it. With too few
     texts for the requested counts, every row's count shrinks alike and the output says so;
  3. the floor: one in-process `Retriever.search(q, k=10, rerank=...)` per text, sequentially, after 3 warm-up
     searches (index opened read-only, closed before the server starts);
  4. starts `retriever serve DIR` as a real subprocess on a free 127.0.0.1 port, waits for GET /readyz = 200;
  5. for rerank in (False, True) x clients in (1, 4, 16): one untimed warm-up search, then N client threads, each
     with its own keep-alive `http.client` connection, POST /v1/search {"query", "k": 10, "rerank"} until the
     row's texts are sent. Latency is per request (send to last body byte); throughput = responses / wall time of
     the row; any other status or a failed connection is an error (counted, first message kept);
     After the reranked rows, each one's texts are sent again at the same client count ("caches on, texts
     repeated"): every answer then comes from the two caches. That is what a reranked row measured when every row
     sent the same texts (issue 16: 250 q/s at 16 ms p50), kept as the cached baseline;
  6. SIGTERM to that server; then two read-only servers at once, `retriever serve DIR --read-only --config
     caches-off-J.toml`, both with `[cache] query_embeddings = 0` and `rerank_scores = 0` (cold by construction,
     whatever the texts): "off" with today's defaults, "off, before" also with `[rerank]
     thread_spinning = true` and `pair_workers = 1` (the reranker before issue 16: onnxruntime's intra-op threads
     spin-waiting, one pair at a time on every core); reranked rows at 1, 4 and 16 clients with new distinct
     texts, the two servers' rows interleaved (the order alternating) so the machine's noise hits both alike;
  7. SIGTERM to the servers (also when something failed), one table on stdout and a side-by-side of the reranked
     rows (cached / distinct texts with caches on / caches off / caches off as before), every number in
     benchmarks/results/bench_server.json; the servers' logs go to benchmarks/results/bench_server.server.log and
     bench_server.server.coldJ.log.

The clients run in this process on the same cores as the server (loopback only), so the rows include the
client's cost; each row records the CPU seconds of the server, of this process and of the other processes.
"""
from __future__ import annotations

import common  # first: offline hubs, quiet warnings, the repository on sys.path

import argparse  # noqa: E402
import http.client  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from common import RESULTS, Phase, fmt, latency, log, pct, perf  # noqa: E402
from retriever import Retriever  # noqa: E402
from retriever.datasets import fitz_gov_queries, fitz_gov_subset  # noqa: E402

HOST = "127.0.0.1"
K = 10
FLOOR_WARMUP = 3
COLD_CONFIG = "[cache]\nquery_embeddings = 0\nrerank_scores = 0\n"
# the caches-off servers (label: --config): today's defaults, and the cross-encoder's threads as before issue 16
COLD = {"off": COLD_CONFIG,
        "off, before": COLD_CONFIG + "[rerank]\nthread_spinning = true\npair_workers = 1\n"}


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc; 0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def cache_hits(stats: dict) -> int:
    """Hits of both caches so far, from `cache_stats()` / the "caches" block of GET /v1/stats."""
    return sum(c["hits"] for c in stats.values())


def row(mode: str, clients, seconds: list[float], phase: Phase, errors: int, hits: int, caches: str = "on",
        **extra) -> dict:
    return {"mode": mode, "clients": clients, "caches": caches, "requests": len(seconds) + errors, "errors": errors,
            "throughput_qps": len(seconds) / phase.wall if phase.wall > 0 else None, "cache_hits": hits,
            **latency(seconds), "phase": phase.record(), **extra}


# ------------------------------------------------------------------------------------------- query texts
def deal_texts(subset_labeled, counts: dict[bool, int], rows_per_mode: dict[bool, int], warmups: int
               ) -> tuple[dict, dict]:
    """Distinct texts for every row, {"warmup": [...], (rerank, row index): [...]}, and a note for the output.
    The texts used are picked evenly from the pool and dealt out interleaved, so every row gets the same spread of
    query categories (the pool is in query-id order, i.e. by category)."""
    subset = [q.query for q in common.distinct_texts(subset_labeled)]
    seen = set(subset)
    pool = subset + [q.query for q in common.distinct_texts(fitz_gov_queries()) if q.query not in seen]
    want = sum(rows_per_mode[rr] * n for rr, n in counts.items()) + warmups
    scale = 1.0 if want <= len(pool) else (len(pool) - warmups) / (want - warmups)
    got = {rr: max(1, int(n * scale)) for rr, n in counts.items()}
    sizes = {"warmup": warmups, **{(rr, i): got[rr] for rr in (False, True) for i in range(rows_per_mode[rr])}}
    used = sum(sizes.values())
    slots = sorted(((j + 0.5) / n, k) for k, n in enumerate(sizes.values()) for j in range(n))
    keys, dealt = list(sizes), {key: [] for key in sizes}
    for text, (_, k) in zip(common.pick_evenly(pool, used), slots):
        dealt[keys[k]].append(text)
    note = (f"{len(pool)} distinct fitz-gov labeled query texts ({len(subset)} labeled for this subset, the rest "
            f"for other fitz-gov documents), {used} used")
    if scale < 1.0:
        note += (f"; REDUCED: {counts[False]}/{counts[True]} requests per row wanted, {got[False]}/{got[True]} "
                 f"sent (not enough distinct texts)")
    return dealt, {"texts_note": note, "requests_per_row": {"no rerank": got[False], "rerank": got[True]}}


# --------------------------------------------------------------------------------------------- the floor
def in_process(path: Path, dealt: dict, warm: list[str]) -> list[dict]:
    rows = []
    with Retriever.open(path, read_only=True) as r:
        for rerank in (False, True):
            for q in warm:
                r.search(q, k=K, rerank=rerank)
            h0 = cache_hits(r.cache_stats())
            with Phase() as ph:
                seconds, _ = common.time_each(lambda q: r.search(q, k=K, rerank=rerank), dealt[(rerank, 0)])
            rows.append(row("rerank" if rerank else "no rerank", "in-process", seconds, ph, 0,
                            cache_hits(r.cache_stats()) - h0))
            log(f"  in-process rerank={rerank}: {len(seconds)} searches, p50 {rows[-1]['p50_ms']:.1f} ms")
    return rows


# ------------------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def retriever_command() -> list[str]:
    exe = Path(sys.executable).parent / "retriever"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("retriever")
    return [found] if found else [sys.executable, "-c", "import sys; from retriever.cli import main; sys.exit(main())"]


def get_json(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def server_cache_hits(port: int) -> int:
    return cache_hits(get_json(port, "/v1/stats")[1]["caches"])


def wait_ready(proc: subprocess.Popen, port: int, timeout: float) -> dict:
    deadline, last = time.monotonic() + timeout, "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            status, body = get_json(port, "/readyz", timeout=5)
            if status == 200:
                return body
            last = (body.get("error") or {}).get("message", f"HTTP {status}")
            if "failed" in last:
                raise RuntimeError(f"the server will not get ready: {body}")
        except (ConnectionError, OSError) as e:
            last = repr(e)
        time.sleep(0.25)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s (last: {last})")


def http_run(port: int, texts: list[str], clients: int, rerank: bool, server_pid: int, caches: str = "on") -> dict:
    """`clients` threads send one request per text between them, each text once; `caches` labels the row."""
    bodies = [json.dumps({"query": q, "k": K, "rerank": rerank}).encode() for q in texts]
    headers = {"Content-Type": "application/json"}
    counter, lock = itertools.count(), threading.Lock()
    start = threading.Barrier(clients + 1)
    lat: list[float] = []
    server_total: list[float] = []
    queue_ms: list[float] = []
    errors: dict[str, int] = {}
    first_error: list[str] = []
    flags = {"not_reranked": 0, "rerank_timed_out": 0, "empty": 0}

    def fail(kind: str, message: str) -> None:
        with lock:
            errors[kind] = errors.get(kind, 0) + 1
            if not first_error:
                first_error.append(f"{kind}: {message[:300]}")

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=600)
        try:
            conn.request("GET", "/healthz")  # open the keep-alive connection before the clock starts
            conn.getresponse().read()
        except (OSError, http.client.HTTPException) as e:
            fail("connect", repr(e))
        start.wait()
        while True:
            with lock:
                i = next(counter)
            if i >= len(bodies):
                break
            t0 = perf()
            try:
                conn.request("POST", "/v1/search", body=bodies[i], headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                fail(type(e).__name__, repr(e))
                conn.close()  # http.client reconnects on the next request
                continue
            dt = perf() - t0
            if resp.status != 200:
                fail(f"HTTP {resp.status}", data.decode(errors="replace"))
                continue
            out = json.loads(data)
            with lock:
                lat.append(dt)
                server_total.append(out["timings_ms"]["total"])
                queue_ms.append(out["timings_ms"].get("queue", 0.0))
                flags["not_reranked"] += rerank and not out["reranked"]
                flags["rerank_timed_out"] += bool(out["rerank_timed_out"])
                flags["empty"] += not out["hits"]
        conn.close()

    threads = [threading.Thread(target=client, name=f"client-{c}") for c in range(clients)]
    for t in threads:
        t.start()
    h0 = server_cache_hits(port)
    with Phase(exclude_cpu=lambda: proc_cpu_seconds(server_pid)) as ph:
        start.wait()
        for t in threads:
            t.join()
    return row("rerank" if rerank else "no rerank", clients, lat, ph, sum(errors.values()),
               server_cache_hits(port) - h0, caches, server_total_p50_ms=pct(server_total, 50),
               server_queue_p50_ms=pct(queue_ms, 50), error_kinds=errors,
               first_error=first_error[0] if first_error else None, **flags)


def stop(proc: subprocess.Popen, server_log: Path) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log("the server did not stop within 60 s of SIGTERM; killing it")
            proc.kill()
            proc.wait()
    log(f"server stopped (exit code {proc.returncode})")
    if proc.returncode not in (0, -signal.SIGTERM):
        log("server log tail:\n" + "\n".join(server_log.read_text(errors="replace").splitlines()[-20:]))
    return proc.returncode


# -------------------------------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", type=Path, help="index directory: reused if it holds an index, else built there "
                                              "and kept (default: a temporary one, removed at the end)")
    p.add_argument("--docs", type=int, default=1000, help="fitz_gov_subset size (default 1000; --quick 200)")
    p.add_argument("--requests", type=int, default=200, help="requests per row without rerank")
    p.add_argument("--rerank-requests", type=int, default=48, help="requests per row with rerank")
    p.add_argument("--clients", default="1,4,16", help="concurrent clients, comma separated")
    p.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for /readyz")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_server.json")
    p.add_argument("--quick", action="store_true", help="200 docs, 16 requests, 4 reranked: a smoke run")
    args = p.parse_args()
    if args.quick:
        args.docs, args.requests, args.rerank_requests = 200, 16, 4
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not clients or min(clients) < 1 or args.requests < 1 or args.rerank_requests < 1:
        p.error("--clients, --requests and --rerank-requests must be positive")

    _, labeled = fitz_gov_subset(args.docs)
    # per rerank mode: the floor's and one per HTTP row; reranked, also one per row of the caches-off server
    warmups = 2 * (FLOOR_WARMUP + len(clients)) + len(COLD) * len(clients)
    rows_per_mode = {False: 1 + len(clients), True: 1 + (1 + len(COLD)) * len(clients)}
    dealt, meta = deal_texts(labeled, {False: args.requests, True: args.rerank_requests}, rows_per_mode, warmups)
    warm = iter(dealt["warmup"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    index = args.index or tmp / "index"
    meta.update(machine_start=common.machine(), k=K, clients=clients, quick=args.quick,
                caches="first server: on at the shipped sizes, distinct texts everywhere (no server route clears "
                       "them), then each reranked row's texts sent again (all answered by the caches); then one "
                       "server per entry of COLD, both up at once, their rows interleaved, new distinct texts",
                cold_servers=COLD)
    rows: list[dict] = []
    proc, cold = None, []
    server_log = RESULTS / "bench_server.server.log"
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        meta["index"] = common.fitz_index(index, args.docs)
        log(f"in-process floor (sequential Retriever.search); {meta['texts_note']}")
        floor = in_process(index, dealt, [next(warm) for _ in range(FLOOR_WARMUP)])

        proc, port = start_server(index, [], server_log, args.ready_timeout, meta, "server")
        for rerank in (False, True):
            rows.append(floor[int(rerank)])
            for i, c in enumerate(clients, 1):
                http_run(port, [next(warm)], 1, rerank, proc.pid)  # untimed warm-up search
                rows.append(http_run(port, dealt[(rerank, i)], c, rerank, proc.pid))
                log_row(rows[-1])
            if rerank:  # the same texts again: every answer comes from the caches (what a cached row measures)
                for i, c in enumerate(clients, 1):
                    rows.append(http_run(port, dealt[(True, i)], c, True, proc.pid, caches="on, texts repeated"))
                    log_row(rows[-1])
        meta["server"]["exit_code"] = stop(proc, server_log)

        cold = []  # (label, process, port, log): every caches-off server up at once, rows interleaved
        for j, (label, toml) in enumerate(COLD.items()):
            cfg = tmp / f"caches-off-{j}.toml"
            cfg.write_text(toml)
            log_file = server_log.with_suffix(f".cold{j}.log")
            proc, port = start_server(index, ["--read-only", "--config", str(cfg)], log_file, args.ready_timeout,
                                      meta, f"server {label}")
            cold.append((label, proc, port, log_file))
        row_no = itertools.count(1 + len(clients))
        for n, c in enumerate(clients):
            for label, proc, port, _ in cold[n % len(cold):] + cold[:n % len(cold)]:
                http_run(port, [next(warm)], 1, True, proc.pid, caches=label)  # untimed warm-up search
                rows.append(http_run(port, dealt[(True, next(row_no))], c, True, proc.pid, caches=label))
                log_row(rows[-1])
        for label, proc, _, log_file in cold:
            meta[f"server {label}"]["exit_code"] = stop(proc, log_file)
        proc = None
    finally:
        for p in [proc] + [c[1] for c in cold]:
            if p is not None and p.poll() is None:
                stop(p, server_log)
        shutil.rmtree(tmp, ignore_errors=True)  # the caches-off config, and the index unless --index named one

    meta["machine_end"] = common.machine()
    common.write_json(args.out, {"meta": meta, "rows": rows})
    print(f"\nbench_server: fitz_gov_subset({args.docs}), k={K}, {common.CORES} cores, loopback {HOST}; load average "
          f"{meta['machine_start']['loadavg'][0]:.2f} at start, {meta['machine_end']['loadavg'][0]:.2f} at end")
    print(f"queries: every row and every warm-up search has its own texts, no text is sent twice except in the "
          f"'on, texts repeated' rows ({meta['texts_note']}); caches: 'on' = the shipped sizes, a hit would show in "
          f"the 'cache hits' column; 'on, texts repeated' = the previous row's texts again, answered by the caches; "
          f"'off' = a server with [cache] query_embeddings = 0 and rerank_scores = 0 (cold by construction); "
          f"'off, before' = the same plus [rerank] thread_spinning = true and pair_workers = 1 (the reranker "
          f"before issue 16); the 'off' servers run at once, their rows interleaved")
    print(common.table(
        ["mode", "clients", "caches", "requests", "errors", "q/s", "p50 ms", "p95 ms", "p99 ms", "server p50",
         "cache hits", "others"],
        [[x["mode"], x["clients"], x.get("caches", "on"), x["requests"], x["errors"], fmt(x["throughput_qps"], ",.2f"),
          fmt(x.get("p50_ms"), ",.1f"), fmt(x.get("p95_ms"), ",.1f"), fmt(x.get("p99_ms"), ",.1f"),
          fmt(x.get("server_total_p50_ms"), ",.1f"), x["cache_hits"], fmt(x["phase"]["others_share"], ".0%")]
         for x in rows], align="lll"))
    print("server p50: the server's own timings_ms.total; cache hits: query-embedding + rerank-score cache hits "
          "during the row; others: share of the cores used by other processes (not this script, not the server)")
    print("\nreranked, side by side (q/s, p50 / p95 ms):")
    side = []
    for c in clients:
        cells = [c]
        for caches in ("on, texts repeated", "on", *COLD):
            x = next((x for x in rows if x["mode"] == "rerank" and x["clients"] == c and x.get("caches") == caches),
                     None)
            cells.append("-" if x is None else f"{fmt(x['throughput_qps'], ',.2f')} q/s, "
                                               f"{fmt(x.get('p50_ms'), ',.0f')} / {fmt(x.get('p95_ms'), ',.0f')}")
        side.append(cells)
    print(common.table(["clients", "cached (texts repeated)", "distinct texts, caches on",
                        *(f"distinct, caches {c}" for c in COLD)], side, align="l"))
    print(f"JSON: {args.out}")
    bad = sum(x["errors"] for x in rows)
    if bad:
        print(f"WARNING: {bad} requests failed; see error_kinds / first_error in the JSON")
    return 1 if bad else 0


def log_row(x: dict) -> None:
    log(f"  rerank={x['mode'] == 'rerank'} clients={x['clients']} caches={x['caches']}: {x['throughput_qps']:.2f} q/s, "
        f"p50 {x.get('p50_ms') or 0:.0f} ms, p95 {x.get('p95_ms') or 0:.0f} ms, cache hits {x['cache_hits']}, "
        f"errors {x['errors']}" + (f" ({x['first_error']})" if x["errors"] else ""))


def start_server(index: Path, extra: list[str], server_log: Path, ready_timeout: float, meta: dict, key: str
                 ) -> tuple[subprocess.Popen, int]:
    """`retriever serve INDEX` on a free loopback port, waited for until /readyz answers 200."""
    port = free_port()
    cmd = [*retriever_command(), "serve", str(index), "--host", HOST, "--port", str(port), *extra]
    log(f"starting {' '.join(cmd)} (log: {server_log})")
    with open(server_log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = perf()
    try:
        ready = wait_ready(proc, port, ready_timeout)
    except BaseException:
        stop(proc, server_log)
        raise
    meta[key] = {"command": cmd, "ready_s": round(perf() - t0, 1), "readyz": ready}
    _, stats = get_json(port, "/v1/stats")
    meta[key]["stats"] = {k: stats.get(k) for k in ("documents", "vectors", "index_kind", "server", "caches")}
    log(f"server ready in {meta[key]['ready_s']} s: {stats.get('server')}")
    return proc, port


if __name__ == "__main__":
    sys.exit(main())
