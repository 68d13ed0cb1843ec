"""5. Rerank: the cross-encoder reorders the top candidates, its score has its own field, rerank=False never
loads it."""
import pytest

from retriever import Document, Retriever, RetrieverConfig

QUERY = "what is the capital of france?"
DOCS = [
    Document("answer", "Paris is the capital and largest city of France."),
    Document("echo", "What is the capital of France? This is a frequently asked question about the capital of France."),
    Document("lyon", "Lyon is a large city in France known for its cuisine."),
    Document("quiz", "Quiz: capitals of European countries, France, Spain and Italy."),
    Document("banana", "Bananas are rich in potassium."),
]


@pytest.fixture
def france(tmp_path, model_cache):
    r = Retriever.create(tmp_path / "france", RetrieverConfig())
    r.upsert(DOCS)
    yield r
    r.close()


@pytest.mark.real
def test_cross_encoder_fixes_a_lexical_false_positive(france):
    plain = france.search(QUERY, k=5, rerank=False)
    # the cross-encoder's own order (fusion = "cross_encoder"): the bi-encoder and BM25 are fooled by the document
    # that repeats the question; the cross-encoder is not
    france.config = RetrieverConfig().replace(rerank={"fusion": "cross_encoder"})
    by_ce = france.search(QUERY, k=5)
    assert plain[0].id == "echo"
    assert by_ce[0].id == "answer"
    assert [h.id for h in plain] != [h.id for h in by_ce]
    # the default blend keeps the retrieval score in the sum: in five documents, min-max normalization makes
    # echo's retrieval lead (1.0 against answer's) larger than the cross-encoder's log-odds gap at weight 35, so
    # the order moves only where the cross-encoder is sure; with less weight on retrieval, answer goes first
    france.config = RetrieverConfig()
    reranked = france.search(QUERY, k=5)
    assert reranked[0].id == "echo" and reranked[1].id == "answer"
    france.config = RetrieverConfig().replace(rerank={"retrieval_weight": 2.0})
    assert france.search(QUERY, k=5)[0].id == "answer"
    france.config = RetrieverConfig()
    for h in reranked:
        assert 0.0 <= h.rerank_score <= 1.0
        assert -1.0 <= h.retrieval_score <= 1.0
    # retrieval scores are the same cosines with or without rerank
    cos = {h.id: h.retrieval_score for h in plain}
    assert all(h.retrieval_score == pytest.approx(cos[h.id], abs=1e-6) for h in reranked)
    # the default final order blends the cross-encoder's log-odds with the retrieval score: `score` is that
    # blended score, the hits are in its order, and the cross-encoder's own score stays in `rerank_score`
    assert france.config.rerank.fusion == "blend"
    assert {h.id: h.rerank_score for h in reranked} == pytest.approx({h.id: h.rerank_score for h in by_ce})
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
    assert all(h.score != h.rerank_score for h in reranked)
    assert reranked[-1].id == "banana" and reranked[-1].rerank_score < 0.01
    # by the cross-encoder alone (fusion = "cross_encoder"; chunks mode always): score is the rerank score
    for override in ({"rerank": {"fusion": "cross_encoder"}}, {"retrieval": {"results": "chunks"}}):
        france.config = RetrieverConfig().replace(**override)
        alone = france.search(QUERY, k=5)
        assert alone[0].id == "answer" and all(h.score == h.rerank_score for h in alone)
        assert [h.rerank_score for h in alone] == sorted((h.rerank_score for h in alone), reverse=True)
        assert {h.id: h.rerank_score for h in alone} == pytest.approx({h.id: h.rerank_score for h in reranked})


@pytest.mark.real
def test_only_the_configured_candidates_are_reranked(france):
    path = france.path
    france.close()
    with Retriever.open(path, RetrieverConfig().replace(rerank={"candidates": 1, "fusion": "cross_encoder"})) as r:
        # one candidate: the reranker cannot reach past the retrieval top-1 ("echo")
        assert [h.id for h in r.search(QUERY, k=1)] == ["echo"]
        # k above candidates: k are retrieved and reranked
        hits = r.search(QUERY, k=3)
        assert len(hits) == 3 and hits[0].id == "answer"
        top3 = {h.id for h in r.search(QUERY, k=3, rerank=False)}
        assert {h.id for h in hits} == top3


@pytest.mark.real
def test_rerank_false_and_disabled_never_load_the_cross_encoder(corpus_index, tmp_path):
    from conftest import copy_index

    path = copy_index(corpus_index.path, tmp_path / "copy")
    with Retriever.open(path, read_only=True) as r:
        r.reranker._loader.forget()  # a fresh process-wide cache may hold it: this instance must not ask
        hits = r.search("vaccine effectiveness", k=5, rerank=False)
        assert len(hits) == 5 and all(h.rerank_score is None for h in hits)
        assert not r.reranker.loaded
    off = RetrieverConfig().replace(rerank={"enabled": False})
    with Retriever.open(path, off, read_only=True) as r:
        hits = r.search("vaccine effectiveness", k=5)  # rerank=True asked, but disabled in config
        assert all(h.rerank_score is None for h in hits) and not r.reranker.loaded


@pytest.mark.real
def test_search_batch_equals_single_searches(france):
    queries = [QUERY, "bananas and potassium", "a city known for food"]
    france.clear_caches()
    batch = france.search_batch(queries, k=3)
    for q, hits in zip(queries, batch):
        france.clear_caches()  # computed afresh, not served from what the batch cached
        single = france.search(q, k=3)
        assert [h.id for h in hits] == [h.id for h in single]
        for a, b in zip(hits, single):
            assert a.rerank_score == pytest.approx(b.rerank_score, abs=1e-4)
            assert a.retrieval_score == pytest.approx(b.retrieval_score, abs=1e-5)
