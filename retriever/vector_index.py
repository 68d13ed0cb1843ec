"""FAISS: the derived, rebuildable acceleration structure. Inner product over unit vectors = cosine.

Vector ids (int64 `vid`s) are DuckDB's; FAISS holds them through ``IndexIDMap2``.
"""
from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from .errors import InputError
from .vectors import as_unit_vectors

KINDS = ("flat",)


class VectorIndex:
    def __init__(self, dim: int, kind: str = "flat", index: faiss.Index | None = None):
        if kind not in KINDS:
            raise InputError(f"index.kind = {kind!r} is not supported; allowed: {', '.join(KINDS)}")
        self.dim = dim
        self.kind = kind
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if self.index.d != dim:
            raise InputError(f"FAISS index has dimension {self.index.d}, expected {dim}")
        if self.index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise InputError("FAISS index does not use inner product; rebuild it with `retriever rebuild`")

    def __len__(self) -> int:
        return int(self.index.ntotal)

    # ------------------------------------------------------------------------------------------ writes
    def add(self, vids: np.ndarray, vectors) -> None:
        vids = np.ascontiguousarray(vids, dtype=np.int64)
        x = as_unit_vectors(vectors, self.dim)
        if len(vids) != len(x):
            raise InputError(f"{len(vids)} ids for {len(x)} vectors; give one id per vector")
        if len(x):
            self.index.add_with_ids(x, vids)

    def remove(self, vids) -> int:
        vids = np.ascontiguousarray(vids, dtype=np.int64)
        if not len(vids):
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(vids)))

    # ----------------------------------------------------------------------------------------- queries
    def search(self, queries, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product. `allowed` restricts the search to those vids (FAISS IDSelector).

        Returns (scores, vids), each (nq, k); missing slots have vid -1.
        """
        q = as_unit_vectors(queries, self.dim, what="query vectors")
        k = max(1, min(int(k), max(1, len(self))))
        if allowed is None:
            return self.index.search(q, k)
        allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        return self.index.search(q, k, params=params)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def reconstruct(self, vid: int) -> np.ndarray:
        return self.index.reconstruct(int(vid))

    # ----------------------------------------------------------------------------------------- storage
    def write(self, path: Path) -> None:
        """Write to `path` and fsync it (the caller renames it into place)."""
        faiss.write_index(self.index, str(path))
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @classmethod
    def read(cls, path: Path, dim: int, kind: str) -> "VectorIndex":
        return cls(dim, kind, faiss.read_index(str(path)))

    @classmethod
    def build(cls, dim: int, kind: str, vids: np.ndarray, vectors: np.ndarray) -> "VectorIndex":
        vi = cls(dim, kind)
        vi.add(vids, vectors)
        return vi
