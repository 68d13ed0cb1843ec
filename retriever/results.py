"""Small value types returned by the Retriever."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .documents import document_id


@dataclass(frozen=True)
class Passage:
    """A stored chunk that matched, inside a document hit: its row id, text and the scores it got (the cosine,
    BM25, and the cross-encoder's when it was the passage reranked; None where that arm did not score it)."""

    id: str
    text: str
    retrieval_score: float | None
    lexical_score: float | None = None
    rerank_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Hit:
    """One search result: a document (`[retrieval] results = "documents"`, the default) or a chunk ("chunks").

    `score` is the final score, the one the hits are ordered by: the cosine of a dense search; the BM25 score of a
    lexical one; the fused score of a hybrid one; when reranked, the cross-encoder's score ("chunks", or
    `[rerank] fusion = "cross_encoder"`) or its rank fused with the retrieval rank (`fusion = "rrf"`).
    `retrieval_score` is the best cosine in [-1, 1] (None in lexical mode, where nothing is embedded);
    `lexical_score` the best BM25 score (None when the lexical arm did not find it); `rerank_score` the
    cross-encoder's, or None. A document's `text` is its best passage and `passages` lists the matched chunks;
    `found_by` names the arms that found it ("dense", "lexical")."""

    id: str
    text: str
    metadata: dict[str, Any]
    rank: int
    score: float
    retrieval_score: float | None
    rerank_score: float | None = None
    lexical_score: float | None = None
    passages: tuple[Passage, ...] = ()
    found_by: tuple[str, ...] = ()

    @property
    def document_id(self) -> str:
        """The document this hit belongs to: its own id, or its parent's for a chunk."""
        return document_id(self.id, self.metadata)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UpsertReport:
    documents: int          # records given
    added: int              # ids that were new
    updated: int            # ids that replaced an existing document
    vectors: int            # rows written (chunks count separately)
    chunked: int            # documents split into chunks
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeleteReport:
    deleted: int
    missing: tuple[str, ...] = ()
    vectors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    problems: tuple[str, ...]
    checks: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # maintenance that is due (retrain, compact), not damage

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
