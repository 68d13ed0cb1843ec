"""Thread layout: onnxruntime, torch, FAISS (OpenMP) and BLAS set together so they don't oversubscribe the cores.

Set when a Retriever opens (never on import): FAISS's OpenMP pool and numpy's BLAS right away, torch's
intra-op pool as soon as torch is imported by a model load (and again in every thread that runs a model:
OpenMP's count is per thread), onnxruntime's when a session is created (each session owns its pool).
In a query the stages run one after the other, so the default gives the models (onnxruntime or torch)
every core, and FAISS and BLAS one thread each (a flat search over thousands of vectors, the exact scan
of a filtered search and the normalizations are sub-millisecond; a second thread only adds wake-ups).
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

_wanted_torch: int | None = None
_wanted_onnx: int | None = None
_wanted_faiss: int | None = None
_thread = threading.local()


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def configure(torch_threads: int = 0, faiss_threads: int = 1, onnx_threads: int = 0,
              blas_threads: int = 1) -> dict[str, int]:
    """Record and apply the thread counts (0 = one per core). Returns what was set."""
    global _wanted_torch, _wanted_onnx, _wanted_faiss
    import faiss

    t = torch_threads or cores()
    f = faiss_threads or cores()
    o = onnx_threads or cores()
    b = blas_threads or cores()
    faiss.omp_set_num_threads(f)
    _thread.faiss_threads = f
    _set_blas(b)
    _wanted_torch, _wanted_onnx, _wanted_faiss = t, o, f
    if "torch" in sys.modules:
        prepare_thread()
    return {"torch": t, "faiss": f, "onnx": o, "blas": b}


def configure_from(rt) -> dict[str, int]:
    """`configure` from a `RuntimeConfig` ([runtime] section)."""
    return configure(rt.torch_threads, rt.faiss_threads, rt.onnx_threads, rt.blas_threads)


def _set_blas(n: int) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")  # applies process-wide at once; nothing to restore later


def onnx_threads() -> int:
    """Intra-op threads for a new onnxruntime session (the configured count, else one per core)."""
    return _wanted_onnx or cores()


def prepare_thread() -> None:
    """Apply the torch thread count in the calling thread, once: OpenMP's thread count is a per-thread setting, so
    worker threads (a server's search pool, asyncio.to_thread) would otherwise run with the library default.
    Called by the embedder and the cross-encoder before they run."""
    if _wanted_torch is None or getattr(_thread, "torch_threads", None) == _wanted_torch or "torch" not in sys.modules:
        return
    import torch

    torch.set_num_threads(_wanted_torch)
    _thread.torch_threads = _wanted_torch


def prepare_faiss_thread() -> None:
    """Apply the FAISS (OpenMP) thread count in the calling thread: like torch's, it is per thread, so a search in
    a worker thread (a server's search pool, a sharded index's fan-out) would otherwise run on every core.
    Called before every FAISS search; a thread-local check after the first."""
    if _wanted_faiss is None or getattr(_thread, "faiss_threads", None) == _wanted_faiss:
        return
    import faiss

    faiss.omp_set_num_threads(_wanted_faiss)
    _thread.faiss_threads = _wanted_faiss


def current() -> dict:
    import faiss

    out = {"cores": cores(), "faiss_threads": faiss.omp_get_max_threads(), "onnx_threads": onnx_threads()}
    from threadpoolctl import threadpool_info

    blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    if blas:
        out["blas_threads"] = max(blas)
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
