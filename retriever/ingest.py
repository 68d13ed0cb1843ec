"""Ingest a data file into an index, in-process or on a Ray cluster, resumable after a crash.

One code path for both engines: read every record, validate them all (a bad record fails the job, named, before
anything is written), cut the documents into batches of `[ingest] commit_every`, embed each batch with
`prepared.prepare` (one encode call per batch, so the vectors are exactly those of `Retriever.upsert` of the
same batch: the int8 model's vectors depend on their batchmates), and write each batch in the driver with
`write_prepared` (one DuckDB transaction per shard it touches).

`engine="local"` embeds in this process and needs no Ray. `engine="ray"` reads the file with Ray Data and
embeds with `map_batches` over a pool of `workers` actors, each loading the model once (`ray_ingest.py`; Ray
Data restarts a killed actor and retries its batch).

Resume: after a batch is written, its number is recorded in `ingest-progress.json` in the index directory
(temp file, fsync, rename), keyed by a digest of the job (the documents and the batch size). A job killed
outright and run again skips the batches already committed, without embedding them again; a batch that was
being written when the job died is embedded and upserted again, which replaces the same ids (no document is
lost or written twice). The file is removed when the job finishes.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .config import RetrieverConfig
from .documents import Document, load_records, records_to_documents, validate_documents
from .metadata_fields import check_documents
from .errors import InputError
from .models_in_use import check_weights
from .prepared import Prepared, prepare

ENGINES = ("local", "ray")
PROGRESS = "ingest-progress.json"
_FORMAT = "rag-retriever-ingest-progress"


@dataclass
class IngestReport:
    documents: int          # records ingested
    added: int
    updated: int
    vectors: int
    batches: int            # batches in the job
    embedded_batches: int   # batches embedded by this run
    resumed_batches: int    # batches committed by an earlier, interrupted run and skipped
    seconds: float
    engine: str
    workers: int
    shards: int             # 0: an unsharded index
    warnings: list[str] = field(default_factory=list)  # the index's, after the job (e.g. an IVF worth retraining)

    @property
    def docs_per_second(self) -> float:
        return self.documents / max(self.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "docs_per_second": round(self.docs_per_second, 2)}


def ingest(data: str | os.PathLike, index: str | os.PathLike, *, shards: int | None = None, engine: str = "local",
           address: str | None = None, workers: int = 1, config: RetrieverConfig | None = None,
           id_field: str | None = None, text_field: str | None = None, metadata_fields: Sequence[str] | None = None,
           dedupe: bool = False, on_batch: Callable[[dict[str, Any]], None] | None = None) -> IngestReport:
    """Add or replace the records of a JSONL, CSV or Parquet file in the index at `index` (created, with
    `shards` shards when given, if it does not exist). `on_batch` is called after each committed batch with
    {"batch", "documents", "pid"} (the pid of the process that embedded it)."""
    from .retriever import Retriever

    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise InputError(f"engine = {engine!r} is not an ingest engine; use 'local' (in this process) or 'ray'")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise InputError(f"workers = {workers!r} must be an integer from 1 to 256 (embedding actors on Ray)")
    if engine == "local" and (address is not None or workers != 1):
        raise InputError("address and workers apply to engine='ray'; drop them, or pass engine='ray'")
    data, root = Path(data), Path(index)
    if not data.is_file():
        raise InputError(f"data file {data} does not exist; pass a .jsonl, .csv or .parquet file")
    r = _open_existing(root, shards, config)
    ray_session = None
    try:
        if engine == "ray":
            from . import ray_ingest
            from .ray_cluster import session

            ray_session = session(address)
            ray_session.__enter__()
            records = ray_ingest.read_records(data)
        else:
            records = load_records(data)
        ing = (r.config if r is not None else config or RetrieverConfig()).ingest
        docs = records_to_documents(
            records, id_field=id_field or ing.id_field, text_field=text_field or ing.text_field,
            metadata_fields=metadata_fields if metadata_fields is not None else ing.metadata_fields,
            prepend_fields=ing.prepend_fields, source=str(data), dedupe=dedupe)
        docs = validate_documents(docs)  # every record, before anything is embedded or written
        check_documents((r.config if r is not None else config or RetrieverConfig()).metadata.fields, docs)
        if r is None:
            r = Retriever.create(root, config or RetrieverConfig(), shards=shards)
        step = ing.commit_every
        batches = [docs[i:i + step] for i in range(0, len(docs), step)]
        job = _job_digest(batches, step, r.config)
        done = _read_progress(root, job)
        pending = {b: batch for b, batch in enumerate(batches) if b not in done}
        if engine == "ray":
            stored = r.manifest.embedder
            stream = ray_ingest.embed(pending, r.config, workers, lambda w: check_weights(
                root, stored, w["name"], w["dim"], w["fingerprint"]))
        else:
            stream = _embed_here(pending, r)
        totals, embedded = [0, 0, 0], 0
        for b, prepared, pid in stream:
            rep = r.write_prepared(prepared)
            embedded += 1
            totals = [totals[0] + rep.added, totals[1] + rep.updated, totals[2] + rep.vectors]
            done.add(b)
            _write_progress(root, job, done, len(batches))
            if on_batch is not None:
                on_batch({"batch": b, "documents": len(prepared.keys), "pid": pid})
        missing = sorted(set(range(len(batches))) - done)
        if missing:  # never a silent short ingest
            raise RuntimeError(f"ingest of {data}: batches {missing[:5]} were not written; run the same command "
                               f"again to resume (committed batches are kept)")
        r.save()
        (root / PROGRESS).unlink(missing_ok=True)
        return IngestReport(len(docs), totals[0], totals[1], totals[2], len(batches), embedded,
                            len(batches) - len(pending), time.perf_counter() - t0, engine,
                            workers, getattr(r, "shard_count", 0), list(r.index_status()["warnings"]))
    finally:
        try:
            if r is not None:
                r.close()
        finally:
            if ray_session is not None:
                ray_session.__exit__(None, None, None)


def _open_existing(root: Path, shards: int | None, config: RetrieverConfig | None):
    """The index at `root` if there is one (None: the job creates it once every record is valid)."""
    from .retriever import Retriever
    from .sharding import SHARDS, check_shard_count

    if shards is not None:
        check_shard_count(shards)
    if not ((root / "manifest.json").is_file() or (root / SHARDS).is_file()):
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise InputError(f"{root} exists and is not an index; pass a new directory or an index to --index")
        return None
    r = Retriever.open(root, config)
    have = getattr(r, "shard_count", None)
    if shards is not None and have != shards:
        r.close()
        what = f"has {have} shards" if have else "is not sharded"
        raise InputError(f"index {root} already exists and {what}; drop --shards to add to it as it is, "
                         f"or ingest into a new directory with --shards {shards}")
    return r


def _embed_here(pending: dict[int, list[Document]], r) -> Iterator[tuple[int, Prepared, int]]:
    embedder, chunking, pid = r.checked_embedder(), r.config.chunking, os.getpid()
    for b, batch in pending.items():
        yield b, prepare(batch, embedder, chunking), pid


def _job_digest(batches: list[list[Document]], step: int, config: RetrieverConfig) -> str:
    h = hashlib.blake2b(digest_size=16)
    settings = config.to_dict()
    h.update(json.dumps([step, settings["embedding"], settings["chunking"]], sort_keys=True).encode())
    for batch in batches:
        for d in batch:
            h.update(json.dumps([d.id, d.text, d.metadata], sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


def _read_progress(root: Path, job: str) -> set[int]:
    """Batches an earlier run of the same job committed (empty for another job or an unreadable file)."""
    try:
        data = json.loads((root / PROGRESS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("job") != job:
        return set()
    return {b for b in data.get("committed", []) if isinstance(b, int)}


def _write_progress(root: Path, job: str, done: set[int], total: int) -> None:
    path, tmp = root / PROGRESS, root / (PROGRESS + ".tmp")
    body = json.dumps({"format": _FORMAT, "version": 1, "job": job, "batches": total, "committed": sorted(done)})
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
