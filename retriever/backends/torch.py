"""The "torch" backends: sentence-transformers SentenceTransformer and CrossEncoder (the reference; any model)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

from .. import runtime
from ..models import resolve_embedder, resolve_reranker
from .base import CrossEncoderBackend, EncoderBackend, require

require("torch", "torch", "sentence_transformers")


@contextmanager
def _inference() -> Iterator[None]:
    """This thread's torch thread count (OpenMP's is per thread), and no autograd."""
    import torch

    runtime.prepare_thread()
    with torch.inference_mode():
        yield


class TorchEncoder(EncoderBackend):
    name = "torch"
    uses_torch = True
    resolve = staticmethod(resolve_embedder)

    @classmethod
    def load(cls, path: str, *, label: str, device: str, max_seq_length: int | None = None) -> "TorchEncoder":
        from sentence_transformers import SentenceTransformer

        m = SentenceTransformer(path, device=device)
        if max_seq_length:
            m.max_seq_length = max_seq_length
        return cls(m.eval())

    def running(self):
        return _inference()

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        # a model's own Normalize module still runs (it is part of the model); no second normalization here
        return np.asarray(self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                            normalize_embeddings=False, show_progress_bar=False), dtype=np.float32)


class TorchRanker(CrossEncoderBackend):
    name = "torch"
    uses_torch = True
    default_batch_size = 8  # measured 1.6x faster than 32 on CPU: sorted by length, smaller batches pad less
    resolve = staticmethod(resolve_reranker)

    @classmethod
    def load(cls, path: str, *, label: str, device: str, max_length: int, spinning: bool = False,
             threads: int = 0) -> "TorchRanker":
        """`spinning` and `threads` are onnxruntime's (`[rerank] thread_spinning`, pair workers); torch keeps its own
        OpenMP settings."""
        from sentence_transformers import CrossEncoder

        return cls(CrossEncoder(path, device=device, max_length=max_length))

    def running(self):
        return _inference()

    def encode(self, pairs: Sequence[tuple[str, str]]) -> Sequence:
        return list(pairs)

    def length(self, item) -> int:
        return len(item[0]) + len(item[1])

    def predict(self, items: Sequence) -> np.ndarray:
        return self.model.predict(list(items), batch_size=len(items), show_progress_bar=False, convert_to_numpy=True)
