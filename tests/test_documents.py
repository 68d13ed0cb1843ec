"""Loaders (JSONL, CSV, Parquet through DuckDB), field mapping and token chunking."""
import json

import duckdb
import pytest

from retriever import Document, InputError
from retriever.documents import chunk_documents, load_records, records_to_documents

ROWS = [
    {"doc_id": "a", "body": "alpha text", "title": "A", "year": 2020},
    {"doc_id": "b", "body": "beta text", "title": "B", "year": 2021},
]


def _write_all(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    csv = tmp_path / "d.csv"
    csv.write_text("doc_id,body,title,year\na,alpha text,A,2020\nb,beta text,B,2021\n")
    pq = tmp_path / "d.parquet"
    duckdb.connect().execute(f"COPY (SELECT * FROM read_csv_auto('{csv}')) TO '{pq}' (FORMAT parquet)")
    return jsonl, csv, pq


def test_three_formats_give_the_same_documents(tmp_path):
    results = []
    for path in _write_all(tmp_path):
        docs = records_to_documents(load_records(path), id_field="doc_id", text_field="body",
                                    metadata_fields=["title", "year"])
        results.append(docs)
    assert results[0] == results[1] == results[2]
    assert results[0][0] == Document("a", "alpha text", {"title": "A", "year": 2020})


def test_prepend_fields_and_default_metadata(tmp_path):
    jsonl = _write_all(tmp_path)[0]
    docs = records_to_documents(load_records(jsonl), id_field="doc_id", text_field="body", prepend_fields=["title"])
    assert docs[0].text == "A\n\nalpha text" and docs[0].metadata == {"title": "A", "year": 2020}


def test_loader_errors_name_file_line_and_rule(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "text": \n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid JSON"):
        load_records(bad)
    with pytest.raises(InputError, match=r"row 1: no field 'body'.*text_field"):
        records_to_documents([{"id": "a", "text": "x"}], text_field="body")
    with pytest.raises(InputError, match="unknown extension '.txt'"):
        p = tmp_path / "x.txt"
        p.write_text("x")
        load_records(p)
    with pytest.raises(InputError, match="does not exist"):
        load_records(tmp_path / "nope.jsonl")


def test_dedupe_keeps_the_first_of_a_repeated_id():
    rows = [{"id": "a", "text": "first"}, {"id": "a", "text": "second"}]
    assert [d.text for d in records_to_documents(rows, dedupe=True)] == ["first"]
    assert len(records_to_documents(rows)) == 2  # without dedupe validation refuses it later


def _char_tokens(text):
    return [(i, i + 1) for i in range(len(text))]


@pytest.mark.parametrize("n", [5, 10, 11, 25, 100])
def test_chunks_cover_the_text_with_overlap(n):
    text = "".join(chr(97 + i % 26) for i in range(n))
    chunks = chunk_documents([Document("p", text, {"m": 1})], _char_tokens, max_tokens=10, overlap=3)
    if n <= 10:
        assert chunks == [Document("p", text, {"m": 1})]
        return
    assert all(len(c.text) <= 10 for c in chunks)
    assert [c.id for c in chunks] == [f"p#chunk-{i}" for i in range(len(chunks))]
    assert all(c.metadata == {"m": 1, "parent_id": "p", "chunk_index": i, "chunk_count": len(chunks)}
               for i, c in enumerate(chunks))
    covered = set()
    for i, c in enumerate(chunks):
        start = i * 7
        assert text[start:start + len(c.text)] == c.text
        covered.update(range(start, start + len(c.text)))
        if i:
            assert chunks[i - 1].text[-3:] == c.text[:3]
    assert covered == set(range(n))
