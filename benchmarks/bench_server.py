#!/usr/bin/env python
"""HTTP service benchmark: `retriever serve` under 1, 4 and 16 concurrent clients, next to in-process search.

    python benchmarks/bench_server.py                      # fitz_gov_subset(1000); 200 requests, 48 reranked per row
    python benchmarks/bench_server.py --index /tmp/bench-idx   # build the index there once, reuse it on later runs
    python benchmarks/bench_server.py --quick              # 200 docs, tiny counts: a smoke run

What it does:
  1. builds an index of the default corpus (`fitz_gov_subset(docs)`, `Retriever.create(path, RetrieverConfig())`
     + upsert + close), or reuses the one at --index;
  2. the floor: the same queries through one in-process `Retriever.search(q, k=10, rerank=...)`, sequentially,
     after 3 warm-up searches (index opened read-only, closed before the server starts);
  3. starts `retriever serve DIR` as a real subprocess on a free 127.0.0.1 port, waits for GET /readyz = 200;
  4. for rerank in (False, True) x clients in (1, 4, 16): one untimed warm-up search, then N client threads, each
     with its own keep-alive `http.client` connection, POST /v1/search {"query", "k": 10, "rerank"} until the
     fixed number of requests is sent (queries in the same order as the floor). Latency is per request (send to
     last body byte); throughput = 200 responses / wall time of the run; any other status or a failed
     connection is an error (counted, first message kept);
  5. SIGTERM to the server (also when something failed), one table on stdout, every number in
     benchmarks/results/bench_server.json; the server's log goes to benchmarks/results/bench_server.server.log.

The clients run in this process on the same cores as the server (loopback only), so the rows include the
client's cost; each row records the CPU seconds of the server, of this process and of the other processes.
"""
from __future__ import annotations

from benchenv import ROOT, cpu_seconds, machine_busy_seconds  # first: offline hubs, quiet warnings, the repository on sys.path

import argparse  # noqa: E402
import http.client  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from retriever import Retriever, RetrieverConfig, runtime  # noqa: E402
from retriever.datasets import fitz_gov_subset  # noqa: E402

perf = time.perf_counter
HOST = "127.0.0.1"
K = 10
RESULTS = ROOT / "benchmarks" / "results"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of another process (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class CpuMeter:
    """Wall time and CPU seconds over a block: this process, the server, and every other process."""

    def __init__(self, server_pid: int | None):
        self.pid = server_pid

    def __enter__(self):
        self.w0, self.c0, self.m0 = perf(), cpu_seconds(), machine_busy_seconds()
        self.s0 = proc_cpu_seconds(self.pid) if self.pid else None
        return self

    def __exit__(self, *exc):
        wall, ours = perf() - self.w0, cpu_seconds() - self.c0
        m1 = machine_busy_seconds()
        s1 = proc_cpu_seconds(self.pid) if self.pid else None
        server = s1 - self.s0 if s1 is not None and self.s0 is not None else 0.0
        others = None
        if m1 is not None and self.m0 is not None and wall > 0:
            others = round(max(0.0, (m1 - self.m0) - ours - server) / (wall * runtime.cores()), 3)
        self.result = {"cpu_s_bench_process": round(ours, 2), "cpu_s_server": round(server, 2),
                       "others_share": others}


def latency_row(mode: str, clients, lat_s: list[float], wall: float, errors: int, **extra) -> dict:
    ms = [x * 1000 for x in lat_s]
    return {"mode": mode, "clients": clients, "requests": len(lat_s) + errors, "errors": errors,
            "wall_s": round(wall, 3), "throughput_qps": len(lat_s) / wall if wall > 0 else None,
            "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "p99_ms": pct(ms, 99),
            "mean_ms": float(np.mean(ms)) if ms else None, "max_ms": max(ms) if ms else None, **extra}


# ------------------------------------------------------------------------------------------------- index
def prepare_index(path: Path, docs) -> dict:
    if (path / "manifest.json").is_file():
        with Retriever.open(path, read_only=True) as r:
            n = len(r)
        log(f"reusing the index at {path} ({n} documents)")
        if n != len(docs):
            log(f"WARNING: the index holds {n} documents, the corpus {len(docs)}: queries may miss their documents")
        return {"built": False, "documents": n}
    log(f"building an index of {len(docs)} documents at {path}")
    t0 = perf()
    r = Retriever.create(path, RetrieverConfig())
    try:
        rep = r.upsert(docs)
    finally:
        r.close()
    secs = perf() - t0
    log(f"  {rep.documents} documents, {rep.vectors} vectors in {secs:.1f} s (model load included)")
    return {"built": True, "documents": rep.documents, "vectors": rep.vectors, "build_s": round(secs, 1)}


# --------------------------------------------------------------------------------------------- the floor
def in_process(path: Path, queries: list[str], counts: dict[bool, int]) -> list[dict]:
    rows = []
    r = Retriever.open(path, read_only=True)
    try:
        for rerank, n in counts.items():
            for q in queries[-3:]:
                r.search(q, k=K, rerank=rerank)
            lat = []
            with CpuMeter(None) as cm:
                t0 = perf()
                for i in range(n):
                    t = perf()
                    r.search(queries[i % len(queries)], k=K, rerank=rerank)
                    lat.append(perf() - t)
                wall = perf() - t0
            rows.append(latency_row("rerank" if rerank else "no rerank", "in-process", lat, wall, 0, **cm.result))
            log(f"  in-process rerank={rerank}: {n} searches, p50 {rows[-1]['p50_ms']:.1f} ms")
    finally:
        r.close()
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


def http_run(port: int, queries: list[str], n: int, clients: int, rerank: bool, server_pid: int) -> dict:
    bodies = [json.dumps({"query": q, "k": K, "rerank": rerank}).encode() for q in queries]
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
            if i >= n:
                break
            t0 = perf()
            try:
                conn.request("POST", "/v1/search", body=bodies[i % len(bodies)], headers=headers)
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
    with CpuMeter(server_pid) as cm:
        start.wait()
        t0 = perf()
        for t in threads:
            t.join()
        wall = perf() - t0
    return latency_row("rerank" if rerank else "no rerank", clients, lat, wall, sum(errors.values()),
                       server_total_p50_ms=pct(server_total, 50), server_queue_p50_ms=pct(queue_ms, 50),
                       error_kinds=errors, first_error=first_error[0] if first_error else None, **flags, **cm.result)


# -------------------------------------------------------------------------------------------------- main
def print_table(rows: list[dict]) -> None:
    def f(x, nd=1):
        return "-" if x is None else f"{x:,.{nd}f}"

    head = ["mode", "clients", "requests", "errors", "q/s", "p50 ms", "p95 ms", "p99 ms", "server p50", "others"]
    lines = [[r["mode"], str(r["clients"]), str(r["requests"]), str(r["errors"]), f(r["throughput_qps"], 2),
              f(r["p50_ms"]), f(r["p95_ms"]), f(r["p99_ms"]), f(r.get("server_total_p50_ms")),
              "-" if r.get("others_share") is None else f"{r['others_share']:.0%}"] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(fmt.format(*head))
    print(fmt.format(*("-" * w for w in widths)))
    for line in lines:
        print(fmt.format(*line))
    print("server p50: the server's own timings_ms.total; others: share of the cores used by other processes "
          "(not this script, not the server) during the row")


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
    counts = {False: args.requests, True: args.rerank_requests}
    RESULTS.mkdir(parents=True, exist_ok=True)

    docs, labeled = fitz_gov_subset(args.docs)
    queries = [q.query for q in labeled]
    tmp = None
    if args.index is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
        index = tmp / "index"
    else:
        index = args.index
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "python": platform.python_version(),
            "cores": runtime.cores(), "loadavg_start": list(os.getloadavg()), "docs": len(docs),
            "queries_available": len(queries), "k": K, "requests": counts[False], "rerank_requests": counts[True],
            "clients": clients, "quick": args.quick}
    rows: list[dict] = []
    proc = None
    server_log = RESULTS / "bench_server.server.log"
    try:
        meta["index"] = {"path": str(index), **prepare_index(index, docs)}
        log("in-process floor (sequential Retriever.search)")
        floor = in_process(index, queries, counts)

        port = free_port()
        cmd = [*retriever_command(), "serve", str(index), "--host", HOST, "--port", str(port)]
        log(f"starting {' '.join(cmd)} (log: {server_log})")
        with open(server_log, "wb") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = perf()
        ready = wait_ready(proc, port, args.ready_timeout)
        meta["server"] = {"command": cmd, "ready_s": round(perf() - t0, 1), "readyz": ready}
        _, stats = get_json(port, "/v1/stats")
        meta["server"]["stats"] = {k: stats.get(k) for k in ("documents", "vectors", "index_kind", "server")}
        log(f"server ready in {meta['server']['ready_s']} s: {stats.get('server')}")

        for rerank in (False, True):
            rows.append(floor[int(rerank)])
            for c in clients:
                http_run(port, queries[-1:], 1, 1, rerank, proc.pid)  # untimed warm-up search
                row = http_run(port, queries, counts[rerank], c, rerank, proc.pid)
                rows.append(row)
                log(f"  rerank={rerank} clients={c}: {row['throughput_qps']:.2f} q/s, p50 {row['p50_ms'] or 0:.0f} ms, "
                    f"errors {row['errors']}" + (f" ({row['first_error']})" if row["errors"] else ""))
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    log("the server did not stop within 60 s of SIGTERM; killing it")
                    proc.kill()
                    proc.wait()
            meta.setdefault("server", {})["exit_code"] = proc.returncode
            log(f"server stopped (exit code {proc.returncode})")
            if proc.returncode not in (0, -signal.SIGTERM):
                tail = server_log.read_text(errors="replace").splitlines()[-20:]
                log("server log tail:\n" + "\n".join(tail))
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    meta["loadavg_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print()
    print(f"{meta['docs']} docs, k={K}, {meta['cores']} cores, loopback {HOST}; load average "
          f"{meta['loadavg_start'][0]:.2f} at start, {meta['loadavg_end'][0]:.2f} at end")
    print_table(rows)
    print(f"\nraw numbers: {args.out}")
    bad = sum(r["errors"] for r in rows)
    if bad:
        print(f"WARNING: {bad} requests failed; see error_kinds / first_error in the JSON")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
