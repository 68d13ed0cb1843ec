"""Thread layout: torch, FAISS (OpenMP) and BLAS set together so they don't oversubscribe the cores.

Set when a Retriever opens (never on import): FAISS's OpenMP pool right away, torch's intra-op pool as
soon as torch is imported by a model load. In a query they run one after the other, so the default gives
torch every core and FAISS one thread (a flat search over thousands of vectors is sub-millisecond).
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

_wanted_torch: int | None = None
_thread = threading.local()


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def configure(torch_threads: int = 0, faiss_threads: int = 1) -> tuple[int, int]:
    """Record and apply the thread counts (0 = one per core). Returns (torch, faiss)."""
    global _wanted_torch
    import faiss

    t = torch_threads or cores()
    f = faiss_threads or cores()
    faiss.omp_set_num_threads(f)
    _wanted_torch = t
    if "torch" in sys.modules:
        prepare_thread()
    return t, f


def prepare_thread() -> None:
    """Apply the torch thread count in the calling thread, once: OpenMP's thread count is a per-thread setting, so
    worker threads (a server's search pool, asyncio.to_thread) would otherwise run with the library default.
    Called by the embedder and the cross-encoder before they run."""
    if _wanted_torch is None or getattr(_thread, "torch_threads", None) == _wanted_torch or "torch" not in sys.modules:
        return
    import torch

    torch.set_num_threads(_wanted_torch)
    _thread.torch_threads = _wanted_torch


def current() -> dict:
    import faiss

    out = {"cores": cores(), "faiss_threads": faiss.omp_get_max_threads()}
    if "torch" in sys.modules:
        import torch

        out["torch_threads"] = torch.get_num_threads()
    return out


@contextmanager
def all_cores():
    """FAISS builds and trains (k-means, HNSW inserts) on every core, then goes back to the search setting."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(cores())
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
