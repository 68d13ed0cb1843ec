"""Documents mode, the lexical and hybrid modes, fusion, and the reranker fused with the retrieval order: on the
real models, real FAISS, real tantivy and a real DuckDB file (the fusion arithmetic also on plain lists)."""
from __future__ import annotations

import math

import json
import subprocess
import sys

import numpy as np
import pytest

from retriever import ConfigError, Document, InputError, Retriever, RetrieverConfig
from retriever.evaluation.gate import check_metric_name
from retriever.fusion import Candidate, collapse, fuse, rerank_order

LONG_FILLER = ("The committee reviewed the quarterly figures and agreed on the schedule for the next meeting. " * 40)


# --------------------------------------------------------------------------------------------- arithmetic
def _cands(dense: list[tuple[int, float]], lexical: list[tuple[int, float]], key_of: dict[int, str]):
    into: dict[str, Candidate] = {}
    orders = {"dense": collapse("dense", dense, key_of, into), "lexical": collapse("lexical", lexical, key_of, into)}
    return into, orders


def test_collapse_counts_a_document_once_at_its_best_chunk():
    into, orders = _cands([(1, .9), (2, .8), (3, .7)], [], {1: "a", 2: "b", 3: "a"})
    assert orders["dense"] == ["a", "b"]
    assert into["a"].scores["dense"] == pytest.approx(.9) and set(into["a"].passages) == {1, 3}
    assert into["a"].best_vid == 1


def test_rrf_rewards_agreement_and_convex_uses_normalized_scores():
    key_of = {1: "a", 2: "b", 3: "c"}
    into, orders = _cands([(1, .9), (2, .5)], [(2, 12.0), (3, 11.0)], key_of)
    assert fuse(orders, into, "rrf", rrf_k=60) == ["b", "a", "c"]  # b is in both lists
    assert into["b"].found_by == ("dense", "lexical") and into["a"].found_by == ("dense",)
    into, orders = _cands([(1, .9), (2, .5)], [(2, 12.0), (3, 11.0)], key_of)
    # convex with all weight on dense: dense order, lexical-only results last
    assert fuse(orders, into, "convex", weight=1.0)[:2] == ["a", "b"]
    into, orders = _cands([(1, .9), (2, .5)], [(2, 12.0), (3, 11.0)], key_of)
    assert fuse(orders, into, "convex", weight=0.0)[0] == "b"


def test_a_single_arm_keeps_its_order_and_scores():
    into, orders = _cands([(1, .9), (2, .5)], [], {1: "a", 2: "b"})
    assert fuse(orders, into, "rrf") == ["a", "b"] and into["a"].fused == pytest.approx(.9)


def test_rerank_rrf_keeps_the_retrieval_order_in_the_vote():
    # the cross-encoder puts the first retrieval hit last of 10; rrf keeps it in the top half, cross_encoder does not
    scores = [0.0] + [float(10 - i) for i in range(1, 10)]
    ce = [i for i, _ in rerank_order(scores, how="cross_encoder")]
    assert ce[-1] == 0
    fused = [i for i, _ in rerank_order(scores, how="rrf", rrf_k=60, retrieval_weight=1.0)]
    assert fused.index(0) < 5
    # with no weight on retrieval, rrf is the cross-encoder's order
    assert [i for i, _ in rerank_order(scores, how="rrf", retrieval_weight=0.0)] == ce


def test_rerank_blend_lets_a_confident_cross_encoder_overturn_and_an_unsure_one_not():
    fused = [1.0, 0.9, 0.8, 0.7]  # retrieval scores, in retrieval order
    # confident: the last retrieval hit is relevant (p = .99), the others not (p = .01): it goes first
    confident = [0.01, 0.01, 0.01, 0.99]
    assert [i for i, _ in rerank_order(confident, how="blend", retrieval_weight=4.0, retrieval_scores=fused)][0] == 3
    # unsure: every pair near .5, the cross-encoder's small preference does not beat the retrieval order
    unsure = [0.49, 0.50, 0.51, 0.52]
    assert [i for i, _ in rerank_order(unsure, how="blend", retrieval_weight=4.0, retrieval_scores=fused)] == [0, 1, 2, 3]
    # weight 0: the cross-encoder's order; the final score is log-odds + weight * normalized retrieval score
    ranked = rerank_order(confident, how="blend", retrieval_weight=0.0, retrieval_scores=fused)
    assert ranked[0] == (3, pytest.approx(math.log(0.99 / 0.01)))
    # saturated probabilities stay finite; equal retrieval scores leave the cross-encoder's order
    ranked = rerank_order([1.0, 0.0, 0.5], how="blend", retrieval_weight=2.0, retrieval_scores=[0.3, 0.3, 0.3])
    assert [i for i, _ in ranked] == [0, 2, 1] and all(math.isfinite(s) for _, s in ranked)
    with pytest.raises(ValueError, match="one retrieval score per reranked result"):
        rerank_order([0.5, 0.5], how="blend", retrieval_scores=[1.0])


# ------------------------------------------------------------------------------------------------ real index
@pytest.fixture(scope="module")
def mixed_index(tmp_path_factory, model_cache):
    """Short documents, two long ones (several chunks each), and a document naming a rare identifier."""
    docs = [
        Document("paris", "Paris is the capital and largest city of France.", {"lang": "en", "year": 2021}),
        Document("berlin", "Berlin is the capital of Germany and its largest city.", {"lang": "en", "year": 2019}),
        Document("banana", "Bananas are rich in potassium and easy to digest.", {"lang": "en", "year": 2023}),
        Document("madrid", "Madrid es la capital de España.", {"lang": "es", "year": 2020}),
        Document("ticker", "Form 10-K of XQZR Holdings: revenue rose on strong demand for turbines.", {"lang": "en"}),
        Document("report-1", LONG_FILLER + " The capital of France hosts the summit. " + LONG_FILLER,
                 {"lang": "en", "year": 2022, "kind": "report"}),
        Document("report-2", LONG_FILLER + " Potassium intake and digestion were discussed. " + LONG_FILLER,
                 {"lang": "en", "year": 2022, "kind": "report"}),
    ]
    path = tmp_path_factory.mktemp("mixed") / "index"
    with Retriever.create(path, RetrieverConfig()) as r:
        r.upsert(docs)
    r = Retriever.open(path, read_only=True)  # readers only, so a CLI subprocess can open it beside
    yield r
    r.close()


def test_documents_mode_returns_k_distinct_documents_with_passages(mixed_index):
    r = mixed_index
    assert r.config.retrieval.results == "documents"
    assert r.stats()["vectors"] > 7  # the reports were chunked
    for mode in ("dense", "lexical", "hybrid"):
        hits = r.search("capital of France", k=7, mode=mode, rerank=False)
        ids = [h.id for h in hits]
        assert len(ids) == len(set(ids)), (mode, ids)
        assert "#chunk-" not in "".join(ids)
        rep = next(h for h in hits if h.id == "report-1") if "report-1" in ids else None
        if rep is not None:
            assert rep.metadata == {"lang": "en", "year": 2022, "kind": "report"}  # the document's, no chunk keys
            assert rep.passages and all(p.id.startswith("report-1#chunk-") for p in rep.passages)
            assert rep.text == rep.passages[0].text
    dense = r.search("capital of France", k=7, mode="dense", rerank=False)
    assert len(dense) == 7  # every document, although the reports have several chunks each


def test_documents_mode_under_a_filter_returns_min_k_matches(mixed_index):
    hits = mixed_index.search("capital", k=5, filters={"kind": "report"}, rerank=False)
    assert sorted(h.id for h in hits) == ["report-1", "report-2"]
    for mode in ("lexical", "hybrid"):
        hits = mixed_index.search("capital digestion", k=5, filters={"kind": "report"}, mode=mode, rerank=False)
        assert sorted(h.id for h in hits) == ["report-1", "report-2"], mode


def test_chunks_mode_is_the_pipeline_before_documents_mode(mixed_index):
    chunks = mixed_index
    documents_config = chunks.config
    chunks.config = documents_config.replace(retrieval={"results": "chunks", "mode": "dense"})
    try:
        q = chunks.embedder.encode_queries(["capital of France"])
        ids, vecs = chunks.store.ids_and_vectors()
        cos = vecs @ q[0]
        want = [ids[i] for i in np.argsort(-cos)[:6]]
        hits = chunks.search("capital of France", k=6, rerank=False)
        assert [h.id for h in hits] == want
        assert [h.score for h in hits] == pytest.approx(sorted(cos, reverse=True)[:6], abs=1e-5)
        assert all(h.score == h.retrieval_score and h.rerank_score is None for h in hits)
        reranked = chunks.search("capital of France", k=6)
        scores = [h.rerank_score for h in reranked]
        assert scores == sorted(scores, reverse=True) and all(h.score == h.rerank_score for h in reranked)
    finally:
        chunks.config = documents_config


def test_lexical_mode_finds_a_rare_name_and_says_which_arm(mixed_index):
    hits = mixed_index.search("XQZR", k=3, mode="lexical", rerank=False)
    assert hits[0].id == "ticker" and hits[0].found_by == ("lexical",)
    assert hits[0].lexical_score > 0 and hits[0].retrieval_score is None
    hybrid = mixed_index.search("XQZR holdings turbines", k=3, mode="hybrid", rerank=False)
    assert hybrid[0].id == "ticker" and set(hybrid[0].found_by) == {"dense", "lexical"}
    assert hybrid[0].retrieval_score is not None and hybrid[0].lexical_score is not None
    reranked = mixed_index.search("XQZR holdings turbines", k=3)
    assert reranked[0].id == "ticker" and reranked[0].rerank_score is not None


def test_a_query_of_only_stop_words_says_so(mixed_index):
    hits, trace = mixed_index.search_traced(["the of and"], k=3, mode="lexical", rerank=False, record=False)
    assert hits == [[]] and "only stop words" in trace.notes[0] and "no lexical results" in trace.notes[0]
    hits, trace = mixed_index.search_traced(["the of and"], k=3, mode="hybrid", rerank=False, record=False)
    dense = mixed_index.search("the of and", k=3, mode="dense", rerank=False)
    assert [h.id for h in hits[0]] == [h.id for h in dense] and "dense results" in trace.notes[0]


def test_deleted_documents_never_come_back_from_either_arm(tmp_path, model_cache):
    with Retriever.create(tmp_path / "i", RetrieverConfig()) as r:
        r.upsert([Document("x", "Zyxwv turbines are made in Ohio."), Document("y", "Apples grow on trees.")])
        assert r.search("zyxwv", k=2, mode="lexical", rerank=False)[0].id == "x"
        r.delete(["x"])
        for mode in ("dense", "lexical", "hybrid"):
            assert "x" not in [h.id for h in r.search("zyxwv turbines", k=2, mode=mode, rerank=False)], mode
        r.upsert([Document("y", "Zyxwv now grow on trees too.")])
        assert [h.id for h in r.search("zyxwv", k=2, mode="lexical", rerank=False)] == ["y"]
    with Retriever.open(tmp_path / "i", read_only=True) as r:
        assert [h.id for h in r.search("zyxwv", k=2, mode="lexical", rerank=False)] == ["y"]


def test_bad_mode_fusion_and_results_are_named(mixed_index):
    with pytest.raises(InputError, match=r"mode = 'sparse'.*'dense', 'lexical', 'hybrid'"):
        mixed_index.search("capital", mode="sparse")
    with pytest.raises(ConfigError, match=r"retrieval.weight = 1.5 is out of range"):
        RetrieverConfig.from_dict({"retrieval": {"weight": 1.5}})
    with pytest.raises(ConfigError, match=r"retrieval.results = 'document'.*'documents', 'chunks'"):
        RetrieverConfig.from_dict({"retrieval": {"results": "document"}})
    with pytest.raises(ConfigError, match=r"retrieval.fusion = 'max'"):
        RetrieverConfig.from_dict({"retrieval": {"fusion": "max"}})
    with pytest.raises(ConfigError, match=r"unknown key retrieval.mdoe"):
        RetrieverConfig.from_dict({"retrieval": {"mdoe": "dense"}})


def test_gate_names_a_stage():
    assert check_metric_name("lexical.recall@10")[0] == "lexical"
    assert check_metric_name("fused.mrr@10")[:2] == ("fused", "mrr")
    with pytest.raises(ValueError, match="unknown stage 'sparse'"):
        check_metric_name("sparse.recall@10")


def test_eval_shows_the_arms_side_by_side(mixed_index):
    from retriever.evaluation.queries import LabeledQuery
    from retriever.evaluation.runner import evaluate

    queries = [LabeledQuery("q1", "XQZR revenue", {"ticker": 1.0}),
               LabeledQuery("q2", "what is the capital of Germany", {"berlin": 1.0})]
    report = evaluate(mixed_index, queries, ks=(1, 5), concurrency=0, mode="dense")
    m = report["metrics"]
    assert set(m) >= {"dense", "lexical", "fused", "retrieval", "final"}
    assert report["settings"]["mode"] == "dense"
    assert m["lexical"]["recall@1"] >= 0.5  # the lexical arm finds the ticker even when dense is evaluated
    assert report["flat"]["lexical.recall@5"] == m["lexical"]["recall@5"]
    assert report["flat"]["fused.mrr@5"] == m["fused"]["mrr@5"]


def test_cli_search_mode(mixed_index):
    out = subprocess.run([sys.executable, "-m", "retriever.cli", "search", str(mixed_index.path), "XQZR",
                          "--mode", "lexical", "--no-rerank", "--json", "-k", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["hits"][0]["id"] == "ticker" and body["hits"][0]["found_by"] == ["lexical"]
    bad = subprocess.run([sys.executable, "-m", "retriever.cli", "search", str(mixed_index.path), "x",
                          "--mode", "sparse"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "invalid choice: 'sparse'" in bad.stderr
