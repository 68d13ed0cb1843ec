"""`Embedder`: a bi-encoder, batched, L2-normalized float32, with a fingerprint.

Two backends (`retriever.backends`): "onnx" (the model exported once to int8 ONNX, run by onnxruntime: the fast
path) and "torch" (sentence-transformers, the reference; any model). torch and sentence-transformers are imported
on first use of the torch path (and once, to export, the first time a model runs on the onnx path), never on
import. Backends return raw pooled rows; `encode` normalizes them, once.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .backends import ENCODERS, EncoderBackend, LazyBackend, backend_class
from .vectors import as_unit_vectors

# Fixed texts whose embeddings identify a model's weights: the same name behind other weights shows here.
FINGERPRINT_PROBES = (
    "The quick brown fox jumps over the lazy dog.",
    "Mitochondria produce ATP through cellular respiration.",
    "What is the refund policy for enterprise customers?",
)
FINGERPRINT_MIN_COSINE = 0.999

BACKENDS = tuple(ENCODERS)


class Embedder:
    def __init__(self, model: str, *, backend: str = "onnx", batch_size: int = 32, device: str = "cpu",
                 max_seq_length: int | None = None):
        cls = backend_class("embedding", backend)
        cls.check_device(device)
        self.name = model
        self.backend = backend
        self.batch_size = batch_size
        self.device = device
        self._loader = LazyBackend(cls, model, device=device, max_seq_length=max_seq_length)

    @classmethod
    def from_config(cls, cfg) -> "Embedder":
        """From an `EmbeddingConfig` section."""
        return cls(cfg.model, backend=cfg.backend, batch_size=cfg.batch_size, device=cfg.device,
                   max_seq_length=cfg.max_seq_length)

    @property
    def _backend(self) -> EncoderBackend:
        return self._loader.get()  # loads on first use

    @property
    def model(self):
        """The loaded library model (an `OnnxSentenceEncoder` or a `SentenceTransformer`)."""
        return self._backend.model

    @property
    def dim(self) -> int:
        return self._backend.dim

    @property
    def max_seq_length(self) -> int:
        return self._backend.max_seq_length

    @property
    def tokenizer(self):
        return self._backend.tokenizer

    def max_content_tokens(self) -> int:
        """Tokens of text that fit one sequence once the special tokens ([CLS], [SEP]) are added."""
        return self.max_seq_length - self.tokenizer.num_special_tokens_to_add(pair=False)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                             verbose=False)
        return [tuple(span) for span in enc["offset_mapping"]]

    def encode(self, texts: Sequence[str], *, show_progress_bar: bool = False) -> np.ndarray:
        """(n, dim) float32, every row of unit length (normalized here, the one place; a non-finite or zero row
        from the model is an InputError)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        backend = self._backend
        # longest first over the whole input (sentence-transformers only sorts within one call), so batches
        # carry little padding even though the progress bar feeds it slices
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        texts = [texts[i] for i in order]
        step = self.batch_size * 4
        bar = None
        if show_progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), unit="text", desc="embed", leave=True)
        parts = []
        try:
            with backend.running():
                for i in range(0, len(texts), step):
                    parts.append(backend.encode(texts[i:i + step], self.batch_size))
                    if bar is not None:
                        bar.update(len(parts[-1]))
        finally:
            if bar is not None:
                bar.close()
        out = np.empty((len(texts), backend.dim), dtype=np.float32)
        out[order] = np.concatenate(parts)
        return as_unit_vectors(out, backend.dim, what="embeddings from the model")

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Like `encode`, but one text per run on a backend whose vectors depend on their batch (onnx: dynamic
        int8 quantizes activations with one scale per batch, so a query's vector would depend on the queries
        batched with it, and search would disagree with search_batch). Queries are short, so this costs little;
        documents are batched for speed."""
        if self._loader.cls.batch_invariant or len(texts) <= 1:
            return self.encode(texts)
        return np.concatenate([self.encode([t]) for t in texts])

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    def fingerprint(self) -> dict:
        """Name, dimension and the probe embeddings (rounded) that identify these weights."""
        probes = self.encode(FINGERPRINT_PROBES)
        return {
            "probes": [[round(float(x), 5) for x in row] for row in probes],
        }

    @staticmethod
    def same_weights(a: dict, b: dict) -> bool:
        pa, pb = np.asarray(a.get("probes", []), np.float32), np.asarray(b.get("probes", []), np.float32)
        if pa.shape != pb.shape or pa.size == 0:
            return False
        cos = (pa * pb).sum(1) / (np.linalg.norm(pa, axis=1) * np.linalg.norm(pb, axis=1))
        return bool(np.all(cos >= FINGERPRINT_MIN_COSINE))
