"""One IVF/PQ training for every shard of a sharded index.

A sharded index plans its FAISS index on the whole corpus: the kind and `nlist` the unsharded index of the same
documents would get. When that kind trains (ivf_flat, ivf_pq), it is trained once, on a sample drawn across the
shards (each gives a share in proportion to its vectors, seeded), and every shard builds its index from that one
codebook. So every shard puts a vector in the list the unsharded index would, a query probes the same lists on
every shard, and the merged IVF-flat results are those of one IVF-flat index over all the documents with that
codebook; shards too small to train alone still get the kind the corpus asks for. Shards keep a flat index until
then (`Generation.shared_training`).

When it happens: at a writer's save once the corpus supports the kind (as an unsharded index builds it at its first
save that can), again when the shards' codebooks differ (a shard repaired alone from a damaged snapshot, or after a
re-embed), and at every `rebuild`. Each shard's manifest records the shared training and its digest, so `verify`
and `info` can tell. Serving on Ray Serve writes each shard in its own process: there a shard trains alone at its
save until a `retriever rebuild` of the whole index shares one codebook again.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from . import runtime
from .index_plan import TRAINED_KINDS, IndexPlan, plan_index, training_sample_size
from .manifest import now
from .vector_index import VectorIndex

log = logging.getLogger("retriever")


@dataclass(frozen=True)
class SharedCodebook:
    """A trained, empty index of `plan` (`index`), and where its training sample came from."""
    plan: IndexPlan
    index: VectorIndex
    corpus_vectors: int
    samples: tuple[int, ...]  # vectors each shard gave, in shard order
    seconds: float
    at: str
    sha256: str

    def record(self, vectors: int) -> dict:
        """A shard's manifest `trained` record (`vectors`: the shard's own, for the retrain warning)."""
        return {"vectors": int(vectors), "sample": int(sum(self.samples)), "at": self.at, "seconds": self.seconds,
                "shared": {"shards": len(self.samples), "corpus_vectors": self.corpus_vectors,
                           "samples": list(self.samples), "sha256": self.sha256}}


def shares(counts: list[int], size: int) -> list[int]:
    """`size` sample vectors split over shards holding `counts` vectors, in proportion (largest remainders
    first, ties to the lower shard), none more than the shard holds."""
    total = sum(counts)
    size = min(size, total)
    if not total:
        return [0] * len(counts)
    exact = [size * c / total for c in counts]
    out = [int(x) for x in exact]
    for i in sorted(range(len(counts)), key=lambda i: (-(exact[i] - out[i]), i))[: size - sum(out)]:
        out[i] += 1
    return [min(o, c) for o, c in zip(out, counts)]


def shared_plan(index_cfg, dim: int, counts: list[int], *, strict: bool) -> IndexPlan | None:
    """The plan of the whole corpus when its kind trains (else None: each shard plans for itself)."""
    plan = plan_index(index_cfg, dim, sum(counts), strict=strict)
    return plan if plan.kind in TRAINED_KINDS else None


def train(stores, counts: list[int], dim: int, index_cfg, plan: IndexPlan) -> SharedCodebook:
    """Train `plan` once on a seeded sample drawn across `stores` (one per shard, in shard order, holding `counts`
    vectors)."""
    take = shares(counts, training_sample_size(index_cfg, plan, sum(counts)))
    parts = []
    for i, (store, n) in enumerate(zip(stores, take)):
        if not n:
            continue
        vids = store.vids()
        pick = vids if n >= len(vids) else np.sort(np.random.default_rng(i).choice(vids, n, replace=False))
        parts.append(store.vectors(pick)[1])
    t0 = time.perf_counter()
    index = VectorIndex(dim, plan)
    with runtime.all_cores():
        index.train(np.concatenate(parts))
    seconds = round(time.perf_counter() - t0, 3)
    log.info("trained one %s codebook for %d shards on %d vectors in %.1f s", plan.kind, len(stores), sum(take),
             seconds)
    return SharedCodebook(plan, index, sum(counts), tuple(take), seconds, now(), index.codebook_sha256())


def digests(shards) -> list[str | None]:
    """Each shard's codebook digest, computed from its index (None: its index does not train)."""
    return [s.vector_index.codebook_sha256() for s in shards]


def recorded(shard) -> str | None:
    """The digest of the shared codebook a shard's manifest says it was built from (None: trained alone, or not
    trained); cheap, for every save."""
    shared = ((shard.manifest.index or {}).get("trained") or {}).get("shared") or {}
    return shared.get("sha256")


def share_when_due(shards, config) -> SharedCodebook | None:
    """Train one codebook and give it to every shard when the corpus's plan trains and a shard still waits with a
    flat index, or the shards' codebooks differ. Returns it, or None when nothing was due."""
    first, counts = shards[0], [s.store.count() for s in shards]
    plan = shared_plan(config.index, first.vector_index.dim, counts, strict=False)
    if plan is None:
        return None
    kinds = [s.vector_index.kind for s in shards]
    trained = {recorded(s) for k, s in zip(kinds, shards) if k in TRAINED_KINDS}
    if not ("flat" in kinds or len(trained) > 1 or None in trained):
        return None
    codebook = train([s.store for s in shards], counts, first.vector_index.dim, config.index, plan)
    for s in shards:
        s.adopt_codebook(codebook)
    return codebook


def status(shards, *, computed: bool = False) -> dict:
    """What `info` and `verify` say of the shards' training (nothing when no shard's index trains): each shard's
    codebook digest (first 12 hex; None for a shard whose index does not train, or trained alone, as read from the
    manifest) and whether every shard was built from the same shared codebook. From the
    manifests (cheap: `info` and the stats route ask), or `computed` from the indexes themselves (`verify`: a
    digest its manifest does not record as the shared one is marked "(alone)")."""
    shared = [recorded(s) for s in shards]
    if computed:
        actual = digests(shards)
        labels = [None if a is None else a[:12] if a == r else f"{a[:12]} (alone)" for a, r in zip(actual, shared)]
        shared = [r if r is not None and r == a else None for r, a in zip(shared, actual)]
    else:
        labels = [r[:12] if r else None for r in shared]
    if not any(labels) and not any(s.vector_index.kind in TRAINED_KINDS for s in shards):
        return {}  # nothing trains (flat, HNSW): nothing to say
    return {"codebooks": labels, "shared_codebook": bool(shared) and None not in shared and len(set(shared)) == 1}


def for_rebuild(shards, config, index: dict | None) -> SharedCodebook | None:
    """The codebook a `rebuild` of every shard uses (the [index] settings changed by `index`, checked on the whole
    corpus before any work), or None when the corpus's kind does not train or the shards are read-only."""
    if shards[0].read_only:
        return None
    cfg = (config.replace(index=index) if index else config).index
    dim = shards[0].vector_index.dim
    counts = [s.store.count() for s in shards]
    plan = shared_plan(cfg, dim, counts, strict=True)
    return None if plan is None else train([s.store for s in shards], counts, dim, cfg, plan)
