#!/usr/bin/env python
"""rag-retriever inside LlamaIndex vs LlamaIndex's own stack, side by side in one run, same corpus and models.

    pip install -c constraints.txt -e ".[bench-llama-index]"
    python benchmarks/bench_llama_index.py                 # 1,000 fitz-gov docs, 100 labeled queries
    python benchmarks/bench_llama_index.py --queries 20    # quicker
    python benchmarks/bench_llama_index.py --quick         # 100 docs, 3 queries, 1 warm-up: a smoke run

Pipelines (embedder all-MiniLM-L6-v2 and cross-encoder ms-marco-MiniLM-L-12-v2 from the same local folders):
  ours      LlamaIndexRetriever(Retriever, k=10, rerank=True) over a Retriever with the shipped defaults
            (`RetrieverConfig()`: int8 onnx models, [rerank] candidates and max_length as configured; the run
            prints them); retrieve-only is LlamaIndexRetriever(k=20, rerank=False).
  ours+pp   (--pp) LlamaIndexRetriever(k=20, rerank=False) + our CrossEncoderReranker(top_n=10) as a node
            postprocessor (off by default: it adds a third rerank per query).
  llama     peers.LlamaIndexPipeline (the same class bench_speed runs): VectorStoreIndex on
            FaissVectorStore(IndexFlatIP(384)) with HuggingFaceEmbedding(normalize=True) (inner product of unit
            vectors = cosine), LlamaIndex defaults otherwise (SentenceSplitter 1024/200, metadata embedded as in
            MetadataMode.EMBED), as_retriever(similarity_top_k=20) then SentenceTransformerRerank(top_n=10) (which
            scores the node text with its metadata, max_length 512).

Queries are distinct labeled texts picked evenly, warm-up texts apart from them. Every stage runs on every query,
each call timed on its own, the order rotating query by query (`common.time_interleaved`) so machine noise hits all
alike; our caches are cleared before every call. Stages: retrieve only (top-20) and retrieve + rerank (top-10);
recall@10 and MRR@10 at document level through `common.quality` (a chunk counts for its parent: ours via
`retriever.documents.document_id`, LlamaIndex via node.ref_doc_id; the retrieve-only rows rank the top-20's unique
documents and keep 10). torch runs 2 threads for LlamaIndex. JSON: benchmarks/results/llama_index.json.
"""
from __future__ import annotations

import common  # first: offline hubs, quiet warnings, the repository on sys.path

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from common import Phase, latency, log, perf, quality  # noqa: E402
from peers import LlamaIndexPipeline, PeerUnavailable  # noqa: E402
from retriever import Retriever, RetrieverConfig  # noqa: E402
from retriever.datasets import fitz_gov_subset  # noqa: E402
from retriever.documents import document_id  # noqa: E402
from retriever.models import resolve_embedder, resolve_reranker  # noqa: E402

THREADS = 2
EMBEDDER = "builtin:all-MiniLM-L6-v2"
RERANKER = "builtin:ms-marco-MiniLM-L-12-v2"
STAGES = [("ours_retrieve", "ours", "retrieve top-20"), ("ours_rerank", "ours", "+ rerank (rerank=True, k=10)"),
          ("ours_pp", "ours", "+ CrossEncoderReranker pp"), ("llama_retrieve", "llama", "retrieve top-20"),
          ("llama_rerank", "llama", "+ SentenceTransformerRerank")]


def ours_docs(nodes) -> list[str]:
    return [document_id(n.node.node_id, n.node.metadata) for n in nodes]


def peer_docs(nodes) -> list[str]:
    return [n.node.ref_doc_id for n in nodes]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=1000, help="fitz_gov_subset size (default 1000)")
    ap.add_argument("--queries", type=int, default=100, help="distinct labeled queries, picked evenly (default 100)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up queries (other texts)")
    ap.add_argument("--pp", action="store_true",
                    help="also time ours+pp (our CrossEncoderReranker as a postprocessor over k=20)")
    ap.add_argument("--quick", action="store_true", help="100 docs, 3 queries, 1 warm-up: a smoke run")
    ap.add_argument("--out", type=Path, default=common.RESULTS / "llama_index.json")
    args = ap.parse_args()
    if args.quick:
        args.docs, args.queries, args.warmup = 100, 3, 1

    docs, labeled = fitz_gov_subset(args.docs)
    pool = common.distinct_texts(labeled)
    queries = common.pick_evenly(pool, args.queries)
    chosen = {q.id for q in queries}
    warm = [q.query for q in pool if q.id not in chosen][:args.warmup]
    emb_path, rr_path = str(resolve_embedder(EMBEDDER)), str(resolve_reranker(RERANKER))
    log(f"{len(docs)} docs, {len(queries)} of {len(pool)} distinct labeled queries; embedder {emb_path}; "
        f"reranker {rr_path}")
    t0 = perf()
    try:
        peer = LlamaIndexPipeline(emb_path, rr_path)  # loads LlamaIndex's embedder and cross-encoder
    except PeerUnavailable as e:
        sys.exit(f"bench_llama_index needs the LlamaIndex peer: {e}")
    models_s = perf() - t0
    import torch

    from retriever.integrations.llama_index import CrossEncoderReranker, LlamaIndexRetriever

    torch.set_num_threads(THREADS)
    result: dict = {"docs": len(docs), "queries": len(queries), "warmup": len(warm),
                    "machine_start": common.machine("torch", "faiss", "llama_index.core")}
    tmp = Path(tempfile.mkdtemp(prefix="bench-li-"))
    try:
        config = RetrieverConfig()
        result["ours_config"] = {k: config.to_dict()[k] for k in ("embedding", "rerank")}
        with Phase() as ph:
            r = Retriever.create(tmp / "ours", config)
            report = r.upsert(docs)
        log(f"ours: create + upsert {ph.wall:.1f} s ({report.vectors} vectors, {report.chunked} docs chunked)")
        result["ours_ingest"] = {"create_and_upsert_s": ph.wall, "vectors": report.vectors,
                                 "chunked_docs": report.chunked, "note": "includes the embedder's load"}
        with Phase() as ph:
            peer.build(docs)
        log(f"llama: models {models_s:.1f} s, index build {ph.wall:.1f} s ({peer.nodes} nodes)")
        result["llama_ingest"] = {"models_load_s": models_s, "index_build_s": ph.wall, "nodes": peer.nodes}

        ours_rr = LlamaIndexRetriever(r, k=10, rerank=True)
        ours_top20 = LlamaIndexRetriever(r, k=20, rerank=False)
        fns = {"ours_retrieve": ours_top20.retrieve, "ours_rerank": ours_rr.retrieve,
               "llama_retrieve": peer.retrieve_nodes, "llama_rerank": peer.search_nodes}
        if args.pp:
            pp = CrossEncoderReranker(top_n=10, model=RERANKER)
            fns["ours_pp"] = lambda q: pp.postprocess_nodes(ours_top20.retrieve(q), query_str=q)
        common.time_interleaved(fns, warm, before=r.clear_caches)
        log(f"warm-up done ({len(warm)} queries); timing {len(queries)} queries x {len(fns)} stages")
        with Phase() as ph:
            runs = common.time_interleaved(fns, [q.query for q in queries], before=r.clear_caches)
        result["query_loop"] = ph.record()
        result["machine_end"] = common.machine()
        result["pipelines"], rows = {}, []
        for key, who, what in STAGES:
            if key not in runs:
                continue
            secs, nodes = runs[key]
            lat = latency(secs)
            qual = quality([(ours_docs if who == "ours" else peer_docs)(n) for n in nodes], queries)
            result["pipelines"][key] = {"pipeline": who, "stage": what, "latency": lat, "quality": qual}
            rows.append([who, what, f"{lat['p50_ms']:.1f}", f"{lat['p95_ms']:.1f}", f"{qual['recall@10']:.3f}",
                         f"{qual['mrr@10']:.3f}"])
        scores = {key: [float(n.score) for ns in runs[key][1] for n in ns]
                  for key in ("ours_rerank", "llama_retrieve", "llama_rerank")}
        result["score_ranges"] = {key: [min(s), max(s)] for key, s in scores.items() if s}
        r.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    common.write_json(args.out, result)

    oi, li = result["ours_ingest"], result["llama_ingest"]
    rr = config.rerank
    print(f"\nbench_llama_index: fitz_gov_subset({args.docs}), {len(queries)} distinct labeled queries (+{len(warm)} "
          f"warm-up), our caches cleared before every call; ours: onnx defaults, rerank {rr.candidates} candidates "
          f"at {rr.max_length} tokens; llama torch {THREADS} threads")
    print(f"ingest: ours create + upsert {oi['create_and_upsert_s']:.1f} s ({oi['vectors']} vectors); llama "
          f"VectorStoreIndex build {li['index_build_s']:.1f} s ({li['nodes']} nodes, model load not included)")
    print(common.table(["pipeline", "stage", "p50 ms", "p95 ms", "recall@10", "MRR@10"], rows, align="ll"))
    warning = common.busy_warning({"queries": result["query_loop"]})
    if warning:
        print(warning)
    print(f"score ranges: {result['score_ranges']}")
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
