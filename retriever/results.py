"""Small value types returned by the Retriever."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .documents import document_id


@dataclass(frozen=True)
class Hit:
    """One search result. `score` is the final score (the rerank score when reranked, else the cosine);
    `retrieval_score` is always the cosine in [-1, 1]; `rerank_score` is the cross-encoder's, or None."""

    id: str
    text: str
    metadata: dict[str, Any]
    rank: int
    score: float
    retrieval_score: float
    rerank_score: float | None = None

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
