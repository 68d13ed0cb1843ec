"""Errors as JSON: ``{"error": {"status", "type", "message", "fields": [{"field", "rule", "message"}]},
"request_id"}``, built by :func:`error_body` for every handler and for the 413 of `BodyLimit`."""

import logging
import re
import uuid
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import FilterError, InputError, ShardUnavailable
from .service import Refused

log = logging.getLogger("retriever.server")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ApiError(Exception):
    """An error answered as JSON with this status; `fields` name the input and the rule it broke."""

    def __init__(self, status: int, type_: str, message: str, fields: list[dict] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.fields, self.headers = status, type_, message, fields or [], headers


def request_id(given: str) -> str:
    """The client's X-Request-ID when it is a plain token of at most 64 characters, else a new one."""
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def error_body(status: int, type_: str, message: str, fields=(), request_id: str = "-") -> dict:
    return {"error": {"status": status, "type": type_, "message": message, "fields": list(fields)},
            "request_id": request_id}


def error_response(request: Request, status: int, type_: str, message: str, fields=(),
                   headers=None) -> JSONResponse:
    rid = getattr(request.state, "request_id", None) or request.headers.get("x-request-id") or "-"
    return JSONResponse(error_body(status, type_, message, fields, rid), status_code=status, headers=headers)


@contextmanager
def input_field(field: str):
    """Answer an InputError raised inside as 422 naming `field` (a bad filter names "filters", rule "filter")."""
    try:
        yield
    except InputError as e:
        bad_filter = isinstance(e, FilterError)
        raise ApiError(422, "invalid_request", str(e), [{"field": "filters" if bad_filter else field,
                                                         "rule": "filter" if bad_filter else "value",
                                                         "message": str(e)}]) from None


def _refused(e: Refused) -> ApiError:
    if e.reason == "overloaded":
        return ApiError(503, e.reason, str(e), headers={"Retry-After": "1"})
    return ApiError(409, e.reason, str(e))


def install_handlers(app: FastAPI) -> None:
    """Every error the app answers goes through `error_response`."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(request, e.status, e.type, e.message, e.fields, e.headers)

    @app.exception_handler(Refused)
    async def _service_refused(request: Request, e: Refused):
        return await _api_error(request, _refused(e))

    @app.exception_handler(ShardUnavailable)
    async def _no_shard(request: Request, e: ShardUnavailable):
        return error_response(request, 503, "unavailable", str(e), headers={"Retry-After": "1"})

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
        return error_response(request, 422, "invalid_request", f"invalid request ({summary})", fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        message = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the routes"
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs"
        return error_response(request, e.status_code, "http_error", message, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        rid = getattr(request.state, "request_id", "-")
        log.error("request %s %s %s failed", rid, request.method, request.url.path, exc_info=e)
        return error_response(request, 500, "internal", f"internal error; nothing acknowledged was lost. Quote "
                              f"request id {rid} when reporting it")
