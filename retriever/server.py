"""HTTP retrieval service for chatbot backends: FastAPI on uvicorn, one :class:`Retriever` per process.

- Searches run on a bounded thread pool (one thread per core), never on the event loop; writes run one at a time on
  their own thread. A search sees a write whole or not at all (the Retriever's readers-writer lock).
- A read-only server opens DuckDB read-only, so several can serve one index while one writer process updates it;
  ``POST /v1/admin/reload`` (or SIGHUP) swaps in the newest generation while requests in flight finish on the old.
- Errors are JSON: ``{"error": {"status", "type", "message", "fields": [{"field", "rule", "message"}]},
  "request_id"}``. Bad input is 4xx naming the field and the rule; an internal failure is 500 with the request id.

    retriever serve DIR --host 127.0.0.1 --port 8000 [--read-only]
"""

import asyncio
import logging
import os
import re
import secrets
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import runtime
from .config import RetrieverConfig
from .documents import Document
from .errors import FilterError, InputError, RetrieverError
from .filters import compile_filter
from .persistence import generation_dir, generations, has_readers, read_manifest
from .results import Hit
from .retriever import MAX_QUERY_CHARS, Retriever

log = logging.getLogger("retriever.server")
disable_created_metrics()  # no *_created series: counters and histograms only

STAGES = ("embed", "search", "join", "rerank")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DRAIN_FACTOR = 8  # an oversize body up to 8x the limit is read and dropped before the 413; larger ones are cut off
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ApiError(Exception):
    """An error answered as JSON with this status; `fields` name the input and the rule it broke."""

    def __init__(self, status: int, type_: str, message: str, fields: list[dict] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.fields, self.headers = status, type_, message, fields or [], headers


def _input_error(e: InputError, field: str) -> ApiError:
    rule = "filter" if isinstance(e, FilterError) else "value"
    return ApiError(422, "invalid_request", str(e), [{"field": field, "rule": rule, "message": str(e)}])


# ------------------------------------------------------------------------------------------ the Retriever in use
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


# ------------------------------------------------------------------------------------------------------ metrics
class Metrics:
    def __init__(self, serving: Serving):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("retriever_http_requests_total", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("retriever_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("retriever_search_stage_seconds", "Search time per stage (embed, search, join, rerank, "
                               "queue = waiting for a search thread)", ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.rerank_timeouts = Counter("retriever_rerank_timeouts_total",
                                       "Searches whose rerank budget ran out (answered in retrieval order)", registry=r)
        self.in_flight = Gauge("retriever_searches_in_flight", "Searches queued or running", registry=r)
        self.reloads = Counter("retriever_reloads_total", "Reloads by result (swapped, unchanged, failed)",
                               ["result"], registry=r)
        self.documents = Gauge("retriever_documents", "Documents in the index being served", registry=r)
        self.generation = Gauge("retriever_generation", "Index generation being served", registry=r)
        self._serving = serving
        self._retired_fallbacks = 0
        r.register(self)  # collect() below: the filter-starvation counter lives on the Retriever

    def retire(self, old: Retriever) -> None:
        self._retired_fallbacks += old.fallbacks

    def collect(self):
        c = CounterMetricFamily("retriever_filter_starvation",
                                "ANN searches that came back with fewer than min(k, matches) hits (a selective filter "
                                "or masked vectors starved them) and were completed by an exact scan")
        c.add_metric([], self._retired_fallbacks + self._serving.current.fallbacks)
        yield c

    def describe(self):
        return []


# ----------------------------------------------------------------------------------------------- request models
QueryText = Annotated[StrictStr, Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S")]


def _models(cfg):
    """Request and response models, with the limits of this server's [server] settings in the OpenAPI schema."""
    s = cfg.server

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class SearchRequest(Strict):
        query: QueryText = Field(description="the question; not blank")
        k: StrictInt = Field(10, ge=1, le=s.max_k, description="hits to return")
        filters: dict[str, Any] | None = Field(None, description='metadata filter, e.g. {"year": {"$gte": 2020}}')
        rerank: StrictBool = Field(True, description="rerank candidates with the cross-encoder")
        rerank_budget_ms: StrictFloat | None = Field(
            None, ge=0, le=600_000, description="cross-encoder time budget for this request (0 = none; default "
                                                "[rerank] budget_ms); past it hits come back in retrieval order")

    class SearchBatchRequest(Strict):
        queries: list[QueryText] = Field(min_length=1, max_length=s.max_batch_queries)
        k: StrictInt = Field(10, ge=1, le=s.max_k)
        filters: dict[str, Any] | None = None
        rerank: StrictBool = True
        rerank_budget_ms: StrictFloat | None = Field(None, ge=0, le=600_000)

    class DocumentIn(Strict):
        id: StrictStr = Field(min_length=1, max_length=1024)
        text: StrictStr = Field(min_length=1, pattern=r"\S")
        metadata: dict[str, Any] = Field(default_factory=dict)

    class UpsertRequest(Strict):
        documents: list[DocumentIn] = Field(min_length=1, max_length=s.max_batch_documents)

    class DeleteRequest(Strict):
        ids: list[Annotated[StrictStr, Field(min_length=1, max_length=1024)]] = Field(
            min_length=1, max_length=s.max_batch_documents)

    return SearchRequest, SearchBatchRequest, DocumentIn, UpsertRequest, DeleteRequest


class SearchResponse(BaseModel):
    hits: list[Hit]
    timings_ms: dict[str, float]
    reranked: bool
    rerank_timed_out: bool
    generation: int


class BatchItem(BaseModel):
    hits: list[Hit]


class SearchBatchResponse(BaseModel):
    results: list[BatchItem]
    timings_ms: dict[str, float]
    reranked: bool
    rerank_timed_out: bool
    generation: int


class DocumentOut(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]


class FieldError(BaseModel):
    field: str
    rule: str
    message: str


class ErrorBody(BaseModel):
    status: int
    type: str
    message: str
    fields: list[FieldError] = []


class ErrorResponse(BaseModel):
    error: ErrorBody
    request_id: str


ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 422, 500, 503)}


# ---------------------------------------------------------------------------------------------------- the app
class Service:
    """What one server process holds: the Retriever in use, its thread pools, metrics and settings."""

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

    # ---------------------------------------------------------------------------------------------- helpers
    async def run_search(self, fn: Callable[[Retriever], Any]) -> tuple[Any, int, float]:
        """Run `fn(retriever)` on the search pool; (result, generation, ms waited for a thread)."""
        if self.pending >= self.config.server.max_pending:
            raise ApiError(503, "overloaded", f"{self.pending} searches are queued or running, the limit is "
                           f"server.max_pending = {self.config.server.max_pending}; retry shortly",
                           headers={"Retry-After": "1"})
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
        if self.read_only:
            raise ApiError(409, "read_only", f"this server serves {self.path} read-only; send writes to the server "
                           "started without --read-only (the index's one writer)")

        def job():
            with self.serving.borrow() as r:
                out = fn(r)
                self._dirty = True
                return out

        return await asyncio.get_running_loop().run_in_executor(self.write_pool, job)

    def record_trace(self, trace: dict, waited_ms: float, queries: int) -> dict[str, float]:
        timings = {s: round(trace.get(f"{s}_ms", 0.0), 3) for s in STAGES}
        timings["queue"] = round(waited_ms, 3)
        for s in STAGES:
            if s != "rerank" or trace.get("reranked") or trace.get("rerank_timed_out"):
                self.metrics.stage.labels(s).observe(trace.get(f"{s}_ms", 0.0) / 1000)
        self.metrics.stage.labels("queue").observe(waited_ms / 1000)
        if trace.get("rerank_timed_out"):
            self.metrics.rerank_timeouts.inc(queries)
        return timings

    # ------------------------------------------------------------------------------------- reload, save, warm
    def reload(self) -> dict[str, Any]:
        """Open the newest generation read-only and swap it in (in flight requests finish on the old one)."""
        if not self.read_only:
            raise ApiError(409, "writer", "this server is the index's writer and always serves its newest state; "
                           "reload is for servers started with --read-only")
        with self._reload_lock:
            t0 = time.perf_counter()
            old = self.serving.current
            try:
                new = Retriever.open(self.path, read_only=True, overrides=self.overrides)
            except RetrieverError as e:
                self.metrics.reloads.labels("failed").inc()
                raise ApiError(409, "reload_failed", f"kept generation {old.generation}: {e}") from None
            same = (new.generation == old.generation
                    and (new._manifest.get("snapshot") or {}).get("sha256")
                    == (old._manifest.get("snapshot") or {}).get("sha256"))
            if same:
                new.close()
                self.metrics.reloads.labels("unchanged").inc()
                return {"reloaded": False, "generation": old.generation,
                        "seconds": round(time.perf_counter() - t0, 3)}
            report = new.verify(check_model=False)
            if not report.ok:
                new.close()
                self.metrics.reloads.labels("failed").inc()
                raise ApiError(409, "reload_failed", f"generation {new.generation} failed verification, kept "
                               f"{old.generation}: {'; '.join(report.problems)}")
            new.adopt_models(old)  # same model names: no reload of weights, no cold first request
            self.serving.swap(new)
            self.metrics.retire(old)
            self.metrics.reloads.labels("swapped").inc()
            self._observe(new)
            log.info("%s: now serving generation %d (was %d)", self.path, new.generation,
                     old.generation)
            return {"reloaded": True, "generation": new.generation, "previous": old.generation,
                    "seconds": round(time.perf_counter() - t0, 3)}

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


def _differences(retriever: Retriever) -> dict[str, dict]:
    stored = RetrieverConfig.from_dict(retriever._manifest["config"]).to_dict()
    out = {}
    for section, values in retriever.config.to_dict().items():
        changed = {k: v for k, v in values.items() if stored.get(section, {}).get(k) != v}
        if changed:
            out[section] = changed
    return out


def create_app(retriever: Retriever, *, token: str | None = None, background: bool = True,
               overrides: dict | None = None) -> FastAPI:
    """The ASGI app over an open Retriever (the app closes it on shutdown). `token`: bearer token for writes and
    admin routes (and reads with server.auth_reads). `background`: verify and warm up after start, and (writer)
    save periodically. `overrides`: the settings changed from the index's stored ones, kept across reloads
    (default: the differences between `retriever.config` and the stored config)."""
    svc = Service(retriever, token=token, overrides=overrides)
    cfg = svc.config
    SearchRequest, SearchBatchRequest, DocumentIn, UpsertRequest, DeleteRequest = _models(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        tasks = []
        if background:
            tasks.append(loop.run_in_executor(svc.write_pool, svc.warm_up))
            if not svc.read_only:
                tasks.append(asyncio.create_task(_saver()))
        else:
            svc.ready, svc.ready_detail = True, {"state": "ready"}
        if svc.read_only and threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, _reload_logged))
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not a Unix main thread
                pass
        try:
            yield
        finally:
            for t in tasks:
                if isinstance(t, asyncio.Task):
                    t.cancel()
            await asyncio.to_thread(svc.close)

    def _reload_logged():
        try:
            log.info("SIGHUP: %s", svc.reload())
        except ApiError as e:
            log.error("SIGHUP reload failed: %s", e.message)

    async def _saver():
        while True:
            await asyncio.sleep(cfg.server.save_interval_s)
            try:
                await asyncio.get_running_loop().run_in_executor(svc.write_pool, svc.save_or_publish)
            except Exception:  # keep serving; the next round tries again (DuckDB already holds every write)
                log.exception("periodic save failed")

    app = FastAPI(title="rag-retriever", version=_version(), lifespan=lifespan,
                  description="Retrieval for chatbot backends: cosine top-k over FAISS, DuckDB metadata, "
                              "cross-encoder rerank.")
    app.state.service = svc

    # ------------------------------------------------------------------------------------------- auth
    def _authorize(request: Request) -> None:
        if not svc.token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), svc.token.encode()):
            raise ApiError(401, "unauthorized", f"this route needs 'Authorization: Bearer <token>' with the token "
                           f"from the server's ${cfg.server.token_env}",
                           [{"field": "header.authorization", "rule": "bearer token", "message": "missing or wrong"}],
                           headers={"WWW-Authenticate": "Bearer"})

    def require_token(request: Request) -> None:
        _authorize(request)

    def require_token_for_reads(request: Request) -> None:
        if cfg.server.auth_reads:
            _authorize(request)

    write_auth = [Depends(require_token)]
    read_auth = [Depends(require_token_for_reads)]

    # ------------------------------------------------------------------------------------------ errors
    def _error(request: Request, status: int, type_: str, message: str, fields=(), headers=None) -> JSONResponse:
        rid = getattr(request.state, "request_id", None) or request.headers.get("x-request-id") or "-"
        body = {"error": {"status": status, "type": type_, "message": message, "fields": list(fields)},
                "request_id": rid}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return _error(request, e.status, e.type, e.message, e.fields, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        fields = []
        for err in e.errors():
            loc = [str(p) for p in err.get("loc", ()) if p != "body"] or ["body"]
            fields.append({"field": ".".join(loc), "rule": err.get("type", "invalid"), "message": err.get("msg", "")})
        ctype = request.headers.get("content-type", "")
        if request.method in ("POST", "PUT", "DELETE") and "json" not in ctype:
            fields.insert(0, {"field": "header.content-type", "rule": "application/json",
                              "message": f"the body must be JSON sent with Content-Type: application/json, got "
                                         f"{ctype or 'no Content-Type'}"})
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        return _error(request, 422, "invalid_request", f"invalid request ({summary})", fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        message = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the routes"
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs"
        return _error(request, e.status_code, "http_error", message, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        rid = getattr(request.state, "request_id", "-")
        log.error("request %s %s %s failed", rid, request.method, request.url.path, exc_info=e)
        return _error(request, 500, "internal", f"internal error; nothing acknowledged was lost. Quote request id "
                      f"{rid} when reporting it")

    # --------------------------------------------------------------------------------------- middleware
    @app.middleware("http")
    async def _observe(request: Request, call_next):
        rid = request.headers.get("x-request-id", "")
        request.state.request_id = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["x-request-id"] = request.state.request_id
            return response
        finally:
            label = getattr(request.scope.get("route"), "path", "unmatched")
            svc.metrics.requests.labels(label, request.method, str(status)).inc()
            svc.metrics.latency.labels(label, request.method).observe(time.perf_counter() - t0)

    # ----------------------------------------------------------------------------------------- searches
    def _check_filters(filters) -> None:
        if filters is not None:
            try:
                compile_filter(filters)
            except InputError as e:
                raise _input_error(e, "filters") from None

    async def _traced(queries: list[str], req, field: str) -> tuple[list[list[Hit]], dict[str, Any]]:
        """Run one traced search off the loop; (hits per query, the common response fields)."""
        _check_filters(req.filters)
        t0 = time.perf_counter()

        def run(r: Retriever):
            try:
                return r.search_traced(queries, k=req.k, filters=req.filters, rerank=req.rerank,
                                       rerank_budget_ms=req.rerank_budget_ms)
            except InputError as e:
                raise _input_error(e, "filters" if isinstance(e, FilterError) else field) from None

        (results, trace), gen, waited = await svc.run_search(run)
        timings = svc.record_trace(trace, waited, len(queries))
        timings["total"] = round((time.perf_counter() - t0) * 1000, 3)
        return results, {"timings_ms": timings, "reranked": bool(trace.get("reranked")),
                         "rerank_timed_out": bool(trace.get("rerank_timed_out")), "generation": gen}

    @app.post("/v1/search", response_model=SearchResponse, responses=ERRORS, dependencies=read_auth,
              summary="Top-k hits for one query, with both scores and per-stage timings")
    async def search(req: SearchRequest):
        results, common = await _traced([req.query], req, "query")
        return {"hits": results[0], **common}

    @app.post("/v1/search/batch", response_model=SearchBatchResponse, responses=ERRORS, dependencies=read_auth,
              summary="Several queries in one call: one embedding batch, one FAISS call, one rerank batch")
    async def search_batch(req: SearchBatchRequest):
        results, common = await _traced(req.queries, req, "queries")
        return {"results": [{"hits": hits} for hits in results], **common}

    # ---------------------------------------------------------------------------------------- documents
    @app.put("/v1/documents", responses=ERRORS, dependencies=write_auth,
             summary="Upsert a batch: all of it lands at once (one transaction), or none of it")
    async def upsert(req: UpsertRequest):
        docs = [Document(d.id, d.text, d.metadata) for d in req.documents]

        def run(r: Retriever):
            try:
                return r.upsert(docs).to_dict()
            except InputError as e:
                raise _input_error(e, "documents") from None

        report = await svc.run_write(run)
        return {"upserted": report, "generation": svc.serving.current.generation}

    @app.delete("/v1/documents", responses=ERRORS, dependencies=write_auth,
                summary="Delete documents (and their chunks) by id; they stop appearing in searches at once")
    async def delete(req: DeleteRequest):
        def run(r: Retriever):
            try:
                return r.delete(req.ids).to_dict()
            except InputError as e:
                raise _input_error(e, "ids") from None

        report = await svc.run_write(run)
        return {"deleted": report, "generation": svc.serving.current.generation}

    @app.get("/v1/documents/{id:path}", response_model=DocumentOut, responses=ERRORS, dependencies=read_auth,
             summary="One stored document (a chunk's id is '{parent}#chunk-{i}')")
    async def get_document(id: str):
        doc, _, _ = await svc.run_search(lambda r: r.get(id))
        if doc is None:
            raise ApiError(404, "not_found", f"no document with id {id!r}",
                           [{"field": "path.id", "rule": "exists", "message": "unknown id"}])
        return {"id": doc.id, "text": doc.text, "metadata": doc.metadata}

    # ------------------------------------------------------------------------------------------- health
    @app.get("/healthz", summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}},
             summary="The index is loaded and verified and the models are warm")
    async def readyz(request: Request):
        if not svc.ready:
            return _error(request, 503, "not_ready", f"not ready: {svc.ready_detail.get('state')}",
                          [{"field": "index", "rule": "verified", "message": "; ".join(
                              svc.ready_detail.get("problems", [])) or svc.ready_detail.get("state", "")}])
        return {"status": "ready", "generation": svc.serving.current.generation, **svc.ready_detail}

    @app.get("/v1/stats", responses=ERRORS, dependencies=read_auth,
             summary="Counts, models, index kind and generation")
    async def stats():
        def run(r: Retriever):
            s = r.stats()
            try:
                latest = read_manifest(r.path)["generation"]
            except RetrieverError:
                latest = None
            return {**s, "latest_generation": latest,
                    "reload_pending": bool(r.read_only and latest is not None and latest != s["generation"])}

        out, _, _ = await svc.run_search(run)
        out["server"] = {"workers": svc.workers, "read_only": svc.read_only, "ready": svc.ready,
                         "pending": svc.pending, "uptime_s": round(time.time() - svc.started, 1),
                         "auth": bool(svc.token)}
        return out

    @app.get("/metrics", summary="Prometheus text format", response_class=Response)
    async def metrics():
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -------------------------------------------------------------------------------------------- admin
    @app.post("/v1/admin/reload", responses=ERRORS, dependencies=write_auth,
              summary="Swap in the newest index generation (read-only servers); requests in flight finish first")
    async def reload():
        return await asyncio.get_running_loop().run_in_executor(svc.write_pool, svc.reload)

    @app.post("/v1/admin/publish", responses=ERRORS, dependencies=write_auth,
              summary="Writer: save and hand the saved generation to read-only servers")
    async def publish():
        if svc.read_only:
            raise ApiError(409, "read_only", "publish is for the writing server; this one is read-only")

        def run():
            with svc.serving.borrow() as r:
                svc._dirty = False  # publishing saves
                return r.publish()

        return await asyncio.get_running_loop().run_in_executor(svc.write_pool, run)

    return app


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413 before the app reads them (Content-Length, or counted while
    streaming). Outermost, so the app never sees a truncated body."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        if declared is not None and not declared.isdigit():
            return await self._refuse(send, rid)
        if declared is not None and int(declared) > self.max_bytes:
            if int(declared) <= DRAIN_FACTOR * self.max_bytes:
                await self._drain(receive)  # most clients send the whole body before they read the answer
            return await self._refuse(send, rid)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                if message.get("more_body"):
                    await self._drain(receive, size)
                return await self._refuse(send, rid)
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _drain(self, receive, size: int = 0) -> None:
        while size <= DRAIN_FACTOR * self.max_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                return

    async def _refuse(self, send, request_id: str):
        import json

        payload = json.dumps({"error": {"status": 413, "type": "too_large", "message":
                              f"request body over server.max_body_bytes = {self.max_bytes}; send smaller batches",
                              "fields": [{"field": "body", "rule": f"at most {self.max_bytes} bytes",
                                          "message": "too large"}]}, "request_id": request_id}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"x-request-id", request_id.encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def build_asgi(retriever: Retriever, *, token: str | None = None, background: bool = True,
               overrides: dict | None = None):
    """The app wrapped in the body-size limit: what `retriever serve` runs."""
    app = create_app(retriever, token=token, background=background, overrides=overrides)
    return BodyLimit(app, retriever.config.server.max_body_bytes)


def serve(path: str | os.PathLike, *, host: str | None = None, port: int | None = None, read_only: bool = False,
          overrides: dict | None = None, log_level: str = "info") -> None:
    """Open the index (failing fast with a clear error), then run uvicorn until SIGINT/SIGTERM; the index is saved
    and closed on the way out. `overrides` change settings stored with the index, e.g. {"server": {"workers": 1}}."""
    import uvicorn

    retriever = Retriever.open(path, read_only=read_only, overrides=overrides or None)
    cfg = retriever.config.server
    token = os.environ.get(cfg.token_env) or None
    app = build_asgi(retriever, token=token, overrides=overrides or {})
    # uvicorn shuts down gracefully on SIGTERM (requests in flight finish, the lifespan saves and closes the index),
    # then raises the signal again; with this handler the process then exits 0 instead of dying by the signal
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    uvicorn.run(app, host=host or cfg.host, port=cfg.port if port is None else port, log_level=log_level,
                access_log=False, timeout_graceful_shutdown=30)


def _exit_after_shutdown(signum, frame) -> None:
    raise SystemExit(0)


def _version() -> str:
    from . import __version__

    return __version__


__all__ = ["create_app", "build_asgi", "serve", "Service"]
