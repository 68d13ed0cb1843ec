"""VectorIndex and index planning on seeded clustered vectors (real FAISS, no models): every kind keeps ids,
removes or masks, searches with selectors, survives write/read (plain and memory-mapped)."""
import numpy as np
import pytest

from retriever.config import IndexConfig
from retriever.errors import ConfigError, InputError
from retriever.index_plan import IndexPlan, plan_index, retrain_due, training_sample_size
from retriever.vector_index import VectorIndex

DIM = 32
N = 3000


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, DIM))
    x = centers[rng.integers(0, 40, N)] + 0.35 * rng.normal(size=(N, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    vids = (np.arange(N) * 7 + 3).astype(np.int64)  # sparse, never 0..n-1, like DuckDB's vids after deletes
    return vids, x


SETTINGS = {
    "flat": IndexConfig(kind="flat"),
    "hnsw": IndexConfig(kind="hnsw", hnsw_m=16),
    "ivf_flat": IndexConfig(kind="ivf_flat"),
    "ivf_pq": IndexConfig(kind="ivf_pq", pq_nbits=6),
    "ivf_pq_opq": IndexConfig(kind="ivf_pq", pq_nbits=6, opq=True),
}


@pytest.fixture(params=list(SETTINGS))
def index(request, data):
    vids, x = data
    plan = plan_index(SETTINGS[request.param], DIM, N, strict=True)
    return VectorIndex.build(DIM, plan, vids, x)


def test_ids_are_the_vids_and_removed_ones_never_come_back(index, data, tmp_path):
    vids, x = data
    assert np.array_equal(np.sort(index.ids()), vids)
    gone = vids[:50]
    assert index.remove(gone) == 50
    assert index.remove(gone) == 0  # removing twice is a no-op, also for masked HNSW vectors
    assert len(index) == N - 50
    _, found = index.search(x[:50], 10, nprobe=64, ef_search=128)
    assert not set(found.ravel().tolist()) & set(gone.tolist())
    assert np.array_equal(np.sort(index.ids()), vids[50:])
    if index.kind == "hnsw":
        assert index.masked == 50 and len(index.all_ids()) == N
    else:
        assert index.masked == 0 and len(index.all_ids()) == N - 50
    index.write(tmp_path / "v.faiss")
    for mmap in (False, True):
        back = VectorIndex.read(tmp_path / "v.faiss", DIM, index.plan, mmap=mmap)
        assert back.kind == index.kind and back.mmapped == mmap
        if index.kind == "hnsw":  # the mask is not in the file: the Retriever re-derives it from DuckDB
            back.mask(gone)
        assert np.array_equal(np.sort(back.ids()), vids[50:])
        s1, v1 = index.search(x[60:65], 5)
        s2, v2 = back.search(x[60:65], 5)
        assert np.array_equal(v1, v2) and np.allclose(s1, s2)


def test_a_memory_mapped_index_refuses_writes_instead_of_crashing(index, data, tmp_path):
    vids, x = data
    index.write(tmp_path / "v.faiss")
    back = VectorIndex.read(tmp_path / "v.faiss", DIM, index.plan, mmap=True)
    with pytest.raises(InputError, match="memory-mapped"):
        back.add(np.array([10**9]), x[:1])
    with pytest.raises(InputError, match="memory-mapped"):
        back.remove(vids[:1])


def test_the_selector_restricts_results_to_allowed_vids(index, data):
    vids, x = data
    allowed = vids[::3]
    _, found = index.search(x[:20], 10, allowed=allowed, nprobe=10**4, ef_search=512)
    got = found[found >= 0]
    assert len(got) and set(got.tolist()) <= set(allowed.tolist())


def test_every_kind_is_exact_or_close_with_wide_settings(index, data):
    vids, x = data
    q = x[:100]
    truth = vids[np.argsort(-(q @ x.T), axis=1)[:, :10]]
    _, found = index.search(q, 10 if not index.lossy else 40, nprobe=10**4, ef_search=256)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])
    assert recall >= (0.95 if not index.lossy else 0.5), (index.kind, recall)
    if index.kind in ("flat", "ivf_flat"):
        assert np.allclose(index.reconstruct(vids[5]), x[5], atol=1e-6)


def test_untrained_ivf_refuses_vectors(data):
    vids, x = data
    vi = VectorIndex(DIM, IndexPlan("ivf_flat", {"nlist": 8}))
    assert not vi.is_trained
    with pytest.raises(InputError, match="not trained"):
        vi.add(vids[:5], x[:5])


def test_auto_picks_by_size_and_memory_budget_and_says_why():
    assert plan_index(IndexConfig(kind="auto"), 384, 50_000, strict=True).kind == "flat"
    p = plan_index(IndexConfig(kind="auto"), 384, 300_000, strict=True)
    assert p.kind == "hnsw" and "HNSW" in p.reason
    p = plan_index(IndexConfig(kind="auto"), 384, 3_000_000, strict=True)
    assert p.kind == "ivf_flat" and "3,000,000 vectors" in p.reason and p.params["nlist"] == 6928
    p = plan_index(IndexConfig(kind="auto", memory_budget_mb=1024), 384, 2_000_000, strict=True)
    assert p.kind == "ivf_pq" and "exceed memory_budget_mb = 1,024" in p.reason and p.params["m"] == 48
    # flat vectors fit the budget but the HNSW graph would not: IVF-flat
    p = plan_index(IndexConfig(kind="auto", memory_budget_mb=500), 384, 300_000, strict=True)
    assert p.kind == "ivf_flat" and "HNSW" in p.reason


def test_settings_the_corpus_cannot_support_raise_when_strict_and_wait_when_not():
    cfg = IndexConfig(kind="ivf_flat", nlist=100)
    with pytest.raises(ConfigError, match=r"index.nlist = 100 is too large for 1,000 vectors.*between 1 and 25"):
        plan_index(cfg, 384, 1000, strict=True)
    waiting = plan_index(cfg, 384, 1000, strict=False)
    assert waiting.kind == "flat" and waiting.pending == "ivf_flat" and "index.nlist = 100" in waiting.reason
    assert plan_index(cfg, 384, 3900, strict=False).kind == "ivf_flat"
    with pytest.raises(ConfigError, match=r"index.pq_nbits = 8 needs at least 9,984 vectors"):
        plan_index(IndexConfig(kind="ivf_pq"), 384, 5000, strict=True)
    with pytest.raises(ConfigError, match=r"index.pq_m = 10 does not divide the dimension 384"):
        plan_index(IndexConfig(kind="ivf_pq", pq_m=10), 384, 10**6, strict=False)
    with pytest.raises(ConfigError, match=r"index.train_sample = 100 is too small for nlist = 64"):
        cfg = IndexConfig(kind="ivf_flat", nlist=64, train_sample=100)
        training_sample_size(cfg, plan_index(cfg, 384, 10_000, strict=True), 10_000)


def test_training_sample_and_retrain_warning():
    cfg = IndexConfig(kind="ivf_pq")
    plan = plan_index(cfg, 384, 1_000_000, strict=True)
    assert plan.params["nlist"] == 4000
    assert training_sample_size(cfg, plan, 1_000_000) == 256_000  # 64 per list
    assert training_sample_size(cfg, plan, 50_000) == 50_000
    trained = {"vectors": 10_000}
    assert retrain_due(plan, trained, 19_999, 2.0) is None
    assert "grown from 10,000 vectors at training to 20,000" in retrain_due(plan, trained, 20_000, 2.0)
    assert retrain_due(IndexPlan("hnsw"), trained, 10**6, 2.0) is None
