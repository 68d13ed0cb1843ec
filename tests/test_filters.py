"""3. Filters before search: parameterized SQL, ID selector or exact scan, min(k, matches) hits, all matching."""
import json

import duckdb
import numpy as np
import pytest

from retriever import FilterError, RetrieverConfig
from retriever.filters import compile_filter

ROWS = {
    "a": {"lang": "en", "year": 2021, "tags": ["x", "y"], "draft": True, "n": None, "nested": {"k": 1.5}},
    "b": {"lang": "de", "year": 2019, "tags": ["y"], "draft": False},
    "c": {"lang": "en", "year": "2020"},
    "d": {"tags": [1, 2], "nested": {"k": 0.5}},
    "e": {},
}


@pytest.fixture(scope="module")
def con():
    c = duckdb.connect()
    c.execute("CREATE TABLE documents(id VARCHAR, metadata JSON)")
    for i, m in ROWS.items():
        c.execute("INSERT INTO documents VALUES (?, ?)", [i, json.dumps(m)])
    return c


def _ids(con, f):
    sql, params = compile_filter(f)
    return sorted(r[0] for r in con.execute(f"SELECT id FROM documents WHERE {sql}", params).fetchall())


@pytest.mark.parametrize(
    "f, expected",
    [
        ({"lang": "en"}, ["a", "c"]),
        ({"lang": {"$eq": "en"}, "year": {"$gte": 2020}}, ["a"]),
        ({"year": {"$lt": 2021}}, ["b"]),  # the string "2020" is not a number
        ({"year": {"$gte": "2020"}}, ["c"]),  # string comparison only among strings
        ({"tags": "y"}, ["a", "b"]),  # an array field matches when it holds the value
        ({"tags": {"$contains": 2}}, ["d"]),
        ({"lang": {"$text": "e"}}, ["a", "b", "c"]),  # substring of a string field, case-sensitive
        ({"lang": {"$text": "E"}}, []),
        ({"year": {"$text": "202"}}, ["c"]),  # only string fields: the number 2021 is not text
        ({"draft": True}, ["a"]),
        ({"draft": {"$ne": True}}, ["b", "c", "d", "e"]),
        ({"lang": {"$in": ["en", "de"]}}, ["a", "b", "c"]),
        ({"lang": {"$nin": ["en"]}}, ["b", "d", "e"]),
        ({"n": None}, ["a"]),
        ({"lang": {"$exists": False}}, ["d", "e"]),
        ({"nested.k": {"$gt": 1}}, ["a"]),
        ({"$or": [{"lang": "de"}, {"year": "2020"}]}, ["b", "c"]),
        ({"$and": [{"lang": "en"}, {"tags": "x"}]}, ["a"]),
        ({"$not": {"lang": "en"}}, ["b", "d", "e"]),
        ({}, ["a", "b", "c", "d", "e"]),
    ],
)
def test_filter_language_semantics(con, f, expected):
    assert _ids(con, f) == expected


def test_values_are_parameters_never_sql_text(con):
    evil = "en' OR 1=1 --"
    sql, params = compile_filter({"lang": evil, "year": {"$in": ["1); DROP TABLE documents; --"]}})
    assert evil not in sql and "DROP" not in sql
    assert evil in params
    assert _ids(con, {"lang": evil}) == []
    assert _ids(con, {"lang": {"$in": ["x') OR TRUE OR ('"]}}) == []
    assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == 5  # table intact
    with pytest.raises(FilterError, match="field name"):
        compile_filter({"lang') OR TRUE --": "x"})


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"lang": {"$regex": "e.*"}}, "unknown operator '\\$regex'"),
        ({"$xor": [{"a": 1}]}, "unknown operator '\\$xor'"),
        ({"lang": {"$in": []}}, "non-empty list"),
        ({"lang": ["en"]}, "\\$in"),
        ({"year": {"$gt": [1]}}, "compares with a number"),
        ({"$or": {"a": 1}}, "list of filter dicts"),
        ("lang=en", "must be a dict"),
    ],
)
def test_malformed_filters_name_the_problem(bad, words):
    with pytest.raises(FilterError, match=words):
        compile_filter(bad)


@pytest.mark.real
@pytest.mark.parametrize("results", ["documents", "chunks"])
@pytest.mark.parametrize("threshold", [0, 100_000], ids=["faiss-id-selector", "exact-scan"])
def test_filtered_search_returns_min_k_matches_all_matching(corpus_index, threshold, results):
    r = corpus_index
    r.config = r.config.replace(index={"exact_filter_threshold": threshold}, retrieval={"results": results})
    try:
        domains = {}  # matches per domain: documents (k distinct documents, or all that match), or chunks
        for row in r.store.fetch(r.store.vids().tolist()).values():
            if results == "chunks" or row.metadata.get("chunk_index", 0) == 0:
                domains[row.metadata.get("domain")] = domains.get(row.metadata.get("domain"), 0) + 1
        rare = min(domains, key=domains.get)  # fewer matches than k
        common = max(domains, key=domains.get)
        for domain, k in [(rare, 50), (common, 10), (common, 1000)]:
            hits = r.search("a question about the report", k=k, filters={"domain": domain}, rerank=False)
            assert len(hits) == min(k, domains[domain])
            assert all(h.metadata["domain"] == domain for h in hits)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        # a filter no document matches gives no hits, not an error
        assert r.search("anything", k=5, filters={"domain": "no-such-domain"}, rerank=False) == []
    finally:
        r.config = r.config.replace(index={"exact_filter_threshold": 2048}, retrieval={"results": "documents"})


@pytest.mark.real
def test_selector_and_exact_scan_agree(corpus_index):
    r = corpus_index
    f = {"$or": [{"domain": "science"}, {"tags": {"$contains": "genetics"}}, {"domain": {"$exists": False}}]}
    q = r.embedder.encode(["how cells make energy"])
    allowed = r.store.filter_vids(*compile_filter({"domain": {"$ne": "nothing"}}))
    s_sel, v_sel = r.vector_index.search(q, 20, allowed)
    r.config = r.config.replace(index={"exact_filter_threshold": 10**6})
    try:
        s_ex, v_ex = r.candidates.search(q, 20, allowed)
    finally:
        r.config = r.config.replace(index={"exact_filter_threshold": 2048})
    np.testing.assert_allclose(s_sel, s_ex, atol=1e-5)
    hits = r.search("how cells make energy", k=5, filters=f, rerank=False)
    assert len(hits) == 5
    assert all(h.metadata.get("domain") in (None, "science") or "genetics" in h.metadata.get("tags", []) for h in hits)


@pytest.mark.real
def test_filtered_search_with_rerank_keeps_the_filter(corpus_index):
    r = corpus_index
    hits = r.search("Why did the server crash?", k=3, filters={"domain": {"$ne": "biology"}})
    assert len(hits) == 3 and all(h.metadata.get("domain") != "biology" for h in hits)
    assert all(h.rerank_score is not None for h in hits)


@pytest.mark.real
def test_injection_through_the_real_index_matches_nothing_and_changes_nothing(corpus_index):
    r = corpus_index
    before = r.store.count()
    for evil in ["biology' OR '1'='1", "x'); DELETE FROM documents; --", "' OR TRUE --"]:
        assert r.search("cells", k=5, filters={"domain": evil}, rerank=False) == []
        assert r.search("cells", k=5, filters={"domain": {"$in": [evil]}}, rerank=False) == []
    assert r.store.count() == before
    assert len(r.search("cells", k=5, filters={"domain": {"$nin": ["' OR TRUE --"]}}, rerank=False)) == 5
