"""The FAISS index as a derived structure: built from the vectors in DuckDB, or loaded from the snapshot the
manifest vouches for and brought up to date from the changelog; rebuilt when no snapshot can be trusted."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import runtime
from .index_plan import MIN_POINTS_PER_CENTROID, TRAINED_KINDS, IndexPlan, training_sample_size
from .manifest import Manifest, now
from .models import file_sha256
from .persistence import PREVIOUS, SNAPSHOT
from .store import Store
from .vector_index import VectorIndex

log = logging.getLogger("retriever")


def index_meta(plan: IndexPlan, requested: str, trained: dict | None, tuned: dict | None = None) -> dict:
    """The manifest's `index` record of a built index."""
    return {**plan.to_dict(), "requested": requested, "metric": "inner_product", "normalized": True,
            "trained": trained, "tuned": tuned}


def build_index(store: Store, dim: int, cfg, plan: IndexPlan, codebook=None) -> tuple[VectorIndex, dict | None]:
    """A new index of `plan` over every vector in DuckDB; IVF/PQ train first on a seeded random sample of them,
    or start from `codebook` (a `codebook.SharedCodebook`: a sharded index's one training, no training here).
    Returns (index, training record for the manifest or None). FAISS gets every core while it builds."""
    vids, vecs = store.vectors()
    if codebook is not None:
        t0 = time.perf_counter()
        index = VectorIndex.build(dim, plan, vids, vecs, codebook=codebook.index)
        log.info("built a %s index over %d vectors from the shared codebook in %.1f s", plan.kind, len(vids),
                 time.perf_counter() - t0)
        return index, codebook.record(len(vids))
    trained = None
    sample = None
    if plan.kind in TRAINED_KINDS:
        size = training_sample_size(cfg, plan, len(vids))
        pick = np.sort(np.random.default_rng(0).choice(len(vids), size, replace=False)) if size < len(vids) else None
        sample = vecs if pick is None else vecs[pick]
        trained = {"vectors": int(len(vids)), "sample": int(len(sample)), "at": now()}
    t0 = time.perf_counter()
    with runtime.all_cores():
        index = VectorIndex.build(dim, plan, vids, vecs, sample)
    if trained is not None:
        trained["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("built a %s index over %d vectors in %.1f s", plan.kind, len(vids), time.perf_counter() - t0)
    return index, trained


def load_index(gdir: Path, manifest: Manifest, store: Store, cfg, *, mmap: bool = False
               ) -> tuple[VectorIndex, str | None]:
    """The snapshot whose checksum the manifest vouches for, brought up to date from the changelog; or a
    rebuild from the vectors in DuckDB when no snapshot can be trusted. Returns (index, why repaired).

    HNSW cannot remove vectors: the ones FAISS holds but DuckDB no longer does are masked. With `mmap`
    (read-only opens) the snapshot is memory-mapped unless the changelog has to be replayed into it."""
    dim = manifest.dim
    plan = IndexPlan.from_dict(manifest.index)
    pruned = store.pruned_upto()
    problems = []
    for name in (SNAPSHOT, PREVIOUS):
        f = gdir / name
        if not f.is_file():
            problems.append(f"{name} is missing")
            continue
        sha = file_sha256(f)
        record = next((m for m in (manifest.snapshot, manifest.previous)
                       if m and m.sha256 == sha and m.seq >= pruned), None)
        if record is None:
            problems.append(f"{name} does not match the manifest's checksum")
            continue
        added, deleted = store.changes_since(record.seq)
        try:
            index = VectorIndex.read(f, dim, plan, mmap=mmap and not (len(added) or len(deleted)))
        except Exception as e:  # faiss raises RuntimeError on a damaged file
            problems.append(f"{name} is unreadable ({str(e).splitlines()[0]})")
            continue
        _replay(index, store, added, deleted)
        if np.array_equal(np.sort(index.ids()), store.vids()):
            why = None if name == SNAPSHOT else f"{SNAPSHOT} was not usable ({'; '.join(problems)}); used {PREVIOUS}"
            if why is None and (len(added) or len(deleted)):
                why = f"replayed {len(added)} additions and {len(deleted)} deletions logged after the last save"
            return index, why
        problems.append(f"{name} plus the changelog does not match the documents table")
    if plan.kind in TRAINED_KINDS and store.count() < MIN_POINTS_PER_CENTROID * plan.params["nlist"]:
        plan = IndexPlan("flat", {}, f"{store.count()} vectors are too few to retrain nlist = "
                         f"{plan.params['nlist']}; searching exactly until `retriever rebuild`", pending=plan.kind)
    index, _ = build_index(store, dim, cfg, plan)
    return index, f"rebuilt the FAISS index from the {len(index)} vectors in DuckDB ({'; '.join(problems)})"


def _replay(index: VectorIndex, store: Store, added: np.ndarray, deleted: np.ndarray) -> None:
    """Apply the changelog after a snapshot's seq (HNSW masks what DuckDB no longer holds)."""
    if len(deleted):
        index.remove(deleted)
    if len(added):
        have = set(index.all_ids().tolist())
        vids, vecs = store.vectors(v for v in added.tolist() if v not in have)
        index.add(vids, vecs)
    if index.kind == "hnsw":
        gone = np.setdiff1d(index.all_ids(), store.vids())
        if len(gone):
            index.mask(gone)
