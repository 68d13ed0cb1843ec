"""Imported first by every benchmark script: model hubs offline, progress bars and library warnings quiet, and
the repository on sys.path (the scripts run as `python benchmarks/<name>.py` from a checkout)."""
import os
import sys
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
