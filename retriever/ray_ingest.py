"""The Ray half of `ingest(engine="ray")`: Ray Data reads the file, and `map_batches` over an actor pool embeds.

Imported only when a caller asks for the Ray engine (`import retriever` never imports ray). Each actor loads
the index's embedder once and runs `prepared.prepare` on one whole ingest batch per call (`batch_size=1` over
a dataset whose rows are batches), so a batch is embedded in exactly one encode call, as in-process. Results
travel as plain columns (JSON text and float32 bytes) and the driver writes them. Ray Data's actor pool
restarts a killed actor and retries its batch (`max_restarts=-1`, `max_task_retries=-1` are its defaults).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .config import RetrieverConfig
from .documents import Document, parse_jsonl
from .errors import InputError
from .prepared import Prepared
from .ray_cluster import ray_module as _ray


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a .jsonl, .csv or .parquet file, in file order, read by Ray Data. JSONL lines are parsed
    by the same rules as in-process ingest (lines numbered in errors); CSV and Parquet rows come from Arrow."""
    ray = _ray()
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # the CLI shows its own
    ctx.print_on_execution_start = False
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            lines = [row["text"] for row in ray.data.read_text(str(path), drop_empty_lines=False).take_all()]
            return parse_jsonl(lines, path)
        if suffix == ".csv":
            ds = ray.data.read_csv(str(path))
        elif suffix == ".parquet":
            ds = ray.data.read_parquet(str(path))
        else:
            raise InputError(f"data file {path}: unknown extension {path.suffix!r}; supported: .csv, .jsonl, .parquet")
        return [{k: _plain(v) for k, v in row.items()} for row in ds.take_all()]
    except InputError:
        raise
    except Exception as e:  # Ray Data wraps Arrow's parse errors
        raise InputError(f"data file {path}: Ray Data cannot read it ({type(e).__name__}: {str(e)[:300]}); "
                         f"check the file") from None


def _plain(v: Any) -> Any:
    """numpy scalars and arrays from Arrow as plain Python values (metadata must be JSON)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


class BatchEmbedder:
    """A Ray Data actor: the index's embedder, loaded once, chunking and embedding one ingest batch per row."""

    def __init__(self, config: dict, threads: int):
        from . import runtime
        from .embedding import Embedder

        runtime.configure(torch_threads=threads, onnx_threads=threads)
        self.config = RetrieverConfig.from_dict(config, source="ingest job")
        self.embedder = Embedder.from_config(self.config.embedding)
        # the driver checks these against the index before it writes this actor's first batch
        self.weights = json.dumps({"name": self.embedder.name, "dim": self.embedder.dim,
                                   "fingerprint": self.embedder.fingerprint()})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from .prepared import prepare

        out: dict[str, list] = {k: [] for k in ("batch", "keys", "parents", "rows", "vectors", "pid", "weights")}
        for b, docs in zip(batch["batch"], batch["docs"]):
            p = prepare([Document(*d) for d in json.loads(docs)], self.embedder, self.config.chunking)
            out["batch"].append(int(b))
            out["keys"].append(json.dumps(p.keys, ensure_ascii=False))
            out["parents"].append(json.dumps(p.parents, ensure_ascii=False))
            out["rows"].append(json.dumps(p.rows, ensure_ascii=False))
            out["vectors"].append(np.ascontiguousarray(p.vectors, dtype=np.float32).tobytes())
            out["pid"].append(os.getpid())
            out["weights"].append(self.weights)
        return out


def embed(pending: dict[int, list[Document]], config: RetrieverConfig, workers: int,
          check_weights: Callable[[dict], None]) -> Iterator[tuple[int, Prepared, int]]:
    """(batch number, prepared batch, embedding actor's pid) for every pending batch, as actors finish them.
    `check_weights({"name", "dim", "fingerprint"})` runs on each actor's model before its first batch is yielded
    (the driver loads no model)."""
    if not pending:
        return
    ray = _ray()
    cpus = float(ray.cluster_resources().get("CPU", 1))
    per_actor = max(cpus / workers, 0.01)
    items = [{"batch": b, "docs": json.dumps([[d.id, d.text, d.metadata] for d in batch], ensure_ascii=False)}
             for b, batch in pending.items()]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        BatchEmbedder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=per_actor,
        fn_constructor_kwargs={"config": config.to_dict(), "threads": max(1, int(per_actor))},
    )
    checked = set()
    for row in ds.iter_rows():
        if row["pid"] not in checked:
            check_weights(json.loads(row["weights"]))
            checked.add(row["pid"])
        rows = [tuple(r) for r in json.loads(row["rows"])]
        vectors = np.frombuffer(row["vectors"], dtype=np.float32)
        vectors = vectors.reshape(len(rows), -1)  # every document gives at least one chunk
        yield (int(row["batch"]), Prepared(json.loads(row["keys"]), json.loads(row["parents"]), rows, vectors),
               int(row["pid"]))
