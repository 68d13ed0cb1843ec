"""The readers-writer lock behind "a search sees a write whole or not at all"."""
from __future__ import annotations

import threading
import time

from retriever.locks import ReadWriteLock


def test_readers_share_and_a_writer_waits_for_them():
    lock, inside, peak, order = ReadWriteLock(), [0], [0], []
    gate = threading.Barrier(3)

    def reader():
        with lock.read():
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
            gate.wait(5)  # all three readers are inside at once
            time.sleep(0.05)
            inside[0] -= 1
            order.append("r")

    def writer():
        time.sleep(0.02)
        with lock.write():
            order.append(f"w{inside[0]}")

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak[0] == 3 and order == ["r", "r", "r", "w0"]


def test_a_waiting_writer_goes_before_new_readers():
    lock, order = ReadWriteLock(), []
    first_in, writer_waiting = threading.Event(), threading.Event()

    def first():
        with lock.read():
            first_in.set()
            writer_waiting.wait(5)
            time.sleep(0.05)
            order.append("first reader")

    def writer():
        first_in.wait(5)
        writer_waiting.set()
        with lock.write():
            order.append("writer")

    def late_reader():
        writer_waiting.wait(5)
        time.sleep(0.02)
        with lock.read():
            order.append("late reader")

    threads = [threading.Thread(target=f) for f in (first, writer, late_reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert order == ["first reader", "writer", "late reader"]


def test_reentrant_reads_and_reads_inside_a_write_do_not_deadlock():
    lock, done = ReadWriteLock(), []

    def nested():
        with lock.read():
            with lock.read():
                done.append("read-read")
        with lock.write():
            with lock.read():
                with lock.write():
                    done.append("write-read-write")

    t = threading.Thread(target=nested)
    t.start()
    t.join(5)
    assert done == ["read-read", "write-read-write"]
