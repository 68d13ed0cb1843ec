"""`Generation`: what one process has open of an index directory (one generation's DuckDB store, its FAISS index
and the manifest) and the life of generations: create, open (the one writer, or read-only beside it), fork for
readers, write, save, publish, hand over, and remove the stale ones. The directory layout is in `persistence`.

Locks: `rw` makes a write's DuckDB commit and FAISS update one step for searches, which hold its read side from
the filter to the row fetch; `write_lock` lets one write, save or rebuild run at a time (embedding happens
before, outside both).
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from . import runtime
from .config import RetrieverConfig
from .errors import IndexMismatchError, RetrieverError
from .index_plan import TRAINED_KINDS, check_settings, plan_index
from .lexical import LEXICAL, LexicalIndex, install, open_lexical
from .locks import ReadWriteLock
from .manifest import Manifest, SnapshotRecord, now, open_config
from .models import file_sha256
from .persistence import (
    MANIFEST, PREVIOUS, SNAPSHOT, STORE, ReaderMark, WriterLock, copy_generation, fsync_dir, generation_dir,
    generations, has_readers,
)
from .snapshots import build_index, index_meta, load_index
from .store import Store, StoreBusy, WriteResult
from .vector_index import DEFAULT_RESCORE, VectorIndex

log = logging.getLogger("retriever")


class Generation:
    """Open with :meth:`create` or :meth:`open`. `store`, `index`, `manifest` and `config` are read freely;
    they change only through the methods here, under `rw`'s write side."""

    def __init__(self, root: Path, manifest: Manifest, store: Store, index: VectorIndex, config: RetrieverConfig,
                 *, read_only: bool, lexical: LexicalIndex, lock: WriterLock | None = None,
                 reader_mark: ReaderMark | None = None, recovered: str | None = None,
                 lexical_recovered: str | None = None):
        self.root = root
        self.manifest = manifest
        self.store = store
        self.index = index
        self.lexical = lexical  # the BM25 arm over the same rows; written with FAISS, under the same locks
        self.lexical_recovered = lexical_recovered  # why the lexical arm was built or replayed on open, or None
        self.config = config
        self.read_only = read_only
        self.recovered = recovered  # why the FAISS snapshot was repaired on open, or None
        self._lock = lock
        self._reader_mark = reader_mark  # read-only: the generation this process serves
        self.rw = ReadWriteLock()
        self.write_lock = threading.RLock()
        self.saved_seq = (manifest.snapshot.seq if manifest.snapshot and recovered is None and lexical_recovered is None
                          else -1)
        self.closed = False
        self._pending_warned = False
        # a shard of a sharded index: an IVF/PQ index is trained for every shard at once (`codebook`), not here
        self.shared_training = False
        self.rescore = DEFAULT_RESCORE
        self.apply_search_settings()

    @property
    def number(self) -> int:
        return self.manifest.generation

    @property
    def dir(self) -> Path:
        return generation_dir(self.root, self.number)

    def apply_search_settings(self) -> None:
        """nprobe / ef_search / rescore: the config's when set (non-zero), else the values `tune` stored, else the
        kind's defaults."""
        tuned, cfg = self.manifest.tuned_params, self.config.index
        self.index.nprobe = cfg.nprobe or tuned.get("nprobe", 0)
        self.index.ef_search = cfg.ef_search or tuned.get("ef_search", 0)
        self.rescore = cfg.rescore or tuned.get("rescore", 0) or DEFAULT_RESCORE

    def check_open(self) -> None:
        if self.closed:
            raise RetrieverError(f"{self.root} is closed; open it again with Retriever.open")

    def check_writable(self) -> None:
        self.check_open()
        if self.read_only:
            raise RetrieverError(f"{self.root} was opened read-only; open it with read_only=False to write")

    # --------------------------------------------------------------------------------------------- opening
    @classmethod
    def create(cls, root: Path, config: RetrieverConfig, embedder: dict) -> "Generation":
        """A new, empty index at `root` whose vectors the `embedder` record describes (name, backend, dim...)."""
        dim = int(embedder["dim"])
        check_settings(config.index, dim)
        plan = plan_index(config.index, dim, 0, strict=False)
        root.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(root)
        lock.acquire()
        generation_dir(root, 1).mkdir()
        store = Store.create(generation_dir(root, 1) / STORE, dim, config.metadata.fields)
        lexical = LexicalIndex.build(store, generation_dir(root, 1) / LEXICAL)
        manifest = Manifest.new(config.to_dict(), embedder, 1, index_meta(plan, config.index.kind, None))
        gen = cls(root, manifest, store, VectorIndex(dim, plan), config, read_only=False, lock=lock,
                  lexical=lexical)
        gen.save()
        return gen

    @classmethod
    def open(cls, root: Path, config: RetrieverConfig | None, overrides: dict | None, *,
             read_only: bool) -> "Generation":
        if read_only:
            return cls._open_reader(root, config, overrides)
        Manifest.read(root)  # the right error for a missing or foreign directory, before a lock file is made there
        lock = WriterLock(root)
        lock.acquire()
        store = None
        try:
            manifest = Manifest.read(root)  # read under the lock: the last writer may have just switched generations
            config = open_config(root, manifest, config, overrides)
            runtime.configure_from(config.runtime)
            remove_stale_generations(root, manifest)
            if has_readers(generation_dir(root, manifest.generation)):
                manifest = fork(root, manifest)
            try:
                store = Store.open(generation_dir(root, manifest.generation) / STORE)
            except StoreBusy:  # a reader opened it after the check above
                manifest = fork(root, manifest)
                store = Store.open(generation_dir(root, manifest.generation) / STORE)
            index, recovered = _checked_index(root, manifest, store, config, mmap=False)
            lexical, lexical_recovered = open_lexical(generation_dir(root, manifest.generation), manifest.lexical,
                                                      store, writable=True)
        except BaseException:
            if store is not None:
                store.close()
            lock.release()
            raise
        gen = cls(root, manifest, store, index, config, read_only=False, lock=lock, recovered=recovered,
                  lexical=lexical, lexical_recovered=lexical_recovered)
        for why in (recovered, lexical_recovered):
            if why:
                log.warning("%s: %s", root, why)
        if recovered or lexical_recovered:
            gen.save()
        return gen

    @classmethod
    def _open_reader(cls, root: Path, config: RetrieverConfig | None, overrides: dict | None) -> "Generation":
        """The current generation, or the `stable` one the manifest names while a writer holds the current one."""
        for attempt in range(5):
            manifest = Manifest.read(root)
            busy = None
            for m in [manifest] + ([manifest.stable] if manifest.stable else []):
                gdir = generation_dir(root, m.generation)
                mark = ReaderMark(gdir)
                mark.acquire()
                store = None
                try:
                    if not gdir.is_dir():
                        raise FileNotFoundError(gdir)
                    cfg = open_config(root, m, config, overrides)
                    runtime.configure_from(cfg.runtime)
                    store = Store.open(gdir / STORE, read_only=True)
                    index, recovered = _checked_index(root, m, store, cfg, mmap=cfg.index.mmap)
                    lexical, lexical_recovered = open_lexical(gdir, m.lexical, store, writable=False)
                except StoreBusy as e:
                    mark.release()
                    busy = e
                    continue
                except FileNotFoundError:  # removed by a writer after we read the manifest: read it again
                    mark.release()
                    break
                except BaseException:
                    if store is not None:
                        store.close()
                    mark.release()
                    raise
                for why in (recovered, lexical_recovered):
                    if why:
                        log.warning("%s: %s", root, why)
                return cls(root, m, store, index, cfg, read_only=True, reader_mark=mark, recovered=recovered,
                           lexical=lexical, lexical_recovered=lexical_recovered)
            else:
                raise RetrieverError(
                    f"{root}: generation {manifest.generation} is open for writing in another process that started "
                    f"before any reader, and no earlier generation is published; open it read-only after that writer "
                    f"closes (or calls publish), or start readers first"
                ) from busy
            time.sleep(0.05 * (attempt + 1))
        raise RetrieverError(f"{root}: its generations kept changing while opening; try again")

    # ---------------------------------------------------------------------------------------------- writes
    @contextmanager
    def writing(self):
        """One write at a time, and searches see it whole or not at all."""
        with self.write_lock, self.rw.write():
            yield

    def upsert(self, keys: Sequence[str], rows: list[tuple], vectors) -> WriteResult:
        """Rows (id, parent_id, text, metadata) with their vectors replace every row of `keys`: DuckDB in one
        transaction (the acknowledgement), then FAISS and the lexical arm."""
        position = {row[0]: i for i, row in enumerate(rows)}
        with self.writing():
            result = self.store.upsert(keys, rows, vectors)
            self.index.remove(result.removed_vids)
            self.index.add(result.added_vids, vectors[[position[i] for i in result.added_ids]])
            self.lexical.apply(result.added_vids, [rows[position[i]][2] for i in result.added_ids],
                               result.removed_vids)
        return result

    def delete(self, keys: Sequence[str]) -> WriteResult:
        with self.writing():
            result = self.store.delete(keys)
            self.index.remove(result.removed_vids)
            self.lexical.apply([], [], result.removed_vids)
        return result

    def swap_index(self, index: VectorIndex, meta: dict, config: RetrieverConfig | None = None) -> None:
        """Serve `index` (described by the manifest record `meta`) from now on; saved at the next save."""
        with self.rw.write():
            self.index = index
            if config is not None:
                self.config = config
                self.manifest = self.manifest.replace(config=config.to_dict())
            self.manifest = self.manifest.replace(index=meta)
            self.apply_search_settings()
        self.saved_seq = -1

    def swap_contents(self, store: Store, index: VectorIndex, lexical: LexicalIndex, manifest: Manifest,
                      config: RetrieverConfig) -> Store:
        """Serve another generation's files (a re-embed's); returns the store it replaced, still open."""
        with self.rw.write():
            self.lexical.close()
            old, self.store, self.index, self.lexical = self.store, store, index, lexical
            self.manifest, self.config = manifest, config
            self.apply_search_settings()
        self.saved_seq = -1
        return old

    def rebuild_lexical(self) -> int:
        """A fresh lexical arm from DuckDB's rows (built beside the live one, then swapped in); saved at the next
        save. Returns the chunks indexed."""
        with self.write_lock:
            tmp = self.dir / f".{LEXICAL}.build-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            built = LexicalIndex.build(self.store, tmp / LEXICAL)
            built.close()
            with self.rw.write():
                self.lexical.close()
                install(tmp / LEXICAL, self.dir / LEXICAL)
                self.lexical = LexicalIndex.open(self.dir / LEXICAL, writable=True)
                self.lexical_recovered = None
            shutil.rmtree(tmp, ignore_errors=True)
            self.saved_seq = -1
            return len(self.lexical)

    def set_manifest(self, manifest: Manifest) -> None:
        """Write `manifest` (same generation, e.g. tuned search settings) and serve by it."""
        manifest.write(self.root)
        with self.rw.write():
            self.manifest = manifest
            self.apply_search_settings()

    # ---------------------------------------------------------------------------------------------- saving
    def save(self) -> None:
        """Write the FAISS snapshot (temp file, fsync, rename; the old one kept as .prev), then the manifest."""
        if self.read_only or self.closed:
            return
        with self.write_lock:
            self._build_when_due()
            seq = self.store.last_seq()
            if seq == self.saved_seq:
                return
            self.store.checkpoint()
            gdir = self.dir
            tmp = gdir / f".{SNAPSHOT}.tmp-{os.getpid()}"
            with self.rw.read():
                self.index.write(tmp)
                ntotal = len(self.index)
            sha = file_sha256(tmp)
            if (gdir / SNAPSHOT).exists():
                os.replace(gdir / SNAPSHOT, gdir / PREVIOUS)
            os.replace(tmp, gdir / SNAPSHOT)
            fsync_dir(gdir)
            manifest = self.manifest.replace(
                previous=self.manifest.snapshot, snapshot=SnapshotRecord(seq, sha, ntotal, now()),
                lexical=self.lexical.record(seq),
                counts={"documents": self.store.count_parents(), "vectors": len(self.index),
                        "masked": self.index.masked})
            manifest.write(self.root)
            self.manifest = manifest
            self.saved_seq = seq
            if manifest.previous:
                self.store.prune_changelog(manifest.previous.seq)

    def _build_when_due(self) -> None:
        """An index that waits for data (an IVF kind on a corpus too small to train, or `auto` still exact) is
        built at the first save where the corpus supports it. Other changes of kind wait for `rebuild`."""
        if self.index.kind != "flat":
            return
        n = self.store.count()
        requested = self.config.index.kind
        plan = plan_index(self.config.index, self.index.dim, n, strict=False)
        if self.shared_training and (plan.kind in TRAINED_KINDS or plan.pending in TRAINED_KINDS):
            return  # the sharded index trains one codebook for all its shards at its save (codebook.share_when_due)
        if plan.kind == "flat":
            if plan.pending and n and not self._pending_warned:
                log.warning("%s: %s", self.root, plan.reason)
                self._pending_warned = True
            self.manifest = self.manifest.replace(index=index_meta(plan, requested, None, self.manifest.index.get("tuned")))
            return
        log.warning("%s: building the %s index now that the corpus has %d vectors", self.root, plan.kind, n)
        index, trained = build_index(self.store, self.index.dim, self.config.index, plan)
        self.swap_index(index, index_meta(plan, requested, trained))

    def publish(self) -> tuple[int, int]:
        """Save, and hand the saved generation to read-only processes (the manifest's `stable` one) while writing
        goes on in a copy. Returns (published generation, the one now written)."""
        self.check_writable()
        with self.write_lock:
            self.save()
            with self.rw.write():
                published = self.number
                self.store.close()
                self.lexical.close()
                try:
                    manifest = fork(self.root, self.manifest)
                except BaseException:
                    self.store = Store.open(generation_dir(self.root, published) / STORE)
                    self.lexical = LexicalIndex.open(generation_dir(self.root, published) / LEXICAL, writable=True)
                    raise
                self.store = Store.open(generation_dir(self.root, manifest.generation) / STORE)
                self.lexical = LexicalIndex.open(generation_dir(self.root, manifest.generation) / LEXICAL,
                                                 writable=True)
                self.manifest = manifest
            remove_stale_generations(self.root, manifest)
        return published, manifest.generation

    def copy_to(self, dest: Path) -> dict:
        """A consistent one-generation copy of this index in `dest` (see `backup`): saved, DuckDB checkpointed and
        the lexical arm's merges finished, then copied under `write_lock`, so it holds every write acknowledged
        before the call. Writes wait for the copy; searches go on. Returns the files' checksums and the counts."""
        from .backup import copy_generation_out

        self.check_writable()
        with self.write_lock:
            self.save()
            self.store.checkpoint()
            self.lexical.close()  # waits for tantivy's merges; the next write makes a writer again
            files = copy_generation_out(self.dir, self.manifest.unforked().to_dict(), Path(dest))
            return {"files": files, "generation": self.number, "seq": self.store.last_seq(),
                    "documents": self.store.count_parents(), "vectors": len(self.index)}

    def close(self) -> None:
        """Save (writers), wait for searches in flight, and release the files. A writer that wrote into a copy of
        the generation readers held hands the copy over to them (the manifest's `stable` entry is dropped)."""
        if self.closed:
            return
        try:
            self.save()
        finally:
            with self.rw.write():
                self.closed = True
                self.store.close()
                self.lexical.close()
            if self._reader_mark:
                self._reader_mark.release()
            if self._lock:
                try:
                    self._hand_over()
                finally:
                    self._lock.release()

    def _hand_over(self) -> None:
        # even when the save failed the generation is whole: DuckDB committed every write and its changelog
        # brings the older snapshot up to date on open
        if self.manifest.stable:
            self.manifest = self.manifest.unforked()
            self.manifest.write(self.root)
        remove_stale_generations(self.root, self.manifest)

    def new_generation_dir(self) -> tuple[int, Path]:
        """An empty folder for the next generation (a re-embed writes there until it is complete)."""
        number = self.number + 1
        gdir = generation_dir(self.root, number)
        if gdir.exists():
            shutil.rmtree(gdir)
        gdir.mkdir()
        return number, gdir

    def remove_generation(self, number: int) -> None:
        """Delete an old generation's folder unless a reader still serves it."""
        gdir = generation_dir(self.root, number)
        if not has_readers(gdir):
            shutil.rmtree(gdir, ignore_errors=True)


def _checked_index(root: Path, manifest: Manifest, store: Store, config: RetrieverConfig, *, mmap: bool):
    gdir = generation_dir(root, manifest.generation)
    if store.dim != manifest.dim:
        raise IndexMismatchError(f"{gdir / STORE} holds {store.dim}-d vectors but the manifest says {manifest.dim}")
    return load_index(gdir, manifest, store, config.index, mmap=mmap)


def fork(root: Path, manifest: Manifest) -> Manifest:
    """Copy the current generation (readers hold it) to a new one and point the manifest at the copy, keeping the
    old one under `stable` for readers. The manifest moves before any write lands in the copy, so an acknowledged
    write is always in the generation the manifest names."""
    source = manifest.generation
    target = max(generations(root) + [source]) + 1
    t0 = time.perf_counter()
    copy_generation(root, source, target)
    stable = manifest.replace(stable=None)
    forked = stable.replace(generation=target, stable=stable, forked_from=source)
    forked.write(root)
    log.info("%s: generation %d is in use by readers; writing into a copy, generation %d (%.2f s)",
             root, source, target, time.perf_counter() - t0)
    return forked


def remove_stale_generations(root: Path, manifest: Manifest) -> None:
    """Leftovers of an interrupted save, re-embed or fork, and generations no reader serves any more (the writer
    lock is held, so no other process is writing them)."""
    keep = {manifest.generation, manifest.stable.generation if manifest.stable else None}
    for n in generations(root):
        gdir = generation_dir(root, n)
        if n not in keep and not has_readers(gdir):
            shutil.rmtree(gdir, ignore_errors=True)
    gdir = generation_dir(root, manifest.generation)
    for tmp in [*root.glob(f".{MANIFEST}.tmp-*"), *gdir.glob(f".{SNAPSHOT}.tmp-*")]:
        tmp.unlink(missing_ok=True)
    for tmp in [*gdir.glob(f".{LEXICAL}.tmp-*"), *gdir.glob(f".{LEXICAL}.old-*"), *gdir.glob(f".{LEXICAL}.build-*")]:
        shutil.rmtree(tmp, ignore_errors=True)

