"""`Reranker`: a sentence-transformers CrossEncoder scoring (query, passage) pairs in batches.

The model loads on first use, so `search(..., rerank=False)` never loads it. torch is imported lazily.
"""
from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np

from . import runtime
from .models import load_model, resolve_reranker


class Reranker:
    def __init__(self, model: str, *, batch_size: int = 32, max_length: int = 256, device: str = "cpu"):
        self.name = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self._model = None
        self._lock = threading.Lock()
        self.pair_seconds = 0.0  # running average cost of one pair (0 until the first batch ran)

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

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, budget_s: float | None = None) -> np.ndarray | None:
        """Relevance of each (query, passage) pair; higher is more relevant (sigmoid of the logit: 0..1).

        With `budget_s`, returns None instead of running past the budget: a batch runs only while the time spent plus
        its expected cost (pairs times the running average seconds per pair, measured on earlier batches) fits."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        import torch

        model = self.model  # loading the model is not counted against the budget
        runtime.prepare_thread()
        budget_start = time.perf_counter()
        # sorted by length so each batch pads to a similar length, not to the longest pair of the query
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        if budget_s is None:
            chunks = [order]
        else:
            chunks = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        scores = []
        with torch.inference_mode():
            for chunk in chunks:
                if budget_s is not None and time.perf_counter() - budget_start + len(chunk) * self.pair_seconds > budget_s:
                    return None
                c0 = time.perf_counter()
                part = model.predict([pairs[i] for i in chunk], batch_size=self.batch_size,
                                     show_progress_bar=False, convert_to_numpy=True)
                per_pair = (time.perf_counter() - c0) / len(chunk)
                self.pair_seconds = per_pair if not self.pair_seconds else 0.8 * self.pair_seconds + 0.2 * per_pair
                scores.append(np.asarray(part, dtype=np.float32).reshape(len(chunk)))
        out = np.empty(len(pairs), dtype=np.float32)
        out[order] = np.concatenate(scores)
        return out

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        return self.score_pairs([(query, p) for p in passages])
