"""The checks every entry point applies to what a caller passes (and the limits they enforce), written once:
the Python API, the CLI, the HTTP schemas and tuning all use these numbers."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from .errors import InputError

MAX_K = 10_000           # hits (or neighbours) one search may ask for
MAX_QUERY_CHARS = 20_000


def check_k(k: Any, what: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InputError(f"{what} = {k!r} must be a positive integer (the number of hits to return)")
    if k <= 0:
        raise InputError(f"{what} = {k} must be at least 1")
    if k > MAX_K:
        raise InputError(f"{what} = {k} is above the limit of {MAX_K}; page through results with filters instead")
    return int(k)


def check_query(query: Any, where: str = "query") -> str:
    if not isinstance(query, str):
        raise InputError(f"{where} must be a string, got {type(query).__name__}")
    if not query.strip():
        raise InputError(f"{where} is empty; give the text to search for")
    if len(query) > MAX_QUERY_CHARS:
        raise InputError(f"{where} is {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
    return query


def check_queries(queries: Any) -> list[str]:
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise InputError("queries must be a list of strings; for a single query use search()")
    return [check_query(q, f"queries[{i}]") for i, q in enumerate(queries)]


def check_ids(ids: Any) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, Iterable):
        raise InputError(f"ids must be a list of string ids, e.g. ['doc-1'], got {type(ids).__name__}")
    ids = list(ids)
    for i, x in enumerate(ids):
        if not isinstance(x, str):
            raise InputError(f"ids[{i}] = {x!r} is a {type(x).__name__}; ids are strings (use str(...))")
    return ids


MODES = ("dense", "lexical", "hybrid")


def check_mode(mode: Any) -> str | None:
    """None (the configured `[retrieval] mode`) or one of MODES."""
    if mode is None or mode in MODES:
        return mode
    raise InputError(f"mode = {mode!r} is not a search mode; use one of {', '.join(map(repr, MODES))} "
                     f"(or leave it out for [retrieval] mode)")
