"""Request and response bodies. Request limits come from the server's [server] settings, so `request_models`
builds them per app and the OpenAPI schema shows the limits in force."""

from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ..inputs import MAX_QUERY_CHARS
from ..results import Hit

Mode = Literal["dense", "lexical", "hybrid"]
QueryText = Annotated[StrictStr, Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S")]


class Requests(NamedTuple):
    SearchRequest: type[BaseModel]
    SearchBatchRequest: type[BaseModel]
    DocumentIn: type[BaseModel]
    UpsertRequest: type[BaseModel]
    DeleteRequest: type[BaseModel]


def request_models(cfg) -> Requests:
    """The request models, with the limits of `cfg.server` (a RetrieverConfig's [server] settings)."""
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
        mode: Mode | None = Field(None, description="dense (FAISS cosine), lexical (BM25) or hybrid (both, fused); "
                                                    "default [retrieval] mode")

    class SearchBatchRequest(Strict):
        queries: list[QueryText] = Field(min_length=1, max_length=s.max_batch_queries)
        k: StrictInt = Field(10, ge=1, le=s.max_k)
        filters: dict[str, Any] | None = None
        rerank: StrictBool = True
        rerank_budget_ms: StrictFloat | None = Field(None, ge=0, le=600_000)
        mode: Mode | None = None

    class DocumentIn(Strict):
        id: StrictStr = Field(min_length=1, max_length=1024)
        text: StrictStr = Field(min_length=1, pattern=r"\S")
        metadata: dict[str, Any] = Field(default_factory=dict)

    class UpsertRequest(Strict):
        documents: list[DocumentIn] = Field(min_length=1, max_length=s.max_batch_documents)

    class DeleteRequest(Strict):
        ids: list[Annotated[StrictStr, Field(min_length=1, max_length=1024)]] = Field(
            min_length=1, max_length=s.max_batch_documents)

    return Requests(SearchRequest, SearchBatchRequest, DocumentIn, UpsertRequest, DeleteRequest)


class BackupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dest: StrictStr = Field(min_length=1, max_length=4096,
                            description="an absolute path on the server's machine: a new or empty folder, outside "
                                        "the index; the server writes the backup there")


class SearchResponse(BaseModel):
    hits: list[Hit]
    timings_ms: dict[str, float]
    reranked: bool
    rerank_timed_out: bool
    mode: Mode
    result_kind: Literal["documents", "chunks"] = Field(description="what a hit is: [retrieval] results")
    notes: list[str] = Field(default_factory=list, description="what to know, e.g. a lexical query of only stop words")
    generation: int
    partial: bool = Field(False, description="true when some shards did not answer (serve --engine ray): the hits "
                                             "come from the other shards")
    missed_shards: list[int] = Field(default_factory=list, description="the shards that did not answer")


class BatchItem(BaseModel):
    hits: list[Hit]


class SearchBatchResponse(BaseModel):
    results: list[BatchItem]
    timings_ms: dict[str, float]
    reranked: bool
    rerank_timed_out: bool
    mode: Mode
    result_kind: Literal["documents", "chunks"] = Field(description="what a hit is: [retrieval] results")
    notes: list[str] = Field(default_factory=list, description="what to know, e.g. a lexical query of only stop words")
    generation: int
    partial: bool = Field(False, description="true when some shards did not answer (serve --engine ray): the hits "
                                             "come from the other shards")
    missed_shards: list[int] = Field(default_factory=list, description="the shards that did not answer")


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
