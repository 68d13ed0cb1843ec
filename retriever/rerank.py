"""`Reranker`: a cross-encoder scoring (query, passage) pairs in length-sorted batches.

Two backends behind the same interface: "onnx" (an int8 ONNX cross-encoder run by onnxruntime, tokenized by
`tokenizers`: the fast path) and "torch" (sentence-transformers CrossEncoder: the reference, any model). The
model loads on first use, so `search(..., rerank=False)` never loads it. torch is imported lazily.
"""
from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from typing import Sequence

import numpy as np

from . import runtime
from .errors import InputError
from .models import load_model, resolve_onnx_reranker, resolve_reranker

BACKENDS = ("onnx", "torch")


class Reranker:
    def __init__(self, model: str, *, backend: str = "onnx", batch_size: int = 0, max_length: int = 384,
                 device: str = "cpu"):
        if backend not in BACKENDS:
            raise InputError(f"rerank backend {backend!r} is not one of {', '.join(BACKENDS)}")
        self.name = model
        self.backend = backend
        # 0 = auto. onnx: one pair per run, because dynamic int8 quantizes activations with one scale per batch, so
        # a pair's score would depend on the pairs batched with it (search and search_batch would disagree, and a
        # cached score would depend on history); measured 10-15% slower than 8 per batch. torch: 8 (measured 1.6x
        # faster than 32 on CPU: sorted by length, smaller batches pad less).
        self.batch_size = batch_size or (1 if backend == "onnx" else 8)
        self.max_length = max_length
        self.device = device
        self._model = None
        self._lock = threading.Lock()
        self.pair_seconds = 0.0  # running average cost of one pair (0 until the first batch ran)

    @classmethod
    def from_config(cls, config) -> "Reranker":
        """From a `RetrieverConfig` (its [rerank] section; the device of [embedding])."""
        r = config.rerank
        return cls(r.model, backend=r.backend, batch_size=r.batch_size, max_length=r.max_length,
                   device=config.embedding.device)

    @property
    def key(self) -> tuple:
        """What a score depends on besides the pair (the rerank-score cache key)."""
        return (self.name, self.backend, self.max_length)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    onnx = self.backend == "onnx"
                    self._model = load_model("rerank", self.name, resolve_onnx_reranker if onnx else resolve_reranker,
                                             self._construct_onnx if onnx else self._construct,
                                             (self.backend, self.device, self.max_length),
                                             "builtin:ms-marco-MiniLM-L-12-v2", torch=not onnx)
        return self._model

    def _construct_onnx(self, path: str):
        from .onnx_models import OnnxCrossEncoder, onnx_cross_encoder_files

        files = onnx_cross_encoder_files(path)
        if files is None:
            raise InputError(f"rerank.backend = 'onnx' needs the builtin or a local folder with model.onnx and "
                             f"tokenizer.json; {self.name!r} is neither. Use rerank.backend = 'torch' for "
                             f"sentence-transformers CrossEncoder models")
        return OnnxCrossEncoder(*files, max_length=self.max_length)

    def _construct(self, path: str):
        from sentence_transformers import CrossEncoder

        return CrossEncoder(path, device=self.device, max_length=self.max_length)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, budget_s: float | None = None) -> np.ndarray | None:
        """Relevance of each (query, passage) pair; higher is more relevant (sigmoid of the logit: 0..1).

        All pairs (of every query of a batch search) are sorted by length and cut into `batch_size` batches, so a
        batch pads to a similar length. With `budget_s`, returns None instead of running past the budget: a batch
        runs only while the time spent plus its expected cost (pairs times the running average seconds per pair,
        measured on earlier batches) fits."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        model = self.model  # loading the model is not counted against the budget
        budget_start = time.perf_counter()
        if self.backend == "onnx":
            enc = model.encode_pairs(pairs)
            lengths = [len(e.ids) for e in enc]

            def run(chunk):
                return model.predict_encoded([enc[i] for i in chunk])
            no_grad = nullcontext
        else:
            import torch

            runtime.prepare_thread()
            lengths = [len(q) + len(p) for q, p in pairs]

            def run(chunk):
                return model.predict([pairs[i] for i in chunk], batch_size=self.batch_size, show_progress_bar=False,
                                     convert_to_numpy=True)
            no_grad = torch.inference_mode
        order = sorted(range(len(pairs)), key=lambda i: -lengths[i])
        out = np.empty(len(pairs), dtype=np.float32)
        with no_grad():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                if budget_s is not None and time.perf_counter() - budget_start + len(chunk) * self.pair_seconds > budget_s:
                    return None
                c0 = time.perf_counter()
                out[chunk] = np.asarray(run(chunk), dtype=np.float32).reshape(len(chunk))
                per_pair = (time.perf_counter() - c0) / len(chunk)
                self.pair_seconds = per_pair if not self.pair_seconds else 0.8 * self.pair_seconds + 0.2 * per_pair
        return out

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        return self.score_pairs([(query, p) for p in passages])
