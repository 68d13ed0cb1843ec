"""What one server process holds: the Retriever in use (`Serving`), its thread pools, metrics and settings
(`Service`). No HTTP here: a call the service declines raises `Refused`, which the app answers as JSON."""

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable

from .. import runtime
from ..config import RetrieverConfig
from ..errors import InputError, RetrieverError
from ..persistence import generation_dir, generations, has_readers, read_manifest
from ..results import Hit
from ..retriever import Retriever
from ..searcher import SearchTrace
from .metrics import Metrics

log = logging.getLogger("retriever.server")


class Refused(RetrieverError):
    """The service declines a call as this process is set up or loaded now. `reason`: "writer" (reload on the
    writer), "read_only" (a write on a read-only server), "reload_failed", "overloaded" or "backup_off" (no
    [server] backup_dir)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Serving:
    """The Retriever in use. Requests borrow it; a reload swaps in a new one and closes the old one after its last
    borrower returns, so no request is dropped or sees a closed index."""

    def __init__(self, retriever: Retriever):
        self.current = retriever
        self._borrowers: dict[int, int] = {}
        self._cond = threading.Condition()

    @contextmanager
    def borrow(self):
        with self._cond:
            r = self.current
            self._borrowers[id(r)] = self._borrowers.get(id(r), 0) + 1
        try:
            yield r
        finally:
            with self._cond:
                self._borrowers[id(r)] -= 1
                if not self._borrowers[id(r)]:
                    del self._borrowers[id(r)]
                    self._cond.notify_all()

    def swap(self, new: Retriever) -> Retriever:
        """Make `new` current; wait for the old one's borrowers, close it and return it."""
        with self._cond:
            old, self.current = self.current, new
            while self._borrowers.get(id(old)):
                self._cond.wait()
        old.close()
        return old


class Service:
    """Searches run on a bounded pool (one thread per core by default); writes, saves and reloads run one at a
    time on their own thread."""

    def __init__(self, retriever: Retriever, *, token: str | None = None, overrides: dict | None = None):
        self.config: RetrieverConfig = retriever.config
        # the settings this server changed from the ones stored with the index; a reload applies them to the new
        # generation's stored settings (which `rebuild` or `reembed` may have changed)
        self.overrides = _differences(retriever) if overrides is None else overrides
        self.path = retriever.path
        self.read_only = retriever.read_only
        self.serving = Serving(retriever)
        self.metrics = Metrics(self.serving)
        self.workers = self.config.server.workers or runtime.cores()
        self.search_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="search")
        self.write_pool = ThreadPoolExecutor(1, thread_name_prefix="write")  # writes, saves, reloads: one at a time
        self.token = token or None
        self.pending = 0
        self.ready = False
        self.ready_detail: dict[str, Any] = {"state": "starting"}
        self._reload_lock = threading.Lock()
        self._dirty = False
        self.started = time.time()

    # ------------------------------------------------------------------------------------- reads and writes
    async def run_search(self, fn: Callable[[Retriever], Any]) -> tuple[Any, int, float]:
        """Run `fn(retriever)` on the search pool; (result, generation, ms waited for a thread)."""
        limit = self.config.server.max_pending
        if self.pending >= limit:
            raise Refused("overloaded", f"{self.pending} searches are queued or running, the limit is "
                          f"server.max_pending = {limit}; retry shortly")
        self.pending += 1
        self.metrics.in_flight.inc()
        queued = time.perf_counter()

        def job():
            waited = (time.perf_counter() - queued) * 1000
            with self.serving.borrow() as r:
                return fn(r), r.generation, waited

        try:
            return await asyncio.get_running_loop().run_in_executor(self.search_pool, job)
        finally:
            self.pending -= 1
            self.metrics.in_flight.dec()

    async def run_write(self, fn: Callable[[Retriever], Any]) -> Any:
        """Run `fn(retriever)` on the write thread (the writer only); the next periodic save includes it."""
        if self.read_only:
            raise Refused("read_only", f"this server serves {self.path} read-only; send writes to the server "
                          "started without --read-only (the index's one writer)")

        def job():
            with self.serving.borrow() as r:
                out = fn(r)
                self._dirty = True
                return out

        return await asyncio.get_running_loop().run_in_executor(self.write_pool, job)

    async def search(self, queries: list[str], *, k: int, filters: dict | None, rerank: bool,
                     rerank_budget_ms: float | None, mode: str | None = None
                     ) -> tuple[list[list[Hit]], dict[str, Any]]:
        """One traced search on the search pool; (hits per query, the response's other fields)."""
        t0 = time.perf_counter()
        (results, trace), gen, waited = await self.run_search(lambda r: r.search_traced(
            queries, k=k, filters=filters, rerank=rerank, rerank_budget_ms=rerank_budget_ms, record=False,
            mode=mode))
        common = self.record_trace(trace, waited, len(queries))
        common["timings_ms"]["total"] = round((time.perf_counter() - t0) * 1000, 3)
        return results, {**common, "generation": gen}

    def record_trace(self, trace: SearchTrace, waited_ms: float, queries: int) -> dict[str, Any]:
        """Observe a search's stage times; the response fields they give (timings_ms, reranked, rerank_timed_out).
        The one place that reads a trace."""
        stage_ms, reranked, timed_out = trace.stage_ms(), trace.reranked, trace.rerank_timed_out

        timings = {s: round(ms, 3) for s, ms in stage_ms.items()}
        timings["queue"] = round(waited_ms, 3)
        for s, ms in stage_ms.items():
            if s != "rerank" or reranked or timed_out:
                self.metrics.stage.labels(s).observe(ms / 1000)
        self.metrics.stage.labels("queue").observe(waited_ms / 1000)
        if timed_out:
            self.metrics.rerank_timeouts.inc(queries)
        if trace.missed_shards:
            self.metrics.partial.inc(queries)
        return {"timings_ms": timings, "reranked": reranked, "rerank_timed_out": timed_out, "mode": trace.mode,
                "result_kind": trace.results, "notes": list(trace.notes), "partial": bool(trace.missed_shards),
                "missed_shards": list(trace.missed_shards)}

    async def stats(self) -> dict[str, Any]:
        """The Retriever's stats, whether a newer generation awaits a reload, and this server's own facts."""
        def run(r: Retriever):
            s = r.stats()
            try:
                latest = read_manifest(r.path)["generation"]
            except RetrieverError:
                latest = None
            return {**s, "latest_generation": latest,
                    "reload_pending": bool(r.read_only and latest is not None and latest != s["generation"])}

        out, _, _ = await self.run_search(run)
        out["server"] = {"workers": self.workers, "read_only": self.read_only, "ready": self.ready,
                         "pending": self.pending, "uptime_s": round(time.time() - self.started, 1),
                         "auth": bool(self.token)}
        return out

    # ------------------------------------------------------------------------------------- reload, save, warm
    def reload(self) -> dict[str, Any]:
        """Open the newest generation read-only and swap it in (in flight requests finish on the old one).
        Raises `Refused` ("writer", "reload_failed") and keeps the old generation."""
        if not self.read_only:
            raise Refused("writer", "this server is the index's writer and always serves its newest state; "
                          "reload is for servers started with --read-only")
        with self._reload_lock:
            t0 = time.perf_counter()
            old = self.serving.current
            try:
                new = Retriever.open(self.path, read_only=True, overrides=self.overrides)
            except RetrieverError as e:
                self.metrics.reloads.labels("failed").inc()
                raise Refused("reload_failed", f"kept generation {old.generation}: {e}") from None
            if new.generation == old.generation and _snapshot_sha(new) == _snapshot_sha(old):
                new.close()
                self.metrics.reloads.labels("unchanged").inc()
                return {"reloaded": False, "generation": old.generation,
                        "seconds": round(time.perf_counter() - t0, 3)}
            report = new.verify(check_model=False)
            if not report.ok:
                new.close()
                self.metrics.reloads.labels("failed").inc()
                raise Refused("reload_failed", f"generation {new.generation} failed verification, kept "
                              f"{old.generation}: {'; '.join(report.problems)}")
            new.adopt_models(old)  # same model names: no reload of weights, no cold first request
            self.serving.swap(new)
            self.metrics.retire(old)
            self.metrics.reloads.labels("swapped").inc()
            self._observe(new)
            log.info("%s: now serving generation %d (was %d)", self.path, new.generation, old.generation)
            return {"reloaded": True, "generation": new.generation, "previous": old.generation,
                    "seconds": round(time.perf_counter() - t0, 3)}

    def publish(self) -> dict[str, Any]:
        """Writer: save and hand the saved generation to read-only servers."""
        if self.read_only:
            raise Refused("read_only", "publish is for the writing server; this one is read-only")
        with self.serving.borrow() as r:
            self._dirty = False  # publishing saves
            return r.publish()

    def backup(self, dest: str) -> dict[str, Any]:
        """Writer: a consistent backup into `dest` (every write acknowledged before it), taken under the write lock
        while searches go on. Raises `Refused` ("read_only") on a read-only server."""
        if self.read_only:
            raise Refused("read_only", "a backup is taken by the index's writer, which holds every acknowledged "
                          "write; ask the writing server, or run `retriever backup DIR DEST` when none runs")
        root = self.config.server.backup_dir
        if not root:
            raise Refused("backup_off", "backups over HTTP are off: start the server with [server] backup_dir set "
                          "(in --config) to the folder they may be written into")
        if not os.path.isabs(dest):
            raise InputError(f"dest {dest!r} must be an absolute path on the server's machine (the server writes "
                             f"there), inside [server] backup_dir {root}")
        inside = os.path.realpath(root)
        if os.path.dirname(os.path.realpath(dest)) != inside:
            raise InputError(f"dest {dest!r} must be a new folder directly inside [server] backup_dir {inside}, "
                             f"e.g. {os.path.join(inside, 'index-1')}")
        with self.serving.borrow() as r:
            return r.backup(dest).to_dict()

    def save_or_publish(self) -> dict[str, Any] | None:
        """Writer: save when something changed; publish (hand the saved generation to read-only servers) when any
        read-only process is serving this index."""
        if self.read_only or not self._dirty:
            return None
        with self.serving.borrow() as r:
            self._dirty = False
            root = r.path
            readers = any(has_readers(generation_dir(root, n)) for n in generations(root))
            if readers:
                return r.publish()
            r.save()
            return {"saved": r.generation}

    def warm_up(self) -> None:
        """Verify the index and load both models, so the first real request is not the slow one."""
        self.ready_detail = {"state": "verifying"}
        with self.serving.borrow() as r:
            report = r.verify(check_model=True)
            if not report.ok:
                self.ready_detail = {"state": "failed", "problems": list(report.problems)}
                log.error("%s failed verification: %s", self.path, "; ".join(report.problems))
                return
            self.ready_detail = {"state": "warming"}
            if len(r):
                r.search("warm up", k=1, rerank=r.config.rerank.enabled)
            self._observe(r)
        self.ready = True
        self.ready_detail = {"state": "ready", "warnings": list(report.warnings)}

    def _observe(self, r: Retriever) -> None:
        self.metrics.documents.set(len(r))
        self.metrics.generation.set(r.generation)

    def close(self) -> None:
        self.search_pool.shutdown(wait=True)
        self.write_pool.shutdown(wait=True)
        self.serving.current.close()


def _snapshot_sha(r: Retriever) -> str | None:
    snapshot = r.manifest.snapshot
    return snapshot.sha256 if snapshot else None


def _differences(retriever: Retriever) -> dict[str, dict]:
    """The settings of `retriever.config` that differ from the ones stored with the index, by section."""
    stored = retriever.stored_config.to_dict()
    out = {}
    for section, values in retriever.config.to_dict().items():
        changed = {k: v for k, v in values.items() if stored.get(section, {}).get(k) != v}
        if changed:
            out[section] = changed
    return out
