"""`Reranker`: a cross-encoder scoring (query, passage) pairs in length-sorted batches.

Two backends behind one interface (`retriever.backends`): "onnx" (an int8 ONNX cross-encoder run by onnxruntime,
tokenized by `tokenizers`: the fast path) and "torch" (sentence-transformers CrossEncoder: the reference, any
model). The model loads on first use, so `search(..., rerank=False)` never loads it. torch is imported lazily.

On onnx, runs go side by side on a process-wide pool of `[rerank] pair_workers` threads (default one per core),
each run on one intra-op thread: every pair is still scored alone, so its score is the same, and concurrent
searches share the pool, so no more runs than cores are ever in flight.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from . import runtime
from .backends import CROSS_ENCODERS, CrossEncoderBackend, LazyBackend, backend_class

BACKENDS = tuple(CROSS_ENCODERS)

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def pair_pool(workers: int) -> ThreadPoolExecutor:
    """The process-wide pool that runs cross-encoder batches side by side, one per worker count."""
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rerank-pair")
        return _pools[workers]


class Reranker:
    def __init__(self, model: str, *, backend: str = "onnx", batch_size: int = 0, max_length: int = 384,
                 device: str = "cpu", thread_spinning: bool = False, pair_workers: int = 0):
        cls = backend_class("rerank", backend)
        self.name = model
        self.backend = backend
        self.batch_size = batch_size or cls.default_batch_size  # 0 = auto: the backend's (onnx 1, torch 8)
        self.max_length = max_length
        self.device = device
        self.thread_spinning = thread_spinning  # onnx: spin-waiting intra-op threads; never changes a score
        # batches run side by side (0 = auto: one per core where the backend allows it), each on one thread
        self.pair_workers = (pair_workers or runtime.onnx_threads()) if cls.parallel_runs else 1
        self._loader = LazyBackend(cls, model, device=device, max_length=max_length, spinning=thread_spinning,
                                   threads=1 if self.pair_workers > 1 else 0)
        self._timing = threading.Lock()
        self.pair_seconds = 0.0  # running average cost of one pair (0 until the first batch ran)

    @classmethod
    def from_config(cls, config) -> "Reranker":
        """From a `RetrieverConfig` (its [rerank] section; the device of [embedding])."""
        r = config.rerank
        return cls(r.model, backend=r.backend, batch_size=r.batch_size, max_length=r.max_length,
                   device=config.embedding.device, thread_spinning=r.thread_spinning, pair_workers=r.pair_workers)

    @property
    def key(self) -> tuple:
        """What a score depends on besides the pair (the rerank-score cache key)."""
        return (self.name, self.backend, self.max_length)

    @property
    def loaded(self) -> bool:
        return self._loader.loaded

    @property
    def _backend(self) -> CrossEncoderBackend:
        return self._loader.get()  # loads on first use

    @property
    def model(self):
        """The loaded library model (an `OnnxCrossEncoder` or a sentence-transformers `CrossEncoder`)."""
        return self._backend.model

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, budget_s: float | None = None) -> np.ndarray | None:
        """Relevance of each (query, passage) pair; higher is more relevant (sigmoid of the logit: 0..1).

        All pairs (of every query of a batch search) are sorted by length and cut into `batch_size` batches, so a
        batch pads to a similar length. With `budget_s`, returns None instead of running past the budget: a batch
        runs only while the time spent plus its expected cost (pairs times the running average seconds per pair,
        measured on earlier batches) fits."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        backend = self._backend  # loading the model is not counted against the budget
        budget_start = time.perf_counter()
        items = backend.encode(pairs)
        order = sorted(range(len(items)), key=lambda i: -backend.length(items[i]))
        chunks = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        out = np.empty(len(pairs), dtype=np.float32)
        over = threading.Event()

        def run(chunk: list[int]) -> None:
            # a batch runs only while the time spent plus its expected cost fits the budget
            if over.is_set() or (budget_s is not None and
                                 time.perf_counter() - budget_start + len(chunk) * self.pair_seconds > budget_s):
                over.set()
                return
            c0 = time.perf_counter()
            with backend.running():
                scores = backend.predict([items[i] for i in chunk])
            out[chunk] = np.asarray(scores, dtype=np.float32).reshape(len(chunk))
            per_pair = (time.perf_counter() - c0) / len(chunk)
            with self._timing:
                self.pair_seconds = per_pair if not self.pair_seconds else 0.8 * self.pair_seconds + 0.2 * per_pair

        if self.pair_workers > 1 and len(chunks) > 1:
            list(pair_pool(self.pair_workers).map(run, chunks))  # the first failure is raised here
        else:
            for chunk in chunks:
                run(chunk)
        return None if over.is_set() else out

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        return self.score_pairs([(query, p) for p in passages])
