"""Issue 16's reranker levers: `[rerank] thread_spinning` (onnxruntime's intra-op threads sleep between parallel
steps instead of spin-waiting; the default since issue 16) changes how the threads wait, never a score.
`benchmarks/bench_reranker_export.py` measured the two export levers (fused dynamic int8, static int8) against
today's model; neither is wired in (see benchmarks/README.md). Real model, a handful of pairs: seconds."""
import numpy as np
import pytest

from retriever import RetrieverConfig
from retriever.errors import ConfigError
from retriever.rerank import Reranker

PAIRS = [
    ("what is the capital of france?", "Paris is the capital and largest city of France."),
    ("what is the capital of france?", "Bananas are rich in potassium."),
    ("what is the capital of france?", "Lyon is a large city in France known for its cuisine, its silk and its "
                                       "history; it is not the capital, which is Paris, on the Seine."),
    ("how do vaccines train the immune system?", "A vaccine exposes the immune system to a harmless piece or "
                                                  "weakened form of a pathogen, so that it builds antibodies."),
]


def test_thread_spinning_is_off_by_default_and_checked():
    assert RetrieverConfig().rerank.thread_spinning is False
    assert RetrieverConfig().replace(rerank={"thread_spinning": True}).rerank.thread_spinning is True
    with pytest.raises(ConfigError, match="thread_spinning"):
        RetrieverConfig().replace(rerank={"thread_spinning": "yes"})
    assert Reranker.from_config(RetrieverConfig().replace(rerank={"thread_spinning": True})).thread_spinning


@pytest.mark.real
def test_thread_spinning_changes_no_score(model_cache):
    off = Reranker.from_config(RetrieverConfig())
    on = Reranker.from_config(RetrieverConfig().replace(rerank={"thread_spinning": True}))
    a, b = off.score_pairs(PAIRS), on.score_pairs(PAIRS)
    # two sessions (the process-wide model cache keys on the option), each with the setting asked for
    assert off.model is not on.model
    option = "session.intra_op.allow_spinning"
    assert off.model.session.get_session_options().get_session_config_entry(option) == "0"
    assert on.model.session.get_session_options().get_session_config_entry(option) == "1"
    # the same kernels on the same inputs: identical, not merely close
    assert np.array_equal(a, b)
    assert a[0] > 0.99 and a[1] < 0.001 and a[3] > 0.5
    # a pair's score alone equals its score among the others (one pair per run, whatever the neighbours)
    assert np.array_equal(off.score_pairs(PAIRS[2:3]), a[2:3])
    # the rerank-score cache key is unchanged by the option: a cached score stays valid across it
    assert off.key == on.key


def test_pair_workers_default_and_checked():
    assert RetrieverConfig().rerank.pair_workers == 0
    with pytest.raises(ConfigError, match="pair_workers"):
        RetrieverConfig().replace(rerank={"pair_workers": -1})
    from retriever import runtime

    assert Reranker.from_config(RetrieverConfig()).pair_workers == runtime.onnx_threads()  # 0 = one per core
    assert Reranker.from_config(RetrieverConfig().replace(rerank={"pair_workers": 3})).pair_workers == 3
    # torch keeps its own threads: one run at a time whatever is asked
    torch = RetrieverConfig().replace(rerank={"backend": "torch", "pair_workers": 4})
    assert Reranker.from_config(torch).pair_workers == 1


@pytest.mark.real
def test_pairs_side_by_side_change_no_score(model_cache):
    """Pairs on two workers of one thread each score exactly as one pair at a time on every core, from one caller
    or from several at once, and the runs really went to the pool."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    one = Reranker.from_config(RetrieverConfig().replace(rerank={"pair_workers": 1}))
    two = Reranker.from_config(RetrieverConfig().replace(rerank={"pair_workers": 2}))
    pairs = PAIRS * 3
    a = one.score_pairs(pairs)
    assert one.model is not two.model
    assert two.model.session.get_session_options().intra_op_num_threads == 1
    seen = set()
    predict = two.model.predict_encoded

    def recording(encodings):
        seen.add(threading.current_thread().name)
        return predict(encodings)

    two.model.predict_encoded = recording
    try:
        b = two.score_pairs(pairs)
        with ThreadPoolExecutor(4) as callers:  # concurrent searches share the pool
            many = list(callers.map(lambda _: two.score_pairs(pairs), range(4)))
    finally:
        del two.model.predict_encoded
    assert np.array_equal(a, b) and all(np.array_equal(a, m) for m in many)
    assert len(seen) == 2 and all(name.startswith("rerank-pair") for name in seen)
    assert a[0] > 0.99 and a[1] < 0.001
    assert one.key == two.key  # cached scores stay valid across the setting
    # a budget that cannot fit: None, as on one worker
    two.pair_seconds = 1.0
    assert two.score_pairs(pairs, budget_s=0.5) is None
