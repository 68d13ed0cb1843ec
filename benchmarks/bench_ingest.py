"""Ingest documents/s of this checkout against an earlier commit, side by side in one run (issue 14: ingest within
10% of the speed before the lexical arm).

    python benchmarks/bench_ingest.py [--ref 516a99c] [--docs 1000] [--rounds 3]

The earlier commit's `retriever/` package is extracted with `git archive` into benchmarks/results/ingest-ref-REF
and imported from there by a child process; this checkout's by another. Every round runs both, the order
alternating, each child in a fresh process: the models are loaded and warmed by a throwaway 8-document index
first (model load excluded), then `Retriever.create(path).upsert(docs)` of `fitz_gov_subset(N)` is timed, then
the close (the save: FAISS snapshot, manifest, and here the lexical arm's commit). Documents/s counts upsert plus
close. The table prints the median of the rounds per side and the ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from common import RESULTS, ROOT, fmt, log, table, write_json

CHILD = r"""
import json, shutil, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from retriever import Document, Retriever, RetrieverConfig
from retriever.datasets import fitz_gov_subset
docs, _ = fitz_gov_subset(int(sys.argv[2]))
tmp = Path(tempfile.mkdtemp())
with Retriever.create(tmp / "warm", RetrieverConfig()) as r:  # models loaded and warm; not timed
    r.upsert([Document(f"w{i}", d.text, {}) for i, d in enumerate(docs[:8])])
    r.search(docs[0].text[:60], k=3)
t0 = time.perf_counter()
r = Retriever.create(tmp / "index", RetrieverConfig())
t1 = time.perf_counter()
rep = r.upsert(docs)
t2 = time.perf_counter()
r.close()
t3 = time.perf_counter()
shutil.rmtree(tmp)
print(json.dumps({"documents": rep.documents, "vectors": rep.vectors, "create_s": t1 - t0, "upsert_s": t2 - t1,
                  "close_s": t3 - t2}))
"""


def extract(ref: str) -> Path:
    """The ref's tree (retriever/ only) under benchmarks/results, extracted once."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], check=True, capture_output=True,
                         text=True).stdout.strip()
    dest = RESULTS / f"ingest-ref-{sha}"
    if not (dest / "retriever" / "__init__.py").is_file():
        data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", sha, "retriever"], check=True,
                              capture_output=True).stdout
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=BytesIO(data)) as tar:
            tar.extractall(dest, filter="data")
    return dest


def run_child(src: Path, docs: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(docs)], check=True, capture_output=True,
                         text=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="516a99c", help="the earlier commit (default: the last before issue 14)")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=str(RESULTS / "bench_ingest.json"))
    args = ap.parse_args()
    sides = {f"ref {args.ref}": extract(args.ref), "this checkout": ROOT}
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for i in range(args.rounds):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        for name in order:
            res = run_child(sides[name], args.docs)
            res["docs_per_s"] = res["documents"] / (res["upsert_s"] + res["close_s"])
            runs[name].append(res)
            log(f"round {i + 1} {name}: {res['docs_per_s']:.1f} docs/s (upsert {res['upsert_s']:.2f} s, "
                f"close {res['close_s']:.2f} s)")
    rows, summary = [], {}
    for name, rs in runs.items():
        med = {key: statistics.median(r[key] for r in rs) for key in ("docs_per_s", "upsert_s", "close_s")}
        summary[name] = med
        rows.append([name, fmt(med["docs_per_s"], ".1f"), fmt(med["upsert_s"], ".2f"), fmt(med["close_s"], ".2f"),
                     " ".join(f"{r['docs_per_s']:.1f}" for r in rs)])
    ref, cur = summary[f"ref {args.ref}"], summary["this checkout"]
    ratio = cur["docs_per_s"] / ref["docs_per_s"]
    print(f"\n## Ingest of fitz_gov_subset({args.docs}), model load excluded, median of {args.rounds} rounds\n")
    print(table(["side", "docs/s", "upsert s", "close s", "every round docs/s"], rows, "l"))
    verdict = "PASS" if ratio >= 0.90 else "FAIL"
    print(f"\nthis checkout / ref = {ratio:.3f} (target >= 0.90: {verdict})")
    write_json(Path(args.json), {"ref": args.ref, "docs": args.docs, "runs": runs, "summary": summary,
                                 "ratio": ratio, "target": 0.90, "pass": ratio >= 0.90})
    return 0


if __name__ == "__main__":
    sys.exit(main())
