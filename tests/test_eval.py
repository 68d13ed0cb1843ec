"""The evaluation harness: loaders and gates that name file, line and rule; document-level judging of chunks;
misses and absent ids reported; a real run agrees with pytrec_eval; reports (JSON, Markdown, PNG); baselines."""
import json
from pathlib import Path

import pytest
import pytrec_eval

from retriever import Document, InputError, Retriever, RetrieverConfig
from retriever.cli import main
from retriever.evaluation import evaluate, load_gate, load_queries
from retriever.evaluation.gate import check_cost_name

FAST = RetrieverConfig().replace(rerank={"candidates": 10})


# ------------------------------------------------------------------------------------------ loaders, gates
@pytest.mark.parametrize(
    "text, words",
    [
        ('{"id": "q1", "query": "a", "relevant": ["d1"]}\n{"id": "q2", "query": "b", "relevant": \n',
         r"q\.jsonl:2: not valid JSON"),
        ('{"id": "q1", "query": "a"}\n', r"q\.jsonl:1: missing field \"relevant\""),
        ('{"id": "q1", "query": "", "relevant": ["d"]}\n', r"q\.jsonl:1: \"query\" must be a non-empty string"),
        ('{"id": "q1", "query": "a", "relevant": []}\n', r"q\.jsonl:1: no relevant document"),
        ('{"id": "q1", "query": "a", "relevant": {"d": -1}}\n', r"q\.jsonl:1: the grade of 'd' is -1"),
        ('{"id": "q1", "query": "a", "relevant": ["d"]}\n{"id": "q1", "query": "b", "relevant": ["d"]}\n',
         r"q\.jsonl:2: query id 'q1' repeats line 1"),
        ("\n\n", r"q\.jsonl: no queries"),
        ('["not", "an", "object"]\n', r"q\.jsonl:1: a line must be a JSON object"),
    ],
)
def test_malformed_query_files_name_file_line_and_rule(tmp_path, text, words):
    p = tmp_path / "q.jsonl"
    p.write_text(text)
    with pytest.raises(InputError, match=words):
        load_queries(p)


def test_graded_jsonl_beir_and_fitz_gov_loaders(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"id": "q1", "query": "a", "relevant": {"d1": 2, "d2": 1}}\n{"id": "q2", "query": "b", "relevant": ["d3"]}\n')
    qs = load_queries(p)
    assert qs[0].relevant == {"d1": 2.0, "d2": 1.0} and qs[1].relevant == {"d3": 1.0}
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "x"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "1", "text": "first"}\n{"_id": "2", "text": "second"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t2\n2\td1\t0\n")
    qs = load_queries(beir)
    assert [(q.id, q.query, q.relevant) for q in qs] == [("1", "first", {"d1": 2.0})]
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n9\td1\t1\n")
    with pytest.raises(InputError, match=r"test\.tsv:2: query-id '9' is not in queries\.jsonl"):
        load_queries(beir)
    fitz = load_queries("fitz-gov")
    assert len(fitz) == 2812 and all(q.relevant for q in fitz)


@pytest.mark.parametrize(
    "text, words",
    [
        ('[min]\n"recal@10" = 0.9\n', r"g\.toml: \[min\] unknown metric 'recal@10'"),
        ('[min]\n"rerank.recall@10" = 0.9\n', r"unknown stage 'rerank'"),
        ('[min]\n"recall@10" = "high"\n', r"'recall@10' = 'high' must be a number"),
        ('[max]\np96_ms = 3\n', r"unknown cost 'p96_ms'"),
        ('[mins]\n"recall@10" = 0.9\n', r"unknown key 'mins'"),
        ('max_drop = -1\n[min]\n"recall@10" = 0.9\n', r"max_drop = -1 must be a number >= 0"),
        ('max_drop = 0.1\n', r"no rules"),
        ('[min\n', r"not valid TOML"),
    ],
)
def test_malformed_gates_name_the_file_and_rule(tmp_path, text, words):
    p = tmp_path / "g.toml"
    p.write_text(text)
    with pytest.raises(InputError, match=words):
        load_gate(p)


def test_gate_rules_min_max_and_drop():
    from retriever.evaluation.gate import Gate

    g = Gate("x", {"recall@10": 0.9, "retrieval.mrr@10": 0.5}, {"p95_ms": 100}, max_drop=0.02)
    rows = g.check({"recall@10": 0.91, "retrieval.mrr@10": 0.4, "p95_ms": 120}, {"recall@10": 0.95})
    assert [(r["kind"], r["name"], r["passed"]) for r in rows] == [
        ("min", "recall@10", True), ("drop", "recall@10", False), ("min", "retrieval.mrr@10", False),
        ("max", "p95_ms", False)]
    assert g.ks() == {10}


# ------------------------------------------------------------------------------ real runs on a real index
LONG = " ".join(f"Section {i}: the turbine maintenance schedule requires inspection of blade {i}." for i in range(120))
DOCS = [
    Document("manual", LONG, {"kind": "manual"}),
    Document("paris", "Paris is the capital and largest city of France."),
    Document("banana", "Bananas are rich in potassium and easy to digest."),
    Document("python", "Python is a programming language that emphasizes readability."),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, model_cache):
    path = tmp_path_factory.mktemp("eval") / "ix"
    with Retriever.create(path, FAST) as r:
        r.upsert(DOCS)
    return path


@pytest.mark.real
def test_chunks_count_for_their_parent_once_and_absent_ids_are_reported(tiny, tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "t", "query": "turbine blade inspection schedule", "relevant": ["manual"]}) + "\n"
                 + json.dumps({"id": "f", "query": "capital of France", "relevant": ["paris", "lyon"]}) + "\n")
    with Retriever.open(tiny, read_only=True) as r:
        assert r.store.count() > 5  # the manual is stored as several chunks
        rep = evaluate(r, load_queries(q), ks=(1, 3, 10), concurrency=2, concurrent_queries=2)
    t = rep["per_query"]["t"]
    assert t["results"][0] == "manual" and t["results"].count("manual") == 1
    # the manual's chunks fill the top ranks, yet it counts once: precision@3 is 1/3, not 3/3
    assert t["final"]["precision@3"] == pytest.approx(1 / 3) and t["final"]["recall@1"] == 1.0
    assert rep["missing_relevant"] == {"f": ["lyon"]}
    assert rep["per_query"]["f"]["final"]["recall@10"] == 0.5
    assert rep["metrics"]["ann"]["ann_recall@10"] == 1.0 and rep["metrics"]["ann_is_exact_index"]
    lat = rep["latency_ms"]
    assert set(lat["single"]) == {"embed", "search", "lexical", "join", "rerank", "total"}
    assert lat["single"]["rerank"]["p50_ms"] > 0 and lat["concurrent"]["callers"] == 2
    assert set(lat["concurrent"]["stages"]) == {"embed", "search", "lexical", "join", "rerank"}
    for name in ("recall@10", "retrieval.recall@10", "ann_recall@10", "p95_ms", "rerank.p95_ms", "concurrent.p99_ms",
                 "concurrent.rerank.p95_ms"):
        assert name in rep["flat"]
        if name.endswith("_ms"):
            check_cost_name(name)  # every latency the report flattens can be named in a gate


@pytest.mark.real
def test_a_query_with_no_results_is_a_miss_not_a_crash(tmp_path, model_cache):
    with Retriever.create(tmp_path / "empty", FAST) as r:
        rep = evaluate(r, [load_queries_inline("q", "anything at all", ["x"])], ks=(1, 10), concurrency=0)
    assert rep["empty_results"] == ["q"] and rep["metrics"]["final"]["recall@10"] == 0.0
    assert "concurrent" not in rep["latency_ms"]


def load_queries_inline(qid, query, relevant):
    from retriever.evaluation.queries import LabeledQuery

    return LabeledQuery(qid, query, {d: 1.0 for d in relevant})


@pytest.mark.real
def test_metrics_on_a_real_run_equal_pytrec_eval(corpus_index, fitz300):
    _, queries = fitz300
    qs = load_queries("fitz-gov")
    by_id = {q.id: q for q in qs}
    chosen = [by_id[q.id] for q in queries[:25]]
    ks = (1, 5, 10, 20)
    rep = evaluate(corpus_index, chosen, ks=ks, rerank=False, concurrency=0)
    run = {qid: {d: 1000.0 - i for i, d in enumerate(r["results"])} for qid, r in rep["per_query"].items()}
    qrels = {q.id: {d: int(g) for d, g in q.relevant.items()} for q in chosen}
    measures = {f"recall_{k}" for k in ks} | {f"P_{k}" for k in ks} | {f"ndcg_cut_{k}" for k in ks} | {"recip_rank"}
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    for qid, r in rep["per_query"].items():
        for k in ks:
            assert r["final"][f"recall@{k}"] == pytest.approx(ref[qid][f"recall_{k}"], abs=1e-12)
            assert r["final"][f"precision@{k}"] == pytest.approx(ref[qid][f"P_{k}"], abs=1e-12)
            assert r["final"][f"ndcg@{k}"] == pytest.approx(ref[qid][f"ndcg_cut_{k}"], abs=1e-12)
        assert r["final"]["mrr@20"] == pytest.approx(ref[qid]["recip_rank"], abs=1e-12)
    # without rerank the two stages are the same ranking
    assert rep["metrics"]["final"] == rep["metrics"]["retrieval"]


@pytest.mark.real
def test_cli_report_files_baseline_and_exit_codes(tiny, tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "f", "query": "capital of France", "relevant": ["paris"]}) + "\n"
                 + json.dumps({"id": "b", "query": "potassium fruit", "relevant": ["banana"]}) + "\n")
    gate = tmp_path / "gate.toml"
    gate.write_text('max_drop = 0.0\n[min]\n"recall@1" = 1.0\n"retrieval.mrr@10" = 0.9\n[max]\np99_ms = 600000\n')
    base = tmp_path / "baseline.json"
    args = ["eval", str(tiny), "--queries", str(q), "--gate", str(gate), "--concurrency", "0"]
    assert main(args + ["--baseline", str(base)]) == 2  # no baseline yet: bad input, named
    assert "write one with --update-baseline" in capsys.readouterr().err
    assert main(args + ["--baseline", str(base), "--update-baseline"]) == 0
    assert json.loads(base.read_text())["format"] == "rag-retriever-eval/1"
    before = base.read_bytes()
    out_dir = tmp_path / "report"
    assert main(args + ["--baseline", str(base), "--report", str(out_dir)]) == 0
    assert base.read_bytes() == before  # only --update-baseline writes it
    out = capsys.readouterr().out
    assert out.strip().endswith("gate passed: 5 rules")
    for name in ("report.json", "report.md", "recall_at_k.png", "latency.png"):
        assert (out_dir / name).stat().st_size > 100
    assert (out_dir / "recall_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out_dir / "report.md").read_text()
    assert "## Gate" in md and "| retrieval | reranked | lift |" in md.replace("| metric ", "") \
        and "Changes against the baseline (0 queries)" in md
    # a harder gate fails with exit 1, the failing rule printed last
    gate.write_text('[min]\n"recall@1" = 1.0\n"precision@10" = 0.5\n')
    assert main(["eval", str(tiny), "--queries", str(q), "--gate", str(gate), "--concurrency", "0"]) == 1
    last = capsys.readouterr().out.strip().splitlines()
    assert last[-2].startswith("FAIL  precision@10") and last[-1].startswith("gate FAILED: 1 of 2 rules: precision@10")
    assert main(["eval", str(tiny), "--queries", str(q), "--k", "0,x"]) == 2
