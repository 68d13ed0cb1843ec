"""The embedder and cross-encoder a Retriever uses, and the one check that the embedder still gives the vectors
the index was built with (run once, on first use, against the fingerprint in the manifest)."""
from __future__ import annotations

from .config import RetrieverConfig
from .embedding import Embedder
from .errors import IndexMismatchError
from .rerank import Reranker


def check_weights(root, stored: dict, name: str, dim: int, fingerprint: dict) -> None:
    """Raise unless an embedder of dimension `dim` with `fingerprint` gives the vectors the index at `root` was
    built with (`stored`: its manifest's embedder entry). Also run on fingerprints sent by Ray ingest actors."""
    if dim != stored["dim"] or not Embedder.same_weights(fingerprint, stored["fingerprint"]):
        raise IndexMismatchError(
            f"the model {name!r} now gives different embeddings than when {root} was built (dimension {dim} vs "
            f"{stored['dim']}, or other weights under the same name); restore the original model, or re-embed: "
            f"`retriever reembed {root} --model {name}`"
        )


class ModelsInUse:
    def __init__(self, config: RetrieverConfig, embedder: Embedder | None = None):
        self.embedder = embedder or Embedder.from_config(config.embedding)
        self.reranker = Reranker.from_config(config)
        self.checked = embedder is not None  # an embedder that just made the index's fingerprint needs no check

    def checked_embedder(self, generation) -> Embedder:
        """The embedder, checked once against the fingerprint `generation`'s index was built with."""
        if not self.checked:
            e = self.embedder
            check_weights(generation.root, generation.manifest.embedder, e.name, e.dim, e.fingerprint())
            self.checked = True
        return self.embedder

    def adopt(self, other: "ModelsInUse", config: RetrieverConfig, other_config: RetrieverConfig) -> None:
        """Share `other`'s loaded models where the settings match (no second load of the same weights)."""
        if other_config.embedding == config.embedding:
            self.embedder = other.embedder
        how = ("batch_size", "thread_spinning", "pair_workers")  # how it runs: a loaded session keeps its threads
        if (other.reranker.key, *(getattr(other_config.rerank, a) for a in how)) == \
                (self.reranker.key, *(getattr(config.rerank, a) for a in how)):
            self.reranker = other.reranker
