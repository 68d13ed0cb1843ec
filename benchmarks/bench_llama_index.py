#!/usr/bin/env python
"""rag-retriever inside LlamaIndex vs LlamaIndex's own stack, side by side in one run, same corpus and models.

    pip install -c constraints.txt -e ".[bench-llama-index]"
    python benchmarks/bench_llama_index.py                 # 1,000 fitz-gov docs, first 100 labeled queries
    python benchmarks/bench_llama_index.py --queries 20    # quicker

Pipelines (embedder all-MiniLM-L6-v2 and cross-encoder ms-marco-MiniLM-L-12-v2 from the same local folders):
  ours      LlamaIndexRetriever(Retriever, k=10, rerank=True): FAISS flat cosine top-20 (our chunking: the
            embedder's window, overlap 32), our cross-encoder keeps 10.
  ours+pp   (--pp) LlamaIndexRetriever(k=20, rerank=False) + our CrossEncoderReranker(top_n=10) as a node
            postprocessor (off by default: it adds a third rerank per query).
  llama     VectorStoreIndex on FaissVectorStore(IndexFlatIP(384)) with HuggingFaceEmbedding(normalize=True)
            (inner product of unit vectors = cosine), LlamaIndex defaults otherwise (SentenceSplitter 1024/200,
            metadata embedded as in MetadataMode.EMBED), as_retriever(similarity_top_k=20) then
            SentenceTransformerRerank(top_n=10) (which scores the node text with its metadata, max_length 512).

Per query, interleaved (the order ours / llama alternates query by query, so machine noise hits both): retrieve
only (top-20) and retrieve + rerank (top-10) latency; recall@10 and MRR@10 at document level (a chunk counts for
its parent: ours via metadata["parent_id"], LlamaIndex via node.ref_doc_id; the retrieve-only rows rank the
top-20's unique documents and keep 10). torch runs 2 threads for both. Results: benchmarks/results/llama_index.json.
"""
from __future__ import annotations

from benchenv import ROOT, cpu_seconds, machine_busy_seconds  # first: offline hubs, quiet warnings, the repository on sys.path

import os  # noqa: E402

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


import faiss  # noqa: E402
import torch  # noqa: E402
from llama_index.core import Document as LIDocument  # noqa: E402
from llama_index.core import Settings, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.postprocessor import SentenceTransformerRerank  # noqa: E402
from llama_index.embeddings.huggingface import HuggingFaceEmbedding  # noqa: E402
from llama_index.vector_stores.faiss import FaissVectorStore  # noqa: E402

from retriever import Retriever, RetrieverConfig  # noqa: E402
from retriever.datasets import fitz_gov_subset  # noqa: E402
from retriever.integrations.llama_index import CrossEncoderReranker, LlamaIndexRetriever  # noqa: E402
from retriever.models import resolve_embedder, resolve_reranker  # noqa: E402

perf = time.perf_counter
THREADS = 2
EMBEDDER = "builtin:all-MiniLM-L6-v2"
RERANKER = "builtin:ms-marco-MiniLM-L-12-v2"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(ms), q)) if ms else float("nan")


def lat(seconds: list[float]) -> dict:
    ms = [s * 1000.0 for s in seconds]
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "mean_ms": float(np.mean(ms)),
            "max_ms": float(max(ms))}


def doc_ranking(doc_ids: list[str], k: int = 10) -> list[str]:
    out: list[str] = []
    for d in doc_ids:
        if d not in out:
            out.append(d)
    return out[:k]


def ours_docs(nodes) -> list[str]:
    return [n.node.metadata.get("parent_id", n.node.node_id) for n in nodes]


def peer_docs(nodes) -> list[str]:
    return [n.node.ref_doc_id for n in nodes]


def quality(rankings: list[list[str]], labeled, k: int = 10) -> dict:
    rec, mrr = [], []
    for ranked, q in zip(rankings, labeled):
        rel = set(q.relevant)
        top = ranked[:k]
        rec.append(len(rel.intersection(top)) / len(rel))
        mrr.append(next((1.0 / (i + 1) for i, d in enumerate(top) if d in rel), 0.0))
    return {f"recall@{k}": float(np.mean(rec)), f"mrr@{k}": float(np.mean(mrr)),
            "unique_docs_mean": float(np.mean([len(r[:k]) for r in rankings]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=100, help="the first N labeled queries the subset covers")
    ap.add_argument("--warmup", type=int, default=3, help="untimed queries (taken from the end of the list)")
    ap.add_argument("--pp", action="store_true",
                    help="also time ours+pp (our CrossEncoderReranker as a postprocessor over k=20; ~+1-2 s/query)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llama_index.json"))
    args = ap.parse_args()

    docs, all_queries = fitz_gov_subset(args.docs)
    labeled = all_queries[: args.queries]
    warm = [q.query for q in all_queries[-args.warmup:]] if args.warmup else []
    emb_path, rr_path = str(resolve_embedder(EMBEDDER)), str(resolve_reranker(RERANKER))
    log(f"{len(docs)} docs, {len(labeled)} of {len(all_queries)} queries; embedder {emb_path}; reranker {rr_path}")
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-li-"))
    result: dict = {"docs": len(docs), "queries": len(labeled), "warmup": len(warm),
                    "machine": {"python": platform.python_version(), "cores": os.cpu_count(),
                                "torch": torch.__version__, "faiss": faiss.__version__,
                                "loadavg_start": [round(x, 2) for x in load0]}}
    # nothing may call OpenAI (LlamaIndex's default LLM)
    Settings.llm = MockLLM()

    try:
        # ------------------------------------------------------------------ ours: build
        config = RetrieverConfig.from_dict({"embedding": {"model": EMBEDDER}, "rerank": {"model": RERANKER},
                                            "runtime": {"torch_threads": THREADS}})
        t0 = perf()
        r = Retriever.create(tmp / "ours", config)
        t1 = perf()
        report = r.upsert(docs)
        t2 = perf()
        torch.set_num_threads(THREADS)
        log(f"ours: create {t1 - t0:.1f}s, upsert {t2 - t1:.1f}s ({report.vectors} vectors, {report.chunked} docs chunked)")
        ours_rr = LlamaIndexRetriever(r, k=10, rerank=True)
        ours_top20 = LlamaIndexRetriever(r, k=20, rerank=False)
        ours_pp = CrossEncoderReranker(top_n=10, model=RERANKER) if args.pp else None
        result["ours_ingest"] = {"create_s": t1 - t0, "upsert_s": t2 - t1, "vectors": report.vectors,
                                 "chunked_docs": report.chunked,
                                 "note": "upsert includes the embedder's lazy load if create() did not load it"}

        # ------------------------------------------------------------------ llama: build
        t0 = perf()
        embed = HuggingFaceEmbedding(model_name=emb_path, normalize=True, device="cpu")
        torch.set_num_threads(THREADS)
        Settings.embed_model = embed
        t1 = perf()
        store = FaissVectorStore(faiss_index=faiss.IndexFlatIP(384))
        li_docs = [LIDocument(text=d.text, id_=d.id, metadata=dict(d.metadata)) for d in docs]
        index = VectorStoreIndex.from_documents(li_docs, storage_context=StorageContext.from_defaults(vector_store=store),
                                                embed_model=embed)
        t2 = perf()
        peer_ret = index.as_retriever(similarity_top_k=20)
        t3 = perf()
        peer_rr = SentenceTransformerRerank(model=rr_path, top_n=10, device="cpu")
        t4 = perf()
        torch.set_num_threads(THREADS)
        n_nodes = store._faiss_index.ntotal
        log(f"llama: embedder load {t1 - t0:.1f}s, index build {t2 - t1:.1f}s ({n_nodes} nodes), reranker load {t4 - t3:.1f}s")
        result["llama_ingest"] = {"embedder_load_s": t1 - t0, "index_build_s": t2 - t1, "nodes": int(n_nodes),
                                  "reranker_load_s": t4 - t3}
        result["machine"]["torch_threads"] = torch.get_num_threads()
        result["machine"]["faiss_threads"] = faiss.omp_get_max_threads()

        # ------------------------------------------------------------------ queries
        def run_ours(q: str, rec: dict | None) -> None:
            t0 = perf()
            top20 = ours_top20.retrieve(q)
            t1 = perf()
            ranked_top20 = doc_ranking(ours_docs(top20))
            pp = ours_pp.postprocess_nodes(top20, query_str=q) if args.pp else None
            t2 = perf()
            full = ours_rr.retrieve(q)
            t3 = perf()
            if rec is not None:
                rec["ours_retrieve"].append(t1 - t0)
                if pp is not None:
                    rec["ours_pp"].append(t2 - t0)
                    rec["rank_ours_pp"].append(doc_ranking(ours_docs(pp)))
                rec["ours_rerank"].append(t3 - t2)
                rec["rank_ours_retrieve"].append(ranked_top20)
                rec["rank_ours_rerank"].append(doc_ranking(ours_docs(full)))
                rec["scores_ours"].extend([n.score for n in full])

        def run_peer(q: str, rec: dict | None) -> None:
            t0 = perf()
            top20 = peer_ret.retrieve(q)
            t1 = perf()
            ranked_top20 = doc_ranking(peer_docs(top20))
            cos = [float(n.score) for n in top20]
            out = peer_rr.postprocess_nodes(top20, query_str=q)
            t2 = perf()
            if rec is not None:
                rec["llama_retrieve"].append(t1 - t0)
                rec["llama_rerank"].append(t2 - t0)
                rec["rank_llama_retrieve"].append(ranked_top20)
                rec["rank_llama_rerank"].append(doc_ranking(peer_docs(out)))
                rec["scores_llama_retrieve"].extend(cos)
                rec["scores_llama"].extend([float(n.score) for n in out])

        for q in warm:
            run_ours(q, None)
            run_peer(q, None)
        log(f"warm-up done ({len(warm)} queries); timing {len(labeled)} queries")
        keys = ["ours_retrieve", "ours_pp", "ours_rerank", "llama_retrieve", "llama_rerank",
                "rank_ours_retrieve", "rank_ours_pp", "rank_ours_rerank", "rank_llama_retrieve", "rank_llama_rerank",
                "scores_ours", "scores_llama", "scores_llama_retrieve"]
        rec: dict = {k: [] for k in keys}
        w0, c0, m0 = perf(), cpu_seconds(), machine_busy_seconds()
        for i, lq in enumerate(labeled):
            if i % 2 == 0:
                run_ours(lq.query, rec)
                run_peer(lq.query, rec)
            else:
                run_peer(lq.query, rec)
                run_ours(lq.query, rec)
            if (i + 1) % 20 == 0:
                log(f"  {i + 1}/{len(labeled)}")
        wall, cpu, m1 = perf() - w0, cpu_seconds() - c0, machine_busy_seconds()
        others = None
        if m0 is not None and m1 is not None:
            others = round(max(0.0, (m1 - m0) - cpu) / (wall * (os.cpu_count() or 1)), 3)
        result["query_loop"] = {"wall_s": wall, "cpu_s": cpu, "others_share_of_cores": others,
                                "loadavg_end": [round(x, 2) for x in os.getloadavg()]}

        # ------------------------------------------------------------------ summary
        rows = [
            ("ours", "retrieve top-20", "ours_retrieve", "rank_ours_retrieve"),
            ("ours", "+ rerank (rerank=True, k=10)", "ours_rerank", "rank_ours_rerank"),
            ("ours", "+ CrossEncoderReranker pp", "ours_pp", "rank_ours_pp"),
            ("llama", "retrieve top-20", "llama_retrieve", "rank_llama_retrieve"),
            ("llama", "+ SentenceTransformerRerank", "llama_rerank", "rank_llama_rerank"),
        ]
        result["pipelines"] = {}
        for who, what, lk, rk in rows:
            if not rec[lk]:
                continue
            result["pipelines"][lk] = {"pipeline": who, "stage": what, "latency": lat(rec[lk]),
                                       "quality": quality(rec[rk], labeled)}
        result["score_ranges"] = {k: [float(min(rec[k])), float(max(rec[k]))] for k in
                                  ("scores_ours", "scores_llama", "scores_llama_retrieve") if rec[k]}
        r.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    oi, li_ = result["ours_ingest"], result["llama_ingest"]
    print(f"\n{len(docs)} docs, {len(labeled)} queries, torch threads {result['machine']['torch_threads']}, "
          f"other processes' share of the cores during the queries: {result['query_loop']['others_share_of_cores']}")
    print(f"ingest: ours upsert {oi['upsert_s']:.1f} s ({oi['vectors']} vectors); llama VectorStoreIndex build "
          f"{li_['index_build_s']:.1f} s ({li_['nodes']} nodes, embedder load {li_['embedder_load_s']:.1f} s not included)")
    print(f"\n{'pipeline':<7} {'stage':<30} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>10} {'MRR@10':>7}")
    for lk, p in result["pipelines"].items():
        L, Q = p["latency"], p["quality"]
        print(f"{p['pipeline']:<7} {p['stage']:<30} {L['p50_ms']:>8.1f} {L['p95_ms']:>8.1f} "
              f"{Q['recall@10']:>10.3f} {Q['mrr@10']:>7.3f}")
    print(f"\nscore ranges: {result['score_ranges']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
