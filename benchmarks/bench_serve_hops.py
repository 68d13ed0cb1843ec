#!/usr/bin/env python
"""The floor of `serve --engine ray` on this machine: what Ray Serve's hops cost with no retrieval work at all.

    python benchmarks/bench_serve_hops.py                          # 200 requests per route, a local 2-CPU cluster
    python benchmarks/bench_serve_hops.py --throughput-optimized   # Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED=1 mode
    python benchmarks/bench_serve_hops.py --requests 20            # a smoke run

One run, the same client, requests interleaved route by route (each body distinct):
- `uvicorn, empty route`: a FastAPI app on uvicorn in this process's thread, what `retriever serve` runs on (the
  baseline);
- `Serve, empty route`: the same kind of app as a Serve ingress: HTTP -> Serve's proxy -> the ingress replica;
- `Serve, fan-out blocking`: the ingress calls 4 empty deployments (a shard's readers stand-in) from 4 threads,
  each waiting on `DeploymentResponse.result()`: how the router called its shards before;
- `Serve, fan-out awaited`: the same calls through `retriever.ray_serve.ShardCalls` (each awaited on one event loop
  thread of the ingress): how the router calls its shards now.

`serve --engine ray` pays the proxy hop and one fan-out per search on top of the retrieval work, so the difference
between the Serve fan-out rows and the uvicorn row is the least it can add to a search here (issue 15 allows 15 ms
p95). Writes benchmarks/results/bench_serve_hops.json.
"""
from __future__ import annotations

import common  # first: offline hubs, quiet warnings, the repository on sys.path

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from common import RESULTS, fmt, latency, log, machine, perf, table, write_json  # noqa: E402

FAN = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def empty_app():
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/direct")
    def direct(body: dict):
        return {"n": len(body)}

    return app


def start_uvicorn(port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(empty_app(), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server


def deploy_serve(port: int):
    from concurrent.futures import ThreadPoolExecutor

    from fastapi import FastAPI
    from ray import serve

    from retriever.ray_serve import ShardCalls

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Leaf:
        def work(self, body):
            return len(body)

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
    @serve.ingress(app)
    class Root:
        def __init__(self, leaves):
            self.leaves, self.pool, self.calls = leaves, ThreadPoolExecutor(FAN), ShardCalls()

        @app.post("/direct")
        def direct(self, body: dict):
            return {"n": len(body)}

        @app.post("/fan_blocking")
        def fan_blocking(self, body: dict):
            return {"n": sum(self.pool.map(lambda leaf: leaf.work.remote(body).result(timeout_s=30), self.leaves))}

        @app.post("/fan_awaited")
        def fan_awaited(self, body: dict):
            return {"n": sum(self.pool.map(lambda leaf: self.calls(leaf, "work", body, timeout_s=30), self.leaves))}

    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    serve.run(Root.bind([Leaf.options(name=f"leaf-{i}").bind() for i in range(FAN)]), name="hops",
              route_prefix="/")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200, help="requests per route (default 200)")
    p.add_argument("--throughput-optimized", action="store_true",
                   help="start the cluster with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (gRPC between replicas)")
    p.add_argument("--out", default=str(RESULTS / "bench_serve_hops.json"))
    args = p.parse_args()
    if args.throughput_optimized:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"  # the local cluster below inherits it
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    log("starting a local Ray cluster (2 CPUs, no dashboard) and the empty Serve application")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    uport, sport = free_port(), free_port()
    server = start_uvicorn(uport)
    deploy_serve(sport)
    routes = {"uvicorn, empty route": (uport, "/direct"), "Serve, empty route": (sport, "/direct"),
              "Serve, fan-out blocking": (sport, "/fan_blocking"), "Serve, fan-out awaited": (sport, "/fan_awaited")}
    conns = {port: http.client.HTTPConnection("127.0.0.1", port, timeout=60) for port in {uport, sport}}
    times: dict[str, list[float]] = {name: [] for name in routes}
    errors: dict[str, str] = {}
    names = list(routes)
    for i in range(args.requests + 5):  # the first 5 rounds warm up
        for name in names[i % len(names):] + names[: i % len(names)]:
            if name in errors:
                continue
            port, path = routes[name]
            body = json.dumps({"request": i, "route": name, "pad": "x" * (64 + i % 7)})
            t0 = perf()
            conns[port].request("POST", path, body, {"Content-Type": "application/json"})
            resp = conns[port].getresponse()
            data = resp.read()
            if resp.status != 200:
                errors[name] = f"HTTP {resp.status}: {data[:120].decode(errors='replace')}"
                continue
            if i >= 5:
                times[name].append(perf() - t0)
    server.should_exit = True
    ray.shutdown()
    res = {"machine": machine("ray", "fastapi", "uvicorn"), "throughput_optimized": args.throughput_optimized,
           "fan": FAN, "routes": {name: latency(t) for name, t in times.items()}, "errors": errors}
    write_json(args.out, res)
    base = res["routes"]["uvicorn, empty route"]
    rows = []
    for name, lat in res["routes"].items():
        if not lat.get("n"):
            rows.append([name, 0, "-", "-", "-", errors.get(name, "")])
            continue
        rows.append([name, lat["n"], fmt(lat["p50_ms"]), fmt(lat["p95_ms"]),
                     fmt(lat["p95_ms"] - base["p95_ms"], "+.1f"), ""])
    mode = "throughput-optimized" if args.throughput_optimized else "default"
    print(f"Serve's own cost per request, no retrieval work (Serve {mode} mode, {FAN}-way fan-out, 2 CPUs), ms")
    print(table(["route", "n", "p50", "p95", "p95 vs uvicorn", "error"], rows, "lrrrrl"))


if __name__ == "__main__":
    main()
