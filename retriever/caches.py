"""Bounded, thread-safe LRU caches for query embeddings and rerank scores.

A rerank score is keyed by (model key, query text, document vid). A vid names one stored text for the life
of a DuckDB file (replacing a document gives it a new vid), so a score never goes stale by itself; the
retriever still drops the scores of every vid an upsert or delete removes, at once, so deleted text does not
linger in memory, and clears both caches when the index is re-embedded (a new file numbers vids again).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Hashable, Iterable, Sequence


class LRUCache:
    """At most `capacity` entries; the least recently used goes first. capacity 0 = off (stores nothing)."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> list[Hashable]:
        """Store; returns the keys evicted to make room."""
        if self.capacity <= 0:
            return []
        evicted = []
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                evicted.append(self._data.popitem(last=False)[0])
        return evicted

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._data), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}


class RerankScoreCache:
    """Scores by (model key, query, vid), with an index from vid to its keys so removed vids can be dropped."""

    def __init__(self, capacity: int):
        self._lru = LRUCache(capacity)
        self._by_vid: dict[int, set] = {}
        self._lock = threading.Lock()

    def get_many(self, model: Hashable, pairs: Sequence[tuple[str, int]]) -> list[float | None]:
        if self._lru.capacity <= 0:
            return [None] * len(pairs)
        return [self._lru.get((model, q, v)) for q, v in pairs]

    def put_many(self, model: Hashable, pairs: Sequence[tuple[str, int]], scores: Iterable[float]) -> None:
        if self._lru.capacity <= 0:
            return
        with self._lock:
            for (q, v), s in zip(pairs, scores):
                key = (model, q, v)
                for old in self._lru.put(key, float(s)):
                    keys = self._by_vid.get(old[2])
                    if keys is not None:
                        keys.discard(old)
                        if not keys:
                            del self._by_vid[old[2]]
                self._by_vid.setdefault(v, set()).add(key)

    def drop_vids(self, vids: Iterable[int]) -> int:
        """Forget every score of these vids; returns how many were dropped."""
        dropped = 0
        with self._lock:
            for v in vids:
                for key in self._by_vid.pop(int(v), ()):
                    self._lru.pop(key)
                    dropped += 1
        return dropped

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()
            self._by_vid.clear()

    def __len__(self) -> int:
        return len(self._lru)

    def stats(self) -> dict[str, int]:
        return self._lru.stats()
