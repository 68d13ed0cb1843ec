"""FAISS: the derived, rebuildable acceleration structure. Inner product over unit vectors = cosine.

Vector ids (int64 `vid`s) are DuckDB's. ``flat`` and ``hnsw`` hold them through ``IndexIDMap2``; the IVF kinds
hold them natively (with a hashtable direct map, so vectors can be removed and reconstructed by id).
HNSW cannot remove vectors: a removed vid is *masked* (excluded by an ID selector in every search) until a
rebuild compacts the graph. vids are never reused, so a masked vid can never come back.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import faiss
import numpy as np

from . import runtime
from .errors import InputError
from .index_plan import KINDS, TRAINED_KINDS, IndexPlan, default_nprobe
from .vectors import as_unit_vectors

DEFAULT_EF_SEARCH = 64
DEFAULT_RESCORE = 16


def _new_faiss(dim: int, plan: IndexPlan) -> faiss.Index:
    p = plan.params
    ip = faiss.METRIC_INNER_PRODUCT
    if plan.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if plan.kind == "hnsw":
        h = faiss.IndexHNSWFlat(dim, int(p["m"]), ip)
        h.hnsw.efConstruction = int(p["ef_construction"])
        return faiss.IndexIDMap2(h)
    if plan.kind == "ivf_flat":
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(p["nlist"]), ip)
    if plan.kind == "ivf_pq":
        ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, int(p["nlist"]), int(p["m"]), int(p["nbits"]), ip)
        if p.get("opq"):
            return faiss.IndexPreTransform(faiss.OPQMatrix(dim, int(p["m"])), ivf)
        return ivf
    raise InputError(f"index kind {plan.kind!r} is not supported; allowed: {', '.join(KINDS)}")


def kind_of(index: faiss.Index) -> str:
    """The kind of a FAISS index read from disk (so a `.prev` of another kind still loads correctly)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return "ivf_pq" if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ) else "ivf_flat"
    raise InputError(f"unsupported FAISS index type {type(index).__name__}; run `retriever rebuild`")


def allowed_selector(allowed: np.ndarray):
    """(FAISS selector, its bitmap) for a set of vids: one bit per vid up to the largest. Built in about a
    millisecond for 200k of 1M vids, where an IDSelectorBatch (a hash set) took 60-100 ms
    (benchmarks/bench_filters.py); the caller keeps the bitmap alive while the selector is used."""
    vids = np.asarray(allowed, dtype=np.int64)
    bits = np.zeros(int(vids.max()) + 1 if len(vids) else 1, dtype=bool)
    bits[vids] = True
    bitmap = np.packbits(bits, bitorder="little")
    return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap


class VectorIndex:
    """One FAISS index of a kind in `KINDS`, addressed by vid."""

    def __init__(self, dim: int, plan: IndexPlan | str = "flat", index: faiss.Index | None = None):
        if isinstance(plan, str):
            plan = IndexPlan(plan)
        self.dim = dim
        self.plan = plan
        self.index = index if index is not None else _new_faiss(dim, plan)
        self.kind = kind_of(self.index)
        if self.index.d != dim:
            raise InputError(f"FAISS index has dimension {self.index.d}, expected {dim}")
        if self.index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise InputError("FAISS index does not use inner product; rebuild it with `retriever rebuild`")
        self.ivf = faiss.extract_index_ivf(self.index) if self.kind in TRAINED_KINDS else None
        if self.ivf is not None and index is None:
            self.ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        self.mmapped = False
        self._masked = np.zeros(0, np.int64)
        self._mask_sel = None
        # search-time settings (0/None = default); the Retriever sets them from config or the tuned values
        self.nprobe = 0
        self.ef_search = 0

    def __len__(self) -> int:
        """Live vectors (masked ones excluded)."""
        return int(self.index.ntotal) - len(self._masked)

    @property
    def lossy(self) -> bool:
        """True when scores are approximate (PQ codes): the caller re-scores from the exact vectors."""
        return self.kind == "ivf_pq"

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def masked(self) -> int:
        return len(self._masked)

    # ------------------------------------------------------------------------------------------ writes
    def train(self, vectors) -> None:
        x = as_unit_vectors(vectors, self.dim, what="training vectors")
        self.index.train(x)
        if self.ivf is not None:
            self.ivf.set_direct_map_type(faiss.DirectMap.Hashtable)

    def add(self, vids: np.ndarray, vectors) -> None:
        vids = np.ascontiguousarray(vids, dtype=np.int64)
        x = as_unit_vectors(vectors, self.dim)
        if len(vids) != len(x):
            raise InputError(f"{len(vids)} ids for {len(x)} vectors; give one id per vector")
        if not len(x):
            return
        self._check_writable()
        if not self.is_trained:
            raise InputError(f"the {self.kind} index is not trained yet; train it on a sample before adding vectors")
        self.index.add_with_ids(x, vids)

    def remove(self, vids) -> int:
        """Remove vectors by vid; HNSW masks them instead. Returns how many were removed or masked."""
        vids = np.ascontiguousarray(vids, dtype=np.int64)
        if not len(vids):
            return 0
        self._check_writable()
        if self.kind == "hnsw":
            present = np.intersect1d(vids, self.all_ids())
            new = np.setdiff1d(present, self._masked)
            if len(new):
                self.mask(new)
            return len(new)
        if self.ivf is not None:
            return int(self.index.remove_ids(faiss.IDSelectorArray(vids)))  # the hashtable needs an array
        return int(self.index.remove_ids(faiss.IDSelectorBatch(vids)))

    def _check_writable(self) -> None:
        if self.mmapped:  # FAISS aborts the process on a write to a mapped index
            raise InputError("this index is memory-mapped (read-only); open it for writing to change it")

    def mask(self, vids: np.ndarray) -> None:
        """Exclude these vids from every search (HNSW deletes)."""
        if self.kind != "hnsw":
            raise InputError(f"only hnsw indexes mask deleted vectors; a {self.kind} index removes them")
        self._masked = np.union1d(self._masked, np.asarray(vids, np.int64))
        self._mask_sel = None
        if len(self._masked):
            batch = faiss.IDSelectorBatch(self._masked)
            self._mask_sel = (faiss.IDSelectorNot(batch), batch)  # keep the inner selector alive

    # ----------------------------------------------------------------------------------------- queries
    def _params(self, k: int, sel, nprobe: int | None, ef_search: int | None):
        if self.kind == "hnsw":
            ef = max(k, ef_search or self.ef_search or DEFAULT_EF_SEARCH)
            return faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
        if self.ivf is not None:
            nlist = self.ivf.nlist
            probe = min(nlist, nprobe or self.nprobe or default_nprobe(nlist))
            p = faiss.SearchParametersIVF(sel=sel, nprobe=probe)
            if isinstance(self.index, faiss.IndexPreTransform):
                return faiss.SearchParametersPreTransform(index_params=p)
            return p
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def effective(self, k: int = 10) -> dict:
        """The search-time settings a query with this k uses."""
        if self.kind == "hnsw":
            return {"ef_search": max(k, self.ef_search or DEFAULT_EF_SEARCH)}
        if self.ivf is not None:
            return {"nprobe": min(self.ivf.nlist, self.nprobe or default_nprobe(self.ivf.nlist))}
        return {}

    def search(self, queries, k: int, allowed: np.ndarray | None = None, *, nprobe: int | None = None,
               ef_search: int | None = None, unit: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product. `allowed` restricts the search to those vids (FAISS IDSelector); masked
        vids are never returned. Returns (scores, vids), each (nq, k); missing slots have vid -1. `unit=True`:
        the queries are already unit float32 rows of this dimension (an embedder's or the store's), so they are
        not checked and normalized again."""
        q = queries if unit else as_unit_vectors(queries, self.dim, what="query vectors")
        k = max(1, min(int(k), max(1, int(self.index.ntotal))))
        bitmap = None  # kept alive for the search: the selector points into it
        if allowed is not None:  # allowed vids come from DuckDB: never masked ones
            sel, bitmap = allowed_selector(allowed)
        else:
            sel = self._mask_sel[0] if self._mask_sel else None
        params = self._params(k, sel, nprobe, ef_search)
        runtime.prepare_faiss_thread()  # [runtime] faiss_threads in this thread too (OpenMP's count is per thread)
        try:
            return self.index.search(q, k) if params is None else self.index.search(q, k, params=params)
        finally:
            del bitmap  # the selector reads it until the search returns

    def all_ids(self) -> np.ndarray:
        """Every vid FAISS holds, masked ones included."""
        if self.ivf is not None:
            inv = self.ivf.invlists
            parts = [faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
                     for i in range(self.ivf.nlist) if inv.list_size(i)]
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def ids(self) -> np.ndarray:
        """Live vids (sorted when masked ones are removed)."""
        ids = self.all_ids()
        return np.setdiff1d(ids, self._masked) if len(self._masked) else ids

    def reconstruct(self, vid: int) -> np.ndarray:
        """The stored vector (decoded from its PQ code for ivf_pq, so only approximately the original)."""
        return self.index.reconstruct(int(vid))

    def reconstruct_many(self, vids) -> np.ndarray:
        """The stored vectors of `vids`, (n, dim) float32, in one call (decoded approximations for ivf_pq)."""
        return self.index.reconstruct_batch(np.ascontiguousarray(vids, dtype=np.int64))

    def nbytes(self) -> int:
        """Size of the serialized index (what it takes in RAM when read without mmap)."""
        return int(faiss.serialize_index(self.index).nbytes)

    def describe(self) -> dict:
        out = {"kind": self.kind, "vectors": len(self), "masked": self.masked, "trained": self.is_trained,
               "mmapped": self.mmapped}
        if self.ivf is not None:
            out["nlist"] = int(self.ivf.nlist)
        out.update(self.effective())
        return out

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
    def read(cls, path: Path, dim: int, plan: IndexPlan | str = "flat", *, mmap: bool = False) -> "VectorIndex":
        """Read a snapshot. With `mmap` the vectors/lists stay in the page cache, mapped from the file (read-only:
        the index cannot take writes)."""
        if not mmap:
            return cls(dim, plan, faiss.read_index(str(path)))
        # IVF lists map through IO_FLAG_MMAP; flat and HNSW vectors through IO_FLAG_MMAP_IFC. The manifest's
        # kind says which, but a .prev may be another kind, so the other is tried second.
        kind = plan if isinstance(plan, str) else plan.kind
        ivf_first = kind in TRAINED_KINDS
        attempts = [faiss.IO_FLAG_MMAP, faiss.IO_FLAG_MMAP_IFC] if ivf_first else [faiss.IO_FLAG_MMAP_IFC, faiss.IO_FLAG_MMAP]
        for flags in attempts:
            try:
                index = faiss.read_index(str(path), flags | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:
                continue
            vi = cls(dim, plan, index)
            vi.mmapped = True
            return vi
        return cls(dim, plan, faiss.read_index(str(path)))

    @classmethod
    def build(cls, dim: int, plan: IndexPlan | str, vids: np.ndarray, vectors: np.ndarray,
              train_vectors: np.ndarray | None = None, *, codebook: "VectorIndex | None" = None) -> "VectorIndex":
        """A new index over `vectors`; IVF kinds train first on `train_vectors` (default: all of them), or start
        from `codebook`, an index trained elsewhere (a sharded index's shared one: no training here)."""
        vi = codebook.empty_copy() if codebook is not None else cls(dim, plan)
        if not vi.is_trained:
            vi.train(vectors if train_vectors is None else train_vectors)
        vi.add(vids, vectors)
        return vi

    # ------------------------------------------------------------------------------------------ codebook
    def empty_copy(self) -> "VectorIndex":
        """The same kind and training (IVF centroids, PQ codebooks, OPQ rotation) holding no vectors (of an
        index in RAM: FAISS cannot copy memory-mapped lists)."""
        if self.mmapped:
            raise InputError("this index is memory-mapped (read-only): open the index for writing to copy its training")
        index = faiss.clone_index(self.index)
        index.reset()
        vi = VectorIndex(self.dim, self.plan, index)
        if vi.ivf is not None:
            vi.ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return vi

    def codebook_sha256(self) -> str | None:
        """sha256 of what training made (the empty trained index, in FAISS's own format); None for kinds that
        do not train. Two indexes with the same digest assign every vector to the same list and code."""
        if self.ivf is None or not self.is_trained:
            return None
        h = hashlib.sha256(self.kind.encode())
        h.update(self.ivf.quantizer.reconstruct_n(0, self.ivf.nlist).tobytes())  # the coarse centroids
        ivfpq = faiss.downcast_index(self.ivf)
        if isinstance(ivfpq, faiss.IndexIVFPQ):
            h.update(faiss.vector_to_array(ivfpq.pq.centroids).tobytes())
        if isinstance(self.index, faiss.IndexPreTransform):  # the OPQ rotation
            h.update(faiss.vector_to_array(faiss.downcast_VectorTransform(self.index.chain.at(0)).A).tobytes())
        return h.hexdigest()
