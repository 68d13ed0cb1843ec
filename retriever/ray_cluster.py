"""Joining a Ray cluster, for the Ray engines (`ray_ingest`, `ray_serve`); imported only when one is asked for."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from .errors import InputError


def ray_module():
    # Ray Data's usage collection polls a Prometheus server at localhost:9090 after every dataset; none runs here
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    try:
        import ray
    except ImportError:
        raise InputError("engine 'ray' needs Ray: pip install 'rag-retriever[distributed]' "
                         "(or use engine 'local', the default)") from None
    return ray


@contextmanager
def session(address: str | None):
    """Connect to the Ray cluster at `address` (or start a local one from this machine's cores) unless this
    process is already connected; disconnect on exit only if this call connected."""
    ray = ray_module()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"logging_level": "ERROR", "log_to_driver": False}
    logging.getLogger("ray").setLevel(logging.ERROR)  # Ray's start-up notes, not this job's output
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **quiet)
    else:
        ray.init(include_dashboard=False, **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()
