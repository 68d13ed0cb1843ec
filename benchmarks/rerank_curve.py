#!/usr/bin/env python
"""The recall/latency curve that sets `[rerank] max_length` and `[rerank] candidates`.

    python benchmarks/rerank_curve.py                  # 150 holdout queries, 60 timed per setting
    python benchmarks/rerank_curve.py --queries 100 --timed 20 --lengths 128,256,384,512 --candidates 10,15,20
    python benchmarks/rerank_curve.py --quick          # 6 queries, 3 timed, 128 and 384 tokens: a smoke run

On the fitz-gov 1,000-document subset (the default corpus, built once into benchmarks/results/curve-index with
the shipped defaults; reused afterwards), for the int8 ONNX cross-encoder at each max_length: every holdout
query's top-N candidates (by cosine: `search(q, k=N, rerank=False)`) are scored once; MRR@10 and recall@10 at
document level (`common.quality`, i.e. `retriever.evaluation.metrics`) are computed for every candidate count from
those scores (the cross-encoder scores each pair on its own, so the top-c scores are a prefix of the top-N ones),
and the latency of reranking c candidates is timed directly on a subset of the queries.
The reference row is the torch fp32 CrossEncoder (`Reranker(backend="torch")`) at the model's own max_length
(512) on 20 candidates: what the peers in bench_speed run. Its scores are slow to get and are kept in
benchmarks/results/rerank_curve_reference.json, reused for a query only when its candidates are the same.
The holdout: distinct labeled query texts that bench_speed never times (it picks its queries evenly from the same
pool), picked evenly so the categories are represented as in the benchmark.

The rule: the fewest tokens per query (a noise-free proxy for latency: one pair per run makes compute linear in
tokens) whose MRR@10 is at least the reference's plus `--mrr-margin` (default -0.01: the int8 model itself costs
some MRR@10 against fp32 at every window, so no int8 setting matches fp32 exactly) and whose recall@10 is within
0.005 of it. Prints the grid and the choice; JSON in benchmarks/results/rerank_curve.json.
"""
from __future__ import annotations

import common  # first: offline hubs, quiet warnings, the repository on sys.path

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402

from bench_speed import SPEED_QUERIES  # noqa: E402
from common import RESULTS, fmt, log, pct, quality  # noqa: E402
from retriever import Retriever  # noqa: E402
from retriever.config import DEFAULT_RERANK_MODEL  # noqa: E402
from retriever.datasets import fitz_gov_subset  # noqa: E402
from retriever.rerank import Reranker  # noqa: E402

DOCS = 1000
REF_CANDIDATES, REF_LENGTH = 20, 512


def ranked_by(scores: np.ndarray, parents: list[str], c: int) -> list[str]:
    """The first c candidates' documents, by score (ties in retrieval order)."""
    return [parents[i] for i in sorted(range(min(c, len(scores))), key=lambda i: (-scores[i], i))]


def reference(sets: list[dict]) -> tuple[list[np.ndarray], list[float]]:
    """The fp32 reference's scores and ms per query, from the cache where a query had the same candidates."""
    cache = RESULTS / "rerank_curve_reference.json"
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    model = None
    scores, ms = [], []
    for i, s in enumerate(sets):
        ids = s["ids"][:REF_CANDIDATES]
        hit = saved.get(s["q"].id)
        if hit is None or hit.get("ids") != ids:
            if model is None:
                model = Reranker(DEFAULT_RERANK_MODEL, backend="torch", max_length=REF_LENGTH)
                model.score_pairs([("warm", "up")])
            secs, out = common.time_each(model.score_pairs, [[(s["q"].query, t) for t in s["texts"][:REF_CANDIDATES]]])
            hit = saved[s["q"].id] = {"ids": ids, "scores": out[0].tolist(), "ms": secs[0] * 1000}
        scores.append(np.asarray(hit["scores"], np.float32))
        ms.append(hit["ms"])
        if i % 25 == 24:
            log(f"  reference: {i + 1}/{len(sets)} queries, p50 so far {pct(ms, 50):.0f} ms")
    common.write_json(cache, saved)
    return scores, ms


def row(backend, max_length, candidates, rankings, sets, ms, **extra) -> dict:
    q = quality(rankings, [s["q"] for s in sets])
    return {"backend": backend, "max_length": max_length, "candidates": candidates, "recall@10": q["recall@10"],
            "mrr@10": q["mrr@10"], "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), **extra}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=150, help="holdout queries (quality)")
    ap.add_argument("--timed", type=int, default=60, help="of those, queries whose rerank is timed per setting")
    ap.add_argument("--lengths", default="128,192,256,384,512", help="max_length values of the int8 model")
    ap.add_argument("--candidates", default="10,15,20", help="candidate counts")
    ap.add_argument("--mrr-margin", type=float, default=-0.01)
    ap.add_argument("--quick", action="store_true", help="6 queries, 3 timed, lengths 128,384: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.queries, args.timed, args.lengths = 6, 3, "128,384"
    lengths = [int(x) for x in args.lengths.split(",")]
    cands = [int(x) for x in args.candidates.split(",")]
    top_n = max(cands + [REF_CANDIDATES])

    _, labeled = fitz_gov_subset(DOCS)
    # holdout: distinct query texts bench_speed never times, picked evenly so every category is represented as it
    # is there (an earlier tuning set of odd positions was 90% "dispute" queries, with no "abstention" ones, and
    # favoured short windows the benchmark set does not)
    pool = common.distinct_texts(labeled)
    benched = {q.id for q in common.pick_evenly(pool, SPEED_QUERIES)}
    holdout = common.pick_evenly([q for q in pool if q.id not in benched], args.queries)
    timed = common.pick_evenly(range(len(holdout)), args.timed)
    index = common.fitz_index(RESULTS / "curve-index", DOCS)
    with Retriever.open(index["path"], read_only=True) as r:
        sets = []
        for q in holdout:
            hits = r.search(q.query, k=top_n, rerank=False)
            sets.append({"q": q, "ids": [h.id for h in hits], "texts": [h.text for h in hits],
                         "parents": common.document_ids(hits)})
    log(f"{len(sets)} holdout queries, top-{top_n} candidates each; {len(timed)} timed per setting")

    rows = [row("retrieval only", None, None, [s["parents"] for s in sets], sets, [0.0])]
    ref_scores, ref_ms = reference(sets)
    ref = row("torch fp32 (reference)", REF_LENGTH, REF_CANDIDATES,
              [ranked_by(sc, s["parents"], REF_CANDIDATES) for sc, s in zip(ref_scores, sets)], sets, ref_ms)
    rows.append(ref)
    log(f"reference torch fp32 ml={REF_LENGTH} c={REF_CANDIDATES}: MRR@10 {ref['mrr@10']:.4f} recall@10 "
        f"{ref['recall@10']:.4f} p50/p95 {ref['p50_ms']:.0f}/{ref['p95_ms']:.0f} ms")

    for ml in lengths:
        model = Reranker(DEFAULT_RERANK_MODEL, backend="onnx", max_length=ml)
        model.score_pairs([("warm", "up")])
        pairs = [[(s["q"].query, t) for t in s["texts"]] for s in sets]
        scores = [model.score_pairs(p) for p in pairs]
        tokens = [[len(e.ids) for e in model.model.encode_pairs(p)] for p in pairs]
        for c in cands:
            secs, _ = common.time_each(model.score_pairs, [pairs[i][:c] for i in timed])
            rows.append(row("onnx int8", ml, c, [ranked_by(sc, s["parents"], c) for sc, s in zip(scores, sets)], sets,
                            [x * 1000 for x in secs], tokens_per_query=float(np.mean([sum(t[:c]) for t in tokens]))))
            x = rows[-1]
            log(f"onnx ml={ml:4d} c={c:3d}: MRR@10 {x['mrr@10']:.4f} ({x['mrr@10'] - ref['mrr@10']:+.4f}) recall@10 "
                f"{x['recall@10']:.4f} ({x['recall@10'] - ref['recall@10']:+.4f}) tokens {x['tokens_per_query']:.0f}")

    ok = [x for x in rows if x["backend"] == "onnx int8" and x["mrr@10"] >= ref["mrr@10"] + args.mrr_margin
          and x["recall@10"] >= ref["recall@10"] - 0.005]
    choice = min(ok, key=lambda x: x["tokens_per_query"]) if ok else None
    print(f"\nrerank_curve: fitz_gov_subset({DOCS}), {len(sets)} holdout queries (quality), {len(timed)} timed per "
          f"setting; document-level MRR@10 / recall@10")
    print(common.table(
        ["max_length", "candidates", "MRR@10", "recall@10", "tokens/query", "p50 ms", "p95 ms", "backend"],
        [[x["max_length"] or "-", x["candidates"] or "-", f"{x['mrr@10']:.4f}", f"{x['recall@10']:.4f}",
          fmt(x.get("tokens_per_query"), ".0f"), f"{x['p50_ms']:.0f}", f"{x['p95_ms']:.0f}",
          x["backend"] + ("  <- chosen" if x is choice else "")] for x in rows], align="rrrrrrrl"))
    if choice:
        print(f"\nchoice: max_length = {choice['max_length']}, candidates = {choice['candidates']} (fewest tokens with "
              f"MRR@10 at least the reference's {args.mrr_margin:+} and recall@10 within 0.005 of it)")
    else:
        print("\nno int8 setting meets the rule")
    out = RESULTS / "rerank_curve.json"
    common.write_json(out, {"machine": common.machine(), "queries": len(sets), "timed": len(timed), "rows": rows,
                            "choice": choice, "rule": {"mrr_margin": args.mrr_margin, "recall_tolerance": 0.005}})
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
