"""rag-retriever: normalized-cosine FAISS top-k, DuckDB metadata join, cross-encoder rerank, persisted safely.

    from retriever import Retriever, RetrieverConfig, Document
    with Retriever.create("my-index") as r:
        r.upsert([Document(id="a", text="...", metadata={"lang": "en"})])
        hits = r.search("question", k=5, filters={"lang": "en"})
"""
from .backup import BackupReport, restore_backup, verify_backup
from .config import RetrieverConfig
from .documents import Document
from .errors import (
    ConfigError, FilterError, IndexCorruptError, IndexMismatchError, InputError, RetrieverError, WriterBusy,
)
from .results import DeleteReport, Hit, UpsertReport, VerifyReport
from .retriever import Retriever

__all__ = [
    "Retriever",
    "RetrieverConfig",
    "Document",
    "Hit",
    "UpsertReport",
    "DeleteReport",
    "VerifyReport",
    "BackupReport",
    "verify_backup",
    "restore_backup",
    "RetrieverError",
    "InputError",
    "ConfigError",
    "FilterError",
    "IndexMismatchError",
    "IndexCorruptError",
    "WriterBusy",
]
__version__ = "0.1.0"
