#!/usr/bin/env python
"""Issue 16's filter targets: the filter stage over the JSON `metadata` column beside the typed columns of
`[metadata] fields`, and a filtered search end to end beside an unfiltered one, same store, same run.

    python benchmarks/bench_filters.py                  # 1,000,000 documents (builds ~1.5 GB DuckDB + an IVF index)
    python benchmarks/bench_filters.py --docs 100000 --reps 10 --kind flat     # a smaller smoke run

The store: `--docs` documents with synthetic metadata {company: "c0".."c999", year: 1990..2024, tags: 0-3 of
the letters a..j} declared as `[metadata] fields = {company = "str", year = "int", tags = "list[str]"}`, and
random unit vectors for the vector part (embedding a million texts would take hours and does not touch the
filter). The texts are short synthetic strings ("document N of company cX").

- filter stage: `Store.filter_vids` for the four filters of the issue, the JSON path (`compile_filter(f)`, the
  SQL over `metadata`) and the typed path (`compile_where(f)`, which the store compiles over its typed columns)
  interleaved call by call: p50/p95 ms and the matches (which must be equal);
- end to end: `Retriever.search_by_vector(q, k=10, filters=f)` (the dense pipeline after embedding: filter,
  FAISS with the allowed vids or an exact scan of them, the row fetch, documents collapsed; no rerank),
  unfiltered and with each filter, a distinct random query vector per call, interleaved; and the same through
  `search(mode="hybrid", rerank=False)` with the lexical arm, given the same precomputed query vector.

JSON in benchmarks/results/bench_filters.json; the index is kept in benchmarks/results/filters-index-N/
(`--rebuild` makes it again).
"""
from __future__ import annotations

import argparse
import shutil
import sys

import common
import numpy as np
from common import Phase, latency, log, perf

FILTERS = {
    "company = c42": {"company": "c42"},
    "year >= 2020": {"year": {"$gte": 2020}},
    "$and($in 3 companies, year < 2010)": {"$and": [{"company": {"$in": ["c1", "c2", "c3"]}},
                                                     {"year": {"$lt": 2010}}]},
    "tags $contains a": {"tags": {"$contains": "a"}},
}
FIELDS = {"company": "str", "year": "int", "tags": "list[str]"}
ALPHABET = list("abcdefghij")


def build(path, n: int, kind: str, batch: int = 50_000):
    from retriever import Retriever, RetrieverConfig
    from retriever.prepared import Prepared

    config = RetrieverConfig().replace(metadata={"fields": FIELDS}, index={"kind": kind},
                                       retrieval={"mode": "dense"})
    rng = np.random.default_rng(0)
    t0 = perf()
    with Retriever.create(path, config) as r:
        dim = r.embedder.dim
        for start in range(0, n, batch):
            m = min(batch, n - start)
            company = rng.integers(0, 1000, m)
            year = rng.integers(1990, 2025, m)
            ntags = rng.integers(0, 4, m)
            ids = [f"d{start + i}" for i in range(m)]
            rows = [(ids[i], None, f"document {start + i} of company c{company[i]}",
                     {"company": f"c{company[i]}", "year": int(year[i]),
                      "tags": [ALPHABET[j] for j in rng.choice(10, ntags[i], replace=False)]}) for i in range(m)]
            vectors = rng.standard_normal((m, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            r.write_prepared(Prepared(ids, ids, rows, vectors))
            log(f"  {start + m:,} / {n:,} rows ({perf() - t0:.0f} s)")
        log("  saving (the index is built at the first save once the corpus supports it)")
    return round(perf() - t0, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=30, help="timed calls per filter and path (default 30)")
    ap.add_argument("--kind", default="auto", help="index.kind of the store (default auto: IVF-flat at 1M)")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--out", default=str(common.RESULTS / "bench_filters.json"))
    args = ap.parse_args()

    from retriever import Retriever
    from retriever.filters import compile_filter, compile_where

    path = common.RESULTS / f"filters-index-{args.docs}"
    if args.rebuild and path.exists():
        shutil.rmtree(path)
    built = None
    if not (path / "manifest.json").is_file():
        log(f"building {args.docs:,} documents at {path}")
        built = build(path, args.docs, args.kind)
    phases: dict = {}
    out: dict = {"machine": common.machine("duckdb", "faiss"), "docs": args.docs, "reps": args.reps,
                 "build_s": built, "fields": FIELDS, "filter_stage": {}, "end_to_end": {}}
    with Retriever.open(path, read_only=True) as r:
        store = r.store
        out["index"] = r.index_status()["kind"]
        log(f"opened: {len(r):,} documents, {out['index']} index; typed fields {store.fields}")
        # ---------------------------------------------------------------------------- the filter stage
        json_sql = {name: compile_filter(f) for name, f in FILTERS.items()}
        typed = {name: compile_where(f) for name, f in FILTERS.items()}
        rows = []
        for name in FILTERS:
            fns = {"json": lambda _, n=name: store.filter_vids(*json_sql[n]),
                   "typed": lambda _, n=name: store.filter_vids(*typed[n])}
            for fn in fns.values():  # warm-up: the columns in DuckDB's buffer pool
                fn(None)
            first = {k: fn(None) for k, fn in fns.items()}  # the rows of each path, compared (untimed)
            same = np.array_equal(np.sort(first["json"]), np.sort(first["typed"]))
            # a timed call keeps only its count, as a search drops its allowed vids when it returns: keeping all
            # 60 arrays (1.3 MB each for 150k matches) made every call fault in fresh pages, +5 ms a call here
            fns = {k: (lambda _, fn=fn: len(fn(None))) for k, fn in fns.items()}
            with Phase(f"filter {name}", phases):
                res = common.time_interleaved(fns, range(args.reps))
            counts = {k: len(v) for k, v in first.items()}
            if any(c != counts[k] for k, v in res.items() for c in v[1]):
                raise RuntimeError(f"{name}: a path returned a different number of rows between calls")
            lat = {k: latency(v[0]) for k, v in res.items()}
            # the typed path alone too: what a server running only typed filters sees (interleaved, each typed
            # call follows a JSON one that used both cores and DuckDB's buffers)
            with Phase(f"filter {name} typed alone", phases):
                alone = latency(common.time_interleaved({"typed": fns["typed"]}, range(args.reps))["typed"][0])
            lat["typed_alone"] = alone
            out["filter_stage"][name] = {"latency": lat, "matches": counts["typed"], "same_rows": bool(same)}
            rows.append([name, f"{counts['typed']:,}", common.fmt(lat["json"]["p50_ms"]),
                         common.fmt(lat["json"]["p95_ms"]), common.fmt(lat["typed"]["p50_ms"]),
                         common.fmt(lat["typed"]["p95_ms"]), common.fmt(alone["p50_ms"]),
                         common.fmt(alone["p95_ms"]),
                         f"{lat['json']['p50_ms'] / lat['typed']['p50_ms']:.0f}x", "yes" if same else "NO"])
            log(f"  {name}: json p50 {lat['json']['p50_ms']:.1f} ms, typed p50 {lat['typed']['p50_ms']:.1f} ms")
        # ------------------------------------------------------------------------------ end to end
        dim = r.vector_index.dim
        rng = np.random.default_rng(1)
        queries = rng.standard_normal((args.reps * 2, dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        e2e_rows = []
        for mode in ("dense", "hybrid"):
            def run(q, f=None, mode=mode):
                return r.search_by_vector(q, k=10, filters=f) if mode == "dense" else _hybrid(r, q, f)
            fns = {"unfiltered": lambda q, run=run: run(q)}
            fns.update({name: (lambda q, f=f, run=run: run(q, f)) for name, f in FILTERS.items()})
            for fn in fns.values():
                fn(queries[-1])
            with Phase(f"end to end {mode}", phases):
                res = common.time_interleaved(fns, list(queries[:args.reps]))
            lat = {k: latency(v[0]) for k, v in res.items()}
            base = lat["unfiltered"]["p50_ms"]
            out["end_to_end"][mode] = {k: {"latency": v, "hits": len(res[k][1][0])} for k, v in lat.items()}
            for k, v in lat.items():
                e2e_rows.append([mode, k, common.fmt(v["p50_ms"]), common.fmt(v["p95_ms"]),
                                 f"{v['p50_ms'] / base:.2f}x", len(res[k][1][0])])
            log(f"  end to end {mode}: unfiltered p50 {base:.1f} ms")
    out["phases"] = phases
    common.write_json(args.out, out)
    print(f"bench_filters: {args.docs:,} documents, metadata {FIELDS} declared as typed fields; "
          f"{out['index']} index; {args.reps} timed calls per cell, interleaved; {common.CORES} cores, "
          f"load average {out['machine']['loadavg']}")
    print("\nfilter stage (Store.filter_vids, ms): JSON column vs typed columns, same store, same run")
    print(common.table(["filter", "matches", "json p50", "json p95", "typed p50", "typed p95", "alone p50",
                        "alone p95", "speed-up", "same rows"], rows, "lr"))
    print("  typed: interleaved call by call with the JSON path; alone: the typed path's calls back to back")
    print("\nend to end without rerank (ms; random unit query vectors, no embedding): filtered vs unfiltered")
    print("  dense = Retriever.search_by_vector (filter, FAISS/exact, fetch); hybrid = the same plus the BM25 arm")
    print(common.table(["mode", "filter", "p50", "p95", "p50 vs unfiltered", "hits"], e2e_rows, "ll"))
    warning = common.busy_warning(phases)
    if warning:
        print("\n" + warning)
    return 0


def _hybrid(r, q, f):
    """search(mode="hybrid", rerank=False) with `q` as the query's vector: the searcher's embed stage is skipped
    by seeding its query cache with the vector under the query text."""
    text = "document of company"
    embedder = r.checked_embedder()
    key = (embedder.name, embedder.backend, embedder.max_seq_length)
    v = np.array(q, np.float32)
    v.setflags(write=False)
    r.searcher.query_cache.put((key, text), v)
    return r.search(text, k=10, filters=f, rerank=False, mode="hybrid")


if __name__ == "__main__":
    sys.exit(main())
