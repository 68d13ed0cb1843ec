"""The "onnx" backends: int8 ONNX models run by onnxruntime, tokenized by `tokenizers` (see `onnx_models`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import runtime
from ..errors import InputError
from ..models import cache_dir, resolve_embedder, resolve_onnx_reranker
from .base import CrossEncoderBackend, EncoderBackend, require

require("onnx", "onnxruntime", "tokenizers")


def _session_threads() -> tuple:
    """A session keeps the intra-op thread count it was created with (`runtime.onnx_threads()` at load)."""
    return (runtime.onnx_threads(),)


class OnnxEncoder(EncoderBackend):
    """A sentence-transformers bi-encoder exported once to int8 ONNX (`OnnxSentenceEncoder`), CPU only."""
    name = "onnx"
    uses_torch = False  # the first run of a model exports it with torch, once; later runs never import it
    # dynamic int8 quantizes activations with one scale per batch, so a vector depends on its batchmates
    batch_invariant = False
    resolve = staticmethod(resolve_embedder)
    load_settings = staticmethod(_session_threads)

    @classmethod
    def check_device(cls, device: str) -> None:
        if device != "cpu":
            raise InputError(f"embedding.backend = 'onnx' runs on the CPU; with device = {device!r} use "
                             f"embedding.backend = 'torch'")

    @classmethod
    def load(cls, path: str, *, label: str, device: str, max_seq_length: int | None = None) -> "OnnxEncoder":
        from ..onnx_models import OnnxSentenceEncoder, exported_sentence_encoder

        m = OnnxSentenceEncoder(exported_sentence_encoder(path, cache_dir(), label))
        if max_seq_length:
            m.set_max_length(max_seq_length)
        return cls(m)

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return self.model.encode(texts, batch_size=batch_size)


class OnnxRanker(CrossEncoderBackend):
    """An ONNX cross-encoder (`OnnxCrossEncoder`): the builtin's int8 file as shipped, or a local folder."""
    name = "onnx"
    uses_torch = False
    # one pair per run: dynamic int8 quantizes activations with one scale per batch, so a pair's score would depend
    # on the pairs batched with it (search and search_batch would disagree, and a cached score would depend on
    # history); measured 10-15% slower than 8 per batch
    default_batch_size = 1
    parallel_runs = True  # a session is thread-safe; a run on one thread gives the same scores as on two
    resolve = staticmethod(resolve_onnx_reranker)
    load_settings = staticmethod(_session_threads)

    @classmethod
    def load(cls, path: str, *, label: str, device: str, max_length: int, spinning: bool = False,
             threads: int = 0) -> "OnnxRanker":
        """`threads`: the session's intra-op threads (0: `runtime.onnx_threads()`; 1 when pairs run side by side)."""
        from ..onnx_models import OnnxCrossEncoder, onnx_cross_encoder_files

        files = onnx_cross_encoder_files(path)
        if files is None:
            raise InputError(f"rerank.backend = 'onnx' needs the builtin or a local folder with model.onnx and "
                             f"tokenizer.json; {label!r} is neither. Use rerank.backend = 'torch' for "
                             f"sentence-transformers CrossEncoder models")
        return cls(OnnxCrossEncoder(*files, max_length=max_length, spinning=spinning, threads=threads))

    def encode(self, pairs: Sequence[tuple[str, str]]) -> Sequence:
        return self.model.encode_pairs(pairs)

    def length(self, item) -> int:
        return len(item.ids)

    def predict(self, items: Sequence) -> np.ndarray:
        return self.model.predict_encoded(items)
