"""6. Bad input gets a clear error naming the input and the rule, never a traceback from faiss or duckdb."""
import pytest

from retriever import Document, FilterError, InputError, Retriever, RetrieverError


@pytest.mark.real
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"query": ""}, "query is empty"),
        ({"query": "   "}, "query is empty"),
        ({"query": None}, "query must be a string"),
        ({"query": "x", "k": 0}, "k = 0 must be at least 1"),
        ({"query": "x", "k": -3}, "at least 1"),
        ({"query": "x", "k": 2.5}, "positive integer"),
        ({"query": "x", "k": True}, "positive integer"),
        ({"query": "x", "filters": {"lang": {"$regex": "e"}}}, "unknown operator '\\$regex'"),
        ({"query": "x", "filters": "lang=en"}, "must be a dict"),
    ],
)
def test_bad_search_input(small_index, kwargs, words):
    with pytest.raises(InputError, match=words):
        small_index.search(**{"k": 3, **kwargs})


@pytest.mark.real
def test_k_larger_than_the_corpus_returns_everything(small_index):
    hits = small_index.search("capital", k=500, rerank=False)
    assert len(hits) == 5 and len({h.id for h in hits}) == 5
    hits = small_index.search("capital", k=500)
    assert len(hits) == 5 and [h.rank for h in hits] == [1, 2, 3, 4, 5]


@pytest.mark.real
@pytest.mark.parametrize(
    "docs, words",
    [
        ([Document(7, "int id")], r"documents\[0\]\.id = 7 is a int; ids must be strings"),
        ([Document("a", "x"), Document("a", "y")], r"documents\[1\]\.id = 'a' repeats documents\[0\]\.id"),
        ([Document("a", "x", {"when": object()})], "not JSON"),
        ([Document("a", "x", {"v": float("nan")})], "JSON cannot hold"),
        ([Document("a", "x", {1: "int key"})], "non-string key"),
        ([Document("a", "x", ["not", "a", "dict"])], "metadata must be a dict"),
        ([Document("a", "")], "text is empty"),
        ([Document("a", b"bytes")], "text is a bytes"),
        ([Document("", "x")], "id is empty"),
        ([Document("a#chunk-1", "x")], "reserved for chunk ids"),
        ([{"id": "a", "text": "x"}], "expected Document"),
        (Document("a", "x"), "must be a list"),
    ],
)
def test_bad_documents_are_refused_and_nothing_changes(small_index, docs, words):
    before = (len(small_index), small_index.store.last_seq())
    with pytest.raises(InputError, match=words):
        small_index.upsert(docs)
    assert (len(small_index), small_index.store.last_seq()) == before


@pytest.mark.real
def test_bad_ids_for_delete_and_get(small_index):
    with pytest.raises(InputError, match=r"ids\[1\] = 3 is a int"):
        small_index.delete(["paris", 3])
    assert small_index.get("paris") is not None  # nothing deleted
    with pytest.raises(InputError, match="list of string ids"):
        small_index.delete("paris")
    with pytest.raises(InputError, match="ids are strings"):
        small_index.get(5)


def test_opening_what_is_not_an_index(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        Retriever.open(tmp_path / "missing")
    with pytest.raises(InputError, match="not a rag-retriever index"):
        Retriever.open(tmp_path)


@pytest.mark.real
def test_create_refuses_a_non_empty_directory(small_index):
    with pytest.raises(InputError, match="already exists"):
        Retriever.create(small_index.path)


@pytest.mark.real
def test_read_only_and_closed_indexes_refuse_writes(small_index):
    path = small_index.path
    small_index.close()
    with Retriever.open(path, read_only=True) as r:
        with pytest.raises(RetrieverError, match="read-only"):
            r.upsert([Document("z", "z")])
    r = Retriever.open(path)
    r.close()
    with pytest.raises(RetrieverError, match="closed"):
        r.search("x")


@pytest.mark.real
def test_one_writer_at_a_time(small_index):
    import subprocess
    import sys

    from conftest import ROOT

    code = f"from retriever import Retriever; Retriever.open({str(small_index.path)!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0
    assert "is open for writing in another process" in out.stderr


def test_filter_errors_are_input_errors():
    assert issubclass(FilterError, InputError) and issubclass(InputError, ValueError)
