"""fitz-gov in full (5,010 documents) against issue 14's targets (MRR@10 >= .80, recall@10 >= .95): the shipped
default beside the pipeline before issue 14 (chunks, dense, the cross-encoder alone), same index, same run.

    python benchmarks/bench_fitz_full.py                 # all 2,812 labeled queries (about 1.2 s each, 2 cores)
    python benchmarks/bench_fitz_full.py --queries 400   # an even spread over the categories

Each pipeline runs `search(q, k=10)` with and without rerank; quality per document (a chunk counts for its
parent, once), so the old pipeline's 10 chunks may hold fewer than 10 documents, as its users saw.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import RESULTS, document_ids, log, pick_evenly, quality, table, write_json

from retriever import Retriever, RetrieverConfig
from retriever.datasets import labeled_set


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=0, help="an even spread of N labeled queries (0 = all)")
    ap.add_argument("--json", default=str(RESULTS / "fitz_full.json"))
    args = ap.parse_args()
    from fusion_curve import index_for

    docs, qs = labeled_set("fitz-gov")
    qs = pick_evenly(qs, args.queries) if args.queries else qs
    pipelines = {"default (documents, hybrid, blend)": RetrieverConfig(),
                 "before issue 14 (chunks, dense, ce)": RetrieverConfig().replace(
                     retrieval={"results": "chunks", "mode": "dense"})}
    results, rows = {}, []
    with Retriever.open(index_for("fitz-gov", docs), RetrieverConfig(), read_only=True) as r:
        for name, cfg in pipelines.items():
            r.config = cfg
            for stage, rerank in (("retrieve", False), ("rerank", True)):
                ranks = [list(dict.fromkeys(document_ids(r.search(q.query, k=10, rerank=rerank))))[:10] for q in qs]
                m = results.setdefault(name, {})[stage] = quality(ranks, qs, k=10)
                log(f"{name} {stage}: R@10 {m['recall@10']:.3f} MRR@10 {m['mrr@10']:.3f}")
            rows.append([name, f"{results[name]['retrieve']['recall@10']:.3f} / {results[name]['retrieve']['mrr@10']:.3f}",
                         f"{results[name]['rerank']['recall@10']:.3f} / {results[name]['rerank']['mrr@10']:.3f}"])
    print(f"\n## fitz-gov, {len(docs)} documents, {len(qs)} labeled queries (document level)\n")
    print(table(["pipeline", "R@10 / MRR@10 retrieve", "R@10 / MRR@10 rerank"], rows, "l"))
    d = results["default (documents, hybrid, blend)"]["rerank"]
    print(f"\n  {'PASS' if d['mrr@10'] >= 0.80 else 'FAIL'}  default MRR@10 >= .80: {d['mrr@10']:.3f}")
    print(f"  {'PASS' if d['recall@10'] >= 0.95 else 'FAIL'}  default recall@10 >= .95: {d['recall@10']:.3f}")
    write_json(Path(args.json), {"queries": len(qs), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
