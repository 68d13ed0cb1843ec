#!/usr/bin/env python
"""Which BM25 library for the lexical arm (issue 14): bm25s and tantivy side by side, same corpus, same run.

    pip install -c constraints.txt -e ".[bench-lexical]"     # bm25s, PyStemmer, tantivy
    python benchmarks/bench_lexical.py                       # the full fitz-gov corpus, 200 distinct queries
    python benchmarks/bench_lexical.py --quick               # 500 documents, 40 queries

Both index whole fitz-gov documents with English stop words and the Snowball English stemmer, and score BM25
(k1 = 1.2, b = 0.75 for both: tantivy's fixed values). Per library, one row each:
- build: index every document and write it to disk; the folder's size;
- open: load it back from disk (a new process would do this);
- query: top-10 for distinct labeled queries, one at a time: p50/p95 ms, and recall@10 / MRR@10 per document
  through `retriever.evaluation.metrics` (common.quality);
- filtered: the same queries restricted to a random 10% of the documents (what a metadata filter leaves), and
  how many hits fell outside it (must be 0);
- update: replace 50 documents, add 50, delete 50, and make it searchable; bm25s has no incremental update, so
  its row is a rebuild of the whole index (tokenize + index + save).
JSON in benchmarks/results/lexical.json.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import common
import numpy as np
from common import log, perf

K, K1, B = 10, 1.2, 0.75
UPDATES = 50


class Bm25s:
    name = "bm25s"

    def __init__(self, folder: Path):
        import bm25s
        import Stemmer

        self.bm25s, self.folder, self.stemmer = bm25s, folder, Stemmer.Stemmer("english")

    def _tokens(self, texts):
        return self.bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False)

    def build(self, ids: list[str], texts: list[str]) -> None:
        self.ids = list(ids)
        self.model = self.bm25s.BM25(k1=K1, b=B, method="lucene")
        self.model.index(self._tokens(texts), show_progress=False)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.model.save(str(self.folder))
        (self.folder / "ids.txt").write_text("\n".join(self.ids))

    def open(self) -> None:
        self.model = self.bm25s.BM25.load(str(self.folder))
        self.ids = (self.folder / "ids.txt").read_text().split("\n")

    def search(self, query: str, allowed: np.ndarray | None = None) -> list[str]:
        tokens = self._tokens([query])
        if not tokens.vocab:
            return []
        mask = None
        if allowed is not None:
            mask = np.zeros(len(self.ids), np.float32)
            mask[allowed] = 1.0
        k = min(K, len(self.ids))
        docs, scores = self.model.retrieve(tokens, k=k, show_progress=False, weight_mask=mask, n_threads=1)
        return [self.ids[d] for d, s in zip(docs[0], scores[0]) if s > 0]

    def update(self, ids, texts, upserts: dict[str, str], deletes: set[str]) -> None:
        """No incremental API: the whole index again."""
        by_id = dict(zip(ids, texts))
        by_id.update(upserts)
        for d in deletes:
            by_id.pop(d, None)
        self.build(list(by_id), list(by_id.values()))


class Tantivy:
    name = "tantivy"

    def __init__(self, folder: Path):
        import tantivy

        self.t, self.folder = tantivy, folder

    def _schema(self):
        sb = self.t.SchemaBuilder()
        sb.add_integer_field("pos", stored=True, indexed=True, fast=True)
        sb.add_text_field("id", stored=True, tokenizer_name="raw")
        sb.add_text_field("body", stored=False, tokenizer_name="en")
        return sb.build()

    def _register(self) -> None:
        t = self.t
        analyzer = (t.TextAnalyzerBuilder(t.Tokenizer.simple()).filter(t.Filter.remove_long(40))
                    .filter(t.Filter.lowercase()).filter(t.Filter.stopword("english"))
                    .filter(t.Filter.stemmer("english")).build())
        self.index.register_tokenizer("en", analyzer)
        self.schema = self.index.schema

    def build(self, ids: list[str], texts: list[str]) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.index = self.t.Index(self._schema(), path=str(self.folder))
        self._register()
        writer = self.index.writer(heap_size=128_000_000, num_threads=1)
        for pos, (i, text) in enumerate(zip(ids, texts)):
            writer.add_document(self.t.Document(pos=pos, id=i, body=text))
        writer.commit()
        writer.wait_merging_threads()
        self.n = len(ids)
        self.index.reload()

    def open(self) -> None:
        self.index = self.t.Index.open(str(self.folder))
        self._register()
        self.index.reload()

    def search(self, query: str, allowed: np.ndarray | None = None) -> list[str]:
        q = self.index.parse_query_lenient(query, ["body"])[0]
        if allowed is not None:
            only = self.t.Query.term_set_query(self.schema, "pos", [int(p) for p in allowed])
            q = self.t.Query.boolean_query([(self.t.Occur.Must, q), (self.t.Occur.Must, only)])
        searcher = self.index.searcher()
        hits = searcher.search(q, K).hits
        return [searcher.doc(addr)["id"][0] for _, addr in hits]

    def update(self, ids, texts, upserts: dict[str, str], deletes: set[str]) -> None:
        writer = self.index.writer(heap_size=64_000_000, num_threads=1)
        for i in [*upserts, *deletes]:
            writer.delete_documents_by_term("id", i)
        for j, (i, text) in enumerate(upserts.items()):
            writer.add_document(self.t.Document(pos=self.n + j, id=i, body=text))
        writer.commit()
        writer.wait_merging_threads()
        self.n += len(upserts)
        self.index.reload()


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def run(lib, ids, texts, queries, allowed, upserts, deletes) -> dict:
    out: dict = {}
    t0 = perf()
    lib.build(ids, texts)
    out["build_s"], out["disk_mb"] = perf() - t0, folder_bytes(lib.folder) / 2**20
    t0 = perf()
    lib.open()
    out["open_ms"] = (perf() - t0) * 1000
    for q in queries[:3]:  # untimed warm-up
        lib.search(q.query)
    secs, ranked = common.time_each(lambda q: lib.search(q.query), queries)
    out["query"] = {**common.latency(secs), **common.quality(ranked, queries, K)}
    secs, ranked = common.time_each(lambda q: lib.search(q.query, allowed), queries)
    allowed_ids = {ids[p] for p in allowed}
    out["filtered"] = {**common.latency(secs), "outside_filter": sum(d not in allowed_ids for r in ranked for d in r)}
    t0 = perf()
    lib.update(ids, texts, upserts, deletes)
    out["update_ms"] = (perf() - t0) * 1000
    probe = next(iter(upserts.values()))[:200]
    after = lib.search(probe)
    out["update_visible"] = bool(after) and after[0] in upserts and not any(d in deletes for d in after)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=0, help="documents (default 0: the full fitz-gov corpus)")
    ap.add_argument("--queries", type=int, default=200, help="distinct labeled queries timed (default 200)")
    ap.add_argument("--quick", action="store_true", help="500 documents, 40 queries")
    ap.add_argument("--out", type=Path, default=common.RESULTS / "lexical.json")
    args = ap.parse_args()
    if args.quick:
        args.docs, args.queries = 500, 40
    from retriever.datasets import fitz_gov_documents, fitz_gov_queries, fitz_gov_subset

    if args.docs:
        docs, labeled = fitz_gov_subset(args.docs)
    else:
        docs, labeled = fitz_gov_documents(), fitz_gov_queries()
    known = {d.id for d in docs}
    labeled = [q for q in common.distinct_texts(labeled) if any(r in known for r in q.relevant)]
    queries = common.pick_evenly(labeled, args.queries)
    ids, texts = [d.id for d in docs], [d.text for d in docs]
    rng = np.random.default_rng(0)
    allowed = np.sort(rng.choice(len(ids), max(1, len(ids) // 10), replace=False))
    picked = rng.choice(len(ids), 2 * UPDATES, replace=False)
    upserts = {ids[p]: f"Rewritten: {texts[p][:400]} zephyrine quartzite {n}" for n, p in enumerate(picked[:UPDATES])}
    upserts.update({f"new-{n}": f"A new note about zephyrine quartzite turbines, number {n}." for n in range(UPDATES)})
    deletes = {ids[p] for p in picked[UPDATES:]}
    log(f"{len(ids)} documents, {len(queries)} distinct labeled queries, filter keeps {len(allowed)} documents")

    tmp = Path(tempfile.mkdtemp(prefix="bench-lexical-"))
    results = {"machine": common.machine("bm25s", "tantivy"), "documents": len(ids),
               "queries": len(queries), "filter_documents": len(allowed), "k": K, "libraries": {}}
    try:
        for cls in (Bm25s, Tantivy):
            log(f"{cls.name}")
            with common.Phase() as ph:
                results["libraries"][cls.name] = run(cls(tmp / cls.name), ids, texts, queries, allowed, upserts,
                                                     deletes)
            results["libraries"][cls.name]["phase"] = ph.record()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    common.write_json(args.out, results)

    rows = []
    for name, r in results["libraries"].items():
        q, f = r["query"], r["filtered"]
        rows.append([name, common.fmt(r["build_s"], ".2f"), common.fmt(r["disk_mb"], ".1f"),
                     common.fmt(r["open_ms"], ".0f"), common.fmt(q["p50_ms"], ".2f"), common.fmt(q["p95_ms"], ".2f"),
                     common.fmt(q[f"recall@{K}"], ".3f"), common.fmt(q[f"mrr@{K}"], ".3f"),
                     common.fmt(f["p50_ms"], ".2f"), str(f["outside_filter"]), common.fmt(r["update_ms"], ".0f"),
                     "yes" if r["update_visible"] else "NO"])
    print(f"\nbench_lexical: {len(ids)} fitz-gov documents, {len(queries)} distinct labeled queries, top-{K}, "
          f"English stop words + Snowball stemmer, BM25 k1={K1} b={B}; filter = a random {len(allowed)} documents; "
          f"update = {UPDATES} replaced + {UPDATES} added + {UPDATES} deleted (bm25s: a full rebuild)")
    print(common.table(["library", "build s", "disk MB", "open ms", "query p50 ms", "p95 ms", f"R@{K}", f"MRR@{K}",
                        "filtered p50 ms", "outside filter", "update ms", "update seen"], rows))
    warning = common.busy_warning({n: r["phase"] for n, r in results["libraries"].items()})
    if warning:
        print(warning)
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
