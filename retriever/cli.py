"""The `retriever` command. Subcommands import what they need when they run, so `--help` stays light
(no torch). Exit codes: 0 ok, 2 bad input, 1 failure."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .cli_backup import add_backup_parsers, cmd_backup, cmd_restore
from .inputs import MODES

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="retriever",
        description="Retrieval for RAG: FAISS cosine top-k, DuckDB metadata, cross-encoder rerank.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("ingest", help="add or replace documents from a JSONL, CSV or Parquet file")
    s.add_argument("data", metavar="DATA", help="a .jsonl, .csv or .parquet file")
    s.add_argument("--index", required=True, metavar="DIR", help="index directory (created if missing)")
    s.add_argument("--config", metavar="FILE", help="TOML settings for a new index (see configs/default.toml)")
    s.add_argument("--id-field", help="field holding the document id (default [ingest] id_field)")
    s.add_argument("--text-field", help="field holding the text (default [ingest] text_field)")
    s.add_argument("--metadata-fields", help="comma-separated fields kept as metadata (default: all others)")
    s.add_argument("--dedupe", action="store_true", help="keep the first row of a repeated id instead of failing")
    s.add_argument("--shards", type=int, metavar="N", help="create the index with N shards (documents routed by id)")
    s.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="embed in this process (default) or on a Ray cluster (pip install 'rag-retriever[distributed]')")
    s.add_argument("--address", metavar="ADDR", help="Ray cluster to join (default: start a local one)")
    s.add_argument("--workers", type=int, default=1, metavar="W", help="embedding actors on Ray (default 1)")

    s = sub.add_parser("search", help="search an index")
    s.add_argument("index", metavar="DIR")
    s.add_argument("query", metavar="TEXT")
    s.add_argument("-k", type=int, default=10, help="number of hits (default 10)")
    s.add_argument("--filter", metavar="JSON", help='metadata filter, e.g. \'{"domain": "biology"}\'')
    s.add_argument("--no-rerank", action="store_true", help="skip the cross-encoder")
    s.add_argument("--mode", choices=MODES, help="dense, lexical (BM25) or hybrid (default [retrieval] mode)")
    s.add_argument("--json", action="store_true", help='print {"hits": [...]}')

    s = sub.add_parser("delete", help="delete documents by id")
    s.add_argument("index", metavar="DIR")
    s.add_argument("ids", metavar="ID", nargs="+")

    s = sub.add_parser("info", help="counts, model, index kind, sizes")
    s.add_argument("index", metavar="DIR")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("verify", help="check the FAISS snapshot, ids and model against DuckDB; or, given a backup "
                                     "folder, every file of the backup against its checksum")
    s.add_argument("index", metavar="DIR", help="an index directory, or a backup folder (DEST of `retriever backup`)")
    s.add_argument("--json", action="store_true")

    add_backup_parsers(sub)

    s = sub.add_parser("rebuild", help="rebuild FAISS from the vectors stored in DuckDB (no re-embedding): "
                                      "retrain IVF/PQ, compact HNSW, or change the index kind")
    s.add_argument("index", metavar="DIR")
    s.add_argument("--kind", choices=("flat", "hnsw", "ivf_flat", "ivf_pq", "auto"), help="change index.kind")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change an [index] setting, e.g. --set nlist=1024 --set opq=true (repeatable)")
    s.add_argument("--metadata", action="append", default=[], metavar="NAME=TYPE",
                   help="add a typed, indexed metadata field filled from the stored metadata, e.g. --metadata "
                        "year=int --metadata tags=list[str] (repeatable; types: int, float, str, bool, list[str], "
                        "list[int]); alone, FAISS is not rebuilt")

    s = sub.add_parser("tune", help="find the cheapest nprobe / ef_search reaching a target ANN recall@k and store it")
    s.add_argument("index", metavar="DIR")
    s.add_argument("--target-recall", type=float, default=0.95, help="recall@k against exact search (default 0.95)")
    s.add_argument("--k", type=int, default=10, help="cutoff k (default 10)")
    s.add_argument("--sample", type=int, default=1000, help="stored vectors used as queries (default 1000)")
    s.add_argument("--queries", metavar="FILE",
                   help="also require the target on these labeled queries (JSONL, BEIR folder, or 'fitz-gov')")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("reembed", help="re-embed the stored text with another model into a new generation")
    s.add_argument("index", metavar="DIR")
    s.add_argument("--model", required=True, metavar="NAME", help="sentence-transformers name or path, or builtin:...")
    s.add_argument("--batch-size", type=int)
    s.add_argument("--backend", choices=("onnx", "torch"),
                   help="onnx: int8 ONNX via onnxruntime (fast); torch: sentence-transformers (default: as configured)")

    s = sub.add_parser("eval", help="measure recall@k, MRR, nDCG and latency on labeled queries; gate a release")
    s.add_argument("index", metavar="DIR")
    s.add_argument("--queries", required=True, metavar="FILE",
                   help="JSONL {id, query, relevant}, a BEIR folder, or 'fitz-gov'")
    s.add_argument("--gate", metavar="FILE", help="TOML gate: [min] metrics, [max] costs, max_drop")
    s.add_argument("--baseline", metavar="FILE", help="a previous report.json to compare with")
    s.add_argument("--report", metavar="OUT", help="folder for report.json, report.md and PNG plots")
    s.add_argument("--update-baseline", action="store_true", help="write this run's report to --baseline")
    s.add_argument("--k", default="1,5,10,20", help="comma-separated cutoffs (default 1,5,10,20)")
    s.add_argument("--concurrency", type=int, default=4, help="concurrent callers for the load run (0 skips it)")
    s.add_argument("--no-rerank", action="store_true")
    s.add_argument("--mode", choices=MODES, help="evaluate one mode: dense, lexical or hybrid (default [retrieval] "
                   "mode); the report shows every arm beside it either way")
    s.add_argument("--limit", type=int, help="evaluate only the first N queries")

    s = sub.add_parser("serve", help="serve an index over HTTP for chatbot backends (FastAPI on uvicorn)")
    s.add_argument("index", metavar="DIR")
    s.add_argument("--host", help="address to bind (default [server] host, 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default [server] port, 8000; 0 picks a free one)")
    s.add_argument("--read-only", action="store_true",
                   help="open DuckDB read-only: several such servers share the index beside one writer process; "
                        "POST /v1/admin/reload or SIGHUP picks up what the writer published")
    s.add_argument("--config", metavar="FILE",
                   help="TOML overriding search-time settings of the index, e.g. [server] and [rerank] budget_ms")
    s.add_argument("--workers", type=int, help="search threads (default [server] workers: one per core)")
    s.add_argument("--allow-unauthenticated", action="store_true",
                   help="start on a non-loopback --host without $RETRIEVER_API_TOKEN ([server] token_env): anyone on "
                        "the network can then write; refused by default")
    s.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="serve in this process (default), or a sharded index on Ray Serve: one deployment per shard")
    s.add_argument("--replicas", type=int, default=1, metavar="R", help="--engine ray: reader replicas per shard")
    s.add_argument("--address", metavar="ADDR", help="--engine ray: the Ray cluster (default $RAY_ADDRESS or a local one)")
    s.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))

    s = sub.add_parser("demo", help="ingest the bundled fitz-gov subset and run a few queries")
    s.add_argument("--index", default="demo-index", metavar="DIR", help="where to build it (replaced if it exists)")
    s.add_argument("--docs", type=int, default=1000, help="number of fitz-gov documents (default 1000)")
    s.add_argument("-k", type=int, default=3)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .errors import RetrieverError

    try:
        return {
            "ingest": cmd_ingest, "search": cmd_search, "delete": cmd_delete, "info": cmd_info, "verify": cmd_verify,
            "rebuild": cmd_rebuild, "reembed": cmd_reembed, "demo": cmd_demo, "eval": cmd_eval, "tune": cmd_tune,
            "serve": cmd_serve, "backup": cmd_backup, "restore": cmd_restore,
        }[args.command](args)
    except RetrieverError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; every acknowledged batch is stored", file=sys.stderr)
        return 130


def _bad(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def cmd_ingest(args) -> int:
    from tqdm import tqdm

    from . import RetrieverConfig
    from .ingest import ingest

    config = RetrieverConfig.from_toml(args.config) if args.config else None
    fields = args.metadata_fields.split(",") if args.metadata_fields else None
    ray_args = {"address": args.address, "workers": args.workers} if args.engine == "ray" else {}
    if args.engine == "local" and (args.address or args.workers != 1):
        return _bad("--address and --workers apply to --engine ray; drop them, or add --engine ray")
    with tqdm(unit="batch", desc="ingest", file=sys.stderr) as bar:
        rep = ingest(args.data, args.index, shards=args.shards, engine=args.engine, config=config,
                     id_field=args.id_field, text_field=args.text_field, metadata_fields=fields, dedupe=args.dedupe,
                     on_batch=lambda info: bar.update(1), **ray_args)
    where = f"{args.index} ({rep.shards} shards)" if rep.shards else args.index
    resumed = f"; {rep.resumed_batches} of {rep.batches} batches were committed by an earlier run" \
        if rep.resumed_batches else ""
    print(f"ingested {rep.documents} documents into {where} ({rep.added} new, {rep.updated} replaced, "
          f"{rep.vectors} vectors) in {rep.seconds:.1f}s ({rep.docs_per_second:.1f} docs/s, engine {rep.engine})"
          f"{resumed}")
    _warn(rep.warnings)
    return 0


def _warn(warnings) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def _print_hits(hits, as_json: bool, notes=()) -> None:
    if as_json:
        print(json.dumps({"hits": [h.to_dict() for h in hits], "notes": list(notes)}, ensure_ascii=False))
        return
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not hits:
        print("no hits")
    for h in hits:
        text = " ".join(h.text.split())
        print(f"{h.rank:>3}. {h.id:<28} {_scores(h)}  {text[:80]}")


def _scores(h) -> str:
    """The scores of a hit in fixed columns, and the arms that found it."""
    rr = "     -" if h.rerank_score is None else f"{h.rerank_score:6.4f}"
    cos = "     -" if h.retrieval_score is None else f"{h.retrieval_score:6.3f}"
    bm = "    -" if h.lexical_score is None else f"{h.lexical_score:5.1f}"
    return f"rerank {rr}  cosine {cos}  bm25 {bm}  {'+'.join(h.found_by):<13}"


def cmd_search(args) -> int:
    from . import Retriever

    filters = None
    if args.filter:
        try:
            filters = json.loads(args.filter)
        except json.JSONDecodeError as e:
            return _bad(f"--filter is not valid JSON ({e.msg}); e.g. --filter '{{\"domain\": \"biology\"}}'")
    with Retriever.open(args.index, read_only=True) as r:
        hits, trace = r.search_traced([args.query], k=args.k, filters=filters, rerank=not args.no_rerank,
                                      mode=args.mode, record=False)
    _print_hits(hits[0], args.json, trace.notes)
    return 0


def cmd_delete(args) -> int:
    from . import Retriever

    with Retriever.open(args.index) as r:
        rep = r.delete(args.ids)
    print(f"deleted {rep.deleted} documents ({rep.vectors} vectors)")
    if rep.missing:
        print(f"not found: {', '.join(rep.missing)}", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    from . import Retriever

    with Retriever.open(args.index, read_only=True) as r:
        stats = r.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        index = stats.pop("index")
        for k, v in stats.items():
            print(f"{k:>16}: {v}")
        for k, v in index.items():
            if k != "warnings":
                print(f"{'index.' + k:>16}: {v}")
        _warn(index["warnings"])
    return 0


def cmd_verify(args) -> int:
    from . import Retriever
    from .backup import is_backup, verify_backup

    if is_backup(args.index):
        return _report_verify(verify_backup(args.index), None, args.json)
    with Retriever.open(args.index, read_only=True) as r:
        return _report_verify(r.verify(), r.recovered, args.json)


def _report_verify(rep, recovered: str | None, as_json: bool) -> int:
    if as_json:
        print(json.dumps({**rep.to_dict(), "recovered_on_open": recovered}, indent=2))
    else:
        if recovered:
            print(f"note: on open, {recovered}")
        for k, v in rep.checks.items():
            print(f"{k:>22}: {v}")
        print("ok" if rep.ok else "problems:\n  " + "\n  ".join(rep.problems))
        _warn(rep.warnings)
    return 0 if rep.ok else 1


def cmd_rebuild(args) -> int:
    from . import Retriever

    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            return _bad(f"--set {item!r} must look like KEY=VALUE, e.g. --set nlist=1024")
        changes[key.strip()] = _toml_value(value.strip())
    if args.kind:
        changes["kind"] = args.kind
    fields = {}
    for item in args.metadata:
        name, sep, ftype = item.partition("=")
        if not sep or not name.strip():
            return _bad(f"--metadata {item!r} must look like NAME=TYPE, e.g. --metadata year=int")
        fields[name.strip()] = ftype.strip()
    t0 = time.perf_counter()
    with Retriever.open(args.index) as r:
        if fields:
            done = r.add_metadata_fields(fields)
            print(f"{args.index}: typed metadata fields {done['fields']} ({', '.join(done['added']) or 'none'} added, "
                  f"{done['rows']} rows filled from the stored metadata in {done['seconds']:.2f}s)")
            if not changes:
                return 0
        n = r.rebuild(changes or None)
        status = r.index_status()
    params = ", ".join(f"{k}={v}" for k, v in status["params"].items())
    print(f"rebuilt {args.index}: {status['kind']} index" + (f" ({params})" if params else "") +
          f" over {n} vectors from DuckDB in {time.perf_counter() - t0:.2f}s")
    if status["reason"]:
        print(status["reason"])
    _warn(status["warnings"])
    return 0


def _toml_value(text: str):
    """A --set value as TOML reads it (1024, 0.5, true, "x"); a bare word is a string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def cmd_tune(args) -> int:
    from . import Retriever

    texts = None
    if args.queries:
        from .evaluation.queries import load_queries

        texts = [q.query for q in load_queries(args.queries)]
    with Retriever.open(args.index) as r:
        report = r.tune(args.target_recall, args.k, sample=args.sample, queries=texts)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"{report.kind} index, {report.vectors:,} vectors; ANN recall@{report.k} against exact search on "
              f"{report.sample:,} stored vectors" + (f" and {report.labeled:,} labeled queries" if report.labeled else "")
              + f" ({report.seconds:.1f}s)")
        print(report.table())
        if report.note:
            print(report.note)
        if report.chosen is not None and report.chosen.params:
            print(f"chosen: {report.chosen.label} (target {report.target}); stored in {args.index}/manifest.json")
    return 0 if report.reached else 1


def cmd_reembed(args) -> int:
    from . import Retriever

    with Retriever.open(args.index) as r:
        out = r.reembed(args.model, batch_size=args.batch_size, backend=args.backend, show_progress=True)
    print(f"re-embedded {out['vectors']} texts with {out['model']} ({out['backend']} backend, {out['dim']}-d) into generation "
          f"{out['generation']} in {out['seconds']}s")
    return 0


def cmd_eval(args) -> int:
    from . import Retriever
    from .evaluation import load_gate, load_queries
    from .evaluation.report import gate_lines, load_baseline, markdown, write_json, write_report
    from .evaluation.runner import evaluate

    try:
        ks = sorted({int(x) for x in args.k.split(",") if x.strip()})
    except ValueError:
        return _bad(f"--k {args.k!r} must be comma-separated positive integers, e.g. 1,5,10,20")
    if not ks or ks[0] < 1:
        return _bad(f"--k {args.k!r} must be comma-separated positive integers, e.g. 1,5,10,20")
    if args.concurrency < 0:
        return _bad(f"--concurrency {args.concurrency} must be 0 (skip) or more")
    if args.update_baseline and not args.baseline:
        return _bad("--update-baseline needs --baseline FILE (where to write it)")
    queries = load_queries(args.queries)
    if args.limit is not None:
        if args.limit < 1:
            return _bad(f"--limit {args.limit} must be at least 1")
        queries = queries[:args.limit]
    gate = load_gate(args.gate) if args.gate else None
    baseline = load_baseline(args.baseline) if args.baseline and not args.update_baseline else None
    if gate:
        ks = sorted(set(ks) | gate.ks())
    t0 = time.perf_counter()
    with Retriever.open(args.index, read_only=True) as r:
        def progress(i, n):
            if i == n or i % 50 == 0:
                print(f"eval: {i}/{n} queries", file=sys.stderr)

        report = evaluate(r, queries, ks=ks, rerank=not args.no_rerank, concurrency=args.concurrency,
                          progress=progress, mode=args.mode)
    rows = gate.check(report["flat"], baseline["flat"] if baseline else None) if gate else None
    report["gate"] = None if gate is None else {"file": gate.source, "passed": all(x["passed"] for x in rows),
                                                "rules": rows}
    report["eval_seconds"] = time.perf_counter() - t0
    if args.report:
        files = write_report(report, args.report, rows, baseline)
        print(f"report: {', '.join(str(f) for f in files)}", file=sys.stderr)
    if args.update_baseline:
        write_json(report, Path(args.baseline))
        print(f"baseline written: {args.baseline}", file=sys.stderr)
    print(markdown(report, None, baseline, worst=5))
    print(f"evaluated {len(queries)} queries in {report['eval_seconds']:.1f}s")
    if rows is None:
        return 0
    failed = [x for x in rows if not x["passed"]]
    for line in gate_lines([x for x in rows if x["passed"]]) + gate_lines(failed):
        print(line)
    if failed:
        print(f"gate FAILED: {len(failed)} of {len(rows)} rules: {', '.join(x['name'] for x in failed)}")
        return 1
    print(f"gate passed: {len(rows)} rules")
    return 0


def cmd_serve(args) -> int:
    import tomllib

    from .errors import ConfigError

    try:
        from .server import serve
    except ImportError as e:
        return _bad(f"serving needs FastAPI and uvicorn ({e.name} is missing): pip install 'rag-retriever[server]'")
    overlay: dict = {}
    if args.config:
        try:
            with open(args.config, "rb") as f:
                overlay = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            return _bad(f"--config {args.config} is not a readable TOML file ({e})")
        if not all(isinstance(v, dict) for v in overlay.values()):
            raise ConfigError(f"--config {args.config}: every top-level key must be a [section]")
    if args.workers is not None:
        overlay.setdefault("server", {})["workers"] = args.workers
    if args.engine == "ray":
        if args.read_only:
            return _bad("--read-only does not apply to --engine ray: readers are replicas of each shard (--replicas)")
        from .ray_cluster import ray_module

        ray_module()  # a clear error when Ray is not installed
        from .ray_serve import serve_on_ray

        serve_on_ray(args.index, host=args.host, port=args.port, replicas=args.replicas, overrides=overlay,
                     address=args.address, allow_unauthenticated=args.allow_unauthenticated)
        return 0
    serve(args.index, host=args.host, port=args.port, read_only=args.read_only, overrides=overlay,
          log_level=args.log_level, allow_unauthenticated=args.allow_unauthenticated)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args, bad=_bad, scores=_scores)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
