"""A sharded index against the unsharded index of the same documents: real MiniLM, real FAISS, real DuckDB files,
the real cross-encoder. Sharding changes no dense result (ids and scores within 1e-5), reranked or not."""
from __future__ import annotations

import pytest

from retriever import Document, InputError, Retriever, RetrieverConfig
from retriever.errors import IndexCorruptError
from retriever.sharded import ShardedRetriever
from retriever.sharding import SHARDS, shard_of


@pytest.fixture(scope="module")
def pair(tmp_path_factory, fitz300, model_cache):
    docs, queries = fitz300
    root = tmp_path_factory.mktemp("sharded")
    flat = Retriever.create(root / "flat", RetrieverConfig())
    flat.upsert(docs)
    sharded = Retriever.create(root / "sharded", RetrieverConfig(), shards=4)
    sharded.upsert(docs)
    yield flat, sharded, queries
    flat.close()
    sharded.close()


def test_open_returns_a_sharded_retriever_with_every_document_on_its_hashed_shard(pair, fitz300):
    flat, sharded, _ = pair
    assert isinstance(sharded, ShardedRetriever) and sharded.shard_count == 4
    assert len(sharded) == len(flat) == len(fitz300[0])
    for i, shard in enumerate(sharded.shards):
        ids = shard.store.document_ids()
        assert ids and all(shard_of(d, 4) == i for d in ids)
    rep = sharded.verify()
    assert rep.ok, rep.problems
    assert sharded.stats()["shards"] == 4 and len(sharded.stats()["shard_stats"]) == 4


@pytest.mark.parametrize("rerank", [False, True])
def test_dense_results_equal_the_unsharded_index(pair, rerank):
    flat, sharded, queries = pair
    for q in queries[: 40 if rerank else len(queries)]:
        a = flat.search(q.query, k=10, mode="dense", rerank=rerank)
        b = sharded.search(q.query, k=10, mode="dense", rerank=rerank)
        assert [h.id for h in a] == [h.id for h in b], q.query
        assert all(abs(x.score - y.score) < 1e-5 for x, y in zip(a, b))
        assert all(abs(x.retrieval_score - y.retrieval_score) < 1e-5 for x, y in zip(a, b))


def test_filters_apply_on_every_shard_and_give_k_results(pair, fitz300):
    flat, sharded, queries = pair
    key, value = next((k, v) for k, v in fitz300[0][0].metadata.items() if isinstance(v, str))
    f = {key: value}
    a = flat.search(queries[0].query, k=10, filters=f, mode="dense", rerank=False)
    b = sharded.search(queries[0].query, k=10, filters=f, mode="dense", rerank=False)
    assert [h.id for h in a] == [h.id for h in b] and len(b) >= 1


def test_upsert_and_delete_land_on_the_owning_shard_and_survive_reopen(tmp_path, small_docs, model_cache):
    path = tmp_path / "s"
    with Retriever.create(path, RetrieverConfig(), shards=3) as r:
        r.upsert(small_docs)
        owner = r.shard_for("paris")
        r.upsert([Document("paris", "Paris hosts the Louvre museum.", {"lang": "en"})])
        assert [len(s) for s in r.shards] == [sum(shard_of(d.id, 3) == i for d in small_docs) for i in range(3)]
        assert r.shards[owner].get("paris").text == "Paris hosts the Louvre museum."
        rep = r.delete(["berlin", "nope"])
        assert rep.deleted == 1 and rep.missing == ("nope",)
    assert (path / SHARDS).is_file()
    with Retriever.open(path, read_only=True) as r:
        assert len(r) == len(small_docs) - 1 and r.get("berlin") is None
        assert r.search("Louvre museum", k=1, rerank=False)[0].id == "paris"
        assert r.verify().ok


def test_bad_shard_counts_and_a_damaged_layout_get_clear_errors(tmp_path, model_cache):
    with pytest.raises(InputError, match="shards = 0 must be a whole number"):
        Retriever.create(tmp_path / "a", shards=0)
    path = tmp_path / "b"
    Retriever.create(path, RetrieverConfig(), shards=2).close()
    (path / SHARDS).write_text("{not json")
    with pytest.raises(IndexCorruptError, match="shards.json is unreadable"):
        Retriever.open(path)
