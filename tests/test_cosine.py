"""1. Cosine by construction: float32 unit vectors, inner product, retrieval_score is the cosine."""
import faiss
import numpy as np
import pytest

from retriever import InputError
from retriever.vector_index import VectorIndex
from retriever.vectors import as_unit_vectors


def _seeded(n, d, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


def test_flat_search_agrees_with_numpy_brute_force():
    x = _seeded(2000, 64)
    q = _seeded(50, 64, seed=1)
    vi = VectorIndex(64)
    vids = np.arange(10, 2010, dtype=np.int64) * 3  # ids unrelated to positions
    vi.add(vids, x)  # float64 in, converted
    assert vi.index.metric_type == faiss.METRIC_INNER_PRODUCT
    scores, got = vi.search(q, 10)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    ref = qn @ xn.T
    for i in range(len(q)):
        top = np.argsort(-ref[i])[:10]
        np.testing.assert_allclose(scores[i], ref[i][top], atol=1e-5)
        # same ids, allowing ties: every returned id scores at least the 10th best
        kth = ref[i][top[-1]]
        assert all(ref[i][(v // 3) - 10] >= kth - 1e-5 for v in got[i])


def test_vectors_are_normalized_float32_on_add_and_query():
    vi = VectorIndex(4)
    vi.add([7], [[3.0, 0, 0, 4.0]])  # a plain list, length 5
    stored = vi.reconstruct(7)
    assert stored.dtype == np.float32
    np.testing.assert_allclose(stored, [0.6, 0, 0, 0.8], atol=1e-6)
    s, ids = vi.search([[0, 0, 0, 100.0]], 1)  # query scaled by 100: cosine unchanged
    assert ids[0, 0] == 7 and abs(s[0, 0] - 0.8) < 1e-6


def test_non_contiguous_and_float64_are_accepted():
    base = _seeded(20, 16)
    sliced = np.asfortranarray(base)[:, :]  # Fortran order
    strided = _seeded(20, 32)[:, ::2]  # non-contiguous view
    for arr in (sliced, strided):
        out = as_unit_vectors(arr, 16)
        assert out.flags["C_CONTIGUOUS"] and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)


@pytest.mark.parametrize(
    "bad, words",
    [
        ([[np.nan, 1, 1, 1]], "NaN or inf"),
        ([[np.inf, 1, 1, 1]], "NaN or inf"),
        ([[0, 0, 0, 0]], "all zeros"),
        ([[1, 2, 3]], "dimension 3"),
        ([["a", "b", "c", "d"]], "numbers"),
    ],
)
def test_bad_vectors_are_refused_with_a_clear_error(bad, words):
    vi = VectorIndex(4)
    with pytest.raises(InputError, match=words):
        vi.add([1], bad)
    with pytest.raises(InputError, match=words):
        vi.search(bad, 1)
    assert len(vi) == 0


@pytest.mark.real
def test_retrieval_score_is_the_cosine_of_the_real_embeddings(corpus_index):
    r = corpus_index
    query = "Why did the server crash?"
    hits = r.search(query, k=10, rerank=False, mode="dense")  # the dense arm: its score is the cosine
    assert len(hits) == 10
    q = r.embedder.encode_queries([query])[0]
    assert q.dtype == np.float32 and abs(np.linalg.norm(q) - 1) < 1e-5
    for h in hits:
        # a document hit's cosine is its best passage's (the chunk it was found by)
        row_id = h.passages[0].id
        assert h.passages[0].retrieval_score == h.retrieval_score
        vid = r.store.get(row_id).vid
        _, stored = r.store.vectors([vid])
        assert h.retrieval_score == pytest.approx(float(q @ stored[0]), abs=1e-4)
        # and the stored vector is the model's embedding of the stored text (the onnx path embeds documents in
        # batches, whose shared int8 activation scale moves a vector by well under 0.01 of cosine)
        fresh = r.embedder.encode([r.get(row_id).text])[0]
        assert float(fresh @ stored[0]) > (0.99 if r.embedder.backend == "onnx" else 0.99999)
        assert h.rerank_score is None and h.score == h.retrieval_score
    assert [h.retrieval_score for h in hits] == sorted((h.retrieval_score for h in hits), reverse=True)
    assert [h.rank for h in hits] == list(range(1, 11))


@pytest.mark.real
def test_search_agrees_with_numpy_over_the_stored_vectors(corpus_index):
    r = corpus_index
    vids, mat = r.store.vectors()
    np.testing.assert_allclose(np.linalg.norm(mat, axis=1), 1, atol=1e-5)
    rows = r.store.fetch(vids.tolist())
    for query in ["vaccine effectiveness", "how to reset my password", "quarterly revenue"]:
        q = r.embedder.encode([query])[0]
        sims = mat @ q
        hits = r.search(query, k=5, rerank=False, mode="dense")
        kth = np.sort(sims)[-5]
        for h in hits:
            vid = next(v for v in vids if rows[int(v)].id == h.passages[0].id)
            assert sims[list(vids).index(vid)] >= kth - 1e-5
        assert hits[0].retrieval_score == pytest.approx(float(sims.max()), abs=1e-5)


@pytest.mark.real
def test_search_by_vector_accepts_lists_and_float64(corpus_index):
    r = corpus_index
    v = r.embedder.encode(["the enterprise plan price"])[0].astype(np.float64) * 7.5
    a = r.search_by_vector(v.tolist(), k=3)
    b = r.search_by_vector(v, k=3)
    assert [h.id for h in a] == [h.id for h in b]
    with pytest.raises(InputError, match="dimension"):
        r.search_by_vector(v[:10], k=3)
