"""A readers-writer lock: many searches at once, one write at a time, and a write waits for (and blocks) them.

Python's standard library has none. Writers are preferred: once a writer waits, new readers queue behind it, so a
steady stream of searches cannot starve a write. Both sides are re-entrant for the thread that holds the write side
(a write may call code that takes the read side), and the read side is re-entrant per thread (a nested read never
queues behind a waiting writer, which would deadlock).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager


class ReadWriteLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None  # thread id holding the write side
        self._depth = 0                   # re-entry depth of that thread
        self._waiting_writers = 0
        self._local = threading.local()  # this thread's read depth

    @contextmanager
    def read(self):
        me = threading.get_ident()
        depth = getattr(self._local, "depth", 0)
        if self._writer == me or depth:  # the writer reading its own state, or a nested read
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        with self._cond:
            while self._writer is not None or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                self._waiting_writers += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._waiting_writers -= 1
                self._writer, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                    self._cond.notify_all()
