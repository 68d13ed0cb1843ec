"""Candidate search: the n nearest stored vectors per query, by exact cosine, on every index kind.

FAISS answers first (HNSW, IVF, PQ); PQ candidates are re-scored with the exact vectors from DuckDB. A search that
comes back with fewer than min(n, matches) results (a selective filter on HNSW/IVF, tiny IVF lists, many masked
HNSW vectors) is widened in RAM, then completed by an exact scan, and counted in `fallbacks`. A filter that allows
few enough vectors is answered by an exact scan of just those. The lexical arm and shards go beside this.
"""
from __future__ import annotations

import logging

import numpy as np

from .knn import exact_topk

log = logging.getLogger("retriever")


def _empty(nq: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)


def _replace_rows(scores: np.ndarray, vids: np.ndarray, rows: np.ndarray, new_scores: np.ndarray,
                  new_vids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, vids) with `rows` replaced by a second search's results (widened so both fit; empty slots -1)."""
    width = max(scores.shape[1], new_vids.shape[1])
    scores = np.pad(scores, ((0, 0), (0, width - scores.shape[1])), constant_values=-np.inf)
    vids = np.pad(vids, ((0, 0), (0, width - vids.shape[1])), constant_values=-1)
    scores[rows], vids[rows] = -np.inf, -1
    scores[rows, :new_vids.shape[1]], vids[rows, :new_vids.shape[1]] = new_scores, new_vids
    return scores, vids


class CandidateSearch:
    """Over the generation a Retriever has open (its `store`, `index`, `config`, `rescore` and `rw` lock, read at
    every call, so a rebuild or re-embed is seen at once)."""

    def __init__(self, generation):
        self._gen = generation
        self.fallbacks = 0  # searches that came back short and were completed by an exact scan

    def search(self, q: np.ndarray, n: int, allowed: np.ndarray | None = None, *, nprobe: int | None = None,
               ef_search: int | None = None, rescore: int | None = None, fallback: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, vids) of the n nearest per query; vid -1 marks an empty slot. `q` holds unit float32 rows (an
        embedder's output or stored vectors: they are not normalized again). `allowed` restricts the search to
        those vids. `fallback=False` returns what the index found, short or not (tuning measures that)."""
        gen = self._gen
        if allowed is not None and len(allowed) <= gen.config.index.exact_filter_threshold:
            return self.exact(q, n, allowed)
        with gen.rw.read():
            index = gen.index
            live = len(index)
            if live == 0:
                return _empty(len(q))
            want = n * (rescore or gen.rescore) if index.lossy else n
            scores, vids = index.search(q, want, allowed, nprobe=nprobe, ef_search=ef_search, unit=True)
        if index.lossy:
            scores, vids = self._rescored(q, vids, n)
        if not fallback:
            return scores, vids
        expected = min(n, live if allowed is None else len(allowed))
        short = np.flatnonzero((vids >= 0).sum(axis=1) < expected)
        if len(short) and allowed is None and index.kind != "flat":
            # unfiltered and short (tiny IVF lists, or many masked HNSW vectors): widen the search in RAM
            # before falling back to a scan of every vector in DuckDB
            with gen.rw.read():
                ws, wv = index.search(q[short], want, None, nprobe=1 << 30, unit=True,
                                      ef_search=min(max(int(index.index.ntotal), 1), max(16 * want, 1024)))
            if index.lossy:
                ws, wv = self._rescored(q[short], wv, n)
            scores, vids = _replace_rows(scores, vids, short, ws, wv)
            short = np.flatnonzero((vids >= 0).sum(axis=1) < expected)
        if len(short):
            self.fallbacks += len(short)
            log.debug("%d of %d searches came back short; completing them exactly", len(short), len(q))
            scores, vids = _replace_rows(scores, vids, short, *self.exact(q[short], n, allowed))
        return scores, vids

    def exact(self, q: np.ndarray, n: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-n by cosine over the stored vectors (all of them, or the allowed vids): the allowed ones from
        the index in RAM when it holds them exactly (flat, HNSW, IVF-flat: DuckDB's vectors as the index was given
        them, unit length again), else from DuckDB."""
        if allowed is not None and not len(allowed):
            return _empty(len(q))
        index = self._gen.index
        if allowed is not None and not index.lossy:
            # the index holds the exact vectors in RAM: no DuckDB scan (at 1M rows, reading 1,739 vectors from
            # DuckDB took ~55 ms, a semi-join scanning the vector column; FAISS gives them in ~1 ms)
            vids = np.sort(np.asarray(allowed, np.int64))
            try:
                return exact_topk(q, index.reconstruct_many(vids), vids, n)
            except RuntimeError:  # an id FAISS does not hold (it lags DuckDB): the source of truth's vectors
                pass
        vids, vecs = self._gen.store.vectors(allowed)
        return exact_topk(q, vecs, vids, n)

    def _rescored(self, q: np.ndarray, vids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Re-rank approximate (PQ) candidates by their exact cosine, from the vectors in DuckDB."""
        have, vecs = self._gen.store.vectors(np.unique(vids[vids >= 0]))
        pos = {int(v): i for i, v in enumerate(have)}
        out_s = np.full((len(q), n), -np.inf, np.float32)
        out_v = np.full((len(q), n), -1, np.int64)
        for r, row in enumerate(vids):
            cand = [v for v in dict.fromkeys(row.tolist()) if v in pos]
            if cand:
                s, v = exact_topk(q[r:r + 1], vecs[[pos[c] for c in cand]], np.asarray(cand, np.int64), n)
                out_s[r, :s.shape[1]], out_v[r, :v.shape[1]] = s[0], v[0]
        return out_s, out_v
