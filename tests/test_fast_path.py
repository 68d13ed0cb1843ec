"""The fast path (int8 ONNX on onnxruntime) against the torch reference, on real models, FAISS and DuckDB:
rerank and embedding fidelity, no torch at search time, backends never mixed in one index, the query-embedding
and rerank-score caches (hits, aliasing, invalidation by vid, bounds, reembed), one rerank call per batch
search, the rerank budget, thread settings and config errors.

Every model here runs with one thread (a module-wide layout, restored to the defaults at the end): the suite
shares two cores with other work, where two spinning onnxruntime / OpenMP threads per model measured 2-5x slower
than one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retriever import (
    ConfigError, Document, IndexMismatchError, InputError, Retriever, RetrieverConfig, runtime,
)
from retriever.config import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANK_MODEL
from retriever.embedding import Embedder
from retriever.models import cache_dir, packaged_reranker_source, resolve_embedder
from retriever.onnx_models import OnnxCrossEncoder, exported_sentence_encoder, onnx_cross_encoder_files
from retriever.rerank import Reranker

from conftest import ROOT, copy_index

LEAN = {"torch_threads": 1, "onnx_threads": 1}
FRANCE = "what is the capital of france?"
PARIS = "Paris is the capital and largest city of France."
BANANA = "Bananas are rich in potassium and easy to digest."
DOCS = [  # the same five documents as conftest's small_docs, for module-scoped fixtures
    Document("paris", PARIS, {"lang": "en", "year": 2021}),
    Document("berlin", "Berlin is the capital of Germany and its largest city.", {"lang": "en", "year": 2019}),
    Document("banana", BANANA, {"lang": "en", "year": 2023}),
    Document("madrid", "Madrid es la capital de España.", {"lang": "es", "year": 2020}),
    Document("python", "Python is a programming language that emphasizes readability.", {"lang": "en", "year": 2018}),
]


def lean_config(**sections) -> RetrieverConfig:
    return RetrieverConfig().replace(runtime=LEAN, **sections)


@pytest.fixture(scope="module", autouse=True)
def _one_thread_per_model():
    runtime.configure(**LEAN)
    yield
    runtime.configure()


@pytest.fixture(scope="module")
def onnx_export(model_cache) -> Path:
    """The int8 ONNX export of the builtin bi-encoder in the session's model cache (exported here if needed), so
    subprocesses never export."""
    return exported_sentence_encoder(resolve_embedder(DEFAULT_EMBEDDING_MODEL), cache_dir(), DEFAULT_EMBEDDING_MODEL)


@pytest.fixture(scope="module")
def torch_index(tmp_path_factory, model_cache) -> Path:
    """The five documents embedded by the torch backend, saved and closed. Copy it before changing it."""
    path = tmp_path_factory.mktemp("torch-index") / "index"
    with Retriever.create(path, lean_config(embedding={"backend": "torch"})) as r:
        r.upsert(DOCS)
    return path


@pytest.fixture
def make_index(tmp_path, small_docs, model_cache):
    """Fresh writable real indexes over conftest's small_docs, with some config sections changed."""
    opened = []

    def make(**sections) -> Retriever:
        r = Retriever.create(tmp_path / f"ix{len(opened)}", lean_config(**sections))
        r.upsert(small_docs)
        opened.append(r)
        return r

    yield make
    for r in opened:
        r.close()


def record_calls(monkeypatch, obj, method: str) -> list[list]:
    """The first argument (a list of pairs or texts) of every call of obj.method, recorded as lists."""
    calls: list[list] = []
    real = getattr(obj, method)

    def spy(items, **kw):
        calls.append(list(items))
        return real(items, **kw)

    monkeypatch.setattr(obj, method, spy)
    return calls


def record_pairs(monkeypatch, r: Retriever) -> list[list[tuple[str, str]]]:
    """Every score_pairs call of r's cross-encoder, as its list of (query, passage) pairs."""
    return record_calls(monkeypatch, r.reranker, "score_pairs")


def record_encodes(monkeypatch, r: Retriever) -> list[list[str]]:
    return record_calls(monkeypatch, r.embedder, "encode")


def spearman(a, b) -> float:
    try:
        from scipy.stats import spearmanr
    except ImportError:  # pragma: no cover - scipy comes with the test environment today
        ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
        return float(np.corrcoef(ra, rb)[0, 1])
    return float(spearmanr(a, b).statistic)


# ------------------------------------------------------------------------------------------- no torch
@pytest.mark.real
def test_search_with_rerank_on_an_onnx_index_never_imports_torch(tmp_path, small_docs, onnx_export):
    assert (onnx_export / "model.onnx").is_file()  # the export exists: a search never needs torch to make it
    path = tmp_path / "onnx-index"
    with Retriever.create(path, lean_config()) as r:
        r.upsert(small_docs)
    code = ("import sys\nfrom retriever import Retriever\n"
            "with Retriever.open(sys.argv[1], read_only=True) as r:\n"
            "    hits = r.search(sys.argv[2], k=3)\n"
            "    s = r.stats()\n"
            "    print(hits[0].id, hits[0].rerank_score is not None, s['embedding_backend'], s['rerank_backend'])\n"
            "print([m for m in ('torch', 'sentence_transformers') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code, str(path), FRANCE], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["paris True onnx onnx", "[]"], out.stdout + out.stderr


# ---------------------------------------------------------------------------------------- backends mixing
@pytest.mark.real
def test_an_index_embedded_by_torch_is_never_searched_with_onnx_vectors(torch_index, tmp_path, onnx_export):
    path = copy_index(torch_index, tmp_path / "ix")
    with pytest.raises(IndexMismatchError) as e:
        Retriever.open(path, lean_config(embedding={"backend": "onnx"}))
    msg = str(e.value)
    assert "'torch'" in msg and "'onnx'" in msg
    assert f"retriever reembed {path} --model {DEFAULT_EMBEDDING_MODEL} --backend onnx" in msg

    with Retriever.open(path) as r:  # the stored config: torch
        assert r.stats()["embedding_backend"] == "torch"
        assert r.search("capital of France", k=1, rerank=False)[0].id == "paris"
        torch_ids, torch_vecs = r.store.ids_and_vectors()
        out = r.reembed(DEFAULT_EMBEDDING_MODEL, backend="onnx")
        assert out["backend"] == "onnx" and out["vectors"] == len(DOCS)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["embedder"]["backend"] == "onnx" and manifest["config"]["embedding"]["backend"] == "onnx"
    with Retriever.open(path) as r:
        assert r.stats()["embedding_backend"] == "onnx" and r.verify().ok
        assert r.search("capital of France", k=1, rerank=False)[0].id == "paris"
        assert r.search("potassium", k=1, rerank=False)[0].id == "banana"
        ids, vecs = r.store.ids_and_vectors()
        by_id = {i: v for i, v in zip(torch_ids, torch_vecs)}
        fresh = Embedder(DEFAULT_EMBEDDING_MODEL, backend="onnx").encode([r.get(i).text for i in ids])
        # the stored vectors are the onnx embedder's, not the torch ones relabeled
        assert np.min((vecs * fresh).sum(1)) > 0.9999
        assert not np.allclose(vecs, np.stack([by_id[i] for i in ids]), atol=1e-4)
    with pytest.raises(IndexMismatchError):  # and now the other way round
        Retriever.open(path, lean_config(embedding={"backend": "torch"}))


@pytest.mark.real
def test_cli_reembed_switches_the_backend(torch_index, tmp_path, onnx_export):
    path = copy_index(torch_index, tmp_path / "ix")
    cli = Path(sys.executable).with_name("retriever")
    out = subprocess.run([str(cli), "reembed", str(path), "--model", DEFAULT_EMBEDDING_MODEL, "--backend", "onnx"],
                         capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert "onnx backend" in out.stdout and f"re-embedded {len(DOCS)} texts" in out.stdout
    with Retriever.open(path) as r:
        assert r.stats()["embedding_backend"] == "onnx"
        assert r.search("capital of Germany", k=1, rerank=False)[0].id == "berlin"


# ------------------------------------------------------------------------------------------------- caches
@pytest.mark.real
def test_query_cache_hits_and_never_aliases_the_cached_vector(make_index, monkeypatch):
    r = make_index()
    q = "which city is the capital of France?"
    first, t1 = r.search_traced([q], k=3, rerank=False)
    before = r.cache_stats()["query_embeddings"]
    encodes = record_encodes(monkeypatch, r)
    second, t2 = r.search_traced([q], k=3, rerank=False)
    after = r.cache_stats()["query_embeddings"]
    assert encodes == [] and after["hits"] == before["hits"] + 1 and after["entries"] == before["entries"] == 1
    assert [(h.id, h.score) for h in second[0]] == [(h.id, h.score) for h in first[0]]
    assert np.array_equal(t1["query_vectors"], t2["query_vectors"])

    (cached,) = r.searcher.query_cache._data.values()
    assert not cached.flags.writeable
    kept = cached.copy()
    for t in (t1, t2):  # the vectors handed out are copies: scribbling on them changes nothing later
        assert not np.shares_memory(t["query_vectors"], cached)
        t["query_vectors"][:] = 0.0
    third = r.search(q, k=3, rerank=False)
    assert [(h.id, h.score) for h in third] == [(h.id, h.score) for h in first[0]]
    assert np.array_equal(cached, kept) and first[0][0].id == "paris"

    # a new text misses, and a text repeated within one batch is embedded once
    r.search_batch(["bananas and potassium", "bananas and potassium"], k=1, rerank=False)
    assert encodes == [["bananas and potassium"]]


@pytest.mark.real
def test_rerank_cache_serves_repeated_searches_without_the_model(make_index, monkeypatch):
    r = make_index()
    first = r.search(FRANCE, k=5)
    calls = record_pairs(monkeypatch, r)
    hits_before = r.cache_stats()["rerank_scores"]["hits"]
    second = r.search(FRANCE, k=5)
    assert calls == []
    assert r.cache_stats()["rerank_scores"]["hits"] == hits_before + len(first) == hits_before + 5
    assert [(h.id, h.rerank_score, h.retrieval_score) for h in second] == \
        [(h.id, h.rerank_score, h.retrieval_score) for h in first]
    r.search("bananas and potassium", k=5)  # another query is another key
    assert len(calls) == 1 and len(calls[0]) == 5


@pytest.mark.real
def test_upsert_and_delete_drop_the_scores_of_removed_vids(make_index, monkeypatch):
    r = make_index()
    r.search(FRANCE, k=5)  # every document is a candidate: five scores cached
    old = {i: r.store.get(i).vid for i in ("paris", "berlin")}
    assert set(old.values()) <= set(r.searcher.score_cache._by_vid) and len(r.searcher.score_cache) == 5

    new_text = "Paris, on the Seine, has been the capital of France for centuries."
    r.upsert([Document("paris", new_text, {"lang": "en", "year": 2024})])
    r.delete(["berlin"])
    assert r.cache_stats()["rerank_scores"]["entries"] == 3
    assert not set(old.values()) & set(r.searcher.score_cache._by_vid)
    assert r.store.get("paris").vid not in old.values()

    calls = record_pairs(monkeypatch, r)
    hits = r.search(FRANCE, k=5)
    assert calls == [[(FRANCE, new_text)]]  # only the new text goes to the model
    assert [h.id for h in hits][0] == "paris" and hits[0].text == new_text and "berlin" not in [h.id for h in hits]
    assert len(hits) == 4
    for q in ("capital of Germany", "Berlin is the capital of Germany and its largest city."):
        for rerank in (True, False):
            assert "berlin" not in [h.id for h in r.search(q, k=10, rerank=rerank)]
    assert r.get("berlin") is None


@pytest.mark.real
def test_caches_stay_within_their_bounds(make_index, monkeypatch):
    r = make_index(cache={"rerank_scores": 50, "query_embeddings": 0})
    queries = [f"question {i}: which European city is a capital?" for i in range(12)]  # 5 candidates each
    for q in queries[:6]:
        r.search(q, k=5)
        assert len(r.searcher.score_cache) <= 50
    r.search_batch(queries[6:], k=5)  # 30 more scores: 60 in all
    stats = r.cache_stats()
    assert stats["rerank_scores"]["entries"] == 50 and stats["rerank_scores"]["capacity"] == 50
    assert sum(len(keys) for keys in r.searcher.score_cache._by_vid.values()) == 50  # the vid index follows evictions
    calls = record_pairs(monkeypatch, r)
    r.search(queries[-1], k=5)  # recent: still cached
    assert calls == []
    r.search(queries[0], k=5)  # least recently used: evicted
    assert len(calls) == 1 and len(calls[0]) == 5 and len(r.searcher.score_cache) == 50

    encodes = record_encodes(monkeypatch, r)
    r.search(queries[0], k=1, rerank=False)
    r.search(queries[0], k=1, rerank=False)
    assert len(encodes) == 2
    assert stats["query_embeddings"]["entries"] == 0 and r.cache_stats()["query_embeddings"]["entries"] == 0


@pytest.mark.real
def test_reembed_clears_both_caches(make_index, small_docs, monkeypatch):
    r = make_index()
    # a replaced document leaves a gap in the vids, so the re-embedded file numbers them differently
    r.upsert([Document("paris", "Paris is the capital of France, on the Seine.", small_docs[0].metadata)])
    r.search(FRANCE, k=5)
    stats = r.cache_stats()
    assert stats["query_embeddings"]["entries"] == 1 and stats["rerank_scores"]["entries"] == 5
    vids_before = {i: r.store.get(i).vid for i in ("paris", "berlin")}
    r.reembed(DEFAULT_EMBEDDING_MODEL)
    stats = r.cache_stats()
    assert stats["query_embeddings"]["entries"] == 0 and stats["rerank_scores"]["entries"] == 0
    assert {i: r.store.get(i).vid for i in ("paris", "berlin")} != vids_before
    calls = record_pairs(monkeypatch, r)
    hits = r.search(FRANCE, k=5)
    assert len(calls) == 1 and len(calls[0]) == 5
    fresh = dict(zip([h.text for h in hits], r.reranker.score(FRANCE, [h.text for h in hits])))
    assert all(abs(h.rerank_score - fresh[h.text]) < 1e-3 for h in hits)


# ---------------------------------------------------------------------------------------- batching, budget
BATCH_QUERIES = [FRANCE, "bananas and potassium", "a programming language that is easy to read"]


def batch_and_singles(r: Retriever) -> tuple[list, list]:
    batch = r.search_batch(BATCH_QUERIES, k=3)
    r.clear_caches()  # else the singles would be served the batch's query vectors and scores
    return batch, [r.search(q, k=3) for q in BATCH_QUERIES]


@pytest.mark.real
def test_search_batch_reranks_every_pair_in_one_length_sorted_call(make_index, monkeypatch):
    r = make_index(rerank={"candidates": 4})
    calls = record_pairs(monkeypatch, r)
    model = r.reranker.model
    batches: list[list[int]] = []
    real_predict = model.predict_encoded

    def spy(encodings):
        batches.append([len(e.ids) for e in encodings])
        return real_predict(encodings)

    monkeypatch.setattr(model, "predict_encoded", spy)
    batch, singles = batch_and_singles(r)
    assert [len(c) for c in calls][0] == 3 * 4  # one call for every pair of the three queries
    # onnx runs one pair per forward pass (exact scores, see the next test), longest pairs first
    assert [len(b) for b in batches][:12] == [1] * 12
    lengths = [b[0] for b in batches[:12]]
    assert lengths == sorted(lengths, reverse=True)
    assert [len(c) for c in calls][1:] == [4, 4, 4]
    assert [h[0].id for h in batch] == [h[0].id for h in singles] == ["paris", "banana", "python"]


# The int8 ONNX models quantize activations dynamically, one scale per batch tensor (DynamicQuantizeLinear ->
# MatMulInteger), so batched texts would influence each other (measured: query cosine 0.992-0.996, rerank scores up
# to 0.015 apart, near-ties swapped). Queries are embedded and pairs scored one per run, so both are exact.
@pytest.mark.real
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_search_batch_equals_single_searches(make_index, backend):
    r = make_index(rerank={"candidates": 4, "backend": backend}, embedding={"backend": backend})
    batch, singles = batch_and_singles(r)
    for hits, single in zip(batch, singles):
        assert [h.id for h in hits] == [h.id for h in single]
        for a, b in zip(hits, single):
            assert a.retrieval_score == pytest.approx(b.retrieval_score, abs=1e-5)
            assert a.rerank_score == pytest.approx(b.rerank_score, abs=1e-5)


@pytest.mark.real
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_query_embedding_does_not_depend_on_its_batch(onnx_export, backend):
    e = Embedder(DEFAULT_EMBEDDING_MODEL, backend=backend)
    alone = e.encode_queries([FRANCE])[0]
    assert float(alone @ e.encode_queries([FRANCE, FRANCE])[0]) > 0.99999
    assert float(alone @ e.encode_queries([FRANCE, "what is the capital of spain?"])[0]) > 0.99999
    # documents are batched for ingest speed: on onnx their vectors move with their batchmates, within 0.01
    docs = e.encode([FRANCE, "what is the capital of spain?"])[0]
    assert float(alone @ docs) > (0.99999 if backend == "torch" else 0.99)


@pytest.mark.real
def test_rerank_budget_still_applies_on_the_onnx_path(make_index):
    r = make_index()
    r.search("capital of Germany", k=3)  # loads the model and measures the cost of a pair
    assert r.reranker.backend == "onnx" and r.reranker.pair_seconds > 0
    entries = len(r.searcher.score_cache)
    plain = r.search(FRANCE, k=5, rerank=False)
    hits, trace = r.search_traced([FRANCE], k=5, rerank_budget_ms=0.001)
    assert trace["rerank_timed_out"] is True and trace["reranked"] is False
    assert [h.id for h in hits[0]] == [h.id for h in plain]
    assert all(h.rerank_score is None for h in hits[0])
    assert [h.score for h in hits[0]] == pytest.approx([h.score for h in plain])  # the retrieval order's scores
    assert len(r.searcher.score_cache) == entries  # nothing half-scored was cached
    hits, trace = r.search_traced([FRANCE], k=5)  # no budget: reranked as usual
    assert trace["reranked"] is True and trace["rerank_timed_out"] is False
    assert all(h.rerank_score is not None for h in hits[0]) and hits[0][0].id == "paris"


# ------------------------------------------------------------------------------------------ config errors
def test_unknown_backends_are_config_errors():
    for section in ("rerank", "embedding"):
        with pytest.raises(ConfigError) as e:
            RetrieverConfig.from_dict({section: {"backend": "tensorrt"}})
        msg = str(e.value)
        assert f"{section}.backend" in msg and "'tensorrt'" in msg and "'onnx', 'torch'" in msg


@pytest.mark.real
def test_a_rerank_model_onnxruntime_cannot_run_fails_at_first_rerank(tmp_path, small_docs, onnx_export):
    plain = tmp_path / "not-onnx"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    # a folder with model.onnx and tokenizer.json that is not a cross-encoder: the exported bi-encoder
    for model, needle in ((str(plain), "rerank.backend = 'torch'"), (str(onnx_export), "rerank.backend = 'torch'")):
        path = tmp_path / f"ix-{Path(model).name}"
        with Retriever.create(path, lean_config(rerank={"model": model})) as r:  # opening never loads it
            r.upsert(small_docs)
            assert not r.reranker.loaded
            assert r.search(FRANCE, k=1, rerank=False)[0].id == "paris"
            with pytest.raises(InputError) as e:
                r.search(FRANCE, k=1)
            assert needle in str(e.value) and model in str(e.value), str(e.value)
        with Retriever.open(path) as r:
            assert r.stats()["rerank_backend"] == "onnx"


# ----------------------------------------------------------------------------------------------- fidelity
@pytest.mark.real
def test_onnx_cross_encoder_ranks_real_candidates_like_torch(corpus_index, fitz300):
    _, queries = fitz300
    picked = queries[::len(queries) // 15][:15]  # spread over the sorted ids (and so the categories)
    assert len(picked) == 15
    runtime.configure(**LEAN)  # building corpus_index applied the default layout
    candidates = corpus_index.search_batch([q.query for q in picked], k=20, rerank=False)
    assert all(len(c) == 20 for c in candidates)
    pairs = [(q.query, h.text) for q, c in zip(picked, candidates) for h in c]
    onnx = Reranker(DEFAULT_RERANK_MODEL, backend="onnx", max_length=256).score_pairs(pairs)
    ref = Reranker(DEFAULT_RERANK_MODEL, backend="torch", max_length=256).score_pairs(pairs)
    assert onnx.shape == ref.shape == (300,)

    diff = np.abs(onnx - ref)
    rhos, top1 = [], 0
    for i in range(len(picked)):
        a, b = onnx[i * 20:(i + 1) * 20], ref[i * 20:(i + 1) * 20]
        rhos.append(spearman(a, b))
        top1 += int(np.argmax(a) == np.argmax(b))
    print(f"\nrerank onnx vs torch over {len(pairs)} pairs: Spearman min {min(rhos):.4f} mean {np.mean(rhos):.4f}; "
          f"|d| mean {diff.mean():.5f} max {diff.max():.4f}; top-1 agreement {top1}/{len(picked)}")
    # measured on these pairs (one pair per run, unpadded): Spearman min 0.938 mean 0.984, |d| mean 0.0013 max 0.066,
    # top-1 15/15. The lowest Spearman comes from reordering among candidates that both paths score near 0.
    assert min(rhos) >= 0.9 and np.mean(rhos) >= 0.97, rhos
    assert diff.mean() <= 0.01 and diff.max() <= 0.2
    assert top1 >= 0.8 * len(picked)
    # the scores are spread, not one value (which would make the rank statistics meaningless)
    assert np.std(ref) > 0.05 and onnx.min() < 0.1 and onnx.max() > 0.9

    for backend in ("onnx", "torch"):
        yes, no = Reranker(DEFAULT_RERANK_MODEL, backend=backend, max_length=256).score(FRANCE, [PARIS, BANANA])
        assert yes > 0.9 and no < 0.01, (backend, yes, no)


@pytest.mark.real
def test_onnx_embedder_matches_torch_and_reuses_its_export(fitz300, onnx_export, monkeypatch):
    docs, _ = fitz300
    texts = [d.text for d in docs[:100]]
    a = Embedder(DEFAULT_EMBEDDING_MODEL, backend="onnx").encode(texts)
    b = Embedder(DEFAULT_EMBEDDING_MODEL, backend="torch").encode(texts)
    assert a.shape == b.shape == (100, 384) and a.dtype == b.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    cos = (a * b).sum(1)
    print(f"\nembeddings onnx vs torch over {len(texts)} passages: cosine mean {cos.mean():.4f} min {cos.min():.4f}")
    # measured: mean 0.9946, min 0.9873
    assert cos.mean() >= 0.99 and cos.min() >= 0.97
    assert not np.allclose(a, b, atol=1e-4)  # the int8 model really ran, not the reference under another name
    assert np.array_equal(np.argmax(b @ a.T, axis=1), np.arange(len(texts)))  # each passage's nearest is itself

    # the export is made once per weights and reused: a second embedder (other options, so not the process's
    # already-loaded model) loads the cached folder and exports nothing
    root = onnx_export.parent
    assert onnx_export.name.startswith("builtin-all-MiniLM-L6-v2-") and onnx_export.name.endswith("-int8")
    assert (onnx_export / "model.onnx").is_file() and (onnx_export / "export.json").is_file()
    listing = sorted(p.name for p in root.iterdir())
    stamps = (onnx_export.stat().st_mtime_ns, (onnx_export / "model.onnx").stat().st_mtime_ns)

    def no_export(*args, **kwargs):
        raise AssertionError("the bi-encoder was exported again")

    monkeypatch.setattr("retriever.onnx_models.export_sentence_encoder", no_export)
    again = Embedder(DEFAULT_EMBEDDING_MODEL, backend="onnx", max_seq_length=128)
    assert again.model.folder == onnx_export and again.max_seq_length == 128
    v = again.encode([texts[0]])
    assert float(v[0] @ a[0]) > 0.9  # truncated to 128 tokens, still the same passage
    assert sorted(p.name for p in root.iterdir()) == listing
    assert (onnx_export.stat().st_mtime_ns, (onnx_export / "model.onnx").stat().st_mtime_ns) == stamps


# ------------------------------------------------------------------------------------------------ threads
@pytest.mark.real
def test_thread_settings_reach_onnxruntime_and_blas(tmp_path, model_cache, request):
    from threadpoolctl import threadpool_info

    request.addfinalizer(runtime.configure)  # back to the default layout
    files = onnx_cross_encoder_files(packaged_reranker_source())
    assert files is not None
    cores = runtime.cores()
    has_blas = any(p.get("user_api") == "blas" for p in threadpool_info())
    path = tmp_path / "threads"
    Retriever.create(path, RetrieverConfig().replace(runtime={"onnx_threads": 1, "blas_threads": 1})).close()

    runtime.configure(onnx_threads=0, blas_threads=2)  # one per core for models, two for BLAS
    cur = runtime.current()
    assert cur["onnx_threads"] == cores
    if has_blas and cores >= 2:
        assert cur["blas_threads"] == 2
    assert OnnxCrossEncoder(*files, max_length=64).session.get_session_options().intra_op_num_threads == cores

    with Retriever.open(path) as r:
        cur = runtime.current()
        assert cur["onnx_threads"] == 1 and r.stats()["threads"]["onnx_threads"] == 1
        if has_blas:
            assert cur["blas_threads"] == 1
        session = OnnxCrossEncoder(*files, max_length=64).session
        assert session.get_session_options().intra_op_num_threads == 1


def test_faiss_thread_count_applies_in_worker_threads_that_search(small_index, request):
    """OpenMP's thread count is per thread: a search in a server's or a shard fan-out's worker thread ran FAISS on
    every core whatever [runtime] faiss_threads said. It now applies in every thread that searches."""
    import threading

    import faiss

    request.addfinalizer(runtime.configure)
    q = small_index.checked_embedder().encode_queries(["a query"])
    seen = {}

    def worker(name):
        seen[f"{name} before"] = faiss.omp_get_max_threads()
        small_index.vector_index.search(q, 3, unit=True)
        seen[name] = faiss.omp_get_max_threads()

    for wanted in (1, 2):
        runtime.configure(faiss_threads=wanted)
        t = threading.Thread(target=worker, args=(wanted,))
        t.start()
        t.join()
        assert seen[wanted] == wanted
    # a new thread starts with OpenMP's default (every core), so one of the two counts was a change to make
    assert seen["1 before"] != 1 or seen["2 before"] != 2 or runtime.cores() == 1


@pytest.mark.real
def test_onnx_export_reproduces_concatenated_pooling_modes(tmp_path, monkeypatch):
    """A copy of the builtin with cls + mean + max pooling (1,152-d): the onnx path pools like sentence-transformers."""
    import json
    import shutil

    from retriever.models import resolve_embedder

    monkeypatch.setenv("RETRIEVER_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "pooled"
    shutil.copytree(resolve_embedder(DEFAULT_EMBEDDING_MODEL), model)
    cfg_file = model / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("word_embedding_dimension", None)
    cfg.update({"embedding_dimension": 384, "pooling_mode": ["cls", "mean", "max"]})
    cfg_file.write_text(json.dumps(cfg))
    texts = [FRANCE, PARIS, BANANA]
    onnx = Embedder(str(model), backend="onnx").encode_queries(texts)
    ref = Embedder(str(model), backend="torch").encode(texts)
    assert onnx.shape == ref.shape == (3, 3 * 384)
    assert np.all((onnx * ref).sum(1) > 0.98), (onnx * ref).sum(1)
    # the parts line up: the mean block alone matches too
    a, b = onnx[:, 384:768], ref[:, 384:768]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert np.all(cos > 0.98), cos


@pytest.mark.real
def test_first_export_prints_nothing_and_leaves_the_root_logger_alone(tmp_path):
    """A user's first run exports the embedder: onnxruntime's quantizer would print its pre-processing advice
    through the root logger (and install a handler there); nothing of it reaches stderr or stays behind."""
    script = ("import logging\n"
              "from retriever.embedding import Embedder\n"
              "v = Embedder('builtin:all-MiniLM-L6-v2').encode(['a first query'])\n"
              "root = logging.getLogger()\n"
              "print(v.shape[1], len(root.handlers), len(root.filters))\n")
    env = {**os.environ, "RETRIEVER_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "cache").rglob("export.json")), "the model was not exported into the empty cache"
    assert done.stdout.split() == ["384", "0", "0"]
    assert "WARNING" not in done.stderr and "pre-processing" not in done.stderr, done.stderr


@pytest.mark.real
def test_a_model_loaded_under_another_onnx_thread_count_is_not_reused():
    """The process-wide model cache keys onnx models by the session's thread count too: after the thread layout
    changes, a new Reranker / Embedder gets a session with the new count, not the cached one."""
    from retriever import runtime

    before = runtime.onnx_threads()
    try:
        threads = {}
        for n in (1, 2):
            runtime.configure(onnx_threads=n)
            r = Reranker(DEFAULT_RERANK_MODEL, backend="onnx", pair_workers=1)  # one pair at a time, n threads
            e = Embedder(DEFAULT_EMBEDDING_MODEL, backend="onnx")
            auto = Reranker(DEFAULT_RERANK_MODEL, backend="onnx")  # n pairs side by side, one thread each
            threads[n] = (r.model.session.get_session_options().intra_op_num_threads,
                          e.model.session.get_session_options().intra_op_num_threads,
                          auto.pair_workers, auto.model.session.get_session_options().intra_op_num_threads)
            assert r.score_pairs([("a question", "an answer")]).shape == (1,)
        assert threads == {1: (1, 1, 1, 1), 2: (2, 2, 2, 1)}
        runtime.configure(onnx_threads=1)  # and the count asked for before is served from the cache again
        assert Reranker(DEFAULT_RERANK_MODEL, backend="onnx", pair_workers=1).model.session.get_session_options(
        ).intra_op_num_threads == 1
    finally:
        runtime.configure(onnx_threads=before)
