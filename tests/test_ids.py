"""2. Ids by construction: DuckDB-sequence vids never reused; upsert replaces; delete is immediate; a bad batch
changes nothing."""
import numpy as np
import pytest

from retriever import Document, InputError


def _vid(r, doc_id):
    return r.store.get(doc_id).vid


@pytest.mark.real
def test_upsert_replaces_and_the_old_vector_never_returns(small_index):
    r = small_index
    old_vid = _vid(r, "banana")
    rep = r.upsert([Document("banana", "Quantum computers use qubits that exploit superposition.", {"lang": "en"})])
    assert (rep.added, rep.updated) == (0, 1)
    new_vid = _vid(r, "banana")
    assert new_vid > old_vid
    assert old_vid not in r.vector_index.ids()
    hits = r.search("bananas potassium", k=10, rerank=False)
    assert len(hits) == 5 and len({h.id for h in hits}) == 5
    banana = next(h for h in hits if h.id == "banana")
    assert "qubits" in banana.text and banana.metadata == {"lang": "en"}
    top = r.search("quantum qubits superposition", k=1, rerank=False)[0]
    assert top.id == "banana"


@pytest.mark.real
def test_vids_are_never_reused_after_delete_and_reopen(small_index, tmp_path):
    r = small_index
    seen = set(r.vector_index.ids().tolist())
    r.delete(["python", "madrid"])
    r.save()
    path = r.path
    r.close()
    from retriever import Retriever

    r2 = Retriever.open(path)
    r2.upsert([Document("python", "Python is a snake."), Document("new", "A brand new document.")])
    fresh = set(r2.vector_index.ids().tolist()) - seen
    assert fresh and min(fresh) > max(seen)
    r2.close()


@pytest.mark.real
def test_delete_removes_from_results_immediately(small_index):
    r = small_index
    assert r.search("capital of France", k=1, rerank=False)[0].id == "paris"
    rep = r.delete(["paris", "nope"])
    assert rep.deleted == 1 and rep.missing == ("nope",)
    ids = [h.id for h in r.search("capital of France", k=10, rerank=False)]
    assert "paris" not in ids and len(ids) == 4
    assert r.get("paris") is None and len(r) == 4
    assert "paris" not in [h.id for h in r.search("capital of France", k=10, filters={"lang": "en"}, rerank=False)]


@pytest.mark.real
def test_a_batch_with_one_bad_record_changes_nothing(small_index):
    r = small_index
    before_ids = np.sort(r.vector_index.ids())
    before_seq = r.store.last_seq()
    before_text = r.get("paris").text
    batch = [
        Document("paris", "Paris was replaced."),
        Document("brand-new", "Something new."),
        Document("bad", "Metadata with a set is not JSON", {"s": {1, 2}}),
    ]
    with pytest.raises(InputError, match=r"documents\[2\].*set"):
        r.upsert(batch)
    with pytest.raises(InputError, match="repeats"):
        r.upsert([Document("x", "one"), Document("x", "two")])
    with pytest.raises(InputError, match="strings"):
        r.upsert([Document("y", "ok"), Document(42, "int id")])
    assert np.array_equal(np.sort(r.vector_index.ids()), before_ids)
    assert r.store.last_seq() == before_seq
    assert r.get("paris").text == before_text and r.get("brand-new") is None and r.get("y") is None


@pytest.mark.real
def test_long_documents_become_chunks_that_know_their_parent(small_index):
    r = small_index
    long_text = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(300))
    rep = r.upsert([Document("long", long_text, {"kind": "report"})])
    assert rep.chunked == 1 and rep.vectors > 2
    limit = r.embedder.max_content_tokens()
    chunks = [r.get(f"long#chunk-{i}") for i in range(rep.vectors)]
    for i, c in enumerate(chunks):
        assert c.metadata["parent_id"] == "long" and c.metadata["chunk_index"] == i and c.metadata["kind"] == "report"
        assert len(r.embedder.token_spans(c.text)) <= limit
    # consecutive chunks overlap, and together they cover the text
    assert chunks[0].text[-20:] in chunks[1].text
    assert long_text.startswith(chunks[0].text) and long_text.endswith(chunks[-1].text)
    assert len(r) == 6  # five small documents + one chunked document
    # re-upserting the parent with a short text replaces every chunk; delete by parent removes them
    r.upsert([Document("long", "Now it is short.")])
    assert r.get("long#chunk-0") is None and r.get("long").text == "Now it is short."
    r.upsert([Document("long", long_text)])
    r.delete(["long"])
    assert r.get("long#chunk-0") is None and len(r) == 5 and len(r.vector_index) == 5
