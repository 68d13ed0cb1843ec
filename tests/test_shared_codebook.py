"""A sharded IVF index trains one codebook on a sample drawn across its shards (issue 15): real MiniLM, real FAISS,
real DuckDB files. With one codebook the merged results are those of one IVF-flat index over every document with
that codebook, and shards too small to train alone (300 documents over 4 shards, nlist 4 needs 156 vectors) still
get the IVF kind the corpus asks for."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import write_jsonl
from retriever import Retriever, RetrieverConfig
from retriever.codebook import shares
from retriever.errors import ConfigError
from retriever.ingest import ingest
from retriever.persistence import PREVIOUS, SNAPSHOT

SHARDS = 4
CONFIG = RetrieverConfig().replace(index={"kind": "ivf_flat", "nlist": 4, "nprobe": 2},
                                   retrieval={"results": "chunks", "mode": "dense"})


def test_shares_split_the_sample_in_proportion_and_never_past_a_shard():
    assert shares([100, 100, 100, 100], 40) == [10, 10, 10, 10]
    assert shares([50, 25, 25], 10) == [5, 3, 2]  # largest remainder first, ties to the lower shard
    assert sum(shares([7, 13, 29, 51], 37)) == 37
    assert shares([3, 1000], 500) == [1, 499]
    assert shares([5, 5], 100) == [5, 5]  # never more than the corpus
    assert shares([0, 0], 10) == [0, 0]


def shared_records(r):
    return [s.manifest.index["trained"] for s in r.shards]


@pytest.fixture(scope="module")
def ivf_sharded(tmp_path_factory, fitz300, model_cache):
    docs, queries = fitz300
    root = tmp_path_factory.mktemp("shared-codebook")
    data = write_jsonl(root / "docs.jsonl", docs)
    report = ingest(data, root / "index", shards=SHARDS, config=CONFIG)  # the path `retriever ingest` takes
    return root / "index", report, queries


def reference(path):
    """One IVF-flat index over every shard's vectors with shard 0's codebook, and its ids' chunk ids."""
    with Retriever.open(path) as r:  # a writer: its index is in RAM (a read-only open memory-maps the lists)
        ref = r.shards[0].vector_index.empty_copy()
        chunk_ids = {}
        for s, shard in enumerate(r.shards):
            vids, vecs = shard.store.vectors()
            ref.add(vids * SHARDS + s, vecs)
            rows = shard.store.fetch(vids.tolist())
            chunk_ids.update({int(v) * SHARDS + s: rows[int(v)].id for v in vids})
    return ref, chunk_ids


def test_ingest_trains_one_codebook_on_a_sample_across_the_shards(ivf_sharded):
    path, report, _ = ivf_sharded
    with Retriever.open(path) as r:
        counts = [len(s.vector_index) for s in r.shards]
        assert all(s.vector_index.kind == "ivf_flat" for s in r.shards)
        assert all(c < 39 * 4 for c in counts), "each shard alone is too small to train nlist = 4"
        digests = {s.vector_index.codebook_sha256() for s in r.shards}
        assert len(digests) == 1 and None not in digests
        records = shared_records(r)
        shared = records[0]["shared"]
        assert all(rec["shared"] == shared for rec in records)
        assert shared["sha256"] == digests.pop() and shared["shards"] == SHARDS
        assert shared["corpus_vectors"] == sum(counts) == report.vectors
        # the sample is drawn from every shard in proportion (here the whole corpus: 64 per list is more)
        assert shared["samples"] == counts and [rec["vectors"] for rec in records] == counts
        status = r.index_status()
        assert status["shared_codebook"] is True and len(set(status["codebooks"])) == 1
        rep = r.verify()
        assert rep.ok and not [w for w in rep.warnings if "codebooks differ" in w], rep.warnings


def test_results_equal_one_ivf_index_over_every_document(ivf_sharded):
    path, _, queries = ivf_sharded
    ref, chunk_ids = reference(path)
    assert ref.kind == "ivf_flat" and ref.ivf.nlist == 4
    with Retriever.open(path, read_only=True) as r:  # serving: memory-mapped shards
        assert all(s.vector_index.effective()["nprobe"] == 2 for s in r.shards)  # approximate: 2 of 4 lists
        vectors = r.checked_embedder().encode_queries([q.query for q in queries[:60]])
        for q, v in zip(queries[:60], vectors):
            hits = r.search_by_vector(v, k=10)
            s, i = ref.search(v[None, :], 10, nprobe=2, unit=True)
            ids, scores = [chunk_ids[int(x)] for x in i[0]], s[0].tolist()
            assert len(hits) == 10
            np.testing.assert_allclose([h.retrieval_score for h in hits], scores, atol=1e-5, err_msg=q.query)
            cut = scores[-1] + 1e-5  # below it a tie may order either way
            assert {h.id for h in hits if h.retrieval_score > cut} == {i for i, s in zip(ids, scores) if s > cut}


def test_a_shard_repaired_alone_gets_the_shared_codebook_back_at_the_next_save(ivf_sharded, tmp_path):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(ivf_sharded[0], path)
    with Retriever.open(path) as r:
        assert shared_records(r)[0]["shared"]["sha256"]
        shard_dir = r.shards[1].path
    for f in shard_dir.glob(f"gen-*/{SNAPSHOT}"):
        f.unlink()
    for f in shard_dir.glob(f"gen-*/{PREVIOUS}"):
        f.unlink()
    with Retriever.open(path) as r:
        assert r.recovered and "shard-0001" in r.recovered
        # alone, shard 1 is too small for nlist = 4: it searches exactly until the index trains for all shards
        assert r.shards[1].vector_index.kind == "flat"
        warned = [w for w in r.verify().warnings if "codebooks differ" in w]
        assert warned and "retriever rebuild" in warned[0]
        r.save()
        digests = {s.vector_index.codebook_sha256() for s in r.shards}
        assert len(digests) == 1 and None not in digests
        after = shared_records(r)[0]["shared"]["sha256"]
        assert after == digests.pop()
        assert not [w for w in r.verify().warnings if "codebooks differ" in w]


def test_rebuild_trains_once_for_every_shard_and_checks_settings_on_the_whole_corpus(ivf_sharded, tmp_path):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(ivf_sharded[0], path)
    with Retriever.open(path) as r:
        at = shared_records(r)[0]["at"]
        with pytest.raises(ConfigError, match="nlist"):
            r.rebuild({"nlist": 100})  # 100 lists need 3,900 vectors: refused before any work
        assert shared_records(r)[0]["at"] == at
        r.rebuild({"nlist": 5})
        records = shared_records(r)
        assert all(s.vector_index.ivf.nlist == 5 for s in r.shards)
        assert len({rec["shared"]["sha256"] for rec in records}) == 1 and records[0]["at"] != at
    with Retriever.open(path, read_only=True) as r:  # what was saved
        assert len({s.vector_index.codebook_sha256() for s in r.shards}) == 1
        assert r.shards[0].vector_index.ivf.nlist == 5
