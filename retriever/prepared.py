"""Documents made ready to write: chunked by the embedder's tokenizer and embedded, not yet stored.

`Retriever.upsert` is `prepare` then `Retriever.write_prepared`. The two halves are apart so that a sharded index
embeds a batch once and writes each shard's rows (vectors from one encode call, exactly those of an unsharded
upsert of the same batch: the int8 model's vectors depend on their batchmates), and so that distributed ingest
embeds on Ray actors and writes in the driver.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .documents import Document, chunk_documents, document_id


@dataclass
class Prepared:
    """`keys`: the records' ids (what replaces what); `parents`: the document each record belongs to (its own
    id, or the `parent_id` in its metadata), the routing key of a sharded index; `rows`: (id, parent id or None,
    text, metadata) per chunk; `vectors`: one unit float32 row per chunk."""
    keys: list[str]
    parents: list[str]
    rows: list[tuple]
    vectors: np.ndarray

    def select(self, documents: set[str]) -> "Prepared":
        """The part of the batch that belongs to `documents` (one shard's share)."""
        idx = [i for i, row in enumerate(self.rows) if (row[1] or row[0]) in documents]
        keep = [i for i, p in enumerate(self.parents) if p in documents]
        return Prepared([self.keys[i] for i in keep], [self.parents[i] for i in keep], [self.rows[i] for i in idx],
                        self.vectors[idx] if idx else self.vectors[:0])

    @property
    def chunked(self) -> int:
        return len({row[1] for row in self.rows if row[1] is not None})


def prepare(docs: list[Document], embedder, chunking, *, show_progress: bool = False) -> Prepared:
    """Chunk validated documents to the model's length and embed every chunk in one encode call."""
    limit, wanted = embedder.max_content_tokens(), chunking.max_tokens
    max_tokens = min(wanted, limit) if wanted else limit
    overlap = min(chunking.overlap, max_tokens // 2)
    pieces = chunk_documents(docs, embedder.token_spans, max_tokens=max_tokens, overlap=overlap)
    vectors = embedder.encode([p.text for p in pieces], show_progress_bar=show_progress)
    parents = [document_id(p.id, p.metadata) for p in pieces]
    rows = [(p.id, parent if parent != p.id else None, p.text, p.metadata) for p, parent in zip(pieces, parents)]
    return Prepared([d.id for d in docs], [document_id(d.id, d.metadata) for d in docs], rows, vectors)
