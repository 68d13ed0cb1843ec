"""LlamaIndex adapters: our `Retriever` as a `BaseRetriever`, our cross-encoder as a `BaseNodePostprocessor`, and
ingest from LlamaIndex `Document`s / nodes. Needs the extra: ``pip install "rag-retriever[llama-index]"``.

    from retriever import Retriever
    from retriever.integrations.llama_index import LlamaIndexRetriever, CrossEncoderReranker
    li = LlamaIndexRetriever(Retriever.open("my-index", read_only=True), k=10)
    engine = RetrieverQueryEngine.from_args(li, node_postprocessors=[...])

The retriever follows `[retrieval] results`: by default a node per document (`id_` the document id, its text the
best-matching passage, its metadata the document's), or a node per chunk ("chunks").

Scores never share a field across scales: a node's `score` is the final one (see `Hit.score`), and
`ScoredNode.retrieval_score` / `.lexical_score` / `.rerank_score` keep the stages' own, outside the node metadata
that reaches the prompt; `found_by` names the arms that found the document.
"""
from __future__ import annotations

import asyncio
from typing import Any, Iterable, Optional, Sequence

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
    from llama_index.core.vector_stores.types import (
        FilterCondition, FilterOperator, MetadataFilter, MetadataFilters,
    )
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "retriever.integrations.llama_index needs llama-index-core; install it with "
        "`pip install \"rag-retriever[llama-index]\"`"
    ) from e

from ..config import DEFAULT_RERANK_MODEL
from ..documents import Document
from ..errors import FilterError, InputError
from ..inputs import check_mode
from ..rerank import Reranker
from ..retriever import Retriever

__all__ = ["LlamaIndexRetriever", "CrossEncoderReranker", "ScoredNode", "to_filters", "to_documents",
           "ingest_nodes"]

dispatcher = get_dispatcher(__name__)

_COMPARISON = {
    FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt", FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte", FilterOperator.IN: "$in", FilterOperator.NIN: "$nin",
    FilterOperator.CONTAINS: "$contains", FilterOperator.TEXT_MATCH: "$text",
}


class ScoredNode(NodeWithScore):
    """A `NodeWithScore` that also carries both stage scores and the rank (the metadata stays the document's)."""
    retrieval_score: Optional[float] = None  # cosine in [-1, 1]
    rerank_score: Optional[float] = None     # cross-encoder probability, or None
    lexical_score: Optional[float] = None    # BM25, or None
    found_by: tuple[str, ...] = ()           # "dense", "lexical"
    rank: Optional[int] = None

    @classmethod
    def class_name(cls) -> str:
        return "ScoredNode"


# ------------------------------------------------------------------------------------------------- filters
def to_filters(filters: MetadataFilters | MetadataFilter | dict | None) -> dict | None:
    """LlamaIndex `MetadataFilters` (==, !=, >, >=, <, <=, in, nin, contains, text_match; AND / OR / NOT, nested)
    in our filter language. A dict is taken to be in our language already. Other operators raise FilterError
    naming the operator."""
    if filters is None or isinstance(filters, dict):
        return filters
    if isinstance(filters, MetadataFilter):
        return _one(filters)
    if not isinstance(filters, MetadataFilters):
        raise FilterError(f"filters must be llama_index MetadataFilters or a dict in our filter language, got "
                          f"{type(filters).__name__}")
    parts = [to_filters(f) for f in filters.filters]
    if not parts:
        return None
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return parts[0] if len(parts) == 1 else {"$and": parts}
    if condition == FilterCondition.OR:
        return parts[0] if len(parts) == 1 else {"$or": parts}
    if condition == FilterCondition.NOT:  # NOT (f1 AND f2 ...), as LlamaIndex's own stores read it
        return {"$not": parts[0] if len(parts) == 1 else {"$and": parts}}
    raise FilterError(f"filter condition {condition!r} is not supported; use and, or, not")


def _one(f: MetadataFilter) -> dict:
    op = _COMPARISON.get(f.operator)
    if op is None:
        supported = ", ".join(o.value for o in _COMPARISON)
        raise FilterError(
            f"the LlamaIndex filter operator {f.operator.value!r} (on {f.key!r}) is not supported by rag-retriever; "
            f"supported: {supported}"
        )
    value = f.value
    if op in ("$in", "$nin") and not isinstance(value, (list, tuple)):
        raise FilterError(f"the {f.operator.value!r} filter on {f.key!r} needs a list of values, got {value!r}")
    return {f.key: {op: list(value) if isinstance(value, tuple) else value}}


# ------------------------------------------------------------------------------------------------ retriever
class LlamaIndexRetriever(BaseRetriever):
    """Our `Retriever` inside LlamaIndex: FAISS cosine top-k, DuckDB metadata filters before the search, and the
    cross-encoder rerank, returning `ScoredNode`s with `TextNode(id_=<document id>, text, metadata)`."""

    def __init__(self, retriever: Retriever, k: int = 10, filters: MetadataFilters | dict | None = None,
                 rerank: bool = True, mode: str | None = None, **kwargs: Any):
        if not isinstance(retriever, Retriever):
            raise InputError(f"retriever must be a retriever.Retriever, got {type(retriever).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k = {k!r} must be a positive integer")
        self._retriever = retriever
        self._k = k
        self._filters = to_filters(filters)  # translated (and checked) once, up front
        self._rerank = bool(rerank)
        self._mode = check_mode(mode)
        super().__init__(**kwargs)

    @property
    def retriever(self) -> Retriever:
        return self._retriever

    def _nodes(self, hits) -> list[ScoredNode]:
        return [ScoredNode(node=TextNode(id_=h.id, text=h.text, metadata=dict(h.metadata)), score=h.score,
                           retrieval_score=h.retrieval_score, rerank_score=h.rerank_score,
                           lexical_score=h.lexical_score, found_by=h.found_by, rank=h.rank)
                for h in hits]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self._retriever.search(query_bundle.query_str, k=self._k, filters=self._filters, rerank=self._rerank,
                                      mode=self._mode)
        return self._nodes(hits)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # model inference runs in a worker thread, so the event loop keeps serving other requests
        return await asyncio.to_thread(self._retrieve, query_bundle)


# ------------------------------------------------------------------------------------------------- reranker
class CrossEncoderReranker(BaseNodePostprocessor):
    """Rerank any LlamaIndex nodes with a cross-encoder (ours by default), batched and length-sorted. The node's
    `score` becomes the cross-encoder's; its previous score is kept as `ScoredNode.retrieval_score`, never
    written into the node metadata (which reaches the prompt)."""

    top_n: int = Field(default=10, description="nodes kept after reranking")
    model: str = Field(default=DEFAULT_RERANK_MODEL, description="cross-encoder name, path or builtin: name")
    backend: str = Field(default="onnx", description="onnx (int8 onnxruntime, fast) or torch (sentence-transformers)")
    batch_size: int = Field(default=0, description="pairs per forward pass (0 = auto: 1 on onnx, 8 on torch)")
    max_length: int = Field(default=384, description="tokens per (query, passage) pair")
    metadata_mode: MetadataMode = Field(default=MetadataMode.NONE, description="what of the node is scored")
    _reranker: Reranker = PrivateAttr()

    def __init__(self, top_n: int = 10, model: str = DEFAULT_RERANK_MODEL, batch_size: int = 0,
                 max_length: int = 384, metadata_mode: MetadataMode = MetadataMode.NONE, backend: str = "onnx",
                 **kwargs: Any):
        for name, value, low in (("top_n", top_n, 1), ("batch_size", batch_size, 0), ("max_length", max_length, 16)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} = {value!r} must be an integer of at least {low}")
        super().__init__(top_n=top_n, model=model, backend=backend, batch_size=batch_size, max_length=max_length,
                         metadata_mode=metadata_mode, **kwargs)
        self._reranker = Reranker(model, backend=backend, batch_size=batch_size, max_length=max_length)

    @classmethod
    def class_name(cls) -> str:
        return "CrossEncoderReranker"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: Optional[QueryBundle] = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise InputError("CrossEncoderReranker needs the query: call postprocess_nodes(nodes, query_str=...)")
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=self.model))
        if not nodes:
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return []
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self.model,
                     EventPayload.QUERY_STR: query_bundle.query_str, EventPayload.TOP_K: self.top_n},
        ) as event:
            texts = [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
            scores = self._reranker.score(query_bundle.query_str, texts)
            order = sorted(range(len(nodes)), key=lambda i: (-float(scores[i]), i))[: self.top_n]
            out = []
            for rank, i in enumerate(order, 1):
                n = nodes[i]
                before = n.retrieval_score if isinstance(n, ScoredNode) else n.score
                out.append(ScoredNode(node=n.node, score=float(scores[i]), retrieval_score=before,
                                      rerank_score=float(scores[i]), rank=rank))
            event.on_end(payload={EventPayload.NODES: out})
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out


# --------------------------------------------------------------------------------------------------- ingest
def to_documents(items: Iterable[BaseNode]) -> list[Document]:
    """Our `Document`s from LlamaIndex `Document`s or nodes: the node id, its text (without metadata), and its
    metadata. A node without text is refused naming its id."""
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, BaseNode):
            raise InputError(f"items[{i}] is a {type(item).__name__}; pass llama_index Documents or nodes")
        text = item.get_content(metadata_mode=MetadataMode.NONE)
        out.append(Document(item.node_id, text, dict(item.metadata or {})))
    return out


def ingest_nodes(retriever: Retriever, items: Sequence[BaseNode] | Iterable[BaseNode], *,
                 show_progress: bool = False):
    """Upsert LlamaIndex `Document`s or nodes into `retriever` (ids and metadata preserved). Returns the
    UpsertReport; the batch is validated as a whole before anything is written."""
    return retriever.upsert(to_documents(items), show_progress=show_progress)
