#!/usr/bin/env python
"""Core benchmark of rag-retriever, each number next to a baseline measured in the same run.

    python benchmarks/bench_core.py            # full run: fitz-gov 1000 docs, 100 queries (~5.5 min on 2 idle cores)
    python benchmarks/bench_core.py --quick    # 200 docs, 20 queries (~1.5 min)

Sections (one table printed at the end, all raw numbers in benchmarks/results/core.json):
  1. ingest      Retriever.upsert(docs) docs/s (model already loaded and warm: model load is NOT included,
                 it is reported separately) vs plain SentenceTransformer.encode(texts, batch_size=64,
                 normalize_embeddings=True) on the same texts (run before and after the upsert).
  2. search      single-query latency p50/p95 at k=10, rerank=False and rerank=True, with recall@10 and
                 MRR@10 (document level: a chunk counts for its parent); a plain ST.encode + faiss
                 IndexFlatIP baseline; search_batch throughput; where the time goes (embed / faiss /
                 duckdb / rerank / rest).
  3. disk        index size from Retriever.stats() (directory, store.duckdb, vectors.faiss).
  4. reranker    the same (query, 20 candidates) pairs scored by the default path (sentence-transformers
                 CrossEncoder on the dequantized fp32 weights) and by onnxruntime on the int8 model.onnx
                 directly: pairs/s, ms per query, ranking agreement and quality.
  5. threads     torch / faiss thread counts during the run; faiss 1 vs 2 threads for a flat search;
                 torch 1 vs all threads for query embedding and reranking.
"""
from __future__ import annotations

import benchenv  # first: offline hubs, quiet warnings, the repository on sys.path
from benchenv import ROOT, machine_busy_seconds  # noqa: E402

import os  # noqa: E402

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


import faiss  # noqa: E402

from retriever import Retriever, RetrieverConfig  # noqa: E402
from retriever import runtime  # noqa: E402
from retriever.datasets import fitz_gov_subset  # noqa: E402
from retriever.models import cache_dir, packaged_reranker_source, resolve_embedder  # noqa: E402

perf = time.perf_counter


# ---------------------------------------------------------------------------------------------- helpers

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def machine_busy_fraction(interval: float = 1.0) -> float | None:
    """Share of all cores busy over `interval` seconds (this process is idle meanwhile)."""
    b0 = machine_busy_seconds()
    time.sleep(interval)
    b1 = machine_busy_seconds()
    if b0 is None or b1 is None:
        return None
    return max(0.0, (b1 - b0) / (interval * runtime.cores()))


class Phase(benchenv.Phase):
    """A named `benchenv.Phase` whose times are kept in `Phase.log` for the JSON report."""

    log: dict[str, dict] = {}

    def __init__(self, name: str):
        self.name = name

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        Phase.log[self.name] = {"wall_s": round(self.wall, 3), "cpu_s": round(self.cpu, 3),
                                "cpu_per_wall": round(self.cpu / self.wall, 2) if self.wall else None,
                                "others_share": self.others}


def pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def lat_summary(seconds: list[float]) -> dict:
    ms = [s * 1000.0 for s in seconds]
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "mean_ms": float(np.mean(ms)) if ms else None,
            "min_ms": min(ms) if ms else None, "max_ms": max(ms) if ms else None}


def pick_evenly(items: list, n: int) -> list:
    """A deterministic spread of n items over the list (queries are sorted by id, i.e. grouped by category)."""
    if n >= len(items):
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def parent_ids(hits) -> list[str]:
    """Document-level ranking: a chunk hit counts for its parent; repeated parents keep their first rank."""
    out: list[str] = []
    for h in hits:
        p = h.metadata.get("parent_id", h.id)
        if p not in out:
            out.append(p)
    return out


def recall_mrr(ranked: list[str], relevant, k: int = 10) -> tuple[float, float]:
    rel = set(relevant)
    top = ranked[:k]
    recall = len(rel.intersection(top)) / len(rel) if rel else 0.0
    mrr = next((1.0 / (i + 1) for i, d in enumerate(top) if d in rel), 0.0)
    return recall, mrr


def quality(rankings: list[list[str]], labeled, k: int = 10) -> dict:
    pairs = [recall_mrr(r, q.relevant, k) for r, q in zip(rankings, labeled)]
    return {"n": len(pairs), f"recall@{k}": float(np.mean([p[0] for p in pairs])) if pairs else None,
            f"mrr@{k}": float(np.mean([p[1] for p in pairs])) if pairs else None,
            f"unique_docs_in_top{k}_mean": float(np.mean([len(r[:k]) for r in rankings])) if rankings else None}


class CallTimer:
    """Sums wall time per label for wrapped callables (instance attributes shadowing methods, or module
    functions); restore() puts the originals back. Overhead is ~1 us per call."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[tuple[object, str, object, bool]] = []

    def wrap(self, obj, attr: str, label: str) -> None:
        orig = getattr(obj, attr)
        had_own = attr in getattr(obj, "__dict__", {})
        prev = obj.__dict__[attr] if had_own else None

        def timed(*a, **kw):
            t0 = perf()
            try:
                return orig(*a, **kw)
            finally:
                self.seconds[label] += perf() - t0
                self.calls[label] += 1

        setattr(obj, attr, timed)
        self._undo.append((obj, attr, prev, had_own))

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def snapshot(self) -> dict:
        return {k: {"seconds": round(v, 4), "calls": self.calls[k]} for k, v in sorted(self.seconds.items())}

    def restore(self) -> None:
        for obj, attr, prev, had_own in reversed(self._undo):
            if had_own:
                setattr(obj, attr, prev)
            else:
                delattr(obj, attr)
        self._undo.clear()


def thread_state(label: str) -> dict:
    out = {"at": label, "faiss_omp_max_threads": faiss.omp_get_max_threads()}
    if "torch" in sys.modules:
        import torch

        out["torch_num_threads"] = torch.get_num_threads()
        out["torch_num_interop_threads"] = torch.get_num_interop_threads()
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# -------------------------------------------------------------------------------------------- sections

def bench_ingest(r: Retriever, st, docs, warm_texts, timer: CallTimer, res: dict) -> np.ndarray:
    texts = [d.text for d in docs]

    def baseline(tag: str) -> tuple[float, np.ndarray]:
        with Phase(f"ingest baseline {tag}") as ph:
            v = st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                          show_progress_bar=False)
        return ph.wall, v

    # warm both model copies on texts of varied length (first calls pay one-off allocations)
    st.encode(warm_texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    r.embedder.encode(warm_texts)

    log(f"ingest: baseline ST.encode of {len(texts)} texts (1/2)")
    b1, base_vecs = baseline("1/2")
    log(f"  {b1:.1f} s; Retriever.upsert of {len(docs)} documents")
    timer.reset()
    with Phase("ingest upsert") as ph:
        report = r.upsert(docs)
    up_s = ph.wall
    parts = timer.snapshot()
    t0 = perf()
    r.save()
    save_s = perf() - t0
    log(f"  {up_s:.1f} s (+ save {save_s:.2f} s); baseline ST.encode (2/2)")
    b2, _ = baseline("2/2")
    log(f"  {b2:.1f} s")
    base_mean = (b1 + b2) / 2

    # the stored vectors of documents that were not chunked should equal the baseline's
    store = r._store
    vids, vecs = store.vectors()
    rows = store.fetch(vids.tolist())
    pos = {d.id: i for i, d in enumerate(docs)}
    diffs = [float(np.abs(vecs[j] - base_vecs[pos[rows[int(v)].id]]).max())
             for j, v in enumerate(vids) if rows[int(v)].id in pos]

    # work done: the upsert embeds chunks (whole text), the baseline truncates each text at max_seq_length
    def n_tokens(tx: list[str]) -> int:
        enc = st.tokenizer(tx, truncation=True, max_length=st.max_seq_length)
        return int(sum(len(ids) for ids in enc["input_ids"]))

    tok_up = n_tokens([rows[int(v)].text for v in vids])
    tok_base = n_tokens(texts)

    embed_s = parts.get("embed (Embedder.encode)", {}).get("seconds", 0.0)
    accounted = sum(p["seconds"] for p in parts.values())
    res["ingest"] = {
        "documents": len(docs),
        "vectors": report.vectors,
        "chunked_documents": report.chunked,
        "model_load_excluded": True,
        "retriever_upsert_seconds": up_s,
        "retriever_docs_per_s": len(docs) / up_s,
        "retriever_vectors_per_s": report.vectors / up_s,
        "save_seconds": save_s,
        "baseline": "SentenceTransformer(path).encode(texts, batch_size=64, normalize_embeddings=True)",
        "baseline_seconds_runs": [b1, b2],
        "baseline_seconds_mean": base_mean,
        "baseline_docs_per_s": len(docs) / base_mean,
        "ratio_retriever_over_baseline": (len(docs) / up_s) / (len(docs) / base_mean),
        "tokens_embedded_retriever": tok_up,
        "tokens_embedded_baseline": tok_base,
        "retriever_tokens_per_s": tok_up / up_s,
        "baseline_tokens_per_s": tok_base / base_mean,
        "ratio_tokens_per_s": (tok_up / up_s) / (tok_base / base_mean),
        "upsert_breakdown": parts,
        "upsert_unaccounted_seconds": up_s - accounted,
        "embed_share_of_upsert": embed_s / up_s if up_s else None,
        "stored_vs_baseline_max_abs_diff_unchunked": max(diffs) if diffs else None,
        "unchunked_compared": len(diffs),
    }
    return base_vecs


def bench_search(r: Retriever, st, docs, base_vecs, eval_q, rerank_q, batch_rerank_n: int, timer: CallTimer,
                 res: dict) -> None:
    k = 10
    out: dict = {"k": k, "queries": len(eval_q), "rerank_queries": len(rerank_q),
                 "rerank_candidates": r.config.rerank.candidates}
    n_warm = min(5, len(eval_q))

    # --- rerank=False: the retriever and a plain baseline (ST.encode(query) + faiss IndexFlatIP over the
    # baseline vectors, ids from a list: no DuckDB, no id map, no chunks), interleaved query by query (order
    # alternating) so that both see the same machine load
    flat = faiss.IndexFlatIP(base_vecs.shape[1])
    flat.add(np.ascontiguousarray(base_vecs, dtype=np.float32))
    doc_ids = [d.id for d in docs]

    def base_search(text: str) -> list[str]:
        v = st.encode([text], batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        _, ix = flat.search(np.ascontiguousarray(v, dtype=np.float32), k)
        return [doc_ids[i] for i in ix[0] if i >= 0]

    log(f"search: {len(eval_q)} queries, rerank=False (retriever and baseline interleaved)")
    for q in eval_q[:n_warm]:
        base_search(q.query)
        r.search(q.query, k=k, rerank=False)
    timer.reset()
    lat, ranks, blat, branks = [], [], [], []
    with Phase("search rerank=False (+baseline)"):
        for i, q in enumerate(eval_q):
            for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                t0 = perf()
                if which == 0:
                    hits = r.search(q.query, k=k, rerank=False)
                    lat.append(perf() - t0)
                    ranks.append(parent_ids(hits))
                else:
                    ids = base_search(q.query)
                    blat.append(perf() - t0)
                    branks.append(ids)
    rr_ix = [eval_q.index(q) for q in rerank_q]
    out["baseline_no_rerank"] = {"what": "ST.encode([q]) + faiss.IndexFlatIP.search, ids from a list",
                                 **lat_summary(blat), **quality(branks, eval_q, k)}
    out["baseline_no_rerank_on_rerank_subset"] = quality([branks[i] for i in rr_ix], rerank_q, k)
    out["no_rerank"] = {**lat_summary(lat), **quality(ranks, eval_q, k), "breakdown": timer.snapshot(),
                        "threads": thread_state("search rerank=False")}
    out["no_rerank_on_rerank_subset"] = quality([ranks[i] for i in rr_ix], rerank_q, k)

    # --- search_batch, rerank=False (all queries in one call)
    texts = [q.query for q in eval_q]
    r.search_batch(texts[:8], k=k, rerank=False)
    runs = []
    for _ in range(3):
        t0 = perf()
        r.search_batch(texts, k=k, rerank=False)
        runs.append(perf() - t0)
    out["batch_no_rerank"] = {"batch": len(texts), "seconds_runs": runs,
                              "queries_per_s": len(texts) / float(np.median(runs))}
    out["single_no_rerank_queries_per_s"] = len(eval_q) / sum(lat)

    # --- retriever, rerank=True (the first call loads the cross-encoder)
    log(f"search: reranker load + {len(rerank_q)} queries, rerank=True (~1 s each)")
    cached = any((cache_dir() / "cross-encoders").glob("ms-marco-MiniLM-L-12-v2-*/model.safetensors"))
    t0 = perf()
    r.search(rerank_q[0].query, k=k, rerank=True)
    out["reranker_first_call_seconds"] = perf() - t0
    out["reranker_dequantized_cache_was_warm"] = cached
    for q in rerank_q[1:3]:
        r.search(q.query, k=k, rerank=True)
    timer.reset()
    lat, ranks = [], []
    with Phase("search rerank=True"):
        for q in rerank_q:
            t0 = perf()
            hits = r.search(q.query, k=k, rerank=True)
            lat.append(perf() - t0)
            ranks.append(parent_ids(hits))
    out["rerank"] = {**lat_summary(lat), **quality(ranks, rerank_q, k), "breakdown": timer.snapshot(),
                     "threads": thread_state("search rerank=True")}

    # --- search_batch, rerank=True (a smaller batch: ~1 s per query)
    if batch_rerank_n:
        bt = [q.query for q in rerank_q[:batch_rerank_n]]
        t0 = perf()
        r.search_batch(bt, k=k, rerank=True)
        s = perf() - t0
        single = sum(lat[:len(bt)])
        out["batch_rerank"] = {"batch": len(bt), "seconds": s, "queries_per_s": len(bt) / s,
                               "same_queries_one_by_one_seconds": single}
    out["single_rerank_queries_per_s"] = len(rerank_q) / sum(lat)
    res["search"] = out


def bench_disk(r: Retriever, res: dict) -> None:
    r.save()
    s = r.stats()
    files = {str(f.relative_to(r.path)): f.stat().st_size for f in sorted(r.path.rglob("*")) if f.is_file()}
    raw = s["vectors"] * s["dim"] * 4
    res["disk"] = {
        "disk_bytes": s["disk_bytes"], "store_bytes": s["store_bytes"], "snapshot_bytes": s["snapshot_bytes"],
        "documents": s["documents"], "vectors": s["vectors"], "dim": s["dim"],
        "raw_float32_vector_bytes": raw, "bytes_per_document": s["disk_bytes"] / max(1, s["documents"]),
        "files": files, "threads_from_stats": s.get("threads"),
    }


def bench_rerankers(r: Retriever, labeled, repeats: int, res: dict, warm: int = 2) -> None:
    """Same (query, passage) pairs through the default CrossEncoder (fp32) and onnxruntime (int8)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    ncand = r.config.rerank.candidates
    max_len = r.config.rerank.max_length
    sets = []
    for q in labeled:
        hits = r.search(q.query, k=ncand, rerank=False)
        sets.append((q, [h.text for h in hits], parent_ids_per_hit(hits)))
    npairs = sum(len(p) for _, p, _ in sets)
    log(f"reranker backends: {len(sets)} queries x {ncand} candidates = {npairs} pairs, {repeats} repeat(s) each")

    # (a) the default path: our Reranker (sentence-transformers CrossEncoder, dequantized fp32 weights)
    rk = r.reranker

    # (b) onnxruntime on the packaged int8 model.onnx, tokenizer from `tokenizers`
    src = packaged_reranker_source()
    so = ort.SessionOptions()
    so.intra_op_num_threads = runtime.cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = perf()
    sess = ort.InferenceSession(str(src / "model.onnx"), so, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    load_s = perf() - t0
    # tokenizer.json ships with fixed padding to 512: pad to the longest pair instead, truncate pairs to 256
    tok.enable_truncation(max_length=max_len)
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    input_names = [i.name for i in sess.get_inputs()]
    output_name = sess.get_outputs()[0].name

    def ort_score(query: str, passages: list[str]) -> np.ndarray:
        enc = tok.encode_batch([(query, p) for p in passages])
        feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
        logits = sess.run([output_name], {n: feed[n] for n in input_names})[0]
        return sigmoid(np.asarray(logits, dtype=np.float64).reshape(len(passages)))

    small_bs = 8

    def torch_small_batches(query: str, passages: list[str]) -> np.ndarray:
        # the same CrossEncoder, batch_size 8: it sorts pairs by length, so smaller batches pad less
        return np.asarray(rk.model.predict([(query, p) for p in passages], batch_size=small_bs,
                                           show_progress_bar=False, convert_to_numpy=True), dtype=np.float64)

    backends = [lambda q, p: np.asarray(rk.score(q, p), dtype=np.float64), ort_score, torch_small_batches]
    for q, passages, _ in sets[:warm]:
        for fn in backends:
            fn(q.query, passages)
    # interleaved query by query, order rotating, so the backends see the same machine load; the
    # batch-size-8 variant runs in the first repeat only
    ms: list[list[float]] = [[], [], []]
    scores: list[list[np.ndarray]] = [[], [], []]
    with Phase("rerank backends"):
        for rep in range(repeats):
            for i, (q, passages, _) in enumerate(sets):
                order = [0, 1, 2] if rep == 0 else [0, 1]
                shift = (i + rep) % len(order)
                for b in order[shift:] + order[:shift]:
                    t0 = perf()
                    s = backends[b](q.query, passages)
                    ms[b].append((perf() - t0) * 1000)
                    if rep == 0:
                        scores[b].append(s)
    torch_ms, ort_ms, small_ms = ms
    torch_scores, ort_scores, _ = scores

    # the two tokenizations should be identical; how much of each padded batch is padding
    hf_tok = rk.model.tokenizer
    tok_mismatch = 0
    real_tokens = padded_tokens = 0
    pair_lens = []
    for q, passages, _ in sets:
        enc = tok.encode_batch([(q.query, p) for p in passages])
        lens = [int(sum(e.attention_mask)) for e in enc]
        pair_lens.extend(lens)
        real_tokens += sum(lens)
        padded_tokens += len(lens) * max(lens)
        for p, e in zip(passages, enc):
            ids = hf_tok(q.query, p, truncation=True, max_length=max_len)["input_ids"]
            if list(ids) != [t for t, m in zip(e.ids, e.attention_mask) if m]:
                tok_mismatch += 1

    # fidelity of the int8 ranking against the fp32 one, per query
    try:
        from scipy.stats import kendalltau, spearmanr
    except ImportError:  # pragma: no cover
        spearmanr = kendalltau = None
    sp, kt, top1, top10, mad, maxd = [], [], [], [], [], []
    rank_torch, rank_ort, rank_cos = [], [], []
    for (q, passages, pids), a, b in zip(sets, torch_scores, ort_scores):
        if spearmanr is not None and len(a) > 1:
            sp.append(float(spearmanr(a, b).statistic))
            kt.append(float(kendalltau(a, b).statistic))
        oa = sorted(range(len(a)), key=lambda i: (-a[i], i))
        ob = sorted(range(len(b)), key=lambda i: (-b[i], i))
        top1.append(float(oa[0] == ob[0]))
        top10.append(len(set(oa[:10]) & set(ob[:10])) / max(1, min(10, len(a))))
        mad.append(float(np.mean(np.abs(a - b))))
        maxd.append(float(np.max(np.abs(a - b))))
        rank_torch.append(dedupe([pids[i] for i in oa]))
        rank_ort.append(dedupe([pids[i] for i in ob]))
        rank_cos.append(dedupe(pids))
    qs = [q for q, _, _ in sets]

    def speed_n(ms: list[float], pairs: int) -> dict:
        return {"per_query_ms_p50": pct(ms, 50), "per_query_ms_p95": pct(ms, 95), "per_query_ms_mean": float(np.mean(ms)),
                "pairs_per_s": pairs * len(ms) / len(sets) / (sum(ms) / 1000.0)}

    def speed(ms: list[float]) -> dict:
        return speed_n(ms, npairs)

    res["rerankers"] = {
        "queries": len(sets), "candidates": ncand, "pairs": npairs, "repeats": repeats, "max_length": max_len,
        "torch_crossencoder_fp32": {"what": "retriever.rerank.Reranker (sentence-transformers CrossEncoder, dequantized "
                                            "fp32 weights, batch_size=%d)" % rk.batch_size,
                                    "torch_threads": thread_state("rerank backends")["torch_num_threads"],
                                    **speed(torch_ms), **quality(rank_torch, qs)},
        "onnxruntime_int8": {"what": f"onnxruntime {ort.__version__} InferenceSession(model.onnx int8), "
                                     f"intra_op_num_threads={so.intra_op_num_threads}, tokenizers pad-to-longest",
                             "session_and_tokenizer_load_seconds": load_s, "input_names": input_names,
                             **speed(ort_ms), **quality(rank_ort, qs)},
        "torch_crossencoder_fp32_batch8": {"what": f"the same CrossEncoder, predict(batch_size={small_bs}) (length-sorted)",
                                           "max_abs_diff_vs_default": float(max(np.max(np.abs(a - b)) for a, b in
                                                                                zip(torch_scores, scores[2]))),
                                           **speed_n(small_ms, npairs)},
        "no_rerank_same_candidates": quality(rank_cos, qs),
        "speedup_ort_over_torch": float(np.mean(torch_ms) / np.mean(ort_ms)),
        "fidelity": {
            "spearman_mean": float(np.mean(sp)) if sp else None, "spearman_min": float(np.min(sp)) if sp else None,
            "kendall_tau_mean": float(np.mean(kt)) if kt else None, "kendall_tau_min": float(np.min(kt)) if kt else None,
            "top1_agreement": float(np.mean(top1)), "top10_overlap_mean": float(np.mean(top10)),
            "sigmoid_mean_abs_diff": float(np.mean(mad)), "sigmoid_max_abs_diff": float(np.max(maxd)),
            "tokenization_mismatched_pairs": tok_mismatch,
        },
        "pair_tokens": {"mean": float(np.mean(pair_lens)), "p50": pct(pair_lens, 50), "max": int(max(pair_lens)),
                        "at_max_length": int(sum(1 for x in pair_lens if x >= max_len)),
                        "padding_share_per_query_batch": 1.0 - real_tokens / padded_tokens},
    }


def parent_ids_per_hit(hits) -> list[str]:
    return [h.metadata.get("parent_id", h.id) for h in hits]


def dedupe(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def bench_threads(r: Retriever, st, eval_q, rerank_sets: int, res: dict) -> None:
    import torch

    out: dict = {"cores": runtime.cores(), "config": {"torch_threads": r.config.runtime.torch_threads,
                                                      "faiss_threads": r.config.runtime.faiss_threads}}
    f0 = faiss.omp_get_max_threads()
    t0_threads = torch.get_num_threads()
    out["before"] = {"torch_num_threads": t0_threads, "faiss_omp_max_threads": f0}
    qv = st.encode([q.query for q in eval_q], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    qv = np.ascontiguousarray(qv, dtype=np.float32)
    index = r._index.index  # the retriever's own faiss index (IDMap2 over IndexFlatIP)
    nc = r.config.rerank.candidates
    rng = np.random.default_rng(0)
    synth = rng.standard_normal((20_000, qv.shape[1])).astype(np.float32)
    synth /= np.linalg.norm(synth, axis=1, keepdims=True)
    big = faiss.IndexFlatIP(qv.shape[1])
    big.add(synth)

    settings = sorted({1, runtime.cores()})

    def compare(set_threads, fns: dict, reps: int, warmup: bool = True) -> dict:
        """Median seconds of each fn under each thread count, the settings interleaved repeat by repeat."""
        runs = {nt: defaultdict(list) for nt in settings}
        first = 0 if warmup else 1
        for rep in range(first, reps + 1):  # round 0 is a warm-up
            for nt in (settings if rep % 2 == 0 else settings[::-1]):
                set_threads(nt)
                for name, fn in fns.items():
                    t0 = perf()
                    fn()
                    if rep:
                        runs[nt][name].append(perf() - t0)
        return {nt: {name: float(np.median(v)) for name, v in d.items()} for nt, d in runs.items()}

    fr = compare(faiss.omp_set_num_threads, {
        "corpus_batch": lambda: index.search(qv, nc),
        "corpus_single": lambda: [index.search(qv[i:i + 1], nc) for i in range(len(qv))],
        "synthetic_20k_batch": lambda: big.search(qv, nc),
    }, 10)
    faiss.omp_set_num_threads(f0)
    faiss_rows = {nt: {"corpus_batch_ms": d["corpus_batch"] * 1000,
                       "corpus_single_query_us": d["corpus_single"] / len(qv) * 1e6,
                       "synthetic_20k_batch_ms": d["synthetic_20k_batch"] * 1000} for nt, d in fr.items()}
    out["faiss_flat_search"] = {"queries": len(qv), "k": nc, "corpus_vectors": len(r._index),
                                "by_threads": faiss_rows}

    # torch: single-query embedding (retriever Embedder) and per-query reranking, 1 thread vs all cores
    texts = [q.query for q in eval_q]
    sets = [(q.query, [h.text for h in r.search(q.query, k=nc, rerank=False)]) for q in eval_q[:rerank_sets]]
    tr = compare(torch.set_num_threads, {"embed": lambda: [r.embedder.encode([t]) for t in texts]}, 3)
    if sets:  # already warm; one interleaved round (~4 s per query at 1 thread)
        rr = compare(torch.set_num_threads, {"rerank": lambda: [r.reranker.score(q, p) for q, p in sets]}, 1,
                     warmup=False)
        for nt in tr:
            tr[nt].update(rr[nt])
    torch.set_num_threads(t0_threads)
    torch_rows = {}
    for nt, d in tr.items():
        torch_rows[nt] = {"query_embed_ms": d["embed"] / len(texts) * 1000}
        if sets:
            torch_rows[nt]["rerank_20_pairs_ms"] = d["rerank"] / len(sets) * 1000
    out["torch"] = {"rerank_queries": len(sets), "by_threads": torch_rows}
    res["threads"] = out


# ------------------------------------------------------------------------------------------------ table

def fmt(x, spec: str = ".1f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and np.isnan(x):
        return "-"
    return format(x, spec)


def build_table(res: dict) -> list[tuple[str, str, str, str, str, str]]:
    rows = []
    ing, se, dk = res["ingest"], res["search"], res["disk"]
    n = ing["documents"]
    rows.append(("ingest", f"docs/s ({n} docs, model load excluded)", fmt(ing["retriever_docs_per_s"]),
                 fmt(ing["baseline_docs_per_s"]), fmt(ing["ratio_retriever_over_baseline"], ".2f") + "x",
                 "Retriever.upsert vs ST.encode(bs=64), baseline = mean of 2 runs"))
    rows.append(("ingest", "tokens/s (work-normalized)", fmt(ing["retriever_tokens_per_s"], ".0f"),
                 fmt(ing["baseline_tokens_per_s"], ".0f"), fmt(ing["ratio_tokens_per_s"], ".2f") + "x",
                 f"tokens embedded: {ing['tokens_embedded_retriever']} (chunks, whole text) vs "
                 f"{ing['tokens_embedded_baseline']} (truncated at max_seq_length)"))
    rows.append(("ingest", "seconds", fmt(ing["retriever_upsert_seconds"], ".2f"),
                 " / ".join(fmt(x, ".2f") for x in ing["baseline_seconds_runs"]), "",
                 f"{ing['vectors']} vectors, {ing['chunked_documents']} docs chunked; save {ing['save_seconds']:.2f}s"))
    bd = ing["upsert_breakdown"]
    parts = ", ".join(f"{k.split(' ')[0]} {v['seconds']:.2f}s" for k, v in bd.items())
    rows.append(("ingest", "upsert time breakdown", "", "", "",
                 f"{parts}, rest {ing['upsert_unaccounted_seconds']:.2f}s"))
    rows.append(("ingest", "model load (excluded above)", fmt(res["model_load"]["retriever_create_seconds"], ".2f") + "s",
                 fmt(res["model_load"]["baseline_st_load_seconds"], ".2f") + "s", "",
                 "Retriever.create (load + fingerprint + first save) vs SentenceTransformer(path); imports excluded"))

    b, nr, rr = se["baseline_no_rerank"], se["no_rerank"], se["rerank"]
    rows.append(("search", f"p50 / p95 ms, k=10, rerank=False ({nr['n']} q)",
                 f"{fmt(nr['p50_ms'])} / {fmt(nr['p95_ms'])}", f"{fmt(b['p50_ms'])} / {fmt(b['p95_ms'])}",
                 fmt(nr["p50_ms"] / b["p50_ms"], ".2f") + "x", "baseline: ST.encode + faiss flat, no DuckDB"))
    rows.append(("search", "recall@10 / MRR@10, rerank=False",
                 f"{fmt(nr['recall@10'], '.3f')} / {fmt(nr['mrr@10'], '.3f')}",
                 f"{fmt(b['recall@10'], '.3f')} / {fmt(b['mrr@10'], '.3f')}", "",
                 f"document level; unique docs in top 10: {nr['unique_docs_in_top10_mean']:.2f} vs "
                 f"{b['unique_docs_in_top10_mean']:.2f}"))
    rows.append(("search", f"p50 / p95 ms, k=10, rerank=True ({rr['n']} q)",
                 f"{fmt(rr['p50_ms'])} / {fmt(rr['p95_ms'])}", "", "",
                 f"{se['rerank_candidates']} candidates reranked"))
    sub = se["no_rerank_on_rerank_subset"]
    rows.append(("search", "recall@10 / MRR@10, rerank=True",
                 f"{fmt(rr['recall@10'], '.3f')} / {fmt(rr['mrr@10'], '.3f')}",
                 f"{fmt(sub['recall@10'], '.3f')} / {fmt(sub['mrr@10'], '.3f')}", "",
                 "baseline col: rerank=False on the same queries"))
    bn = se["batch_no_rerank"]
    rows.append(("search", "queries/s rerank=False: batch / single",
                 f"{fmt(bn['queries_per_s'])} / {fmt(se['single_no_rerank_queries_per_s'])}", "", "",
                 f"search_batch of {bn['batch']}"))
    if "batch_rerank" in se:
        br = se["batch_rerank"]
        rows.append(("search", "queries/s rerank=True: batch / single",
                     f"{fmt(br['queries_per_s'], '.2f')} / {fmt(se['single_rerank_queries_per_s'], '.2f')}", "", "",
                     f"search_batch of {br['batch']}"))
    for name, block in (("rerank=False", nr), ("rerank=True", rr)):
        q = block["n"]
        parts = [f"{k.split(' ')[0]} {v['seconds'] / q * 1000:.1f}" for k, v in block["breakdown"].items()]
        total = block["mean_ms"]
        rest = total - sum(v["seconds"] for v in block["breakdown"].values()) / q * 1000
        rows.append(("search", f"ms/query breakdown, {name}", fmt(total), "", "",
                     ", ".join(parts) + f", rest {rest:.1f}"))
    rows.append(("search", "reranker first call (load)", fmt(se["reranker_first_call_seconds"], ".2f") + "s", "", "",
                 "dequantized cache " + ("warm" if se["reranker_dequantized_cache_was_warm"] else "COLD (includes dequantize)")))

    rows.append(("disk", "index dir / store.duckdb / vectors.faiss (KB)",
                 f"{dk['disk_bytes'] / 1024:.0f} / {dk['store_bytes'] / 1024:.0f} / {dk['snapshot_bytes'] / 1024:.0f}",
                 f"{dk['raw_float32_vector_bytes'] / 1024:.0f}", "",
                 f"baseline col: raw float32 vectors; {dk['bytes_per_document'] / 1024:.1f} KB/doc"))

    rk = res["rerankers"]
    a, o, fi = rk["torch_crossencoder_fp32"], rk["onnxruntime_int8"], rk["fidelity"]
    rows.append(("rerank", f"ms/query p50 ({rk['candidates']} pairs), pairs/s",
                 f"{fmt(o['per_query_ms_p50'])}, {fmt(o['pairs_per_s'])}",
                 f"{fmt(a['per_query_ms_p50'])}, {fmt(a['pairs_per_s'])}",
                 fmt(rk["speedup_ort_over_torch"], ".2f") + "x",
                 f"value: onnxruntime int8; baseline: CrossEncoder fp32 (default); {rk['queries']} q"))
    rows.append(("rerank", "recall@10 / MRR@10 (same candidates)",
                 f"{fmt(o['recall@10'], '.3f')} / {fmt(o['mrr@10'], '.3f')}",
                 f"{fmt(a['recall@10'], '.3f')} / {fmt(a['mrr@10'], '.3f')}", "",
                 "no rerank: {} / {}".format(fmt(rk["no_rerank_same_candidates"]["recall@10"], ".3f"),
                                             fmt(rk["no_rerank_same_candidates"]["mrr@10"], ".3f"))))
    rows.append(("rerank", "int8 vs fp32 agreement", f"rho {fmt(fi['spearman_mean'], '.3f')}",
                 f"tau {fmt(fi['kendall_tau_mean'], '.3f')}", "",
                 f"top1 {fi['top1_agreement']:.2f}, top10 overlap {fi['top10_overlap_mean']:.2f}, "
                 f"|dsigmoid| mean {fi['sigmoid_mean_abs_diff']:.3f} max {fi['sigmoid_max_abs_diff']:.3f}, "
                 f"token mismatches {fi['tokenization_mismatched_pairs']}"))
    pt = rk["pair_tokens"]
    sb = rk["torch_crossencoder_fp32_batch8"]
    rows.append(("rerank", "fp32 batch_size 8 vs 32: ms/query p50", fmt(sb["per_query_ms_p50"]),
                 fmt(a["per_query_ms_p50"]), fmt(a["per_query_ms_mean"] / sb["per_query_ms_mean"], ".2f") + "x",
                 f"pair tokens mean {pt['mean']:.0f} max {pt['max']}; {pt['padding_share_per_query_batch']:.0%} of a "
                 f"one-batch query is padding; {pt['at_max_length']} of {rk['pairs']} pairs hit {rk['max_length']}"))

    th = res["threads"]
    during = res["thread_states"]
    seen = sorted({(s.get("torch_num_threads"), s["faiss_omp_max_threads"]) for s in during if "torch_num_threads" in s})
    rows.append(("threads", "torch / faiss threads during run", ", ".join(f"{t} / {f}" for t, f in seen), "", "",
                 f"cores {th['cores']}; config torch_threads={th['config']['torch_threads']} "
                 f"faiss_threads={th['config']['faiss_threads']}"))
    ff = th["faiss_flat_search"]["by_threads"]
    keys = sorted(ff)
    if len(keys) > 1:
        one, many = ff[keys[0]], ff[keys[-1]]
        rows.append(("threads", f"faiss flat batch ms ({th['faiss_flat_search']['queries']} q), 1 vs {keys[-1]} thr",
                     fmt(one["corpus_batch_ms"], ".2f"), fmt(many["corpus_batch_ms"], ".2f"), "",
                     f"single query us: {one['corpus_single_query_us']:.0f} vs {many['corpus_single_query_us']:.0f}; "
                     f"20k synthetic batch ms: {one['synthetic_20k_batch_ms']:.1f} vs {many['synthetic_20k_batch_ms']:.1f}"))
    tt = th["torch"]["by_threads"]
    keys = sorted(tt)
    if len(keys) > 1:
        one, many = tt[keys[0]], tt[keys[-1]]
        note = ""
        if "rerank_20_pairs_ms" in one:
            note = f"rerank 20 pairs ms: {one['rerank_20_pairs_ms']:.0f} vs {many['rerank_20_pairs_ms']:.0f}"
        rows.append(("threads", f"torch query embed ms, 1 vs {keys[-1]} thr", fmt(one["query_embed_ms"], ".1f"),
                     fmt(many["query_embed_ms"], ".1f"), "", note))
    ph = res.get("phases", {})
    if ph:
        rows.append(("cpu", "per phase: our cpu/wall | others' share", "", "", "",
                     ", ".join(f"{k.replace('ingest ', '')} {v['cpu_per_wall']}|{v['others_share']}"
                               for k, v in ph.items())))
    rows.append(("memory", "peak RSS MB (whole process)", fmt(res["peak_rss_mb"]["end"], ".0f"), "", "",
                 "both embedder copies + cross-encoder + ORT session"))
    return rows


def print_table(rows) -> None:
    header = ("area", "metric", "value", "baseline", "ratio", "notes")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r[:5], widths)) + "  " + str(r[5])  # noqa: E731
    print(line(header))
    print("  ".join("-" * w for w in widths) + "  " + "-" * 5)
    prev = None
    for r in rows:
        if prev is not None and r[0] != prev:
            print()
        print(line(r))
        prev = r[0]


# ------------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 docs, 20 queries, a few rerank queries (~1.5 min)")
    ap.add_argument("--docs", type=int, help="corpus size (fitz_gov_subset); default 1000, quick 200")
    ap.add_argument("--queries", type=int, help="labeled queries for rerank=False; default 100, quick 20")
    ap.add_argument("--rerank-queries", type=int, help="queries for rerank=True; default 50, quick 5")
    ap.add_argument("--backend-queries", type=int, help="queries for the reranker backend test; default 20, quick 4")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "core.json")
    ap.add_argument("--keep-index", action="store_true", help="keep the temporary index directory")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="first wait up to SECONDS for the machine to be idle (other processes < 15%% of the cores)")
    args = ap.parse_args(argv)
    q = args.quick
    n_docs = args.docs or (200 if q else 1000)
    n_q = args.queries or (20 if q else 100)
    n_rr = args.rerank_queries or (5 if q else 50)
    n_be = args.backend_queries or (4 if q else 20)
    repeats = 1 if q else 2
    batch_rr = 3 if q else 10
    thread_rr = 1 if q else 3

    if args.wait_idle > 0:
        deadline = perf() + args.wait_idle
        while True:
            busy = machine_busy_fraction(2.0)
            if busy is None or busy < 0.15 or perf() > deadline:
                break
            log(f"waiting for an idle machine: {busy:.0%} of the cores busy")

    t_start = perf()
    import onnxruntime
    import sentence_transformers
    import torch
    import transformers

    res: dict = {
        "benchmark": "bench_core", "mode": "quick" if q else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": runtime.cores(), "python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor(), "loadavg_start": loadavg(),
                    "busy_share_before_start": machine_busy_fraction(1.0)},
        "versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                     "transformers": transformers.__version__, "faiss": faiss.__version__,
                     "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "thread_states": [],
        "peak_rss_mb": {},
    }

    docs, labeled = fitz_gov_subset(n_docs)
    eval_q = pick_evenly(labeled, n_q)
    rerank_q = pick_evenly(eval_q, n_rr)
    backend_q = pick_evenly(eval_q, n_be)
    res["corpus"] = {"name": f"fitz_gov_subset({n_docs})", "documents": len(docs), "labeled_queries": len(labeled),
                     "eval_queries": len(eval_q), "rerank_queries": len(rerank_q), "backend_queries": len(backend_q),
                     "mean_chars": float(np.mean([len(d.text) for d in docs]))}
    log(f"corpus: {len(docs)} docs, {len(labeled)} labeled queries; using {len(eval_q)} / {len(rerank_q)} rerank")

    config = RetrieverConfig()
    tmp = Path(tempfile.mkdtemp(prefix="bench-core-"))
    timer = CallTimer()
    r = None
    try:
        log("loading models: Retriever.create (embedder load + fingerprint), then the baseline SentenceTransformer")
        t0 = perf()
        r = Retriever.create(tmp / "index", config)
        create_s = perf() - t0
        res["thread_states"].append(thread_state("after Retriever.create"))
        from sentence_transformers import SentenceTransformer

        t0 = perf()
        st = SentenceTransformer(resolve_embedder(config.embedding.model), device="cpu")
        st.eval()
        st_load = perf() - t0
        res["model_load"] = {"retriever_create_seconds": create_s, "baseline_st_load_seconds": st_load,
                             "same_model_object": st is r.embedder.model}
        res["thread_states"].append(thread_state("after baseline model load"))
        res["peak_rss_mb"]["after_model_load"] = peak_rss_mb()

        timer.wrap(r.embedder, "encode", "embed (Embedder.encode)")
        timer.wrap(r.embedder, "token_spans", "tokenize (chunking token_spans)")
        timer.wrap(r._store, "upsert", "duckdb (Store.upsert)")
        timer.wrap(r._store, "fetch", "duckdb (Store.fetch)")
        timer.wrap(r._index, "add", "faiss (VectorIndex.add)")
        timer.wrap(r._index, "search", "faiss (VectorIndex.search)")
        timer.wrap(r.reranker, "score_pairs", "rerank (Reranker.score_pairs)")

        by_len = sorted((d.text for d in docs), key=len)
        warm = [by_len[i] for i in np.linspace(0, len(by_len) - 1, min(64, len(by_len))).astype(int)]
        base_vecs = bench_ingest(r, st, docs, warm, timer, res)
        res["thread_states"].append(thread_state("after ingest"))
        res["peak_rss_mb"]["after_ingest"] = peak_rss_mb()

        bench_search(r, st, docs, base_vecs, eval_q, rerank_q, batch_rr, timer, res)
        res["thread_states"].extend([res["search"]["no_rerank"]["threads"], res["search"]["rerank"]["threads"]])
        res["peak_rss_mb"]["after_search"] = peak_rss_mb()
        timer.restore()

        bench_disk(r, res)
        bench_rerankers(r, backend_q, repeats, res, warm=1 if q else 2)
        res["thread_states"].append(thread_state("after reranker backends"))
        res["peak_rss_mb"]["after_rerankers"] = peak_rss_mb()

        log("threads: faiss 1 vs all, torch 1 vs all")
        with Phase("threads"):
            bench_threads(r, st, eval_q, thread_rr, res)
        res["thread_states"].append(thread_state("end"))
    finally:
        timer.restore()
        if r is not None:
            try:
                r.close()
            except Exception as e:  # report, but keep the numbers measured so far
                log(f"Retriever.close() failed: {type(e).__name__}: {e}")
                res["close_error"] = f"{type(e).__name__}: {e}"
        if args.keep_index:
            log(f"index kept at {tmp / 'index'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    res["peak_rss_mb"]["end"] = peak_rss_mb()
    res["machine"]["loadavg_end"] = loadavg()
    res["phases"] = Phase.log
    res["total_seconds"] = perf() - t_start

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=str) + "\n")

    print()
    print(f"bench_core ({res['mode']}): {res['corpus']['name']}, {runtime.cores()} cores, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; loadavg start {res['machine']['loadavg_start']} "
          f"end {res['machine']['loadavg_end']}; machine busy before start "
          f"{fmt(res['machine']['busy_share_before_start'], '.0%')}")
    print_table(build_table(res))
    print()
    busy = [f"{name} ({p['others_share']:.0%})" for name, p in Phase.log.items()
            if p["others_share"] is not None and p["others_share"] > 0.10]
    if busy:
        print(f"WARNING: other processes used more than 10% of the cores during: {', '.join(busy)} "
              f"(loadavg {res['machine']['loadavg_start']} -> {res['machine']['loadavg_end']}); absolute times "
              f"are inflated there; ratios measured interleaved in the same run are more trustworthy.")
    print(f"total {res['total_seconds']:.0f} s; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
