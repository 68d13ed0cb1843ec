"""The FastAPI app over one open Retriever (`create_app`), wrapped in the body limit (`build_asgi`), run by
uvicorn (`serve`)."""

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from ..retriever import Retriever
from .body_limit import BodyLimit
from .errors import install_handlers, request_id
from .exposure import check_exposure, server_settings
from .routes import router
from .service import Refused, Service

log = logging.getLogger("retriever.server")


def create_app(retriever: Retriever, *, token: str | None = None, background: bool = True,
               overrides: dict | None = None) -> FastAPI:
    """The ASGI app over an open Retriever (the app closes it on shutdown). `token`: bearer token for writes and
    admin routes (and reads with server.auth_reads). `background`: verify and warm up after start, and (writer)
    save periodically. `overrides`: the settings changed from the index's stored ones, kept across reloads
    (default: the differences between `retriever.config` and the stored config)."""
    svc = Service(retriever, token=token, overrides=overrides)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        tasks = []
        if background:
            tasks.append(loop.run_in_executor(svc.write_pool, svc.warm_up))
            if not svc.read_only:
                tasks.append(asyncio.create_task(_save_periodically(svc)))
        else:
            svc.ready, svc.ready_detail = True, {"state": "ready"}
        if svc.read_only and threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, _reload_logged, svc))
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not a Unix main thread
                pass
        try:
            yield
        finally:
            for t in tasks:
                if isinstance(t, asyncio.Task):
                    t.cancel()
            await asyncio.to_thread(svc.close)

    app = FastAPI(title="rag-retriever", version=_version(), lifespan=lifespan,
                  description="Retrieval for chatbot backends: cosine top-k over FAISS, DuckDB metadata, "
                              "cross-encoder rerank.")
    app.state.service = svc
    install_handlers(app)

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        request.state.request_id = request_id(request.headers.get("x-request-id", ""))
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

    app.include_router(router(svc))
    return app


def _reload_logged(svc: Service) -> None:
    """SIGHUP: reload, and log what happened (there is no one to answer)."""
    try:
        log.info("SIGHUP: %s", svc.reload())
    except Refused as e:
        log.error("SIGHUP reload failed: %s", e)


async def _save_periodically(svc: Service) -> None:
    while True:
        await asyncio.sleep(svc.config.server.save_interval_s)
        try:
            await asyncio.get_running_loop().run_in_executor(svc.write_pool, svc.save_or_publish)
        except Exception:  # keep serving; the next round tries again (DuckDB already holds every write)
            log.exception("periodic save failed")


def build_asgi(retriever: Retriever, *, token: str | None = None, background: bool = True,
               overrides: dict | None = None):
    """The app wrapped in the body-size limit: what `retriever serve` runs."""
    app = create_app(retriever, token=token, background=background, overrides=overrides)
    return BodyLimit(app, retriever.config.server.max_body_bytes)


def serve(path: str | os.PathLike, *, host: str | None = None, port: int | None = None, read_only: bool = False,
          overrides: dict | None = None, log_level: str = "info", allow_unauthenticated: bool = False) -> None:
    """Open the index (failing fast with a clear error), then run uvicorn until SIGINT/SIGTERM; the index is saved
    and closed on the way out. `overrides` change settings stored with the index, e.g. {"server": {"workers": 1}}.
    Before anything is opened, `check_exposure` refuses a short token, and a non-loopback host without a token
    unless `allow_unauthenticated` (then a warning goes to stderr)."""
    import uvicorn

    settings = server_settings(path, overrides)
    host = host or settings.host
    token = os.environ.get(settings.token_env) or None
    warning = check_exposure(host, token, settings.token_env, allow_unauthenticated)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    retriever = Retriever.open(path, read_only=read_only, overrides=overrides or None)
    cfg = retriever.config.server
    app = build_asgi(retriever, token=token, overrides=overrides or {})
    # uvicorn shuts down gracefully on SIGTERM (requests in flight finish, the lifespan saves and closes the index),
    # then raises the signal again; with this handler the process then exits 0 instead of dying by the signal
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    uvicorn.run(app, host=host, port=cfg.port if port is None else port, log_level=log_level,
                access_log=False, timeout_graceful_shutdown=30)


def _exit_after_shutdown(signum, frame) -> None:
    raise SystemExit(0)


def _version() -> str:
    from .. import __version__

    return __version__
