"""The HTTP routes over one `Service`: searches, documents, health, stats, metrics and admin."""

import asyncio
import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..documents import Document
from .errors import ApiError, error_response, input_field
from .schemas import ERRORS, BackupRequest, DocumentOut, ErrorResponse, SearchBatchResponse, SearchResponse, request_models
from .service import Service


def _auth(svc: Service) -> tuple[list, list]:
    """(read, write) route dependencies: the bearer token when the server has one (reads: with server.auth_reads)."""
    server = svc.config.server

    def authorize(request: Request) -> None:
        if not svc.token:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), svc.token.encode()):
            raise ApiError(401, "unauthorized", f"this route needs 'Authorization: Bearer <token>' with the token "
                           f"from the server's ${server.token_env}",
                           [{"field": "header.authorization", "rule": "bearer token", "message": "missing or wrong"}],
                           headers={"WWW-Authenticate": "Bearer"})

    def require_token(request: Request) -> None:
        authorize(request)

    def require_token_for_reads(request: Request) -> None:
        if server.auth_reads:
            authorize(request)

    return [Depends(require_token_for_reads)], [Depends(require_token)]


def router(svc: Service) -> APIRouter:
    """Every route of the app, bound to `svc`."""
    SearchRequest, SearchBatchRequest, _, UpsertRequest, DeleteRequest = request_models(svc.config)
    read_auth, write_auth = _auth(svc)
    api = APIRouter()

    async def _searched(queries: list[str], req, field: str):
        with input_field(field):
            return await svc.search(queries, k=req.k, filters=req.filters, rerank=req.rerank,
                                    rerank_budget_ms=req.rerank_budget_ms, mode=req.mode)

    # ----------------------------------------------------------------------------------------- searches
    @api.post("/v1/search", response_model=SearchResponse, responses=ERRORS, dependencies=read_auth,
              summary="Top-k hits for one query, with both scores and per-stage timings")
    async def search(req: SearchRequest):
        results, common = await _searched([req.query], req, "query")
        return {"hits": results[0], **common}

    @api.post("/v1/search/batch", response_model=SearchBatchResponse, responses=ERRORS, dependencies=read_auth,
              summary="Several queries in one call: one embedding batch, one FAISS call, one rerank batch")
    async def search_batch(req: SearchBatchRequest):
        results, common = await _searched(req.queries, req, "queries")
        return {"results": [{"hits": hits} for hits in results], **common}

    # ---------------------------------------------------------------------------------------- documents
    @api.put("/v1/documents", responses=ERRORS, dependencies=write_auth,
             summary="Upsert a batch: all of it lands at once (one transaction), or none of it")
    async def upsert(req: UpsertRequest):
        docs = [Document(d.id, d.text, d.metadata) for d in req.documents]
        with input_field("documents"):
            report = await svc.run_write(lambda r: r.upsert(docs).to_dict())
        return {"upserted": report, "generation": svc.serving.current.generation}

    @api.delete("/v1/documents", responses=ERRORS, dependencies=write_auth,
                summary="Delete documents (and their chunks) by id; they stop appearing in searches at once")
    async def delete(req: DeleteRequest):
        with input_field("ids"):
            report = await svc.run_write(lambda r: r.delete(req.ids).to_dict())
        return {"deleted": report, "generation": svc.serving.current.generation}

    @api.get("/v1/documents/{id:path}", response_model=DocumentOut, responses=ERRORS, dependencies=read_auth,
             summary="One stored document (a chunk's id is '{parent}#chunk-{i}')")
    async def get_document(id: str):
        doc, _, _ = await svc.run_search(lambda r: r.get(id))
        if doc is None:
            raise ApiError(404, "not_found", f"no document with id {id!r}",
                           [{"field": "path.id", "rule": "exists", "message": "unknown id"}])
        return {"id": doc.id, "text": doc.text, "metadata": doc.metadata}

    # ------------------------------------------------------------------------------------------- health
    @api.get("/healthz", summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @api.get("/readyz", responses={503: {"model": ErrorResponse}},
             summary="The index is loaded and verified and the models are warm")
    async def readyz(request: Request):
        if not svc.ready:
            detail = svc.ready_detail
            return error_response(request, 503, "not_ready", f"not ready: {detail.get('state')}",
                                  [{"field": "index", "rule": "verified", "message": "; ".join(
                                      detail.get("problems", [])) or detail.get("state", "")}])
        return {"status": "ready", "generation": svc.serving.current.generation, **svc.ready_detail}

    @api.get("/v1/stats", responses=ERRORS, dependencies=read_auth,
             summary="Counts, models, index kind and generation")
    async def stats():
        return await svc.stats()

    @api.get("/metrics", summary="Prometheus text format", response_class=Response)
    async def metrics():
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -------------------------------------------------------------------------------------------- admin
    @api.post("/v1/admin/reload", responses=ERRORS, dependencies=write_auth,
              summary="Swap in the newest index generation (read-only servers); requests in flight finish first")
    async def reload():
        return await asyncio.get_running_loop().run_in_executor(svc.write_pool, svc.reload)

    @api.post("/v1/admin/publish", responses=ERRORS, dependencies=write_auth,
              summary="Writer: save and hand the saved generation to read-only servers")
    async def publish():
        return await asyncio.get_running_loop().run_in_executor(svc.write_pool, svc.publish)

    @api.post("/v1/admin/backup", responses=ERRORS, dependencies=write_auth,
              summary="Writer: a verified backup into a folder on the server's machine, consistent while writing")
    async def backup(req: BackupRequest):
        with input_field("dest"):
            report = await asyncio.get_running_loop().run_in_executor(svc.write_pool, svc.backup, req.dest)
        return {"backup": report}

    return api
