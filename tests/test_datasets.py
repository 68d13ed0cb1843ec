"""The labeled sets beside fitz-gov: deterministic, every label pointing at a document that exists, the long set
really long, and a stable held-out split."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from retriever.datasets import LABELED_SETS, fitz_gov_reports, labeled_set, python_docs, split_queries
from retriever.errors import RetrieverError
from retriever.evaluation.queries import load_queries

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def reports():
    return fitz_gov_reports()


def test_reports_are_long_documents_judged_at_report_level(reports):
    docs, queries = reports
    ids = [d.id for d in docs]
    assert len(ids) == len(set(ids)) and 150 <= len(docs) <= 400
    words = [len(d.text.split()) for d in docs]
    assert statistics.median(words) > 2000 and min(words) > 300
    assert len(queries) > 1000
    known = set(ids)
    for q in queries:
        assert q.relevant and set(q.relevant) <= known and len(q.relevant) <= 2
    # the answer is inside: a relevant report holds the fitz-gov document the query was labeled with
    by_id = {d.id: d for d in docs}
    from retriever.datasets import fitz_gov_queries
    original = {q.id: q for q in fitz_gov_queries()}
    for q in queries[::97]:
        for doc_id in original[q.id].relevant:
            assert any(doc_id in by_id[r].metadata["documents"] for r in q.relevant)


def test_reports_are_deterministic(reports):
    again = fitz_gov_reports()
    assert [d.id for d in again[0]] == [d.id for d in reports[0]] and again[0][5].text == reports[0][5].text
    assert [(q.id, q.relevant) for q in again[1]] == [(q.id, q.relevant) for q in reports[1]]


def test_python_docs_labels_exist_and_the_corpus_is_committed():
    docs, queries = python_docs()
    ids = {d.id for d in docs}
    assert len(ids) == len(docs) >= 150 and len(queries) >= 80
    assert all(set(q.relevant) <= ids for q in queries)
    kinds = {d.metadata["kind"] for d in docs}
    assert kinds == {"language-reference", "module"}
    corpus = ROOT / "evals" / "python-docs" / "corpus.jsonl"
    assert corpus.stat().st_size < 3_000_000
    first = json.loads(corpus.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) >= {"id", "title", "text", "kind", "python"}


def test_split_is_stable_and_disjoint():
    _, queries = python_docs()
    tune, hold = split_queries(queries)
    assert not {q.id for q in tune} & {q.id for q in hold} and len(tune) + len(hold) == len(queries)
    assert 0.15 < len(hold) / len(queries) < 0.45
    assert [q.id for q in split_queries(queries)[1]] == [q.id for q in hold]
    assert [q.id for q in split_queries(list(reversed(queries)))[1]] == [q.id for q in reversed(hold)]


def test_names_resolve_everywhere():
    assert LABELED_SETS == ("fitz-gov", "fitz-gov-subset", "fitz-gov-reports", "python-docs")
    assert [q.id for q in load_queries("python-docs")] == [q.id for q in python_docs()[1]]
    assert len(load_queries("fitz-gov-reports")) == len(fitz_gov_reports()[1])
    docs, queries = labeled_set("fitz-gov-subset")
    assert len(docs) == 1000 and queries
    with pytest.raises(RetrieverError, match="unknown labeled set 'fitz'"):
        labeled_set("fitz")
