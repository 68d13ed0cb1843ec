"""What every benchmark script shares. Imported first: model hubs offline, progress bars and library warnings
quiet, and the repository on sys.path (the scripts run as `python benchmarks/<name>.py` from a checkout).

    log                          timestamped progress on stderr
    Phase, wait_idle             wall and CPU time of a block, and the share of the cores other processes took
    RepeatTimer, time_each       repeated timing with warm-up (after faiss), one timing per item
    time_interleaved             several functions per item, the order rotating, so noise hits them alike
    latency, pct                 percentiles of a list of seconds
    peak_rss_mb                  the process's peak memory (after bm25s utils/benchmark.py)
    pick_evenly, distinct_texts  deterministic query selections; `dedupe` from retriever.evaluation.metrics
    document_ids, quality        document-level rankings and recall/MRR/... through retriever.evaluation.metrics
    fitz_index, write_json, table, fmt, machine
"""
from __future__ import annotations

import gc
import json
import os
import platform
import resource
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # child processes inherit these
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402

from retriever.evaluation.metrics import dedupe, mean_metrics, query_metrics  # noqa: E402,F401

perf = time.perf_counter
CORES = max(1, len(os.sched_getaffinity(0)))
_START = perf()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{perf() - _START:5.0f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- the machine
def cpu_seconds() -> float:
    """CPU seconds this process has used (user + system)."""
    t = os.times()
    return t.user + t.system


def machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used so far (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait (old kernels have no iowait column)
    return (sum(vals) - idle) / os.sysconf("SC_CLK_TCK")


class Phase:
    """Wall and CPU time of a block: ours (os.times) and the other processes' (/proc/stat minus ours, and minus
    `exclude_cpu()` seconds, e.g. a server we started). `others` is the share of all cores the other processes
    used meanwhile: near 0, the cores were ours; 0.3, other work took a third of the machine and times are
    inflated. With `book` and `name`, the record is also stored as book[name]."""

    def __init__(self, name: str | None = None, book: dict | None = None, exclude_cpu=None):
        self.name, self.book, self.exclude_cpu = name, book, exclude_cpu

    def __enter__(self) -> "Phase":
        gc.collect()
        self.x0 = self.exclude_cpu() if self.exclude_cpu else 0.0
        self.w0, self.c0, self.m0 = perf(), cpu_seconds(), machine_busy_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = perf() - self.w0, cpu_seconds() - self.c0
        self.excluded = (self.exclude_cpu() if self.exclude_cpu else 0.0) - self.x0
        m1, self.others = machine_busy_seconds(), None
        if self.m0 is not None and m1 is not None and self.wall > 0.05:
            self.others = round(max(0.0, m1 - self.m0 - self.cpu - self.excluded) / (self.wall * CORES), 3)
        if self.book is not None:
            self.book[self.name] = self.record()

    def record(self) -> dict:
        return {"wall_s": round(self.wall, 4), "cpu_s": round(self.cpu, 3), "others_share": self.others,
                **({"excluded_cpu_s": round(self.excluded, 3)} if self.exclude_cpu else {})}


def others_busy(interval: float = 1.0) -> float | None:
    """Share of all cores busy over `interval` seconds while this process sleeps."""
    b0 = machine_busy_seconds()
    time.sleep(interval)
    b1 = machine_busy_seconds()
    return None if b0 is None or b1 is None else max(0.0, (b1 - b0) / (interval * CORES))


def wait_idle(limit_s: float, threshold: float = 0.1) -> float | None:
    """Wait up to `limit_s` seconds for 3 quiet seconds in a row (other processes below `threshold` of the
    cores); returns the last share seen."""
    deadline, quiet, share = time.monotonic() + limit_s, 0, None
    while time.monotonic() < deadline and quiet < 3:
        share = others_busy()
        quiet = quiet + 1 if share is not None and share < threshold else 0
        if not quiet:
            log(f"waiting for a quiet machine: other processes use {fmt(share, '.0%')} of the cores")
    return share


def busy_warning(phases: dict, limit: float = 0.1) -> str | None:
    """A warning line naming the phases ({name: Phase.record()}) during which others took > `limit` of the cores."""
    busy = [f"{k} ({v['others_share']:.0%})" for k, v in phases.items() if (v.get("others_share") or 0) > limit]
    return (f"WARNING: other processes used more than {limit:.0%} of the cores during: {', '.join(busy)}; "
            f"absolute times are inflated there, comparisons interleaved in one run less so") if busy else None


def machine(*libraries: str) -> dict:
    """Cores, Python, platform, load average, date, and the `__version__` of each library named (imported here)."""
    import importlib

    return {"cores": CORES, "python": platform.python_version(), "platform": platform.platform(),
            "loadavg": [round(x, 2) for x in os.getloadavg()], "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"versions": {name: importlib.import_module(name).__version__ for name in libraries}}
               if libraries else {})}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# ---------------------------------------------------------------------------------------------- timing
class RepeatTimer:
    """Time the body of a loop: `warmup` untimed runs, then up to `runs` timed ones, stopping early once the timed
    runs took `max_secs` (after faiss's RepeatTimer). `before()` (e.g. clear_caches) runs untimed before each
    timed run. The loop variable is the timed run's index (-1 in warm-up).

        t = RepeatTimer(warmup=1, runs=5, max_secs=2.0)
        for _ in t:
            index.search(queries, 10)
        t.median(), t.times
    """

    def __init__(self, warmup: int = 0, runs: int = 1, max_secs: float = float("inf"), before=None):
        self.warmup, self.runs, self.max_secs, self.before = warmup, runs, max_secs, before
        self.times: list[float] = []

    def __iter__(self):
        for _ in range(self.warmup):
            yield -1
        self.times = []
        while len(self.times) < self.runs and sum(self.times) < self.max_secs:
            if self.before is not None:
                self.before()
            t0 = perf()
            yield len(self.times)
            self.times.append(perf() - t0)

    def median(self) -> float:
        return float(np.median(self.times))


def time_each(fn, items, before=None, max_secs: float = float("inf"), min_items: int = 1
              ) -> tuple[list[float], list]:
    """fn(item) once per item, each call timed on its own; `before()` (e.g. clear_caches) runs untimed first.
    Stops early once the calls took `max_secs`, but not before `min_items` calls."""
    seconds, out = [], []
    for item in items:
        if before is not None:
            before()
        t0 = perf()
        out.append(fn(item))
        seconds.append(perf() - t0)
        if len(seconds) >= min_items and sum(seconds) >= max_secs:
            break
    return seconds, out


def time_interleaved(fns: dict, items, before=None) -> dict[str, tuple[list[float], list]]:
    """Every fn on every item, each call timed on its own, the order rotating item by item (item i starts with
    fn i mod len(fns)) so that machine noise hits them alike; `before()` runs untimed before every call.
    Returns {name: (seconds, outputs)} in item order."""
    names = list(fns)
    out: dict[str, tuple[list[float], list]] = {n: ([], []) for n in names}
    for i, item in enumerate(items):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            if before is not None:
                before()
            t0 = perf()
            result = fns[name](item)
            out[name][0].append(perf() - t0)
            out[name][1].append(result)
    return out


def pct(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def latency(seconds) -> dict:
    """n, p50/p95/p99/mean/max in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if not len(ms):
        return {"n": 0}
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "p99_ms": pct(ms, 99),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max())}


# -------------------------------------------------------------------------------------- queries, quality
def pick_evenly(items, n: int) -> list:
    """A deterministic spread of n items over the sequence (queries are sorted by id, i.e. by category)."""
    if n <= 0 or n >= len(items):
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))]


def distinct_texts(labeled) -> list:
    """The first labeled query of each distinct text: a timed loop over them never repeats a query."""
    seen: set[str] = set()
    return [q for q in labeled if not (q.query in seen or seen.add(q.query))]


def document_ids(hits) -> list[str]:
    """Our hits as the documents they belong to, in rank order (a chunk counts for its parent)."""
    return [h.document_id for h in hits]


def quality(rankings: list[list[str]], labeled, k: int = 10) -> dict:
    """Mean recall/MRR/nDCG/... @k of document-id rankings (duplicates count once, at their first rank) against
    the labeled queries' relevant documents: `retriever.evaluation.metrics`, checked against pytrec_eval."""
    if not rankings:
        return {"n": 0}
    per_query = {str(i): query_metrics(ranked, _grades(q.relevant), [k]) for i, (ranked, q) in
                 enumerate(zip(rankings, labeled))}
    return {"n": len(per_query), **mean_metrics(per_query)}


def _grades(relevant) -> dict[str, float]:
    """A LabeledQuery's {document id: grade}; a plain collection of ids counts each as grade 1."""
    return dict(relevant) if isinstance(relevant, Mapping) else dict.fromkeys(relevant, 1.0)


# ------------------------------------------------------------------------------------------------ output
def fitz_index(path: Path, n_docs: int = 1000, config=None) -> dict:
    """An index of `fitz_gov_subset(n_docs)` at `path` (default config): reused when one is there, else built."""
    from retriever import Retriever, RetrieverConfig
    from retriever.datasets import fitz_gov_subset

    path = Path(path)
    if (path / "manifest.json").is_file():
        with Retriever.open(path, read_only=True) as r:
            n = len(r)
        log(f"reusing the index at {path} ({n} documents)" + ("" if n == n_docs else f"; WARNING: {n_docs} wanted"))
        return {"path": str(path), "built": False, "documents": n}
    docs, _ = fitz_gov_subset(n_docs)
    log(f"building an index of {len(docs)} fitz-gov documents at {path}")
    t0 = perf()
    with Retriever.create(path, config or RetrieverConfig()) as r:
        rep = r.upsert(docs)
    log(f"  {rep.documents} documents, {rep.vectors} vectors in {perf() - t0:.1f} s (model load included)")
    return {"path": str(path), "built": True, "documents": rep.documents, "vectors": rep.vectors,
            "build_s": round(perf() - t0, 1)}


def write_json(path: Path, obj) -> None:
    """`obj` as indented JSON (numpy scalars as numbers, anything else unknown as its str)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
                    + "\n")


def fmt(x, spec: str = ".1f") -> str:
    """A number formatted, or "-" for None / NaN."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return format(x, spec)


def table(header, rows, align: str = "l") -> str:
    """Rows of cells as aligned text; `align` has one letter per column, l or r (missing letters: r). An empty row
    is a blank line."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(str(h))] + [len(r[i]) for r in rows if r]) for i, h in enumerate(header)]
    align = align.ljust(len(header), "r")

    def line(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)).rstrip()
    return "\n".join([line([str(h) for h in header]), line(["-" * w for w in widths])]
                     + [line(r) if r else "" for r in rows])
