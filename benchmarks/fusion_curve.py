"""The curve the `[retrieval]` and `[rerank]` fusion defaults come from: every mode and fusion setting, with and
without the reranker, on every labeled set, judged per document, in one run.

    python benchmarks/fusion_curve.py [--sets fitz-gov,fitz-gov-reports,python-docs] [--tune N] [--holdout N]

Each set's queries are split by a stable hash of their id (`retriever.datasets.split_queries`, 30% held out).
The choice is made on the tuning queries only, by this rule, and then reported on the held-out ones:
  1. on every set, the reranked output keeps recall@10 >= the same mode's retrieval stage - 0.01 and MRR@10 >=
     the retrieval stage's (the reranker must not sink recall);
  2. on every set, MRR@10 and recall@10 at least those of the simple recipe a user would write (dense chunks, the
     top 20 reranked by the cross-encoder alone, collapsed to documents: `simple` below);
  3. among those, the highest mean MRR@10 over the sets (ties: the higher mean recall@10).
Settings are switched on one open index per set (the config setter), so the cross-encoder's score cache makes
each further setting cheap; latency is not measured here (bench_quality.py and bench_speed.py do that).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
from pathlib import Path

from common import RESULTS, document_ids, fmt, log, perf, pick_evenly, quality, table, write_json

from retriever import Retriever, RetrieverConfig
from retriever.datasets import labeled_set, split_queries

SETS = ("fitz-gov", "fitz-gov-reports", "python-docs")
RRF_KS = (20, 60)
WEIGHTS = (0.3, 0.5, 0.7)
RERANK_WEIGHTS = (0.5, 1.0, 2.0)
RERANK_CANDIDATES = (10, 15)


def retrieval_settings() -> list[dict]:
    out = [{"mode": "dense"}, {"mode": "lexical"}]
    out += [{"mode": "hybrid", "fusion": "rrf", "rrf_k": k, "weight": w} for k, w in itertools.product(RRF_KS, WEIGHTS)]
    out += [{"mode": "hybrid", "fusion": "convex", "weight": w} for w in WEIGHTS]
    return out


def rerank_settings() -> list[dict]:
    out = [{"fusion": "cross_encoder", "candidates": c} for c in RERANK_CANDIDATES]
    out += [{"fusion": "rrf", "retrieval_weight": w, "candidates": c}
            for w, c in itertools.product(RERANK_WEIGHTS, RERANK_CANDIDATES)]
    return out


def name_of(ret: dict, rr: dict | None) -> str:
    parts = [ret["mode"]]
    if ret["mode"] == "hybrid":
        parts.append(f"{ret['fusion']}" + (f" k={ret['rrf_k']}" if ret["fusion"] == "rrf" else "") + f" w={ret['weight']}")
    if rr is None:
        return " ".join(parts) + " | no rerank"
    tail = "ce" if rr["fusion"] == "cross_encoder" else f"rrf rw={rr['retrieval_weight']}"
    return " ".join(parts) + f" | {tail} c={rr['candidates']}"


def index_for(name: str, docs) -> Path:
    """An index of the set's documents under benchmarks/results/indexes, reused while the documents are the same."""
    digest = hashlib.sha256("\n".join(f"{d.id}\t{len(d.text)}" for d in docs).encode()).hexdigest()[:12]
    path = RESULTS / "indexes" / f"{name}-{digest}"
    if not (path / "manifest.json").is_file():
        log(f"{name}: building an index of {len(docs)} documents at {path}")
        t0 = perf()
        with Retriever.create(path, RetrieverConfig()) as r:
            rep = r.upsert(docs)
        log(f"{name}: {rep.documents} documents, {rep.vectors} vectors in {perf() - t0:.0f} s")
    return path


def run(r: Retriever, queries, base: RetrieverConfig, ret: dict, rr: dict | None) -> dict:
    r.config = base.replace(retrieval=ret, rerank={"enabled": rr is not None, **(rr or {})})
    rankings = [document_ids(r.search(q.query, k=10, rerank=rr is not None)) for q in queries]
    return quality(rankings, queries, k=10)


def simple_recipe(r: Retriever, queries, base: RetrieverConfig) -> dict:
    """Dense chunks, top 20 by the cross-encoder alone, collapsed to documents (what a 30-line loop does)."""
    r.config = base.replace(retrieval={"results": "chunks", "mode": "dense"},
                            rerank={"enabled": True, "candidates": 20, "fusion": "cross_encoder"})
    rankings = [list(dict.fromkeys(document_ids(r.search(q.query, k=20))))[:10] for q in queries]
    return quality(rankings, queries, k=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--tune", type=int, default=150, help="tuning queries per set (spread evenly)")
    ap.add_argument("--holdout", type=int, default=100, help="held-out queries per set (spread evenly)")
    ap.add_argument("--json", default=str(RESULTS / "fusion_curve.json"))
    args = ap.parse_args()
    sets = [s for s in args.sets.split(",") if s]
    rets, rrs = retrieval_settings(), rerank_settings()
    results: dict = {"sets": {}, "rule": __doc__.split("The choice")[1].strip()}
    for name in sets:
        docs, queries = labeled_set(name)
        tune, hold = split_queries(queries)
        tune, hold = pick_evenly(tune, args.tune), pick_evenly(hold, args.holdout)
        path = index_for(name, docs)
        out = results["sets"][name] = {"documents": len(docs), "tune_queries": len(tune), "holdout_queries": len(hold),
                                      "rows": {}}
        with Retriever.open(path, read_only=True) as r:
            base = r.config
            t0 = perf()
            for split, qs in (("tune", tune), ("holdout", hold)):
                out["rows"].setdefault("simple", {})[split] = simple_recipe(r, qs, base)
                for ret in rets:
                    plain = run(r, qs, base, ret, None)
                    out["rows"].setdefault(name_of(ret, None), {})[split] = plain
                    for rr in rrs:
                        row = out["rows"].setdefault(name_of(ret, rr), {"retrieval": name_of(ret, None)})
                        row[split] = run(r, qs, base, ret, rr)
                log(f"{name}: {split} split ({len(qs)} queries) done at {perf() - t0:.0f} s")
            r.config = base
    chosen = choose(results["sets"])
    results["chosen"] = chosen
    for name, out in results["sets"].items():
        print(f"\n## {name}: {out['documents']} documents, {out['tune_queries']} tuning + {out['holdout_queries']} "
              f"held-out queries (document level)\n")
        rows = []
        for row_name, row in out["rows"].items():
            t, h = row["tune"], row["holdout"]
            mark = " <- chosen" if row_name == chosen else ""
            rows.append([row_name + mark, fmt(t["recall@10"], ".3f"), fmt(t["mrr@10"], ".3f"),
                         fmt(h["recall@10"], ".3f"), fmt(h["mrr@10"], ".3f")])
        print(table(["setting", "tune R@10", "tune MRR@10", "held-out R@10", "held-out MRR@10"], rows, "l"))
    print(f"\nchosen on the tuning queries: {chosen}")
    for name, out in results["sets"].items():
        row, simple = out["rows"][chosen], out["rows"]["simple"]
        ret = out["rows"].get(row.get("retrieval", chosen), row)
        for split in ("tune", "holdout"):
            print(f"  {name} {split}: R@10 {row[split]['recall@10']:.3f} (retrieval {ret[split]['recall@10']:.3f}, "
                  f"simple {simple[split]['recall@10']:.3f}), MRR@10 {row[split]['mrr@10']:.3f} (retrieval "
                  f"{ret[split]['mrr@10']:.3f}, simple {simple[split]['mrr@10']:.3f})")
    write_json(Path(args.json), results)
    log(f"wrote {args.json}")
    return 0


def choose(sets: dict) -> str | None:
    """The rule of the module docstring, on the tuning split."""
    names = [n for n in next(iter(sets.values()))["rows"] if n != "simple"]

    def ok(n: str) -> bool:
        for out in sets.values():
            row, simple = out["rows"][n]["tune"], out["rows"]["simple"]["tune"]
            ret_name = out["rows"][n].get("retrieval")
            if ret_name is None:
                return False  # only reranked settings are candidates for the default
            ret = out["rows"][ret_name]["tune"]
            if row["recall@10"] < ret["recall@10"] - 0.01 or row["mrr@10"] < ret["mrr@10"]:
                return False
            if row["recall@10"] < simple["recall@10"] or row["mrr@10"] < simple["mrr@10"]:
                return False
        return True

    def mean(n: str, metric: str) -> float:
        return sum(out["rows"][n]["tune"][metric] for out in sets.values()) / len(sets)

    good = [n for n in names if ok(n)]
    if not good:
        log("no setting meets the rule on every set; picking the best mean MRR@10 among all reranked settings")
        good = [n for n in names if "no rerank" not in n]
    return max(good, key=lambda n: (mean(n, "mrr@10"), mean(n, "recall@10")))


if __name__ == "__main__":
    sys.exit(main())
