"""Imported first by every benchmark script: model hubs offline, progress bars and library warnings quiet, and
the repository on sys.path (the scripts run as `python benchmarks/<name>.py` from a checkout)."""
import gc
import os
import sys
import time
import warnings
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


def cpu_seconds() -> float:
    """CPU seconds this process has used (user + system)."""
    t = os.times()
    return t.user + t.system


def machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used so far (from /proc/stat), or None off Linux. Minus this
    process's `cpu_seconds()` over the same interval, it is what the *other* processes took."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals) - idle) / os.sysconf("SC_CLK_TCK")


class Phase:
    """Wall and CPU time of a block: ours (os.times) and the other processes' (/proc/stat minus ours).
    `others` is the share of all cores that other processes used meanwhile: near 0 means the cores were ours;
    0.3 means other work took about a third of the machine, and the times are inflated."""

    def __enter__(self) -> "Phase":
        gc.collect()
        self.w0, self.c0, self.m0 = time.perf_counter(), cpu_seconds(), machine_busy_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = cpu_seconds() - self.c0
        m1 = machine_busy_seconds()
        self.others = None
        if self.m0 is not None and m1 is not None and self.wall > 0.05:
            cores = max(1, len(os.sched_getaffinity(0)))
            self.others = round(max(0.0, (m1 - self.m0) - self.cpu) / (self.wall * cores), 3)

    def record(self) -> dict:
        return {"wall_s": round(self.wall, 4), "cpu_s": round(self.cpu, 3), "others_share": self.others}
