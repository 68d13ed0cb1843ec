"""The `retriever demo` command: the default pipeline on the bundled corpus, in a minute."""
from __future__ import annotations

import sys
import time
from pathlib import Path

DEMO_QUERIES = (
    "Why did the server crash?",
    "What is the effectiveness rate of the vaccine?",
    "How does photosynthesis work?",
    "What is the price of the enterprise plan?",
)



def run_demo(args, *, bad, scores) -> int:
    """`retriever demo`: ingest the bundled fitz-gov subset with a progress bar and print ranked hits of
    DEMO_QUERIES with their scores and the arms that found them. `bad` and `scores` are the CLI's error and hit
    formatting."""
    import shutil

    from . import Retriever, RetrieverConfig
    from .datasets import fitz_gov_subset

    if args.docs < 1:
        return bad(f"--docs {args.docs} must be at least 1")
    docs, queries = fitz_gov_subset(args.docs)
    index = Path(args.index)
    if index.exists():
        if not (index / "manifest.json").is_file():
            return bad(f"{index} exists and is not an index; pass another --index")
        shutil.rmtree(index)
    t0 = time.perf_counter()
    print(f"demo: {len(docs)} fitz-gov documents -> {index}", file=sys.stderr)
    with Retriever.create(index, RetrieverConfig()) as r:
        rep = r.upsert(docs, show_progress=True)
        r.save()
        t1 = time.perf_counter()
        print(f"ingested {rep.documents} documents ({rep.vectors} vectors) in {t1 - t0:.1f}s "
              f"({rep.documents / (t1 - t0):.1f} docs/s, model load included)\n")
        relevant = {q.query: set(q.relevant) for q in queries}
        for query in DEMO_QUERIES:
            t = time.perf_counter()
            hits = r.search(query, k=args.k)
            ms = (time.perf_counter() - t) * 1000
            print(f'query: "{query}"  ({ms:.0f} ms with rerank)')
            width = max([12] + [len(h.id) for h in hits])
            for h in hits:
                mark = " *" if h.id in relevant.get(query, ()) else ""
                label = h.metadata.get("title") or " ".join(h.text.split())[:60]
                print(f"  {h.rank:>2}. {h.id:<{width}} {scores(h)} {label}{mark}")
            print()
    print(f"done in {time.perf_counter() - t0:.1f}s; * = labeled relevant in fitz-gov; dense+lexical = found by "
          f"both arms (FAISS cosine and BM25), fused, then reranked by the cross-encoder. "
          f'Try: retriever search {index} "your question" -k 5')
    return 0
