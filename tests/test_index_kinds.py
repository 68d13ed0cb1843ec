"""Every index kind on real MiniLM embeddings of 1,000 fitz-gov documents (1,109 vectors), real FAISS, real DuckDB:
recall against exact search, tuning to a target, filters, upsert/delete/reopen, masking, and bad settings."""
import json

import numpy as np
import pytest

from retriever import Document, Retriever, RetrieverConfig
from retriever.cli import main
from retriever.errors import ConfigError
from retriever.knn import exact_topk, knn_intersection
from retriever.persistence import SNAPSHOT, generation_dir

from conftest import copy_index

pytestmark = pytest.mark.real

# ivf_pq at 4 bits: the corpus (1,109 vectors) supports at most 2**4 centroids with 39 points each
KINDS = {
    "hnsw": {"kind": "hnsw"},
    "ivf_flat": {"kind": "ivf_flat"},
    "ivf_pq": {"kind": "ivf_pq", "pq_nbits": 4},
    "ivf_pq_opq": {"kind": "ivf_pq", "pq_nbits": 4, "pq_m": 24, "opq": True},
}


@pytest.fixture(scope="module")
def built(fitz1000_index, tmp_path_factory):
    """One rebuilt copy of the 1,000-document index per kind (no re-embedding)."""
    out = {}
    for name, settings in KINDS.items():
        path = copy_index(fitz1000_index, tmp_path_factory.mktemp(name) / "index")
        with Retriever.open(path) as r:
            r.rebuild(settings)
        out[name] = path
    return out


@pytest.fixture
def kind_copy(built, request, tmp_path):
    return copy_index(built[request.param], tmp_path / "index")


def _exact(r, q, k, allowed=None):
    vids, vecs = r.store.vectors(allowed)
    return exact_topk(q, vecs, vids, k)[1]


_recall = knn_intersection


def _sample_queries(r, n, seed):
    vids, vecs = r.store.vectors()
    pick = np.random.default_rng(seed).choice(len(vids), n, replace=False)
    return vecs[pick]


@pytest.mark.parametrize("kind_copy", list(KINDS), indirect=True)
def test_tune_reaches_the_target_and_every_later_open_uses_it(kind_copy):
    with Retriever.open(kind_copy) as r:
        kind = r.index_status()["kind"]
        q = _sample_queries(r, 200, seed=7)
        before = _recall(r.candidates.search(q, 10, None, fallback=False)[1], _exact(r, q, 10))
        report = r.tune(0.95, 10, sample=300)
    assert report.kind == kind and report.reached, report.table()
    assert report.chosen.recall >= 0.95
    print(f"{kind}: recall@10 {before:.4f} with defaults; tuned {report.chosen.label} -> {report.chosen.recall:.4f}")
    # a fresh open (read-only, memory-mapped) picks the tuned setting up from the manifest ...
    with Retriever.open(kind_copy, read_only=True) as r:
        status = r.index_status()
        assert status["tuned"]["params"] == report.chosen.params
        for key, value in report.chosen.params.items():
            assert status["search"][key] == value
        assert status["mmapped"]
        # ... and meets the target on queries it was not tuned on (seeded, so this is not flaky)
        q = _sample_queries(r, 300, seed=0)
        after = _recall(r.candidates.search(q, 10, None, fallback=False)[1], _exact(r, q, 10))
    assert after >= 0.95, (kind, report.chosen.label, after)


@pytest.mark.parametrize("kind_copy", list(KINDS), indirect=True)
def test_filtered_search_returns_min_k_matches_on_the_ann_path(kind_copy):
    # exact_filter_threshold = 0 sends every filter through the FAISS ID selector, even the selective ones
    cfg = RetrieverConfig.from_dict(_stored_config(kind_copy)).replace(index={"exact_filter_threshold": 0})
    with Retriever.open(kind_copy, cfg) as r:
        q = _sample_queries(r, 5, seed=3)
        for domain in ("technology", "medicine", "sports", "no-such-domain"):
            allowed = r.store.filter_vids(*_compile({"domain": domain}))
            rows = r.store.fetch(allowed.tolist()).values()
            documents = len({document_id(row.id, row.metadata) for row in rows})  # documents mode counts these
            for k in (1, 10, 50):
                for row in q:
                    hits = r.search_by_vector(row, k=k, filters={"domain": domain})
                    assert len(hits) == min(k, documents), (domain, k)
                    assert all(h.metadata["domain"] == domain for h in hits)
                    assert [h.retrieval_score for h in hits] == sorted((h.retrieval_score for h in hits), reverse=True)


def document_id(row_id, metadata):
    from retriever.documents import document_id as parent

    return parent(row_id, metadata)


def _compile(f):
    from retriever.filters import compile_filter

    return compile_filter(f)


def _stored_config(path):
    return json.loads((path / "manifest.json").read_text())["config"]


@pytest.mark.parametrize("kind_copy", list(KINDS), indirect=True)
def test_upsert_delete_and_reopen_behave_as_on_flat(kind_copy):
    with Retriever.open(kind_copy) as r:
        kind = r.index_status()["kind"]
        ids = sorted(r.store.document_ids())[:20]
        gone = ids[:10]
        texts = {i: r.get(i).text for i in gone if r.get(i) is not None}
        r.delete(gone)
        new = [Document("new-1", "Quantum error correction keeps logical qubits alive for hours.", {"domain": "science"}),
               Document(ids[10], "A replaced text about glaciers retreating in the Alps.", {"domain": "environment"})]
        r.upsert(new)
        for i, text in texts.items():
            hits = r.search(text, k=20, rerank=False)
            assert i not in {h.id for h in hits}, (kind, i)
        assert r.search("quantum error correction logical qubits", k=1, rerank=False)[0].id == "new-1"
        assert r.search("glaciers retreating in the Alps", k=1, rerank=False)[0].id == ids[10]
        if kind == "hnsw":
            assert r.index_status()["masked"] == 11  # 10 deleted + the replaced vector
        expected = [h.id for h in r.search("glaciers and climate", k=10, rerank=False)]
        n = len(r)
    for read_only in (False, True):
        with Retriever.open(kind_copy, read_only=read_only) as r:
            assert r.verify(check_model=False).ok
            assert len(r) == n and r.index_status()["kind"] == kind
            assert [h.id for h in r.search("glaciers and climate", k=10, rerank=False)] == expected
            for i in gone:
                assert r.get(i) is None
    with Retriever.open(kind_copy) as r:  # a rebuild compacts masked vectors and keeps every live one
        r.rebuild()
        status = r.index_status()
        assert status["masked"] == 0 and status["kind"] == kind
        assert np.array_equal(np.sort(r.vector_index.ids()), r.store.vids())


def test_hnsw_masks_deleted_vectors_and_info_shows_the_share(built, tmp_path, capsys):
    path = copy_index(built["hnsw"], tmp_path / "index")
    with Retriever.open(path) as r:
        r.delete(sorted(r.store.document_ids())[:300])
        status = r.index_status()
        assert status["masked"] >= 300 and status["masked_share"] > 0.2
        assert any("compacts" in w for w in status["warnings"])
    assert main(["info", str(path)]) == 0
    captured = capsys.readouterr()
    assert "index.masked_share" in captured.out and "compacts" in captured.err
    assert main(["rebuild", str(path)]) == 0
    with Retriever.open(path, read_only=True) as r:
        assert r.index_status()["masked"] == 0


def test_changing_the_kind_records_why_and_bad_settings_fail_before_any_work(fitz1000_index, tmp_path, capsys):
    path = copy_index(fitz1000_index, tmp_path / "index")
    snap = generation_dir(path, 1) / SNAPSHOT
    before = (path / "manifest.json").read_text(), snap.read_bytes()
    bad = [
        (["--kind", "ivf_flat", "--set", "nlist=5000"], "index.nlist = 5000", "between 1 and 28"),
        (["--kind", "ivf_pq", "--set", "pq_m=7"], "index.pq_m = 7", "16, 24, 32, 48"),
        (["--kind", "ivf_pq", "--set", "pq_nbits=8"], "index.pq_nbits = 8", "pq_nbits must be 4"),
        (["--kind", "ivf_pq", "--set", "pq_nbits=17"], "index.pq_nbits = 17", "between 4 and 16"),
        (["--kind", "hnsw", "--set", "ef_search=-1"], "index.ef_search = -1", "between 0 and 65536"),
        (["--kind", "hnsw", "--set", "hnsw_m=1"], "index.hnsw_m = 1", "between 4 and 256"),
    ]
    for args, setting, rule in bad:
        assert main(["rebuild", str(path), *args]) == 2, args
        err = capsys.readouterr().err
        assert setting in err and rule in err, err
    assert ((path / "manifest.json").read_text(), snap.read_bytes()) == before  # nothing was touched

    assert main(["rebuild", str(path), "--kind", "auto"]) == 0
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["index"]["kind"] == "flat" and manifest["index"]["requested"] == "auto"
    assert "auto: 1,109 vectors < 100,000" in manifest["index"]["reason"]
    assert manifest["config"]["index"]["kind"] == "auto"


def test_bad_settings_at_create_fail_before_the_directory_exists(tmp_path, model_cache):
    with pytest.raises(ConfigError, match=r"index.pq_m = 5 does not divide the dimension 384"):
        Retriever.create(tmp_path / "ix", RetrieverConfig().replace(index={"kind": "ivf_pq", "pq_m": 5}))
    assert not (tmp_path / "ix").exists()
    with pytest.raises(ConfigError, match=r"index.nlist = -3 is out of range"):
        RetrieverConfig().replace(index={"kind": "ivf_flat", "nlist": -3})
    with pytest.raises(ConfigError, match=r"index.kind = 'ivf' is not allowed"):
        RetrieverConfig().replace(index={"kind": "ivf"})


def test_an_ivf_index_waits_for_enough_vectors_then_trains_at_save(tmp_path, model_cache):
    cfg = RetrieverConfig().replace(index={"kind": "ivf_flat", "nlist": 4})  # needs 4 * 39 = 156 vectors
    docs = [Document(f"d{i}", f"Note {i}: the {w} of item {i} was checked on day {i % 31}.", {"i": i})
            for i, w in zip(range(200), ["colour", "weight", "price", "size"] * 50)]
    with Retriever.create(tmp_path / "ix", cfg) as r:
        r.upsert(docs[:100])
        r.save()
        status = r.index_status()
        assert status["kind"] == "flat" and status["pending"] == "ivf_flat"
        assert any("index.nlist = 4 is too large for 100 vectors" in w for w in status["warnings"])
        assert r.search(docs[7].text, k=3, rerank=False)[0].id == "d7"
        r.upsert(docs[100:])
        r.save()
        status = r.index_status()
        assert status["kind"] == "ivf_flat" and status["pending"] is None
        assert status["trained"]["vectors"] == 200 and status["params"] == {"nlist": 4}
    with Retriever.open(tmp_path / "ix", read_only=True) as r:
        assert r.index_status()["kind"] == "ivf_flat"
        assert r.search(docs[7].text, k=3, rerank=False)[0].id == "d7"


def test_retraining_is_due_when_the_corpus_outgrows_the_training(built, tmp_path, capsys):
    path = copy_index(built["ivf_flat"], tmp_path / "index")
    cfg = RetrieverConfig.from_dict(_stored_config(path)).replace(index={"retrain_growth": 1.0})
    with Retriever.open(path, cfg, read_only=True) as r:
        report = r.verify(check_model=False)
    assert report.ok and any("retrain" in w and "1,109" in w for w in report.warnings)
    assert main(["verify", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err  # at the default growth of 2x it is not due yet


def test_cli_tune_prints_the_table_and_stores_the_choice(built, tmp_path, capsys):
    path = copy_index(built["ivf_flat"], tmp_path / "index")
    assert main(["tune", str(path), "--target-recall", "0.9", "--k", "5", "--sample", "200"]) == 0
    out = capsys.readouterr().out
    assert "recall@5" in out and "nprobe=1 " in out and "chosen: nprobe=" in out
    tuned = json.loads((path / "manifest.json").read_text())["index"]["tuned"]
    assert tuned["k"] == 5 and tuned["recall"] >= 0.9 and tuned["vectors"] == 1109
    assert main(["tune", str(path), "--target-recall", "1.5"]) == 2
    assert "target recall = 1.5" in capsys.readouterr().err


def test_a_mostly_deleted_hnsw_graph_still_returns_k_live_hits(built, tmp_path):
    path = copy_index(built["hnsw"], tmp_path / "index")
    with Retriever.open(path) as r:
        ids = sorted(r.store.document_ids())
        r.delete(ids[:-12])  # ~99% of the graph is masked: a plain efSearch walk finds few live nodes
        q = _sample_queries(r, 5, seed=1) if len(r) else None
        live = set(ids[-12:])
        for row in q:
            hits = r.search_by_vector(row, k=10)
            assert len(hits) == 10 and {h.metadata.get("parent_id", h.id) for h in hits} <= live
        assert r.index_status()["masked_share"] > 0.9
