#!/usr/bin/env python
"""In-process `Retriever.search` latency before and after the restructure: same machine, same run, same index.

    python benchmarks/bench_search_path.py                    # baseline 7db1217; 40 queries x rerank off/on x 2 rounds
    python benchmarks/bench_search_path.py --queries 5 --rounds 1 --docs 200   # smoke run

1. `git archive REV retriever | tar -x -C TMP`: TMP/retriever is the package as it was at REV ("before"); the
   working tree is "after".
2. One index of `fitz_gov_subset(--docs)` is built by the current code with the default config (in a subprocess);
   each child gets its own copy of it (the on-disk format is the same in both trees).
3. Each round starts one child per tree, both alive at once, each on its own copy of the index. A child is this
   script with PYTHONPATH = the tree; it reports `retriever.__file__`, so the tree really imported is on record.
   It opens its copy read-only, warms up on its own query texts (untimed), then answers one request at a time
   from its stdin: `clear_caches()` (where the tree has it), then `search(q, k=10, rerank=...)`, timed inside
   the child. Without rerank a query runs `--repeats` times (caches cleared before each) and the best time counts:
   a 5 ms search that follows a pause also pays for waking onnxruntime's threads, which doubles it at random and
   hides the pipeline's own cost. The first times are kept in the JSON. A reranked query runs once. The parent sends every query to both children in turn, the order alternating from query to query
   (before/after, after/before), with a short pause between requests so the other child's thread pool has gone
   idle. Drift in the machine (frequency, other load) then falls on both trees alike. Every timed text is a
   distinct labeled query: both trees get the same texts, and across rounds and rerank modes no text repeats.
4. One table: tree x round (and all rounds pooled) x (rerank off p50/p95, rerank on p50/p95), the after/before
   ratios of the pooled percentiles and the median over queries of the same text's after/before ratio, and how
   often both trees returned the same hits. JSON in benchmarks/results/search_path.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

K = 10
PAUSE_S = 0.02  # between requests: the other child's onnxruntime threads stop spinning


def child(spec_file: str) -> None:
    """Runs inside the tree under test: nothing from benchmarks/ is imported here (common.py would put the
    checkout first on sys.path); the parent passed the offline environment. One JSON line per request."""
    import retriever
    from retriever import Retriever

    spec = json.loads(Path(spec_file).read_text())
    print(f"  child: retriever imported from {retriever.__file__}", file=sys.stderr, flush=True)
    with Retriever.open(spec["index"], read_only=True) as r:
        clear = getattr(r, "clear_caches", None)
        for q in spec["warmup"]:
            r.search(q, k=K, rerank=False)
            r.search(q, k=K, rerank=True)
        print(json.dumps({"retriever_file": retriever.__file__, "clear_caches": clear is not None}), flush=True)
        for line in sys.stdin:
            req = json.loads(line)
            secs = []
            for _ in range(req["repeats"]):
                if clear:
                    clear()
                t0 = time.perf_counter()
                got = r.search(req["q"], k=K, rerank=req["rerank"])
                secs.append(time.perf_counter() - t0)
            print(json.dumps({"seconds": min(secs), "first": secs[0], "hits": [h.id for h in got]}), flush=True)


class Child:
    """A child process of one tree, answering requests over its stdin and stdout."""

    def __init__(self, tree_path: str, spec: dict, spec_file: Path):
        spec_file.write_text(json.dumps(spec))
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", str(spec_file)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env={**os.environ, "PYTHONPATH": tree_path}, cwd=spec_file.parent)
        self.ready = json.loads(self._line())

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"a child exited with {self.proc.wait()} before answering")
        return line

    def search(self, q: str, rerank: bool, repeats: int) -> dict:
        self.proc.stdin.write(json.dumps({"q": q, "rerank": rerank, "repeats": repeats}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def cpu_seconds(self) -> float:
        """CPU seconds the child has used so far (/proc: it is still running, so rusage does not count it yet)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            sys.exit(f"a child exited with {self.proc.returncode}")


def build(index: str, docs: int) -> None:
    import common

    common.fitz_index(Path(index), docs)


def git(*a: str) -> str:
    import common

    return subprocess.run(["git", *a], cwd=common.ROOT, check=True, capture_output=True, text=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="7db1217", help="the 'before' revision (default 7db1217)")
    ap.add_argument("--docs", type=int, default=1000, help="fitz_gov_subset size (default 1000)")
    ap.add_argument("--queries", type=int, default=40, help="timed queries per tree, rerank mode and round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of before/after, order alternating")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rerank off: runs per query (caches cleared before each), the best one counts; the first "
                         "(which also pays for waking the thread pool) is kept in the JSON")
    ap.add_argument("--warmup", type=int, default=5, help="untimed warm-up queries per child (own texts)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each child wait up to S seconds for the other processes to go quiet")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return 0
    if args.build:
        build(args.build, args.docs)
        return 0

    import numpy as np

    import common
    from common import log
    from retriever.datasets import fitz_gov_subset

    out_path = args.out or common.RESULTS / "search_path.json"
    base_rev = git("rev-parse", "--short", args.baseline)
    head = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--", "retriever"))
    trees = {"before": f"before {base_rev}", "after": f"after {head}{'+changes' if dirty else ''}"}
    described = {"before": f"{args.baseline} = {base_rev}",
                 "after": f"the working tree (HEAD {head}{' + uncommitted retriever/ changes' if dirty else ''})"}

    _, labeled = fitz_gov_subset(args.docs)
    pool = common.distinct_texts(labeled)
    n_sets = 2 * args.rounds
    need = args.warmup + n_sets * args.queries
    if need > len(pool):
        sys.exit(f"{need} distinct query texts needed, fitz_gov_subset({args.docs}) has {len(pool)}")
    picked = [q.query for q in common.pick_evenly(pool, need)]
    warm = picked[::max(1, len(picked) // max(1, args.warmup))][:args.warmup]
    timed = [q for q in picked if q not in warm]
    sets = [timed[j::n_sets] for j in range(n_sets)]  # every set spread over the categories

    tmp = Path(tempfile.mkdtemp(prefix="bench-search-path-"))
    res: dict = {"machine": common.machine(), "trees": described, "docs": args.docs, "queries": args.queries,
                 "rounds": args.rounds, "warmup": len(warm), "k": K, "runs": []}
    try:
        (tmp / "old").mkdir()
        archive = subprocess.run(["git", "archive", args.baseline, "retriever"], cwd=common.ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp / "old")], input=archive, check=True)
        paths = {"before": str(tmp / "old"), "after": str(common.ROOT)}
        log(f"before: {described['before']}, extracted to {tmp / 'old'}; after: {described['after']}")
        subprocess.run([sys.executable, __file__, "--build", str(tmp / "index"), "--docs", str(args.docs)], check=True)

        for rnd in range(args.rounds):
            if args.wait_idle:
                common.wait_idle(args.wait_idle)
            log(f"round {rnd + 1}/{args.rounds}: both trees, {args.queries} + {args.queries} timed queries each")
            children = {}
            for tree in ("before", "after"):
                copy = tmp / f"index-{rnd}-{tree}"
                shutil.copytree(tmp / "index", copy)
                children[tree] = Child(paths[tree], {"index": str(copy), "warmup": warm}, tmp / f"spec-{tree}.json")
                want = Path(paths[tree]) / "retriever" / "__init__.py"
                if Path(children[tree].ready["retriever_file"]).resolve() != want.resolve():
                    sys.exit(f"the {tree} child imported {children[tree].ready['retriever_file']}, not {want}")
            got = {t: {key: {"off": [], "on": []} for key in ("seconds", "first", "hits")} for t in children}
            with common.Phase(exclude_cpu=lambda: sum(c.cpu_seconds() for c in children.values())) as ph:
                for mode, texts in (("off", sets[2 * rnd]), ("on", sets[2 * rnd + 1])):
                    for i, q in enumerate(texts):
                        for tree in (("before", "after") if i % 2 == 0 else ("after", "before")):
                            time.sleep(PAUSE_S)
                            out = children[tree].search(q, rerank=mode == "on",
                                                        repeats=args.repeats if mode == "off" else 1)
                            got[tree]["seconds"][mode].append(out["seconds"])
                            got[tree]["first"][mode].append(out["first"])
                            got[tree]["hits"][mode].append(out["hits"])
            for tree, c in children.items():
                c.close()
                res["runs"].append({"round": rnd + 1, "tree": tree, **c.ready, **got[tree], "phase": ph.record()})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def stats(runs: list[dict]) -> dict:
        return {mode: common.latency([s for r in runs for s in r["seconds"][mode]]) for mode in ("off", "on")}

    rows, pooled = [], {}
    for tree in ("before", "after"):
        runs = [r for r in res["runs"] if r["tree"] == tree]
        pooled[tree] = stats(runs)
        for r in runs:
            s = stats([r])
            rows.append([trees[tree], str(r["round"]), *cells(s), common.fmt(r["phase"]["others_share"], ".0%")])
        rows.append([trees[tree], "all", *cells(pooled[tree]), ""])
    ratio = [pooled["after"][m][p] / pooled["before"][m][p] for m in ("off", "on") for p in ("p50_ms", "p95_ms")]
    rows.append(["after / before", "all", *(f"{x:.2f}x" for x in ratio), ""])
    same, paired = {}, {}
    for mode in ("off", "on"):
        by_tree = {t: [r for r in res["runs"] if r["tree"] == t] for t in ("before", "after")}
        hits = {t: [h for r in runs for h in r["hits"][mode]] for t, runs in by_tree.items()}
        secs = {t: np.array([x for r in runs for x in r["seconds"][mode]]) for t, runs in by_tree.items()}
        same[mode] = float(np.mean([a == b for a, b in zip(hits["before"], hits["after"])]))
        paired[mode] = float(np.median(secs["after"] / secs["before"]))  # the same text, a moment apart
    res.update(pooled=pooled, ratio_after_over_before=dict(zip(["off_p50", "off_p95", "on_p50", "on_p95"], ratio)),
               paired_median_ratio=paired, same_hits_share=same)
    common.write_json(out_path, res)

    print(f"\nbench_search_path: Retriever.search(q, k={K}) in-process, fitz_gov_subset({args.docs}), default config, "
          f"{common.CORES} cores; per tree and round {args.queries} timed queries per rerank mode (distinct texts, "
          f"caches cleared before each; rerank off: best of {args.repeats} runs per query), {len(warm)} warm-up "
          f"queries per child; the two trees alternate query by query")
    print(common.table(["tree", "round", "rerank off p50 ms", "p95 ms", "rerank on p50 ms", "p95 ms", "others"], rows,
                       align="ll"))
    for tree in ("before", "after"):
        r = next(r for r in res["runs"] if r["tree"] == tree)
        print(f"{trees[tree]}: {described[tree]}; retriever imported from {r['retriever_file']}; clear_caches "
              f"{'called before every timed query' if r['clear_caches'] else 'absent in this tree'}")
    print(f"same text, after / before, median over the queries: rerank off {paired['off']:.3f}x, rerank on "
          f"{paired['on']:.3f}x")
    print(f"same hits from both trees on the same texts: rerank off {same['off']:.0%}, rerank on {same['on']:.0%}")
    print(f"others: share of the cores processes other than this run's used during the round; JSON: {out_path}")
    return 0


def cells(s: dict) -> list[str]:
    return [f"{s[m][p]:.1f}" for m in ("off", "on") for p in ("p50_ms", "p95_ms")]


if __name__ == "__main__":
    sys.exit(main())
