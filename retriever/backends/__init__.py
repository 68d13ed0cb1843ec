"""Backends of the Embedder and the Reranker, by name: {"onnx": ..., "torch": ...} per kind.

Each backend module registers inside try/except ImportError, so a missing library removes that backend (and a
request for it says what is missing), not the package.
"""
from __future__ import annotations

from ..errors import InputError
from .base import Backend, CrossEncoderBackend, EncoderBackend, LazyBackend

ENCODERS: dict[str, type[EncoderBackend]] = {}
CROSS_ENCODERS: dict[str, type[CrossEncoderBackend]] = {}
UNAVAILABLE: dict[str, str] = {}  # backend name -> why it cannot be used here

try:
    from .onnx import OnnxEncoder, OnnxRanker

    ENCODERS["onnx"], CROSS_ENCODERS["onnx"] = OnnxEncoder, OnnxRanker
except ImportError as e:
    UNAVAILABLE["onnx"] = str(e)

try:
    from .torch import TorchEncoder, TorchRanker

    ENCODERS["torch"], CROSS_ENCODERS["torch"] = TorchEncoder, TorchRanker
except ImportError as e:
    UNAVAILABLE["torch"] = str(e)

_REGISTRIES = {"embedding": ENCODERS, "rerank": CROSS_ENCODERS}


def backend_class(kind: str, backend: str) -> type[Backend]:
    """The class registered as `backend` for `kind` ("embedding" or "rerank"), or an InputError naming the choices."""
    registry = _REGISTRIES[kind]
    if backend in registry:
        return registry[backend]
    if backend in UNAVAILABLE:
        others = f"; or use {kind}.backend = {next(iter(registry))!r}" if registry else ""
        raise InputError(f"{kind} backend {backend!r} cannot run here: {UNAVAILABLE[backend]}; install it "
                         f"(pip install rag-retriever with its dependencies){others}")
    raise InputError(f"{kind} backend {backend!r} is not one of {', '.join(registry)}")


__all__ = ["Backend", "CROSS_ENCODERS", "CrossEncoderBackend", "ENCODERS", "EncoderBackend", "LazyBackend",
           "UNAVAILABLE", "backend_class"]
