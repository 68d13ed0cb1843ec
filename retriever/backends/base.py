"""The two backend interfaces (a bi-encoder and a cross-encoder) and the lazy loader both facades share.

A backend class resolves a model name to a path, loads it (`load`, a classmethod), and then runs it; `model` is the
library object it wraps (an `OnnxSentenceEncoder`, a `SentenceTransformer`, ...). Runs go inside `running()`,
which sets up the calling thread (torch: its thread count, no autograd).
"""
from __future__ import annotations

import importlib.util
import threading
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar, Sequence

import numpy as np

from ..models import BUILTIN_EMBEDDERS, BUILTIN_PREFIX, BUILTIN_RERANKERS, load_model


def require(backend: str, *modules: str) -> None:
    """Raise ImportError unless every module is installed (found, not imported: heavy imports stay lazy)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"the {backend!r} backend needs {', '.join(missing)}, which is not installed")


class Backend(ABC):
    kind: ClassVar[str]        # "embedding" or "rerank": the config section, in errors and the model-cache key
    builtin: ClassVar[str]     # the builtin model an error suggests
    name: ClassVar[str]        # "onnx", "torch": the registry key
    uses_torch: ClassVar[bool]  # loading imports torch (and sets its thread count first)

    def __init__(self, model: Any):
        self.model = model

    @staticmethod
    @abstractmethod
    def resolve(name: str) -> str:
        """The path (or hub name) the model `name` loads from."""

    @classmethod
    @abstractmethod
    def load(cls, path: str, *, label: str, device: str, **options) -> "Backend":
        """The backend over the model at `path` (`label`: the name the user gave, for errors and cache names)."""

    @classmethod
    def load_settings(cls) -> tuple:
        """Process settings a loaded model keeps (onnxruntime: the session's thread count): part of the model-cache
        key, so a model loaded under other settings is not reused."""
        return ()

    def running(self) -> AbstractContextManager:
        """Wraps a run of batches in the calling thread."""
        return nullcontext()


class EncoderBackend(Backend):
    """A bi-encoder: `encode` returns raw pooled float32 rows; the Embedder normalizes them, once."""
    kind = "embedding"
    builtin = BUILTIN_PREFIX + BUILTIN_EMBEDDERS[0]
    batch_invariant: ClassVar[bool] = True  # a text's vector does not depend on the texts batched with it

    @classmethod
    def check_device(cls, device: str) -> None:
        """Raise InputError if this backend cannot run on `device`."""

    @abstractmethod
    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """(n, dim) float32, not normalized."""

    # the wrapped models share the SentenceTransformer face for these three
    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def tokenizer(self):
        """A transformers tokenizer (offsets and special tokens for chunking)."""
        return self.model.tokenizer


class CrossEncoderBackend(Backend):
    """A cross-encoder: pairs are encoded once (`encode`), sorted by `length`, and scored a chunk at a time."""
    kind = "rerank"
    builtin = BUILTIN_PREFIX + BUILTIN_RERANKERS[0]
    default_batch_size: ClassVar[int]  # pairs per run when the configured batch_size is 0 (auto)
    # runs may go side by side, one intra-op thread each (`[rerank] pair_workers`); torch keeps its own threads
    parallel_runs: ClassVar[bool] = False

    @abstractmethod
    def encode(self, pairs: Sequence[tuple[str, str]]) -> Sequence:
        """One item per (query, passage) pair, for `length` and `predict`."""

    @abstractmethod
    def length(self, item) -> int:
        """The sort key of an item: pairs of similar length batch with little padding."""

    @abstractmethod
    def predict(self, items: Sequence) -> np.ndarray:
        """Sigmoid of the logit of each item, run as one batch."""


class LazyBackend:
    """A facade's backend, loaded on the first `get()` and once (a double-checked lock) through the process-wide
    model cache of `models.load_model`, keyed by the model name, the backend, `options` and the backend's
    `load_settings()`."""

    def __init__(self, cls: type[Backend], name: str, **options):
        self.cls = cls
        self.name = name
        self.options = options
        self._backend: Backend | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    def get(self) -> Backend:
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    cls = self.cls
                    self._backend = load_model(cls.kind, self.name, cls.resolve, self._construct,
                                               (cls.name, *self.options.values(), *cls.load_settings()), cls.builtin,
                                               torch=cls.uses_torch)
        return self._backend

    def _construct(self, path: str) -> Backend:
        return self.cls.load(path, label=self.name, **self.options)

    def forget(self) -> None:
        """Drop this holder's reference (the process-wide cache keeps the model): the next `get()` asks again."""
        self._backend = None
