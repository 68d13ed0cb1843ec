#!/usr/bin/env python
"""In-process `Retriever.search` latency before and after the restructure: same machine, same run, same index.

    python benchmarks/bench_search_path.py                    # baseline 7db1217; 40 queries x rerank off/on x 2 rounds
    python benchmarks/bench_search_path.py --queries 5 --rounds 1 --docs 200   # smoke run

1. `git archive REV retriever | tar -x -C TMP`: TMP/retriever is the package as it was at REV ("before"); the
   working tree is "after".
2. One index of `fitz_gov_subset(--docs)` is built by the current code with the default config (in a subprocess);
   each child gets its own copy of it (the on-disk format is the same in both trees).
3. Each round runs one child per tree, the order alternating from round to round (before/after, after/before) to
   cancel drift. A child is this script with PYTHONPATH = the tree; it reports `retriever.__file__`, so the tree
   really imported is on record. It opens its copy read-only, warms up on its own query texts (untimed), then
   times `search(q, k=10, rerank=False)` and then `rerank=True`, one query at a time, calling `clear_caches()`
   (where the tree has it) before each. Every timed text is a distinct labeled query; within a round both trees
   get the same texts (paired), across rounds and rerank modes no text repeats.
4. One table: tree x round (and all rounds pooled) x (rerank off p50/p95, rerank on p50/p95), the after/before
   ratios, and how often both trees returned the same hits. JSON in benchmarks/results/search_path.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

K = 10


def child(spec_file: str) -> None:
    """Runs inside the tree under test: nothing from benchmarks/ is imported here (common.py would put the
    checkout first on sys.path); the parent passed the offline environment."""
    import retriever
    from retriever import Retriever

    spec = json.loads(Path(spec_file).read_text())
    out: dict = {"retriever_file": retriever.__file__, "seconds": {}, "hits": {}}
    print(f"  child: retriever imported from {retriever.__file__}", file=sys.stderr, flush=True)
    with Retriever.open(spec["index"], read_only=True) as r:
        clear = getattr(r, "clear_caches", None)
        out["clear_caches"] = clear is not None
        for q in spec["warmup"]:
            r.search(q, k=K, rerank=False)
            r.search(q, k=K, rerank=True)
        for mode, rerank in (("off", False), ("on", True)):
            secs, hits = [], []
            for q in spec[mode]:
                if clear:
                    clear()
                t0 = time.perf_counter()
                got = r.search(q, k=K, rerank=rerank)
                secs.append(time.perf_counter() - t0)
                hits.append([h.id for h in got])
            out["seconds"][mode], out["hits"][mode] = secs, hits
    Path(spec["out"]).write_text(json.dumps(out))


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

        def child_cpu() -> float:
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            return ru.ru_utime + ru.ru_stime

        for rnd in range(args.rounds):
            order = ("before", "after") if rnd % 2 == 0 else ("after", "before")
            for tree in order:
                copy = tmp / f"index-{rnd}-{tree}"
                shutil.copytree(tmp / "index", copy)
                spec = {"index": str(copy), "warmup": warm, "off": sets[2 * rnd], "on": sets[2 * rnd + 1],
                        "out": str(tmp / "child.json")}
                (tmp / "spec.json").write_text(json.dumps(spec))
                env = {**os.environ, "PYTHONPATH": paths[tree]}
                if args.wait_idle:
                    common.wait_idle(args.wait_idle)
                log(f"round {rnd + 1}/{args.rounds}: {tree} ({len(spec['off'])} + {len(spec['on'])} timed queries)")
                with common.Phase(exclude_cpu=child_cpu) as ph:
                    subprocess.run([sys.executable, __file__, "--child", str(tmp / "spec.json")], env=env, check=True,
                                   cwd=tmp)
                got = json.loads((tmp / "child.json").read_text())
                want = Path(paths[tree]) / "retriever" / "__init__.py"
                if Path(got["retriever_file"]).resolve() != want.resolve():
                    sys.exit(f"the {tree} child imported {got['retriever_file']}, not {want}")
                res["runs"].append({"round": rnd + 1, "tree": tree, **got, "phase": ph.record()})
                shutil.rmtree(copy)
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
    same = {}
    for mode in ("off", "on"):
        pairs = [(a, b) for rnd in range(1, args.rounds + 1) for a, b in zip(
            *[next(r for r in res["runs"] if r["round"] == rnd and r["tree"] == t)["hits"][mode]
              for t in ("before", "after")])]
        same[mode] = sum(a == b for a, b in pairs) / len(pairs)
    res.update(pooled=pooled, ratio_after_over_before=dict(zip(["off_p50", "off_p95", "on_p50", "on_p95"], ratio)),
               same_hits_share=same)
    common.write_json(out_path, res)

    print(f"\nbench_search_path: Retriever.search(q, k={K}) in-process, fitz_gov_subset({args.docs}), default config, "
          f"{common.CORES} cores; per tree and round {args.queries} timed queries per rerank mode (distinct texts, "
          f"caches cleared before each), {len(warm)} warm-up queries per child")
    print(common.table(["tree", "round", "rerank off p50 ms", "p95 ms", "rerank on p50 ms", "p95 ms", "others"], rows,
                       align="ll"))
    for tree in ("before", "after"):
        r = next(r for r in res["runs"] if r["tree"] == tree)
        print(f"{trees[tree]}: {described[tree]}; retriever imported from {r['retriever_file']}; clear_caches "
              f"{'called before every timed query' if r['clear_caches'] else 'absent in this tree'}")
    print(f"same hits from both trees on the same texts: rerank off {same['off']:.0%}, rerank on {same['on']:.0%}")
    print(f"others: share of the cores other processes used while the child ran; JSON: {out_path}")
    return 0


def cells(s: dict) -> list[str]:
    return [f"{s[m][p]:.1f}" for m in ("off", "on") for p in ("p50_ms", "p95_ms")]


if __name__ == "__main__":
    sys.exit(main())
