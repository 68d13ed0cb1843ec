"""`retriever serve DIR --engine ray`: a sharded index on Ray Serve, with the HTTP API of `retriever serve`.

Deployments (one Serve application, "retriever"):
- `shard-i-reader` (R replicas per shard): the shard opened read-only (the generation its writer published);
  answers `Searcher.retrieve` (filter, both arms, fetch, collapse) for query vectors the router embedded;
- `shard-i-writer` (1 replica per shard: DuckDB has one writer): writes the shard's share of an upsert or
  delete in one transaction, then publishes the generation, and only then acknowledges;
- `router` (the HTTP ingress): the FastAPI app of `retriever serve` (same routes, errors, auth, metrics) over a
  `ShardedRetriever` whose shards are `RemoteShard`s: it embeds the query once, fans retrieval out to the readers,
  merges, fuses and reranks once; writes are embedded here and routed to the owning shard's writer.

Reads follow writes: the router remembers the generation each writer last acknowledged, and a reader holding an
older one reopens the shard before it answers. A shard with no live replica (killed; Serve restarts it) is waited
for up to `[server] shard_timeout_ms`; then the router answers from the other shards with `"partial": true` and
the shard in `"missed_shards"` (never a silent short result), and 503 if no shard answers.

Every replica opens the index directory by path: the cluster's nodes share its filesystem. Payloads between
deployments travel as Ray objects (Ray's own serialization, inside the cluster); nothing is persisted with it.
Imported only for `--engine ray`: `import retriever` never imports ray.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError

from .documents import Document
from .errors import InputError, RetrieverError, ShardUnavailable
from .manifest import Manifest, open_config
from .models_in_use import ModelsInUse
from .prepared import Prepared
from .results import DeleteReport, UpsertReport, VerifyReport
from .searcher import SearchTrace
from .sharding import read_layout, shard_dir_name

APP = "retriever"
_STAGES = ("search_ms", "lexical_ms", "join_ms")
_WRITE_TIMEOUT_S = 600.0
log = logging.getLogger("retriever.ray_serve")


def _open_shard(path: Path, *, read_only: bool, overrides: dict | None, wait_s: float = 120.0):
    """Open one shard; a reader started before its writer published waits for the first publish."""
    from .retriever import Retriever

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return Retriever.open(path, read_only=read_only, overrides=overrides or None)
        except RetrieverError as e:
            if not read_only or "open for writing" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# ------------------------------------------------------------------------------------------- replicas
class ShardReader:
    """One replica of a shard's readers."""

    def __init__(self, root: str, shard: int, overrides: dict):
        from .server.service import Serving

        self.path, self.overrides = Path(root) / shard_dir_name(shard), overrides
        self.serving = Serving(_open_shard(self.path, read_only=True, overrides=overrides))
        self._reload = threading.Lock()

    def retrieve(self, queries, q, depth, where, arms, documents, trace: dict, min_generation: int):
        self._catch_up(min_generation)
        with self.serving.borrow() as r:
            t = SearchTrace(mode=trace["mode"], results=trace["results"],
                            query_vectors=q if trace["record"] else None)
            out = r.searcher.retrieve(queries, q, depth, where, arms, documents, t)
            return out, {**{s: getattr(t, s) for s in _STAGES}, "notes": t.notes, "candidates": t.candidates}

    def _catch_up(self, generation: int) -> None:
        """Reopen the shard when the router has seen its writer acknowledge a newer generation."""
        if self.serving.current.generation >= generation:
            return
        with self._reload:
            for _ in range(50):
                if self.serving.current.generation >= generation:
                    return
                self.serving.swap(_open_shard(self.path, read_only=True, overrides=self.overrides))
                time.sleep(0.02)
        raise RetrieverError(f"{self.path}: generation {generation} was acknowledged but is not published")

    def pid(self) -> int:
        return os.getpid()


class ShardWriter:
    """The one writer of a shard: each write is committed, then published, then acknowledged."""

    def __init__(self, root: str, shard: int, overrides: dict):
        self.r = _open_shard(Path(root) / shard_dir_name(shard), read_only=False, overrides=overrides)
        self.lock = threading.Lock()
        with self.lock:
            self.published = self.r.publish()["published"]

    def write(self, keys, parents, rows, vectors) -> tuple[dict, int]:
        with self.lock:
            rep = self.r.write_prepared(Prepared(keys, parents, [tuple(x) for x in rows], vectors))
            self.published = self.r.publish()["published"]
            return rep.to_dict(), self.published

    def delete(self, ids: list[str]) -> tuple[dict, int]:
        with self.lock:
            rep = self.r.delete(ids)
            if rep.deleted:
                self.published = self.r.publish()["published"]
            return {"deleted": rep.deleted, "missing": list(rep.missing), "vectors": rep.vectors}, self.published

    def get(self, id: str) -> Document | None:
        return self.r.get(id)

    def info(self, what: str, *args) -> Any:
        """stats, index_status, verify, save, copy_to, publish, documents, document_ids, count_parents, generation, pid."""
        with self.lock:
            if what == "stats":
                return self.r.stats()
            if what == "index_status":
                return self.r.index_status()
            if what == "verify":
                rep = self.r.verify(check_model=bool(args and args[0]))
                return {"ok": rep.ok, "problems": list(rep.problems), "checks": rep.checks,
                        "warnings": list(rep.warnings)}
            if what == "save":
                return self.r.save()
            if what == "copy_to":  # a backup's share: this shard, copied under its write lock
                return self.r.copy_to(args[0])
            if what == "publish":
                out = self.r.publish()
                self.published = out["published"]
                return out
            if what == "documents":
                return len(self.r)
            if what == "document_ids":
                return sorted(self.r.store.document_ids())
            if what == "count_parents":
                return self.r.store.count_parents()
            if what == "generation":
                return self.published
            if what == "pid":
                return os.getpid()
        raise InputError(f"unknown shard writer call {what!r}")


# ---------------------------------------------------------------------------------------- the router side
class ShardCalls:
    """The router's calls to shard replicas, each awaited on one event loop thread of the router's own, for the
    search threads that make them. It is the only kind of call Serve allows when it runs throughput-optimized
    (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`: gRPC between replicas, handles routed in the caller's loop; a blocking
    `result()` from a thread is refused), and it costs the same as one in the default mode
    (`benchmarks/bench_serve_hops.py`)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="shard-calls", daemon=True)
        self._thread.start()

    def __call__(self, handle, method: str, *args, timeout_s: float):
        """`handle.method.remote(*args)`, made and awaited on the loop (a handle binds to the loop it is first
        used in); the caller waits at most `timeout_s` (then the call is cancelled and TimeoutError raised).
        Errors of the call (a replica that died) are raised here."""
        async def call():
            return await getattr(handle, method).remote(*args)

        future = asyncio.run_coroutine_threadsafe(call(), self.loop)
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            raise


class GenerationView:
    """What the router's query pipeline asks of "the generation": the shards' shared config and manifest."""

    def __init__(self, root: Path, manifest: Manifest, config):
        self.root, self.manifest, self.config, self.read_only = root, manifest, config, False

    def check_open(self) -> None:
        return None

    def check_writable(self) -> None:
        return None


class RemoteSearcher:
    """A shard's `Searcher.retrieve`, answered by its reader replicas."""

    def __init__(self, shard: "RemoteShard", view: GenerationView, timeout_s: float):
        self.shard, self.generation, self.timeout_s = shard, view, timeout_s

    def retrieve(self, queries, q, depth, where, arms, documents, trace: SearchTrace):
        spec = {"mode": trace.mode, "results": trace.results, "record": trace.query_vectors is not None}
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ShardUnavailable(f"shard {self.shard.index} did not answer within {self.timeout_s * 1000:.0f} ms")
            try:
                out, fields = self.shard.calls(self.shard.reader, "retrieve", queries, q, depth, where, arms,
                                               documents, spec, self.shard.min_generation, timeout_s=left)
                break
            except TimeoutError:  # cancelled by ShardCalls; the deadline decides
                pass
            except (RayActorError, ActorUnavailableError):  # a replica died under the call: try another
                time.sleep(0.05)
        for s in _STAGES:
            setattr(trace, s, getattr(trace, s) + fields[s])
        trace.notes.extend(n for n in fields["notes"] if n not in trace.notes)
        trace.candidates = fields["candidates"]
        return out

    def forget(self, vids) -> None:
        return None

    def clear_caches(self) -> None:
        return None

    def close(self) -> None:
        return None


class RemoteStore:
    def __init__(self, shard: "RemoteShard"):
        self._shard = shard

    def document_ids(self) -> set[str]:
        return set(self._shard.ask("document_ids"))

    def count_parents(self) -> int:
        return self._shard.ask("count_parents")

    def get(self, doc_id: str):
        raise InputError("row access goes through get(id) on a served index")


class RemoteShard:
    """One shard as `ShardedRetriever` sees it: searches go to its readers, everything else to its writer."""

    def __init__(self, index: int, reader, writer, view: GenerationView, models: ModelsInUse, timeout_s: float,
                 calls: ShardCalls):
        self.index, self.reader, self.writer, self.view, self.calls = index, reader, writer, view, calls
        self.models = models
        self.min_generation = 0
        self.searcher = RemoteSearcher(self, view, timeout_s)
        self.store = RemoteStore(self)

    def ask(self, what: str, *args):
        return self.calls(self.writer, "info", what, *args, timeout_s=_WRITE_TIMEOUT_S)

    def _acknowledged(self, generation: int) -> None:
        self.min_generation = max(self.min_generation, generation)

    # the Retriever surface ShardedRetriever uses
    config = property(lambda self: self.view.config)
    manifest = property(lambda self: self.view.manifest)
    stored_config = property(lambda self: self.view.config.from_dict(self.view.manifest.config))
    read_only = property(lambda self: False)
    recovered = property(lambda self: None)
    fallbacks = property(lambda self: 0)
    generation = property(lambda self: self.min_generation)

    def adopt_models(self, other) -> None:
        self.models = other.models

    def write_prepared(self, prepared: Prepared) -> UpsertReport:
        rep, gen = self.calls(self.writer, "write", prepared.keys, prepared.parents, prepared.rows, prepared.vectors,
                              timeout_s=_WRITE_TIMEOUT_S)
        self._acknowledged(gen)
        return UpsertReport(**rep)

    def delete(self, ids: list[str]) -> DeleteReport:
        rep, gen = self.calls(self.writer, "delete", ids, timeout_s=_WRITE_TIMEOUT_S)
        self._acknowledged(gen)
        return DeleteReport(deleted=rep["deleted"], missing=tuple(rep["missing"]), vectors=rep["vectors"])

    def get(self, id: str) -> Document | None:
        return self.calls(self.writer, "get", id, timeout_s=_WRITE_TIMEOUT_S)

    def stats(self) -> dict[str, Any]:
        return self.ask("stats")

    def index_status(self) -> dict[str, Any]:
        return self.ask("index_status")

    def verify(self, *, check_model: bool = True) -> VerifyReport:
        d = self.ask("verify", check_model)
        return VerifyReport(ok=d["ok"], problems=tuple(d["problems"]), checks=d["checks"],
                            warnings=tuple(d["warnings"]))

    def save(self) -> None:
        self.ask("save")

    def copy_to(self, dest: str) -> dict[str, Any]:
        return self.ask("copy_to", dest)

    def publish(self) -> dict[str, Any]:
        out = self.ask("publish")
        self._acknowledged(out["published"])
        return out

    def clear_caches(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __len__(self) -> int:
        return self.ask("documents")


def open_remote(root: str, overrides: dict, readers: list, writers: list):
    """The router's `ShardedRetriever` over the shard deployments."""
    from .sharded import ShardedRetriever

    root_path = Path(root)
    layout = read_layout(root_path)
    first = root_path / layout["dirs"][0]
    manifest = Manifest.read(first)
    config = open_config(first, manifest, None, overrides or None)
    view = GenerationView(first, manifest, config)
    models = ModelsInUse(config)
    timeout = config.server.shard_timeout_ms / 1000
    calls = ShardCalls()
    shards = [RemoteShard(i, readers[i], writers[i], view, models, timeout, calls) for i in range(len(layout["dirs"]))]
    return ShardedRetriever(root_path, layout, shards)


@serve.ingress()
class Router:
    """The HTTP ingress: `retriever serve`'s app over the remote shards."""

    def __init__(self, root: str, overrides: dict, token: str | None, readers: list, writers: list):
        self.retriever = open_remote(root, overrides, readers, writers)
        self.token, self.overrides = token, overrides

    def __serve_build_asgi_app__(self):
        from .server.app import build_asgi

        return build_asgi(self.retriever, token=self.token, overrides=self.overrides)


# ------------------------------------------------------------------------------------------------ deploying
def build_app(root: str | os.PathLike, *, replicas: int = 1, overrides: dict | None = None,
              token: str | None = None):
    """The Serve application for the sharded index at `root` (`serve.run` it)."""
    root = str(Path(root).resolve())
    layout = read_layout(Path(root))
    n, overrides = len(layout["dirs"]), overrides or {}
    light = {"num_cpus": 0.1}
    health = {"health_check_period_s": 1, "health_check_timeout_s": 30}
    readers = [serve.deployment(ShardReader, name=f"shard-{i}-reader", num_replicas=replicas,
                                ray_actor_options=light, max_ongoing_requests=16, **health).bind(root, i, overrides)
               for i in range(n)]
    writers = [serve.deployment(ShardWriter, name=f"shard-{i}-writer", num_replicas=1, ray_actor_options=light,
                                max_ongoing_requests=16, **health).bind(root, i, overrides) for i in range(n)]
    router = serve.deployment(Router, name="router", num_replicas=1, ray_actor_options={"num_cpus": 0.5},
                              max_ongoing_requests=256)
    return router.bind(root, overrides, token, readers, writers)


def _check_listening(host: str, port: int) -> None:
    """Serve keeps the HTTP options it was first started with on a cluster; say so rather than serve elsewhere."""
    import socket

    probe = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    try:
        socket.create_connection((probe, port), timeout=5).close()
    except OSError:
        raise InputError(f"Ray Serve on this cluster is not listening on {host}:{port}: it was started earlier with "
                         f"other HTTP options, which it keeps. Run `serve shutdown -y` against the cluster, or pass "
                         f"the port it uses") from None


def check_replicas(replicas: Any) -> int:
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 64:
        raise InputError(f"--replicas {replicas!r} must be an integer from 1 to 64 (reader replicas per shard)")
    return replicas


def serve_on_ray(path: str | os.PathLike, *, host: str | None = None, port: int | None = None, replicas: int = 1,
                 overrides: dict | None = None, address: str | None = None,
                 allow_unauthenticated: bool = False) -> None:
    """Deploy the sharded index at `path` on the Ray cluster at `address` (default: $RAY_ADDRESS, else a local
    one) and serve HTTP on host:port through Serve's proxy until SIGINT/SIGTERM; then the application is
    deleted (each writer saves and closes its shard)."""
    import signal
    import sys

    from .ray_cluster import session
    from .server.exposure import check_exposure, server_settings
    from .sharding import is_sharded

    replicas = check_replicas(replicas)
    root = Path(path)
    if not is_sharded(root):
        raise InputError(f"{root} is not a sharded index; --engine ray serves shards (make one with `retriever "
                         f"ingest DATA --index DIR --shards N`), or serve it in-process without --engine ray")
    layout = read_layout(root)
    cfg = server_settings(root, overrides)
    host = host or cfg.host
    port = cfg.port if port is None else port
    if not port:
        raise InputError("--port 0 cannot be used with --engine ray: Ray Serve's proxy needs a fixed port")
    token = os.environ.get(cfg.token_env) or None
    warning = check_exposure(host, token, cfg.token_env, allow_unauthenticated)  # the same rule as in-process
    if warning:
        print(warning, file=sys.stderr, flush=True)
    stop = threading.Event()
    with session(address):
        for sig in (signal.SIGINT, signal.SIGTERM):  # after connecting: Ray's driver installs its own handlers
            signal.signal(sig, lambda *_: stop.set())
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        try:
            serve.run(build_app(root, replicas=replicas, overrides=overrides, token=token), name=APP,
                      route_prefix="/")
            _check_listening(host, port)
            print(f"serving {root} on http://{host}:{port} with Ray Serve: {len(layout['dirs'])} shards x "
                  f"{replicas} reader replicas, one writer per shard", flush=True)
            stop.wait()
        finally:
            serve.delete(APP)
            serve.shutdown()
