"""The curve the `[retrieval]` and `[rerank]` fusion defaults come from: every mode and fusion setting, every rerank
fusion and window, on every labeled set, judged per document, in one run.

    python benchmarks/fusion_curve.py [--sets fitz-gov,fitz-gov-reports,python-docs] [--tune N] [--holdout N]

Each set's queries are split by a stable hash of their id (`retriever.datasets.split_queries`, 30% held out).
The choice is made on the tuning queries only, by this rule, and then reported on the held-out ones:
  1. on every set, the reranked output keeps recall@10 >= the same retrieval setting's - 0.01 and MRR@10 >= the
     retrieval setting's (the reranker must not sink recall);
  2. on every set, MRR@10 and recall@10 at least those of the simple recipe a user would write (dense chunks, the
     top 20 reranked by the cross-encoder alone, collapsed to documents: `simple` below);
  3. on the golden set (evals/golden.jsonl: the release gate's 15 hand-written queries over the default corpus,
     all of them in both splits; paraphrases, so the lexical arm is weak there on purpose), MRR@10 and recall@10
     within the gate's `max_drop` (evals/gate.toml) of the simple recipe: the default must pass the release gate;
  4. among those, the highest mean MRR@10 over the three sets (ties: the higher mean recall@10).
How: per set, retrieval setting and window c, two searches per query on one open index (the config setter):
`search(q, k=c, rerank=False)` is the retrieval order (each arm retrieves c documents, as `[retrieval]
candidates = 0` does with `[rerank] candidates = c`) and `search(q, k=c)` with `fusion = "cross_encoder"` gives the
cross-encoder's score of each of them (its score cache makes every further setting cheap). Every rerank fusion is
then `retriever.fusion.rerank_order` over those scores, exactly as the searcher orders them; the chosen setting is
run once more through `Retriever.search` on every set's tuning queries and must give the same rankings (printed
as `check`). Latency is not measured here (bench_quality.py and bench_hybrid.py do that).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import shutil
import sys
from pathlib import Path

from common import RESULTS, document_ids, fmt, log, perf, pick_evenly, quality, table, write_json

from retriever import Retriever, RetrieverConfig
from retriever.datasets import labeled_set, split_queries
from retriever.fusion import rerank_order

SETS = ("fitz-gov", "fitz-gov-reports", "python-docs")
RRF_KS = (20, 60)
WEIGHTS = (0.3, 0.5, 0.7)
WINDOWS = (10, 15, 20)
RERANK_RRF_KS = (5, 60)
RERANK_WEIGHTS = (1.0, 2.0, 3.0)
BLEND_WEIGHTS = (4.0, 7.0, 10.0, 15.0, 23.0, 35.0)
GOLDEN = "golden"


def retrieval_settings() -> list[dict]:
    out = [{"mode": "dense"}, {"mode": "lexical"}]
    out += [{"mode": "hybrid", "fusion": "rrf", "rrf_k": k, "weight": w} for k, w in itertools.product(RRF_KS, WEIGHTS)]
    out += [{"mode": "hybrid", "fusion": "convex", "weight": w} for w in WEIGHTS]
    return out


def rerank_settings() -> list[dict]:
    out = [{"fusion": "cross_encoder"}]
    out += [{"fusion": "rrf", "rrf_k": k, "retrieval_weight": w} for k, w in itertools.product(RERANK_RRF_KS,
                                                                                             RERANK_WEIGHTS)]
    out += [{"fusion": "blend", "retrieval_weight": w} for w in BLEND_WEIGHTS]
    return out


def ret_name(ret: dict) -> str:
    if ret["mode"] != "hybrid":
        return ret["mode"]
    return f"hybrid {ret['fusion']}" + (f" k={ret['rrf_k']}" if ret["fusion"] == "rrf" else "") + f" w={ret['weight']}"


def rr_name(rr: dict, c: int) -> str:
    if rr["fusion"] == "cross_encoder":
        return f"ce c={c}"
    if rr["fusion"] == "blend":
        return f"blend rw={rr['retrieval_weight']:g} c={c}"
    return f"rrf k={rr['rrf_k']} rw={rr['retrieval_weight']:g} c={c}"


def index_for(name: str, docs) -> Path:
    """An index of the set's documents under benchmarks/results/indexes, reused while the documents are the same."""
    digest = hashlib.sha256("\n".join(f"{d.id}\t{len(d.text)}" for d in docs).encode()).hexdigest()[:12]
    path = RESULTS / "indexes" / f"{name}-{digest}"
    if not (path / "manifest.json").is_file():
        log(f"{name}: building an index of {len(docs)} documents at {path}")
        t0 = perf()
        tmp = path.with_name(path.name + ".building")  # renamed into place when complete: a killed run leaves none
        shutil.rmtree(tmp, ignore_errors=True)
        with Retriever.create(tmp, RetrieverConfig()) as r:
            rep = r.upsert(docs)
        tmp.rename(path)
        log(f"{name}: {rep.documents} documents, {rep.vectors} vectors in {perf() - t0:.0f} s")
    return path


def passes(r: Retriever, queries, base: RetrieverConfig, ret: dict, c: int) -> list[tuple[list[str], list[float]]]:
    """Per query: the retrieval order of c documents and the cross-encoder's score of each."""
    r.config = base.replace(retrieval={**ret, "candidates": 0},
                            rerank={"enabled": True, "candidates": c, "fusion": "cross_encoder"})
    out = []
    for q in queries:
        plain = r.search(q.query, k=c, rerank=False)
        ce = {h.document_id: h.rerank_score for h in r.search(q.query, k=c)}
        order = document_ids(plain)
        out.append((order, [ce[d] for d in order], [h.score for h in plain]))
    return out


def reranked(order: list[str], ce: list[float], fused: list[float], rr: dict) -> list[str]:
    ranked = rerank_order(ce, how=rr["fusion"], rrf_k=rr.get("rrf_k", 60),
                          retrieval_weight=rr.get("retrieval_weight", 1.0), retrieval_scores=fused)
    return [order[i] for i, _ in ranked][:10]


def load(name: str):
    """A set's documents and its (tuning, held-out) queries; golden: the default corpus and every golden query
    in both."""
    if name == GOLDEN:
        from retriever.evaluation.queries import load_queries

        docs, _ = labeled_set("fitz-gov-subset")
        queries = load_queries(str(Path(__file__).resolve().parent.parent / "evals" / "golden.jsonl"))
        return "fitz-gov-subset", docs, queries, queries
    docs, queries = labeled_set(name)
    tune, hold = split_queries(queries)
    return name, docs, tune, hold


def max_drop() -> float:
    import tomllib

    gate = Path(__file__).resolve().parent.parent / "evals" / "gate.toml"
    return float(tomllib.loads(gate.read_text()).get("max_drop", 0.0))


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
    ap.add_argument("--holdout", type=int, default=80, help="held-out queries per set (spread evenly)")
    ap.add_argument("--show", type=int, default=30, help="rows printed (best by the rule); the JSON has all")
    ap.add_argument("--json", default=str(RESULTS / "fusion_curve.json"))
    args = ap.parse_args()
    sets = [s for s in args.sets.split(",") if s] + [GOLDEN]
    results: dict = {"sets": {}, "rule": __doc__.split("The choice")[1].split("How:")[0].strip()}
    splits: dict = {}
    for name in sets:
        index_name, docs, tune, hold = load(name)
        if name != GOLDEN:
            tune, hold = pick_evenly(tune, args.tune), pick_evenly(hold, args.holdout)
        splits[name] = (index_name, docs, {"tune": tune, "holdout": hold})
        out = results["sets"][name] = {"documents": len(docs), "tune_queries": len(tune), "holdout_queries": len(hold),
                                      "rows": {}}
        rows = out["rows"]
        with Retriever.open(index_for(index_name, docs), RetrieverConfig(), read_only=True) as r:
            base = r.config
            t0 = perf()
            for split, qs in (("tune", tune), ("holdout", hold)):
                rows.setdefault("simple", {})[split] = simple_recipe(r, qs, base)
                for ret, c in itertools.product(retrieval_settings(), WINDOWS):
                    got = passes(r, qs, base, ret, c)
                    plain_name = f"{ret_name(ret)} | no rerank, depth {c}"
                    plain = rows.setdefault(plain_name, {"retrieval": ret})
                    plain[split] = quality([o[:10] for o, _, _ in got], qs, k=10)
                    for rr in rerank_settings():
                        row = rows.setdefault(f"{ret_name(ret)} | {rr_name(rr, c)}",
                                              {"retrieval": ret, "rerank": {**rr, "candidates": c},
                                               "retrieval_row": plain_name})
                        row[split] = quality([reranked(o, s, f, rr) for o, s, f in got], qs, k=10)
                log(f"{name}: {split} split ({len(qs)} queries) done at {perf() - t0:.0f} s")
    chosen = choose(results["sets"])
    results["chosen"] = chosen
    results["check"] = check(results, splits, chosen)
    report(results, args.show)
    write_json(Path(args.json), results)
    log(f"wrote {args.json}")
    return 0


def ok(sets: dict, n: str, split: str = "tune") -> bool:
    for name, out in sets.items():
        row, simple = out["rows"][n], out["rows"]["simple"][split]
        if "retrieval_row" not in row:
            return False  # only reranked settings are candidates for the default
        if name == GOLDEN:
            drop = max_drop()
            if row[split]["recall@10"] < simple["recall@10"] - drop or row[split]["mrr@10"] < simple["mrr@10"] - drop:
                return False
            continue
        got, ret = row[split], out["rows"][row["retrieval_row"]][split]
        if got["recall@10"] < ret["recall@10"] - 0.01 or got["mrr@10"] < ret["mrr@10"]:
            return False
        if got["recall@10"] < simple["recall@10"] or got["mrr@10"] < simple["mrr@10"]:
            return False
    return True


def mean(sets: dict, n: str, metric: str, split: str = "tune") -> float:
    vals = [out["rows"][n][split][metric] for name, out in sets.items() if name != GOLDEN]
    return sum(vals) / len(vals)


def choose(sets: dict) -> str | None:
    """The rule of the module docstring, on the tuning split."""
    names = [n for n in next(iter(sets.values()))["rows"] if "retrieval_row" in next(iter(sets.values()))["rows"][n]]
    good = [n for n in names if ok(sets, n)]
    if not good:
        log("no setting meets the rule on every set; picking the best mean MRR@10 among all reranked settings")
        good = names
    return max(good, key=lambda n: (mean(sets, n, "mrr@10"), mean(sets, n, "recall@10")))


def check(results: dict, splits: dict, chosen: str) -> dict:
    """The chosen setting through Retriever.search itself, on every set's tuning queries: the same rankings?"""
    out = {}
    for name, (index_name, docs, qs) in splits.items():
        row = results["sets"][name]["rows"][chosen]
        with Retriever.open(index_for(index_name, docs), RetrieverConfig(), read_only=True) as r:
            r.config = r.config.replace(retrieval={**row["retrieval"], "candidates": 0},
                                        rerank={"enabled": True, **row["rerank"]})
            got = quality([document_ids(r.search(q.query, k=10)) for q in qs["tune"]], qs["tune"], k=10)
        out[name] = {"library": got, "same": all(abs(got[m] - row["tune"][m]) < 1e-9 for m in ("recall@10", "mrr@10"))}
    return out


def report(results: dict, show: int) -> None:
    sets = results["sets"]
    names = list(sets)
    chosen = results["chosen"]
    every = list(next(iter(sets.values()))["rows"])
    ranked = sorted((n for n in every if "retrieval_row" in sets[names[0]]["rows"][n]),
                    key=lambda n: (ok(sets, n), mean(sets, n, "mrr@10"), mean(sets, n, "recall@10")), reverse=True)
    plain = [n for n in every if "| no rerank" in n]
    head = ["setting"] + [f"{n} tune R/MRR, held-out MRR" for n in names] + ["mean tune MRR (3 sets)", "rule"]
    rows = []
    for n in ["simple"] + plain + [""] + ranked[:show]:
        if not n:
            rows.append([])
            continue
        cells = []
        for s in names:
            t, h = sets[s]["rows"][n]["tune"], sets[s]["rows"][n]["holdout"]
            cells.append(f"{fmt(t['recall@10'], '.3f')}/{fmt(t['mrr@10'], '.3f')}  {fmt(h['mrr@10'], '.3f')}")
        rule = ("PASS" if ok(sets, n) else "fail") if "retrieval_row" in sets[names[0]]["rows"][n] else ""
        rows.append([n + (" <- chosen" if n == chosen else ""), *cells, f"{mean(sets, n, 'mrr@10'):.3f}", rule])
    print("\n## The fusion curve (document level; the reranked settings best first by the rule, "
          f"{len(ranked)} in all, {sum(ok(sets, n) for n in ranked)} pass)\n")
    for s in names:
        print(f"- {s}: {sets[s]['documents']} documents, {sets[s]['tune_queries']} tuning + "
              f"{sets[s]['holdout_queries']} held-out queries")
    print()
    print(table(head, rows, "l"))
    print(f"\nchosen on the tuning queries: {chosen}")
    for name, out in sets.items():
        row, simple = out["rows"][chosen], out["rows"]["simple"]
        ret = out["rows"][row["retrieval_row"]]
        for split in ("tune", "holdout"):
            print(f"  {name} {split}: R@10 {row[split]['recall@10']:.3f} (retrieval {ret[split]['recall@10']:.3f}, "
                  f"simple {simple[split]['recall@10']:.3f}), MRR@10 {row[split]['mrr@10']:.3f} (retrieval "
                  f"{ret[split]['mrr@10']:.3f}, simple {simple[split]['mrr@10']:.3f})")
    for name, c in results["check"].items():
        print(f"  check {name}: Retriever.search gives R@10 {c['library']['recall@10']:.3f} MRR@10 "
              f"{c['library']['mrr@10']:.3f}: {'same as the curve' if c['same'] else 'DIFFERENT from the curve'}")


if __name__ == "__main__":
    sys.exit(main())
