"""`Reranker`: a sentence-transformers CrossEncoder scoring (query, passage) pairs in batches.

The model loads on first use, so `search(..., rerank=False)` never loads it. torch is imported lazily.
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from .models import load_model, resolve_reranker


class Reranker:
    def __init__(self, model: str, *, batch_size: int = 32, max_length: int = 256, device: str = "cpu"):
        self.name = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self._model = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config) -> "Reranker":
        """From a `RetrieverConfig` (its [rerank] section; the device of [embedding])."""
        r = config.rerank
        return cls(r.model, batch_size=r.batch_size, max_length=r.max_length, device=config.embedding.device)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = load_model("rerank", self.name, resolve_reranker, self._construct,
                                             (self.device, self.max_length), "builtin:ms-marco-MiniLM-L-12-v2")
        return self._model

    def _construct(self, path: str):
        from sentence_transformers import CrossEncoder

        return CrossEncoder(path, device=self.device, max_length=self.max_length)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Relevance of each (query, passage) pair; higher is more relevant (sigmoid of the logit: 0..1)."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        import torch

        # sorted by length so each batch pads to a similar length, not to the longest pair of the query
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        with torch.inference_mode():
            scores = self.model.predict([pairs[i] for i in order], batch_size=self.batch_size,
                                        show_progress_bar=False, convert_to_numpy=True)
        out = np.empty(len(pairs), dtype=np.float32)
        out[order] = np.asarray(scores, dtype=np.float32).reshape(len(pairs))
        return out

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        return self.score_pairs([(query, p) for p in passages])
