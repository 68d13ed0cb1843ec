"""The one exact reference (`knn.exact_topk`) against a full stable numpy sort, ties included, and the ANN-recall
measure (`knn.knn_intersection`) on hand-computed cases."""
import numpy as np
import pytest

from retriever.knn import exact_topk, knn_intersection


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n", [1, 7, 299, 300, 1000])
def test_exact_topk_is_a_stable_full_sort(n):
    rng = np.random.default_rng(n)
    vecs = _unit(rng, 300, 12)
    vecs[[40, 80, 120]] = vecs[200]  # exact ties: the earlier row comes first
    queries = np.concatenate([vecs[[200]], _unit(rng, 600, 12)])  # more than one block of 256
    vids = np.arange(300, dtype=np.int64) * 7 + 3
    scores, found = exact_topk(queries, vecs, vids, n)
    sims = queries @ vecs.T
    ref = np.argsort(-sims, axis=1, kind="stable")[:, :n]
    assert found.shape == (601, min(n, 300))
    assert np.array_equal(found, vids[ref])
    np.testing.assert_array_equal(scores, np.take_along_axis(sims, ref, axis=1))
    if n >= 4:
        assert found[0, :4].tolist() == [vids[40], vids[80], vids[120], vids[200]]


def test_exact_topk_of_nothing():
    s, v = exact_topk(np.ones((2, 3), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.int64), 5)
    assert s.shape == v.shape == (2, 0)


def test_knn_intersection_by_hand():
    truth = np.array([[1, 2, 3, 4], [5, 6, -1, -1], [-1, -1, -1, -1]])
    found = np.array([[4, 9, 1, 8], [6, -1, -1, -1], [7, 7, 7, 7]])
    # 2/4, 1/2, and an empty truth counts 1
    assert knn_intersection(found, truth) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert knn_intersection(found, truth, k=1) == pytest.approx((0.0 + 0.0 + 1.0) / 3)
    assert knn_intersection(truth, truth) == 1.0
