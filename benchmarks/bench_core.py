#!/usr/bin/env python
"""Core benchmark of rag-retriever, each number next to a baseline measured in the same run.

    python benchmarks/bench_core.py            # full run: fitz-gov 1000 docs, 100 queries
    python benchmarks/bench_core.py --quick    # 200 docs, 20 queries: a short run

Everything runs with `RetrieverConfig()`, the shipped defaults (int8 ONNX embedder and cross-encoder on
onnxruntime). Sections (one table printed at the end, all raw numbers in benchmarks/results/core.json):
  1. ingest      Retriever.upsert(docs) docs/s (model already loaded and warm: model load is NOT included,
                 it is reported separately) vs plain SentenceTransformer.encode(texts, batch_size=64,
                 normalize_embeddings=True) on the same texts (run before and after the upsert); where the upsert
                 time goes (the Embedder, Store and VectorIndex methods it calls, wrapped with timers).
  2. search      single-query latency p50/p95 at k=10, rerank=False and rerank=True, with recall@10 and
                 MRR@10 (document level: `hit.document_id`, `common.quality`); a plain ST.encode + faiss
                 IndexFlatIP baseline, interleaved query by query; search_batch throughput; where the time goes
                 (the SearchTrace stages: embed / search / join / rerank, and the rest). Caches are cleared before
                 every timed call, and every timed text is distinct, so nothing is a cache hit.
  3. disk        index size from Retriever.stats() (directory, store.duckdb, vectors.faiss).
  4. reranker    the same (query, candidates) pairs scored by the default cross-encoder (`Retriever.reranker`:
                 int8 ONNX on onnxruntime) and by the fp32 reference (`Reranker(backend="torch")`, the
                 sentence-transformers CrossEncoder on the dequantized weights) at the same max_length: ms per
                 query, pairs/s, ranking agreement, tokenization agreement and quality.
  5. threads     thread counts during the run; faiss 1 vs all threads for the index's own flat search; the
                 default embedder and cross-encoder backends loaded with 1 vs all onnx intra-op threads.
"""
from __future__ import annotations

import common  # first: offline hubs, quiet warnings, the repository on sys.path

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from common import RESULTS, Phase, document_ids, fmt, latency, log, peak_rss_mb, perf, quality  # noqa: E402
from retriever import Retriever, RetrieverConfig, runtime  # noqa: E402
from retriever.datasets import fitz_gov_subset  # noqa: E402
from retriever.embedding import Embedder  # noqa: E402
from retriever.models import resolve_embedder  # noqa: E402
from retriever.rerank import Reranker  # noqa: E402

K = 10
PHASES: dict[str, dict] = {}  # name -> Phase.record(), for the JSON and the busy-machine warning


class CallTimer:
    """Sums wall time per label for wrapped methods of objects (instance attributes shadowing them);
    restore() removes the wrappers. Overhead is ~1 us per call."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._wrapped: list[tuple[object, str]] = []

    def wrap(self, obj, attr: str, label: str) -> None:
        orig = getattr(obj, attr)

        def timed(*a, **kw):
            t0 = perf()
            try:
                return orig(*a, **kw)
            finally:
                self.seconds[label] += perf() - t0
                self.calls[label] += 1

        setattr(obj, attr, timed)
        self._wrapped.append((obj, attr))

    def snapshot(self) -> dict:
        return {k: {"seconds": round(v, 4), "calls": self.calls[k]} for k, v in sorted(self.seconds.items())}

    def restore(self) -> None:
        for obj, attr in reversed(self._wrapped):
            delattr(obj, attr)
        self._wrapped.clear()


def stage_breakdown(traces, seconds: list[float]) -> dict:
    """Mean ms per query of each SearchTrace stage, and of the rest of the call."""
    out = {s: float(np.mean([t.stage_ms()[s] for t in traces])) for s in traces[0].stage_ms()}
    out["rest"] = float(np.mean(seconds)) * 1000 - sum(out.values())
    return out


def compare(variants: dict, reps: int, before=None) -> dict:
    """Median seconds of every fn of every variant ({variant: {name: fn}}); the variants alternate repeat by repeat,
    repeat 0 is a warm-up; `before(variant)` runs untimed before a variant's fns (e.g. sets its thread count)."""
    runs = {v: defaultdict(list) for v in variants}
    order = list(variants)
    for rep in range(reps + 1):
        for v in (order if rep % 2 == 0 else order[::-1]):
            if before is not None:
                before(v)
            for name, fn in variants[v].items():
                t0 = perf()
                fn()
                if rep:
                    runs[v][name].append(perf() - t0)
    return {v: {name: float(np.median(x)) for name, x in d.items()} for v, d in runs.items()}


# -------------------------------------------------------------------------------------------- sections
def bench_ingest(r: Retriever, st, docs, warm_texts, res: dict) -> np.ndarray:
    texts = [d.text for d in docs]

    def baseline(tag: str) -> tuple[float, np.ndarray]:
        with Phase(f"ingest baseline {tag}", PHASES) as ph:
            v = st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                          show_progress_bar=False)
        return ph.wall, v

    # warm both models on texts of varied length (first calls pay one-off allocations)
    st.encode(warm_texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    r.embedder.encode(warm_texts)

    log(f"ingest: baseline ST.encode of {len(texts)} texts (1/2)")
    b1, base_vecs = baseline("1/2")
    log(f"  {b1:.1f} s; Retriever.upsert of {len(docs)} documents")
    timer = CallTimer()
    timer.wrap(r.embedder, "encode", "embed (Embedder.encode)")
    timer.wrap(r.embedder, "token_spans", "tokenize (Embedder.token_spans, chunking)")
    timer.wrap(r.store, "upsert", "duckdb (Store.upsert)")
    timer.wrap(r.vector_index, "add", "faiss (VectorIndex.add)")
    try:
        with Phase("ingest upsert", PHASES) as ph:
            report = r.upsert(docs)
    finally:
        timer.restore()
    up_s, parts = ph.wall, timer.snapshot()
    t0 = perf()
    r.save()
    save_s = perf() - t0
    log(f"  {up_s:.1f} s (+ save {save_s:.2f} s); baseline ST.encode (2/2)")
    b2, _ = baseline("2/2")
    base_mean = (b1 + b2) / 2

    # documents that were not chunked: their stored (int8 onnx) vector against the baseline's fp32 one
    vids, vecs = r.store.vectors()
    rows = r.store.fetch(vids.tolist())
    pos = {d.id: i for i, d in enumerate(docs)}
    diffs = [float(np.abs(vecs[j] - base_vecs[pos[rows[int(v)].id]]).max())
             for j, v in enumerate(vids) if rows[int(v)].id in pos]

    # work done: the upsert embeds chunks (whole text), the baseline truncates each text at max_seq_length
    def n_tokens(tx: list[str]) -> int:
        enc = st.tokenizer(tx, truncation=True, max_length=st.max_seq_length)
        return int(sum(len(ids) for ids in enc["input_ids"]))

    tok_up, tok_base = n_tokens([rows[int(v)].text for v in vids]), n_tokens(texts)
    embed_s = parts.get("embed (Embedder.encode)", {}).get("seconds", 0.0)
    res["ingest"] = {
        "documents": len(docs), "vectors": report.vectors, "chunked_documents": report.chunked,
        "embedding_backend": r.embedder.backend, "model_load_excluded": True,
        "retriever_upsert_seconds": up_s, "retriever_docs_per_s": len(docs) / up_s,
        "retriever_vectors_per_s": report.vectors / up_s, "save_seconds": save_s,
        "baseline": "SentenceTransformer(path).encode(texts, batch_size=64, normalize_embeddings=True)",
        "baseline_seconds_runs": [b1, b2], "baseline_seconds_mean": base_mean,
        "baseline_docs_per_s": len(docs) / base_mean, "ratio_retriever_over_baseline": base_mean / up_s,
        "tokens_embedded_retriever": tok_up, "tokens_embedded_baseline": tok_base,
        "retriever_tokens_per_s": tok_up / up_s, "baseline_tokens_per_s": tok_base / base_mean,
        "ratio_tokens_per_s": (tok_up / up_s) / (tok_base / base_mean),
        "upsert_breakdown": parts, "upsert_unaccounted_seconds": up_s - sum(p["seconds"] for p in parts.values()),
        "embed_share_of_upsert": embed_s / up_s if up_s else None,
        "stored_vs_baseline_max_abs_diff_unchunked": max(diffs) if diffs else None, "unchunked_compared": len(diffs),
    }
    return base_vecs


def bench_search(r: Retriever, st, docs, base_vecs, eval_q, rerank_q, warm: list[str], batch_rerank_n: int,
                 res: dict) -> None:
    out: dict = {"k": K, "queries": len(eval_q), "rerank_queries": len(rerank_q),
                 "rerank_candidates": r.config.rerank.candidates, "warmup_texts": len(warm)}
    texts, rr_texts = [q.query for q in eval_q], [q.query for q in rerank_q]

    # --- rerank=False: the retriever and a plain baseline (ST.encode(query) + faiss IndexFlatIP over the
    # baseline vectors, ids from a list: no DuckDB, no id map, no chunks), interleaved query by query
    flat = faiss.IndexFlatIP(base_vecs.shape[1])
    flat.add(np.ascontiguousarray(base_vecs, dtype=np.float32))
    doc_ids = [d.id for d in docs]

    def base_search(text: str) -> list[str]:
        v = st.encode([text], batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        _, ix = flat.search(np.ascontiguousarray(v, dtype=np.float32), K)
        return [doc_ids[i] for i in ix[0] if i >= 0]

    def traced(rerank: bool):
        return lambda text: r.search_traced([text], k=K, rerank=rerank, record=False)

    fns = {"retriever": traced(False), "baseline": base_search}
    common.time_interleaved(fns, warm, before=r.clear_caches)
    log(f"search: {len(eval_q)} queries, rerank=False (retriever and baseline interleaved)")
    with Phase("search rerank=False (+baseline)", PHASES):
        runs = common.time_interleaved(fns, texts, before=r.clear_caches)
    (lat, outs), (blat, branks) = runs["retriever"], runs["baseline"]
    ranks = [document_ids(hits[0]) for hits, _ in outs]
    rr_ix = [eval_q.index(q) for q in rerank_q]
    out["baseline_no_rerank"] = {"what": "ST.encode([q]) + faiss.IndexFlatIP.search, ids from a list",
                                 **latency(blat), **quality(branks, eval_q, K)}
    out["baseline_no_rerank_on_rerank_subset"] = quality([branks[i] for i in rr_ix], rerank_q, K)
    out["no_rerank"] = {**latency(lat), **quality(ranks, eval_q, K),
                        "breakdown_ms": stage_breakdown([t for _, t in outs], lat), "threads": runtime.current()}
    out["no_rerank_on_rerank_subset"] = quality([ranks[i] for i in rr_ix], rerank_q, K)

    # --- search_batch, rerank=False (all queries in one call)
    timer = common.RepeatTimer(warmup=1, runs=3, before=r.clear_caches)
    for _ in timer:
        r.search_batch(texts, k=K, rerank=False)
    out["batch_no_rerank"] = {"batch": len(texts), "seconds_runs": timer.times,
                              "queries_per_s": len(texts) / timer.median()}
    out["single_no_rerank_queries_per_s"] = len(lat) / sum(lat)

    # --- retriever, rerank=True (the first call loads the cross-encoder)
    log(f"search: cross-encoder load + {len(rerank_q)} queries, rerank=True")
    t0 = perf()
    r.search(warm[0], k=K, rerank=True)
    out["reranker_first_call_seconds"] = perf() - t0
    for text in warm[1:]:
        r.search(text, k=K, rerank=True)
    with Phase("search rerank=True", PHASES):
        lat, outs = common.time_each(traced(True), rr_texts, before=r.clear_caches)
    out["rerank"] = {**latency(lat), **quality([document_ids(h[0]) for h, _ in outs], rerank_q, K),
                     "breakdown_ms": stage_breakdown([t for _, t in outs], lat), "threads": runtime.current()}
    out["single_rerank_queries_per_s"] = len(lat) / sum(lat)

    # --- search_batch, rerank=True (a smaller batch)
    if batch_rerank_n:
        r.clear_caches()
        t0 = perf()
        r.search_batch(rr_texts[:batch_rerank_n], k=K, rerank=True)
        s = perf() - t0
        out["batch_rerank"] = {"batch": batch_rerank_n, "seconds": s, "queries_per_s": batch_rerank_n / s,
                               "same_queries_one_by_one_seconds": sum(lat[:batch_rerank_n])}
    res["search"] = out


def bench_disk(r: Retriever, res: dict) -> None:
    r.save()
    s = r.stats()
    files = {str(f.relative_to(r.path)): f.stat().st_size for f in sorted(r.path.rglob("*")) if f.is_file()}
    res["disk"] = {
        "disk_bytes": s["disk_bytes"], "store_bytes": s["store_bytes"], "snapshot_bytes": s["snapshot_bytes"],
        "documents": s["documents"], "vectors": s["vectors"], "dim": s["dim"],
        "raw_float32_vector_bytes": s["vectors"] * s["dim"] * 4,
        "bytes_per_document": s["disk_bytes"] / max(1, s["documents"]), "files": files, "threads_from_stats": s["threads"],
    }


def bench_rerankers(r: Retriever, labeled, repeats: int, res: dict, warm: int) -> None:
    """The same (query, passage) pairs through the default cross-encoder and the torch fp32 reference."""
    from scipy.stats import kendalltau, spearmanr

    cfg = r.config.rerank
    sets = []
    for q in labeled:
        hits = r.search(q.query, k=cfg.candidates, rerank=False)
        sets.append((q, [h.text for h in hits], document_ids(hits)))
    npairs = sum(len(p) for _, p, _ in sets)
    log(f"reranker backends: {len(sets)} queries x {cfg.candidates} candidates = {npairs} pairs, {repeats} repeat(s)")
    default = r.reranker
    with Phase("reference cross-encoder load", PHASES) as load:
        ref = Reranker(cfg.model, backend="torch", max_length=cfg.max_length)
        ref.score_pairs([("warm", "up")])
    fns = {"default": lambda s: default.score(s[0].query, s[1]), "reference": lambda s: ref.score(s[0].query, s[1])}
    common.time_interleaved(fns, sets[:warm])
    with Phase("rerank backends", PHASES):
        runs = common.time_interleaved(fns, sets * repeats)
    ms = {name: [x * 1000 for x in secs] for name, (secs, _) in runs.items()}
    a_scores = [np.asarray(x, np.float64) for x in runs["reference"][1][:len(sets)]]
    b_scores = [np.asarray(x, np.float64) for x in runs["default"][1][:len(sets)]]

    # the default's tokenization (`tokenizers`, no padding) against the reference's (the HF tokenizer)
    hf_tok, tok_mismatch, pair_lens = ref.model.tokenizer, 0, []
    for q, passages, _ in sets:
        for p, e in zip(passages, default.model.encode_pairs([(q.query, p) for p in passages])):
            pair_lens.append(len(e.ids))
            tok_mismatch += list(hf_tok(q.query, p, truncation=True, max_length=cfg.max_length)["input_ids"]) != e.ids

    # fidelity of the default's ranking against the reference's, per query
    sp, kt, top1, top10, mad, maxd, rank_ref, rank_def = [], [], [], [], [], [], [], []
    for (_, _, pids), a, b in zip(sets, a_scores, b_scores):
        if len(a) > 1:
            sp.append(float(spearmanr(a, b).statistic))
            kt.append(float(kendalltau(a, b).statistic))
        oa = sorted(range(len(a)), key=lambda i: (-a[i], i))
        ob = sorted(range(len(b)), key=lambda i: (-b[i], i))
        top1.append(float(oa[0] == ob[0]))
        top10.append(len(set(oa[:10]) & set(ob[:10])) / max(1, min(10, len(a))))
        mad.append(float(np.mean(np.abs(a - b))))
        maxd.append(float(np.max(np.abs(a - b))))
        rank_ref.append([pids[i] for i in oa])
        rank_def.append([pids[i] for i in ob])
    qs = [q for q, _, _ in sets]

    def speed(name: str) -> dict:
        return {"per_query_ms_p50": common.pct(ms[name], 50), "per_query_ms_p95": common.pct(ms[name], 95),
                "per_query_ms_mean": float(np.mean(ms[name])),
                "pairs_per_s": npairs * repeats / (sum(ms[name]) / 1000.0)}

    res["rerankers"] = {
        "queries": len(sets), "candidates": cfg.candidates, "pairs": npairs, "repeats": repeats,
        "max_length": cfg.max_length,
        "default": {"what": f"Retriever.reranker: {default.backend} backend, batch_size {default.batch_size}",
                    "model": type(default.model).__name__, **speed("default"), **quality(rank_def, qs)},
        "reference": {"what": f"Reranker(backend='torch'): sentence-transformers CrossEncoder, fp32, batch_size "
                              f"{ref.batch_size}", "load_seconds": load.wall, **speed("reference"),
                      **quality(rank_ref, qs)},
        "no_rerank_same_candidates": quality([p for _, _, p in sets], qs),
        "speedup_default_over_reference": float(np.mean(ms["reference"]) / np.mean(ms["default"])),
        "fidelity": {
            "spearman_mean": float(np.mean(sp)) if sp else None, "spearman_min": float(np.min(sp)) if sp else None,
            "kendall_tau_mean": float(np.mean(kt)) if kt else None, "kendall_tau_min": float(np.min(kt)) if kt else None,
            "top1_agreement": float(np.mean(top1)), "top10_overlap_mean": float(np.mean(top10)),
            "sigmoid_mean_abs_diff": float(np.mean(mad)), "sigmoid_max_abs_diff": float(np.max(maxd)),
            "tokenization_mismatched_pairs": int(tok_mismatch),
        },
        "pair_tokens": {"mean": float(np.mean(pair_lens)), "p50": common.pct(pair_lens, 50), "max": int(max(pair_lens)),
                        "at_max_length": int(sum(1 for x in pair_lens if x >= cfg.max_length))},
    }


def bench_threads(r: Retriever, eval_q, rerank_sets: int, res: dict) -> None:
    cores = runtime.cores()
    settings = sorted({1, cores})
    nc = r.config.rerank.candidates
    texts = [q.query for q in eval_q]
    out: dict = {"cores": cores, "config": r.config.to_dict()["runtime"], "before": runtime.current()}

    # faiss: the index's own search (flat here), and a 20k synthetic IndexFlatIP, 1 thread vs all
    qv = r.embedder.encode(texts)
    index = r.vector_index
    synth = np.random.default_rng(0).standard_normal((20_000, qv.shape[1])).astype(np.float32)
    synth /= np.linalg.norm(synth, axis=1, keepdims=True)
    big = faiss.IndexFlatIP(qv.shape[1])
    big.add(synth)
    fns = {"corpus_batch": lambda: index.search(qv, nc, unit=True),
           "corpus_single": lambda: [index.search(qv[i:i + 1], nc, unit=True) for i in range(len(qv))],
           "synthetic_20k_batch": lambda: big.search(qv, nc)}
    f0 = faiss.omp_get_max_threads()
    fr = compare({nt: fns for nt in settings}, 10, before=faiss.omp_set_num_threads)
    faiss.omp_set_num_threads(f0)
    out["faiss_flat_search"] = {
        "queries": len(qv), "k": nc, "corpus_vectors": len(index), "index_kind": index.kind,
        "by_threads": {nt: {"corpus_batch_ms": d["corpus_batch"] * 1000,
                            "corpus_single_query_us": d["corpus_single"] / len(qv) * 1e6,
                            "synthetic_20k_batch_ms": d["synthetic_20k_batch"] * 1000} for nt, d in fr.items()}}

    # onnx: the default embedder and cross-encoder with 1 vs all intra-op threads (a session keeps the count it was
    # built with; the process-wide model cache keys sessions by that count, so each setting gets its own), single-
    # query embedding and per-query reranking (one pair per run, as the Reranker does), the settings interleaved
    sets = [(q.query, [h.text for h in r.search(q.query, k=nc, rerank=False)]) for q in eval_q[:rerank_sets]]
    emb_cfg, rr_cfg = r.config.embedding, r.config.rerank
    variants = {}
    for nt in settings:
        runtime.configure(onnx_threads=nt)
        enc, rk = Embedder.from_config(emb_cfg), Reranker.from_config(r.config)
        _ = enc.dim, rk.model  # load both now, under this thread count
        variants[nt] = {"embed": lambda e=enc: [e.encode([t]) for t in texts]}
        if sets:
            variants[nt]["rerank"] = lambda m=rk: [m.score_pairs([(q, t) for t in p]) for q, p in sets]
    runtime.configure_from(r.config.runtime)
    tr = compare(variants, 1)
    out["model_threads"] = {"backends": [emb_cfg.backend, rr_cfg.backend], "rerank_queries": len(sets), "by_threads": {
        nt: {"query_embed_ms": d["embed"] / len(texts) * 1000,
             **({"rerank_ms_per_query": d["rerank"] / len(sets) * 1000} if sets else {})} for nt, d in tr.items()}}
    res["threads"] = out


# ------------------------------------------------------------------------------------------------ table
def build_table(res: dict) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(*cells) -> None:
        if rows and rows[-1] and rows[-1][0] != cells[0]:
            rows.append([])                                           # a blank line between areas
        rows.append([str(c) for c in cells])

    ing, se, dk, rk = res["ingest"], res["search"], res["disk"], res["rerankers"]
    add("ingest", f"docs/s ({ing['documents']} docs, model load excluded)", fmt(ing["retriever_docs_per_s"]),
        fmt(ing["baseline_docs_per_s"]), fmt(ing["ratio_retriever_over_baseline"], ".2f") + "x",
        f"Retriever.upsert ({ing['embedding_backend']}) vs ST.encode(bs=64), baseline = mean of 2 runs")
    add("ingest", "tokens/s (work-normalized)", fmt(ing["retriever_tokens_per_s"], ".0f"),
        fmt(ing["baseline_tokens_per_s"], ".0f"), fmt(ing["ratio_tokens_per_s"], ".2f") + "x",
        f"tokens embedded: {ing['tokens_embedded_retriever']} (chunks, whole text) vs "
        f"{ing['tokens_embedded_baseline']} (truncated at max_seq_length)")
    add("ingest", "seconds", fmt(ing["retriever_upsert_seconds"], ".2f"),
        " / ".join(fmt(x, ".2f") for x in ing["baseline_seconds_runs"]), "",
        f"{ing['vectors']} vectors, {ing['chunked_documents']} docs chunked; save {ing['save_seconds']:.2f}s")
    parts = ", ".join(f"{k.split(' ')[0]} {v['seconds']:.2f}s" for k, v in ing["upsert_breakdown"].items())
    add("ingest", "upsert time breakdown", "", "", "", f"{parts}, rest {ing['upsert_unaccounted_seconds']:.2f}s")
    add("ingest", "model load (excluded above)", fmt(res["model_load"]["retriever_create_seconds"], ".2f") + "s",
        fmt(res["model_load"]["baseline_st_load_seconds"], ".2f") + "s", "",
        "Retriever.create (load + fingerprint + first save) vs SentenceTransformer(path); imports excluded")
    add("ingest", "stored vs baseline vector, max |diff|", fmt(ing["stored_vs_baseline_max_abs_diff_unchunked"], ".4f"),
        "", "", f"{ing['unchunked_compared']} unchunked documents, {ing['embedding_backend']} vs fp32 ST")

    b, nr, rr = se["baseline_no_rerank"], se["no_rerank"], se["rerank"]
    add("search", f"p50 / p95 ms, k={K}, rerank=False ({nr['n']} q)", f"{fmt(nr['p50_ms'])} / {fmt(nr['p95_ms'])}",
        f"{fmt(b['p50_ms'])} / {fmt(b['p95_ms'])}", fmt(nr["p50_ms"] / b["p50_ms"], ".2f") + "x",
        "baseline: ST.encode + faiss flat, no DuckDB; caches cleared before every call")
    add("search", "recall@10 / MRR@10, rerank=False", f"{fmt(nr['recall@10'], '.3f')} / {fmt(nr['mrr@10'], '.3f')}",
        f"{fmt(b['recall@10'], '.3f')} / {fmt(b['mrr@10'], '.3f')}", "", "document level")
    add("search", f"p50 / p95 ms, k={K}, rerank=True ({rr['n']} q)", f"{fmt(rr['p50_ms'])} / {fmt(rr['p95_ms'])}",
        "", "", f"{se['rerank_candidates']} candidates reranked")
    sub = se["no_rerank_on_rerank_subset"]
    add("search", "recall@10 / MRR@10, rerank=True", f"{fmt(rr['recall@10'], '.3f')} / {fmt(rr['mrr@10'], '.3f')}",
        f"{fmt(sub['recall@10'], '.3f')} / {fmt(sub['mrr@10'], '.3f')}", "",
        "baseline col: rerank=False on the same queries")
    bn = se["batch_no_rerank"]
    add("search", "queries/s rerank=False: batch / single",
        f"{fmt(bn['queries_per_s'])} / {fmt(se['single_no_rerank_queries_per_s'])}", "", "",
        f"search_batch of {bn['batch']}")
    if "batch_rerank" in se:
        br = se["batch_rerank"]
        add("search", "queries/s rerank=True: batch / single",
            f"{fmt(br['queries_per_s'], '.2f')} / {fmt(se['single_rerank_queries_per_s'], '.2f')}", "", "",
            f"search_batch of {br['batch']}")
    for name, block in (("rerank=False", nr), ("rerank=True", rr)):
        add("search", f"ms/query breakdown, {name}", fmt(block["mean_ms"]), "", "",
            ", ".join(f"{k} {v:.1f}" for k, v in block["breakdown_ms"].items()))
    add("search", "cross-encoder first call (load)", fmt(se["reranker_first_call_seconds"], ".2f") + "s", "", "", "")

    add("disk", "index dir / store.duckdb / vectors.faiss (KB)",
        f"{dk['disk_bytes'] / 1024:.0f} / {dk['store_bytes'] / 1024:.0f} / {dk['snapshot_bytes'] / 1024:.0f}",
        f"{dk['raw_float32_vector_bytes'] / 1024:.0f}", "",
        f"baseline col: raw float32 vectors; {dk['bytes_per_document'] / 1024:.1f} KB/doc")

    d, ref, fi, pt = rk["default"], rk["reference"], rk["fidelity"], rk["pair_tokens"]
    add("rerank", f"ms/query p50 ({rk['candidates']} pairs), pairs/s",
        f"{fmt(d['per_query_ms_p50'])}, {fmt(d['pairs_per_s'])}",
        f"{fmt(ref['per_query_ms_p50'])}, {fmt(ref['pairs_per_s'])}", fmt(rk["speedup_default_over_reference"], ".2f") + "x",
        f"value: default ({d['model']}, int8); baseline: torch CrossEncoder fp32; max_length {rk['max_length']}; "
        f"{rk['queries']} q")
    add("rerank", "recall@10 / MRR@10 (same candidates)", f"{fmt(d['recall@10'], '.3f')} / {fmt(d['mrr@10'], '.3f')}",
        f"{fmt(ref['recall@10'], '.3f')} / {fmt(ref['mrr@10'], '.3f')}", "",
        "no rerank: {} / {}".format(fmt(rk["no_rerank_same_candidates"]["recall@10"], ".3f"),
                                    fmt(rk["no_rerank_same_candidates"]["mrr@10"], ".3f")))
    add("rerank", "int8 vs fp32 agreement", f"rho {fmt(fi['spearman_mean'], '.3f')}",
        f"tau {fmt(fi['kendall_tau_mean'], '.3f')}", "",
        f"top1 {fi['top1_agreement']:.2f}, top10 overlap {fi['top10_overlap_mean']:.2f}, |dsigmoid| mean "
        f"{fi['sigmoid_mean_abs_diff']:.3f} max {fi['sigmoid_max_abs_diff']:.3f}, token mismatches "
        f"{fi['tokenization_mismatched_pairs']}; pair tokens mean {pt['mean']:.0f} max {pt['max']}, "
        f"{pt['at_max_length']} of {rk['pairs']} at max_length")

    th = res["threads"]
    add("threads", "thread counts at the end of the run", "", "", "",
        ", ".join(f"{k} {v}" for k, v in res["threads_end"].items()) + f"; [runtime] config {th['config']}")
    for key, what, unit in (("faiss_flat_search", "faiss search", "corpus_batch_ms"),
                            ("model_threads", "model query embed", "query_embed_ms")):
        by = th[key]["by_threads"]
        if len(by) > 1:
            one, many = by[min(by)], by[max(by)]
            note = ", ".join(f"{k}: {fmt(one[k], '.1f')} vs {fmt(many[k], '.1f')}" for k in one if k != unit)
            add("threads", f"{what} ({unit}), 1 vs {max(by)} threads", fmt(one[unit], ".2f"), fmt(many[unit], ".2f"),
                "", note)
    add("cpu", "per phase: others' share of the cores", "", "", "",
        ", ".join(f"{k} {fmt(v['others_share'], '.0%')}" for k, v in PHASES.items()))
    add("memory", "peak RSS MB (whole process)", fmt(res["peak_rss_mb"]["end"], ".0f"), "", "",
        "ST + onnx embedders, onnx + torch cross-encoders, the thread-comparison sessions")
    return rows


# ------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 docs, 20 queries, a few rerank queries")
    ap.add_argument("--docs", type=int, help="corpus size (fitz_gov_subset); default 1000, quick 200")
    ap.add_argument("--queries", type=int, help="labeled queries for rerank=False; default 100, quick 20")
    ap.add_argument("--rerank-queries", type=int, help="queries for rerank=True; default 50, quick 5")
    ap.add_argument("--backend-queries", type=int, help="queries for the cross-encoder comparison; default 20, quick 4")
    ap.add_argument("--out", type=Path, default=RESULTS / "core.json")
    ap.add_argument("--keep-index", action="store_true", help="keep the temporary index directory")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="first wait up to SECONDS for the machine to be idle (other processes < 15%% of the cores)")
    args = ap.parse_args(argv)
    q = args.quick
    n_docs = args.docs or (200 if q else 1000)
    n_q = args.queries or (20 if q else 100)
    n_rr = args.rerank_queries or (5 if q else 50)
    n_be = args.backend_queries or (4 if q else 20)
    repeats, batch_rr, thread_rr = (1, 3, 1) if q else (2, 10, 3)
    if args.wait_idle > 0:
        common.wait_idle(args.wait_idle, threshold=0.15)

    t_start = perf()
    res: dict = {"benchmark": "bench_core", "mode": "quick" if q else "full",
                 "machine_start": common.machine("torch", "sentence_transformers", "transformers", "faiss",
                                                 "onnxruntime", "numpy"), "peak_rss_mb": {}}
    docs, labeled = fitz_gov_subset(n_docs)
    pool = common.distinct_texts(labeled)
    eval_q = common.pick_evenly(pool, n_q)
    chosen = {x.id for x in eval_q}
    warm = [x.query for x in pool if x.id not in chosen][:5] or ["a warm-up query", "another warm-up query"]
    rerank_q, backend_q = common.pick_evenly(eval_q, n_rr), common.pick_evenly(eval_q, n_be)
    res["corpus"] = {"name": f"fitz_gov_subset({n_docs})", "documents": len(docs), "labeled_queries": len(labeled),
                     "distinct_texts": len(pool), "eval_queries": len(eval_q), "rerank_queries": len(rerank_q),
                     "backend_queries": len(backend_q), "warmup_texts": len(warm),
                     "mean_chars": float(np.mean([len(d.text) for d in docs]))}
    log(f"corpus: {len(docs)} docs, {len(pool)} distinct labeled queries; using {len(eval_q)} / {len(rerank_q)} rerank")

    config = RetrieverConfig()
    tmp = Path(tempfile.mkdtemp(prefix="bench-core-"))
    r = None
    try:
        log("loading models: Retriever.create (embedder load + fingerprint), then the baseline SentenceTransformer")
        t0 = perf()
        r = Retriever.create(tmp / "index", config)
        create_s = perf() - t0
        from sentence_transformers import SentenceTransformer

        t0 = perf()
        st = SentenceTransformer(resolve_embedder(config.embedding.model), device="cpu")
        st.eval()
        res["model_load"] = {"retriever_create_seconds": create_s, "baseline_st_load_seconds": perf() - t0}
        res["peak_rss_mb"]["after_model_load"] = peak_rss_mb()

        by_len = sorted((d.text for d in docs), key=len)
        warm_texts = [by_len[i] for i in np.linspace(0, len(by_len) - 1, min(64, len(by_len))).astype(int)]
        base_vecs = bench_ingest(r, st, docs, warm_texts, res)
        res["peak_rss_mb"]["after_ingest"] = peak_rss_mb()
        bench_search(r, st, docs, base_vecs, eval_q, rerank_q, warm, batch_rr, res)
        res["peak_rss_mb"]["after_search"] = peak_rss_mb()
        bench_disk(r, res)
        bench_rerankers(r, backend_q, repeats, res, warm=1 if q else 2)
        res["peak_rss_mb"]["after_rerankers"] = peak_rss_mb()
        log("threads: faiss 1 vs all, onnx 1 vs all")
        with Phase("threads", PHASES):
            bench_threads(r, eval_q, thread_rr, res)
        res["threads_end"] = runtime.current()
    finally:
        if r is not None:
            r.close()
        if args.keep_index:
            log(f"index kept at {tmp / 'index'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    res["peak_rss_mb"]["end"] = peak_rss_mb()
    res["machine_end"] = common.machine()
    res["phases"] = PHASES
    res["total_seconds"] = perf() - t_start
    common.write_json(args.out, res)

    m0, m1 = res["machine_start"], res["machine_end"]
    print(f"\nbench_core ({res['mode']}): {res['corpus']['name']}, {m0['cores']} cores, onnxruntime "
          f"{m0['versions']['onnxruntime']}, torch {m0['versions']['torch']}; loadavg start {m0['loadavg']} end "
          f"{m1['loadavg']}; {len(eval_q)} distinct query texts, caches cleared before every timed search")
    print(common.table(["area", "metric", "value", "baseline", "ratio", "notes"], build_table(res), align="llllll"))
    warning = common.busy_warning(PHASES)
    if warning:
        print("\n" + warning)
    print(f"total {res['total_seconds']:.0f} s; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
