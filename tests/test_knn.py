"""The one exact reference (`knn.exact_topk`) against a full stable numpy sort, ties included, and the ANN-recall
measure (`knn.knn_intersection`) on hand-computed cases."""
import numpy as np
import pytest

from retriever.knn import exact_topk, knn_intersection


@pytest.mark.parametrize("n", [1, 7, 299, 300, 1000])
def test_exact_topk_is_a_stable_full_sort(n):
    # small integer entries: every dot product is exact in float32 (in blocks or in full, in any order of
    # summation), so the reference is exact, and scores tie often: ties must go to the earlier row
    rng = np.random.default_rng(n)
    vecs = rng.integers(-3, 4, size=(300, 12)).astype(np.float32)
    vecs[[40, 80, 120]] = vecs[200]
    queries = np.concatenate([vecs[[200]], rng.integers(-3, 4, size=(600, 12)).astype(np.float32)])  # > one block
    vids = np.arange(300, dtype=np.int64) * 7 + 3
    scores, found = exact_topk(queries, vecs, vids, n)
    sims = queries.astype(np.float64) @ vecs.T.astype(np.float64)
    ref = np.argsort(-sims, axis=1, kind="stable")[:, :n]
    assert found.shape == scores.shape == (601, min(n, 300))
    assert np.array_equal(found, vids[ref])
    assert np.array_equal(scores, np.take_along_axis(sims, ref, axis=1).astype(np.float32))
    if n >= 4:  # the query equal to row 200 scores rows 40, 80, 120 and 200 the same: in row order
        assert found[0, :4].tolist() == [vids[40], vids[80], vids[120], vids[200]]
    assert (np.diff(scores, axis=1) <= 0).all()


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
