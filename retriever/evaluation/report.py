"""Write an evaluation report: JSON (machine-readable; also the baseline format), Markdown (the gate table,
retrieval vs reranked, the worst queries, per-query changes against the baseline) and PNG plots."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..persistence import write_json_atomic
from .runner import REPORT_FORMAT

_JSON_SAFE = (str, int, float, bool, type(None), list, dict)


def load_baseline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"baseline {path}: {e.strerror}; write one with --update-baseline") from None
    except json.JSONDecodeError as e:
        raise InputError(f"baseline {path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT or "flat" not in data:
        raise InputError(f"baseline {path}: not a {REPORT_FORMAT} report; write one with --update-baseline")
    return data


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def gate_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        op = {"min": ">=", "max": "<=", "drop": ">= baseline - max_drop ="}[r["kind"]]
        out.append(f"{'PASS' if r['passed'] else 'FAIL'}  {r['name']} = {_fmt(r['value'])} (rule: {op} {_fmt(r['limit'])})")
    return out


def markdown(report: dict[str, Any], gate_rows: list[dict[str, Any]] | None, baseline: dict[str, Any] | None,
             worst: int = 10) -> str:
    m, ks = report["metrics"], report["settings"]["ks"]
    idx = report["index"]
    lines = [f"# Retrieval evaluation: {report['n_queries']} queries", "",
             f"Index `{idx['path']}`: {idx['documents']} documents, {idx['vectors']} vectors, "
             f"{idx['embedding_model']}, {idx['index_kind']}; rerank: "
             f"{idx['rerank_model'] + ' over ' + str(report['settings']['rerank_candidates']) + ' candidates' if report['settings']['rerank'] else 'off'}.", ""]
    if gate_rows is not None:
        lines += ["## Gate", "", "| rule | value | limit | result |", "|---|---|---|---|"]
        for r in gate_rows:
            lines.append(f"| {r['kind']} {r['name']} | {_fmt(r['value'])} | {_fmt(r['limit'])} | "
                         f"{'pass' if r['passed'] else '**FAIL**'} |")
        lines.append("")
    settings = report["settings"]
    final_name = "reranked" if settings["rerank"] else "final (rerank off)"
    arms = [a for a in ("dense", "lexical", "fused") if a in m]
    lines += [f"## Quality by arm (document level; mode {settings.get('mode', 'dense')}, results "
              f"{settings.get('results', 'chunks')})", "",
              "dense: FAISS cosine; lexical: BM25; fused: both arms fused; retrieval: the evaluated mode's list "
              "before the rerank; lift: the final output against retrieval.", "",
              "| metric | " + " | ".join(arms) + f" | retrieval | {final_name} | lift |"
              + (" baseline | change |" if baseline else ""),
              "|---|" + "---|" * (len(arms) + 3) + ("---|---|" if baseline else "")]
    base_flat = baseline["flat"] if baseline else {}
    for name in ("recall", "hit_rate", "precision", "mrr", "ndcg"):
        for k in ks:
            key = f"{name}@{k}"
            f, r = m["final"].get(key), m["retrieval"].get(key)
            row = f"| {key} | " + "".join(f"{_fmt(m[a].get(key))} | " for a in arms)
            row += f"{_fmt(r)} | {_fmt(f)} | {f - r:+.4f} |"
            if baseline:
                b = base_flat.get(key)
                row += f" {_fmt(b)} | {'' if b is None else f'{f - b:+.4f}'} |"
            lines.append(row)
    ann = m["ann"]
    lines += ["", "Index error, ANN recall against exact search: " + ", ".join(f"{k} = {v:.4f}" for k, v in ann.items())
              + (" (flat index: exact by construction)" if m["ann_is_exact_index"] else ""), ""]
    lat = report["latency_ms"]
    lines += ["## Latency (ms)", "", "| stage | p50 | p95 | p99 |", "|---|---|---|---|"]
    for stage, v in lat["single"].items():
        lines.append(f"| {stage} | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} | {v['p99_ms']:.1f} |")
    if "concurrent" in lat:
        c = lat["concurrent"]
        for stage, v in c["stages"].items():
            lines.append(f"| {stage}, {c['callers']} concurrent callers | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} | "
                         f"{v['p99_ms']:.1f} |")
        lines.append(f"| total, {c['callers']} concurrent callers ({c['queries_per_s']:.2f} q/s) | {c['p50_ms']:.1f} | "
                     f"{c['p95_ms']:.1f} | {c['p99_ms']:.1f} |")
    lines.append(f"\nReranking costs {report['rerank_cost_ms_per_query']:.1f} ms per query on average.\n")
    pq = report["per_query"]
    k10 = 10 if 10 in ks else ks[-1]
    worst_q = sorted(pq.items(), key=lambda kv: (kv[1]["final"][f"ndcg@{k10}"], kv[1]["final"][f"recall@{k10}"], kv[0]))
    lines += [f"## Worst queries (by ndcg@{k10})", "", "| id | query | first relevant rank (retrieval → reranked) | "
              f"recall@{k10} |", "|---|---|---|---|"]
    for qid, r in worst_q[:worst]:
        lines.append(f"| {qid} | {r['query'][:70]} | {_fmt(r['first_relevant_rank_retrieval'])} → "
                     f"{_fmt(r['first_relevant_rank'])} | {_fmt(r['final'][f'recall@{k10}'])} |")
    if baseline:
        changed = []
        for qid, r in pq.items():
            b = baseline.get("per_query", {}).get(qid)
            if b and (b["first_relevant_rank"] != r["first_relevant_rank"]
                      or abs(b["final"].get(f"recall@{k10}", 0) - r["final"][f"recall@{k10}"]) > 1e-12):
                changed.append((qid, b, r))
        lines += ["", f"## Changes against the baseline ({len(changed)} queries)", ""]
        if changed:
            lines += [f"| id | first relevant rank (baseline → now) | recall@{k10} (baseline → now) |", "|---|---|---|"]
            for qid, b, r in changed:
                lines.append(f"| {qid} | {_fmt(b['first_relevant_rank'])} → {_fmt(r['first_relevant_rank'])} | "
                             f"{_fmt(b['final'].get(f'recall@{k10}'))} → {_fmt(r['final'][f'recall@{k10}'])} |")
    if report["missing_relevant"]:
        lines += ["", "## Relevant ids absent from the corpus", ""]
        lines += [f"- {qid}: {', '.join(ids)}" for qid, ids in report["missing_relevant"].items()]
    if report["empty_results"]:
        lines += ["", f"## Queries with no results (counted as misses): {', '.join(report['empty_results'])}"]
    return "\n".join(lines) + "\n"


def plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = report["settings"]["ks"]
    m = report["metrics"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [m["retrieval"][f"recall@{k}"] for k in ks], marker="o", label="retrieval (cosine)")
    ax.plot(ks, [m["final"][f"recall@{k}"] for k in ks], marker="s", label="reranked")
    ax.set_xticks(ks)
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_title(f"recall@k, {report['n_queries']} queries")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    recall_png = out_dir / "recall_at_k.png"
    fig.tight_layout()
    fig.savefig(recall_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    totals = [r["total_ms"] for r in report["per_query"].values()]
    ax.hist(totals, bins=min(40, max(5, len(totals) // 3)), color="#4477aa")
    single = report["latency_ms"]["single"]["total"]
    for pct, style in (("p50_ms", "--"), ("p95_ms", ":"), ("p99_ms", "-.")):
        ax.axvline(single[pct], color="k", linestyle=style, label=f"{pct[:3]} {single[pct]:.0f} ms")
    ax.set_xlabel("single-query latency (ms)")
    ax.set_ylabel("queries")
    ax.set_title("latency distribution")
    ax.legend()
    latency_png = out_dir / "latency.png"
    fig.tight_layout()
    fig.savefig(latency_png, dpi=110)
    plt.close(fig)
    return [recall_png, latency_png]


def write_report(report: dict[str, Any], out_dir: str | Path, gate_rows, baseline) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(report, out / "report.json")
    md = out / "report.md"
    md.write_text(markdown(report, gate_rows, baseline), encoding="utf-8")
    return [out / "report.json", md, *plots(report, out)]
