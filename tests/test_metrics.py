"""retriever.evaluation.metrics: hand-computed cases, name parsing, and agreement with pytrec_eval.

Conventions under test (see the metrics module docstring):
* the run is deduplicated first, keeping each id's first (best) rank: [x, a, a, b] is scored as
  [x, a, b], so a duplicate neither counts twice nor pushes later documents down;
* ties are resolved by the caller: list order is the ranking, scores are never looked at;
* a grade <= 0 (or an id missing from the qrels) is not relevant and has gain 0;
* precision@k divides by k even when fewer than k documents were returned (trec_eval P_k);
* an empty run scores 0 on every metric.

Discounts used below: 1/log2(2) = 1, 1/log2(3) = 0.6309297535714575, 1/log2(4) = 0.5,
1/log2(5) = 0.43067655807339306.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import pytrec_eval  # test dependency: pytrec-eval-terrier (must be installed, never skipped)

from retriever.evaluation.metrics import METRICS, dedupe, mean_metrics, parse_metric_name, query_metrics

L3 = math.log2(3)  # 1.5849625007211562
L5 = math.log2(5)  # 2.321928094887362


def approx(expected: dict[str, float]):
    return pytest.approx(expected, rel=1e-12, abs=1e-15)


def pick(result: dict[str, float], k: int) -> dict[str, float]:
    return {m: result[f"{m}@{k}"] for m in METRICS}


def row(recall, hit_rate, precision, mrr, ndcg) -> dict[str, float]:
    return {"recall": recall, "hit_rate": hit_rate, "precision": precision, "mrr": mrr, "ndcg": ndcg}


# ---------------------------------------------------------------------------- hand-computed cases

def test_keys_are_every_metric_at_every_k():
    r = query_metrics(["a"], {"a": 1}, [1, 5, 10])
    assert list(METRICS) == ["recall", "hit_rate", "precision", "mrr", "ndcg"]
    assert set(r) == {f"{m}@{k}" for m in METRICS for k in (1, 5, 10)}
    assert all(parse_metric_name(name) for name in r)
    assert all(type(v) is float for v in r.values())


def test_single_relevant_at_rank_1():
    r = query_metrics(["a", "x", "y"], {"a": 1}, [1, 3, 5])
    # top-1 = [a]: 1 of 1 relevant found; P = 1/1; first hit at rank 1; DCG = IDCG = 1/log2(2) = 1
    assert pick(r, 1) == approx(row(1.0, 1.0, 1.0, 1.0, 1.0))
    # top-3: P = 1/3; everything else unchanged
    assert pick(r, 3) == approx(row(1.0, 1.0, 1 / 3, 1.0, 1.0))
    # top-5 (only 3 returned): P = 1/5, divided by k, not by the 3 returned
    assert pick(r, 5) == approx(row(1.0, 1.0, 1 / 5, 1.0, 1.0))


def test_single_relevant_at_rank_3():
    r = query_metrics(["x", "y", "a"], {"a": 1}, [1, 2, 3, 5])
    # a is outside the top 1 and top 2: a miss on every metric
    assert pick(r, 1) == approx(row(0.0, 0.0, 0.0, 0.0, 0.0))
    assert pick(r, 2) == approx(row(0.0, 0.0, 0.0, 0.0, 0.0))
    # top-3: recall 1/1; P = 1/3; MRR = 1/3; DCG = 1/log2(3+1) = 0.5, IDCG@3 = 1/log2(2) = 1 -> 0.5
    assert pick(r, 3) == approx(row(1.0, 1.0, 1 / 3, 1 / 3, 0.5))
    # top-5: P = 1/5, the rest as at 3
    assert pick(r, 5) == approx(row(1.0, 1.0, 1 / 5, 1 / 3, 0.5))


def test_single_relevant_missing():
    r = query_metrics(["x", "y", "z"], {"a": 1}, [1, 3, 10])
    assert r == {name: 0.0 for name in r}


def test_several_relevant():
    # a, b, c relevant (grade 1); c never retrieved; run [a, x, b, y, z]
    r = query_metrics(["a", "x", "b", "y", "z"], {"a": 1, "b": 1, "c": 1}, [1, 3, 5])
    # top-1 = [a]: recall 1/3, P 1/1, MRR 1, DCG = 1, IDCG@1 = 1 -> 1
    assert pick(r, 1) == approx(row(1 / 3, 1.0, 1.0, 1.0, 1.0))
    # top-3 = [a, x, b]: recall 2/3, P 2/3, MRR 1,
    # DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5
    # IDCG@3 = 1 + 1/log2(3) + 1/log2(4) = 1 + 0.6309297535714575 + 0.5 = 2.1309297535714573
    # nDCG = 1.5 / 2.1309297535714573 = 0.7039180890341347
    idcg3 = 1 + 1 / L3 + 0.5
    assert pick(r, 3) == approx(row(2 / 3, 1.0, 2 / 3, 1.0, 1.5 / idcg3))
    assert r["ndcg@3"] == pytest.approx(0.7039180890341347, abs=1e-15)
    # top-5: no new hit; P = 2/5; IDCG@5 = IDCG@3 (only 3 relevant exist)
    assert pick(r, 5) == approx(row(2 / 3, 1.0, 2 / 5, 1.0, 1.5 / idcg3))


def test_graded_ndcg():
    # grades a:3, b:2, c:1; run [c, x, a, b]
    r = query_metrics(["c", "x", "a", "b"], {"a": 3, "b": 2, "c": 1}, [1, 2, 4])
    # k=4: DCG  = 1/log2(2) + 0/log2(3) + 3/log2(4) + 2/log2(5) = 1 + 0 + 1.5 + 0.8613531161467861 = 3.3613531161467862
    #      IDCG = 3/log2(2) + 2/log2(3) + 1/log2(4)             = 3 + 1.261859507142915 + 0.5     = 4.7618595071429155
    #      nDCG = 3.3613531161467862 / 4.7618595071429155 = 0.7058908628246313
    dcg4 = 1 + 3 / 2 + 2 / L5
    idcg4 = 3 + 2 / L3 + 1 / 2
    assert r["ndcg@4"] == pytest.approx(dcg4 / idcg4, rel=1e-12)
    assert r["ndcg@4"] == pytest.approx(0.7058908628246313, abs=1e-15)
    # c (grade 1) is relevant, so the first hit is rank 1 at every k; 3 of 3 relevant in the top 4
    assert pick(r, 4) == approx(row(1.0, 1.0, 3 / 4, 1.0, dcg4 / idcg4))
    # k=2: DCG = 1 (c at rank 1); IDCG@2 = 3 + 2/log2(3) = 4.261859507142915 -> 0.23463936301137822
    assert r["ndcg@2"] == pytest.approx(1 / (3 + 2 / L3), rel=1e-12)
    assert pick(r, 2) == approx(row(1 / 3, 1.0, 1 / 2, 1.0, 1 / (3 + 2 / L3)))
    # k=1: DCG = 1, IDCG@1 = 3 (the best grade) -> 1/3
    assert pick(r, 1) == approx(row(1 / 3, 1.0, 1.0, 1.0, 1 / 3))


def test_dedupe_keeps_first_occurrence():
    assert dedupe(["x", "a", "a", "b", "x", "c", "b"]) == ["x", "a", "b", "c"]
    assert dedupe([]) == []
    assert dedupe(("b", "a")) == ["b", "a"]
    with pytest.raises(TypeError):
        dedupe("abc")  # a bare string is a mistake, not a run of one-letter ids


def test_duplicates_in_run_count_once_and_do_not_shift_ranks():
    """[x, a, a, b] is scored as [x, a, b]: the duplicate `a` is dropped, so b is at rank 3, not 4."""
    # Only a relevant. Without dedupe the top-3 [x, a, a] would have 2 hits: P@3 2/3, recall 2/1.
    r = query_metrics(["x", "a", "a", "b"], {"a": 1}, [3])
    # deduped top-3 = [x, a, b]: 1 hit -> recall 1/1, P 1/3, MRR 1/2, nDCG = (1/log2(3)) / 1
    assert pick(r, 3) == approx(row(1.0, 1.0, 1 / 3, 1 / 2, 1 / L3))
    # a and b relevant. Without dedupe b (rank 4) would fall outside the top 3: recall@3 would be 1/2.
    r = query_metrics(["x", "a", "a", "b"], {"a": 1, "b": 1}, [2, 3])
    # top-3 = [x, a, b]: recall 2/2, P 2/3, MRR 1/2,
    # DCG = 1/log2(3) + 1/log2(4) = 0.6309297535714575 + 0.5 = 1.1309297535714575
    # IDCG@3 = 1 + 1/log2(3) = 1.6309297535714575 -> nDCG = 0.6934264036172708
    assert pick(r, 3) == approx(row(1.0, 1.0, 2 / 3, 1 / 2, (1 / L3 + 0.5) / (1 + 1 / L3)))
    assert r["ndcg@3"] == pytest.approx(0.6934264036172708, abs=1e-15)
    # top-2 = [x, a]: recall 1/2, P 1/2 (not 2/2 from [a, a])
    assert pick(r, 2) == approx(row(1 / 2, 1.0, 1 / 2, 1 / 2, (1 / L3) / (1 + 1 / L3)))
    # the deduplicated run scores exactly like the run with duplicates
    assert query_metrics(["x", "a", "b"], {"a": 1, "b": 1}, [2, 3]) == r


def test_k_larger_than_the_result_list():
    # 2 results, 2 relevant (b never retrieved), k = 10
    r = query_metrics(["a", "x"], {"a": 1, "b": 1}, [10])
    # recall 1/2; P = 1/10 (divided by k, not by 2 returned); MRR 1;
    # DCG = 1; IDCG@10 = 1 + 1/log2(3) = 1.6309297535714575 -> nDCG = 0.6131471927654584
    assert pick(r, 10) == approx(row(1 / 2, 1.0, 1 / 10, 1.0, 1 / (1 + 1 / L3)))


def test_empty_run_is_a_miss_not_a_crash():
    r = query_metrics([], {"a": 1, "b": 2}, [1, 10])
    assert set(r) == {f"{m}@{k}" for m in METRICS for k in (1, 10)}
    assert r == {name: 0.0 for name in r}
    # nor when the query has no relevant document at all (no 0/0)
    r = query_metrics([], {}, [5])
    assert r == {name: 0.0 for name in r}


def test_ties_are_decided_by_the_given_order():
    """query_metrics takes no scores: when a and b have the same score, whichever the caller lists
    first is rank 1. Resolve ties before calling (e.g. by document id) for reproducible numbers."""
    rel = {"b": 1}
    ab = query_metrics(["a", "b"], rel, [1, 2])
    ba = query_metrics(["b", "a"], rel, [1, 2])
    assert pick(ab, 1) == approx(row(0.0, 0.0, 0.0, 0.0, 0.0))
    assert pick(ba, 1) == approx(row(1.0, 1.0, 1.0, 1.0, 1.0))
    # at k=2 the set is the same, but rank-aware metrics still differ: MRR 1/2 vs 1, nDCG 1/log2(3) vs 1
    assert pick(ab, 2) == approx(row(1.0, 1.0, 1 / 2, 1 / 2, 1 / L3))
    assert pick(ba, 2) == approx(row(1.0, 1.0, 1 / 2, 1.0, 1.0))


def test_zero_and_negative_grades_are_not_relevant():
    # a: 0 (judged non-relevant), c: -1 (judged harmful), b: 1; run [a, c, b]
    r = query_metrics(["a", "c", "b"], {"a": 0, "c": -1, "b": 1}, [1, 3])
    # only b counts: |relevant| = 1, first hit at rank 3
    assert pick(r, 1) == approx(row(0.0, 0.0, 0.0, 0.0, 0.0))
    # top-3: recall 1/1, P 1/3, MRR 1/3; DCG = 1/log2(4) = 0.5 (c adds no negative gain), IDCG@3 = 1
    assert pick(r, 3) == approx(row(1.0, 1.0, 1 / 3, 1 / 3, 0.5))
    # a query whose judged documents are all non-relevant scores 0 everywhere (recall is 0, not 0/0)
    r = query_metrics(["a", "c"], {"a": 0, "c": -1}, [1, 2])
    assert r == {name: 0.0 for name in r}


def test_float_grades():
    # grades need not be integers: a: 0.5, b: 2.5; run [a, b]
    r = query_metrics(["a", "b"], {"a": 0.5, "b": 2.5}, [2])
    # DCG = 0.5/1 + 2.5/log2(3); IDCG = 2.5/1 + 0.5/log2(3)
    assert r["ndcg@2"] == pytest.approx((0.5 + 2.5 / L3) / (2.5 + 0.5 / L3), rel=1e-12)


def test_bad_k_is_rejected():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="positive integer"):
            query_metrics(["a"], {"a": 1}, [bad])
    for bad in (1.5, 10.0, "10", True):
        with pytest.raises(TypeError, match="positive integer"):
            query_metrics(["a"], {"a": 1}, [bad])
    # numpy integers are fine
    assert query_metrics(["a"], {"a": 1}, [np.int64(1)]) == query_metrics(["a"], {"a": 1}, [1])
    with pytest.raises(TypeError):
        query_metrics("ab", {"a": 1}, [1])


def test_mean_metrics():
    per_query = {
        "q1": query_metrics(["a", "x"], {"a": 1}, [1, 2]),  # all 1 except P@2 = 1/2
        "q2": query_metrics(["x", "a"], {"a": 1}, [1, 2]),  # @1 all 0; @2: recall 1, hit 1, P 1/2, MRR 1/2, nDCG 1/log2(3)
        "q3": query_metrics([], {"a": 1}, [1, 2]),  # all 0
    }
    m = mean_metrics(per_query)
    assert set(m) == set(per_query["q1"])
    # mean over the 3 queries
    assert m == approx({
        "recall@1": 1 / 3, "hit_rate@1": 1 / 3, "precision@1": 1 / 3, "mrr@1": 1 / 3, "ndcg@1": 1 / 3,
        "recall@2": 2 / 3, "hit_rate@2": 2 / 3, "precision@2": (1 / 2 + 1 / 2) / 3,
        "mrr@2": (1 + 1 / 2) / 3, "ndcg@2": (1 + 1 / L3) / 3,
    })
    with pytest.raises(ValueError, match="at least one query"):
        mean_metrics({})
    with pytest.raises(ValueError, match="'q2'"):
        mean_metrics({"q1": {"recall@1": 1.0}, "q2": {"recall@5": 1.0}})


# ------------------------------------------------------------------------------ metric names

@pytest.mark.parametrize("name, expected", [
    ("recall@1", ("recall", 1)),
    ("hit_rate@5", ("hit_rate", 5)),
    ("precision@20", ("precision", 20)),
    ("mrr@10", ("mrr", 10)),
    ("ndcg@10", ("ndcg", 10)),
    ("ndcg@1000", ("ndcg", 1000)),
])
def test_parse_metric_name_accepts(name, expected):
    assert parse_metric_name(name) == expected


@pytest.mark.parametrize("name", [
    "recall@0", "recall@", "foo@5", "NDCG@10", "Recall@10", "recal@10", "ndcg", "@10", "ndcg@-1",
    "ndcg@1.5", "ndcg@ 10", " ndcg@10", "ndcg@10 ", "ndcg@10\n", "ndcg@01", "ndcg@+5", "ndcg@@10",
    "ndcg@\u0661\u0660",  # Arabic-Indic digits "10": int() would accept them, the name does not
    "hitrate@5", "hit-rate@5", "map@10", "",
])
def test_parse_metric_name_rejects(name):
    with pytest.raises(ValueError) as exc:
        parse_metric_name(name)
    msg = str(exc.value)
    assert repr(name) in msg
    assert "use one of recall@k, hit_rate@k, precision@k, mrr@k, ndcg@k with k a positive integer" in msg


def test_parse_metric_name_message_exactly():
    with pytest.raises(ValueError) as exc:
        parse_metric_name("recal@10")
    assert str(exc.value) == (
        "unknown metric 'recal@10'; use one of recall@k, hit_rate@k, precision@k, mrr@k, ndcg@k "
        "with k a positive integer"
    )
    with pytest.raises(TypeError):
        parse_metric_name(10)


# --------------------------------------------------------------- against pytrec_eval (trec_eval)

KS = (1, 5, 10, 20)


def seeded_run(n_queries: int = 200, n_corpus: int = 2000, max_results: int = 30):
    """A realistic seeded run: {qid: ranked ids} and graded qrels {qid: {docid: grade}} (grades -1..3).

    Retrieved lists have 0..30 documents (many shorter than k=20, a few empty); each query has 0..10
    judged documents, some drawn from its run (so hits happen at all ranks) and some from the corpus
    (so relevant documents are often missed); some queries have no relevant document at all."""
    rng = np.random.default_rng(0)
    docids = [f"doc{i:05d}" for i in range(n_corpus)]
    runs: dict[str, list[str]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for q in range(n_queries):
        qid = f"q{q:03d}"
        n_ret = int(rng.integers(0, max_results + 1))
        ranked = [docids[i] for i in rng.choice(n_corpus, size=n_ret, replace=False)]
        n_from_run = int(rng.integers(0, min(n_ret, 5) + 1))
        judged = set(rng.choice(ranked, size=n_from_run, replace=False).tolist()) if n_from_run else set()
        judged |= {docids[i] for i in rng.choice(n_corpus, size=int(rng.integers(0, 6)), replace=False)}
        grades = rng.choice([-1, 0, 1, 1, 2, 3], size=len(judged))
        runs[qid] = ranked
        qrels[qid] = {d: int(g) for d, g in zip(sorted(judged), grades)}
    return runs, qrels


def as_trec_run(runs: dict[str, list[str]], cut: int | None = None) -> dict[str, dict[str, float]]:
    # strictly decreasing scores by rank: trec_eval sorts by score (ties by docno), so no tie ambiguity
    return {qid: {d: float(1000 - rank) for rank, d in enumerate(ranked[:cut])} for qid, ranked in runs.items()}


def test_seeded_run_covers_the_edge_cases():
    runs, qrels = seeded_run()
    assert len(runs) == 200
    rel = {q: {d for d, g in qrels[q].items() if g > 0} for q in qrels}
    assert sum(len(r) < 20 for r in runs.values()) > 50  # fewer than k results
    assert sum(len(r) == 0 for r in runs.values()) >= 3  # empty runs
    assert sum(not rel[q] for q in runs) >= 10  # no relevant document at all
    assert sum(bool(rel[q]) and not rel[q] & set(runs[q]) for q in runs) >= 20  # relevant exist, none retrieved
    assert sum(bool(rel[q] & set(runs[q][:1])) for q in runs) >= 10  # hits at rank 1
    assert sum(bool(rel[q] & set(runs[q][10:20])) for q in runs) >= 10  # hits deep in the list
    assert {g for q in qrels for g in qrels[q].values()} == {-1, 0, 1, 2, 3}
    assert sum(len(set(qrels[q].values()) & {2, 3}) > 0 for q in runs) >= 50  # graded, not binary


def test_matches_pytrec_eval_per_query_and_mean():
    runs, qrels = seeded_run()
    cuts = ",".join(map(str, KS))
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"recall.{cuts}", f"P.{cuts}", f"ndcg_cut.{cuts}", f"success.{cuts}"})
    trec = evaluator.evaluate(as_trec_run(runs))
    # pytrec's recip_rank has no cutoff: evaluate it on the run cut to the top k
    rr = {k: pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(as_trec_run(runs, cut=k)) for k in KS}
    # pytrec_eval (like trec_eval without -c) leaves out queries that have no judgements at all; such a
    # query has no relevant document, so it scores 0 on everything here, and counts as 0 in the mean
    unjudged = {qid for qid in runs if not qrels[qid]}
    assert len(unjudged) >= 5
    assert set(runs) - set(trec) == unjudged
    zeros = {f"{m}_{k}": 0.0 for m in ("recall", "success", "P", "ndcg_cut") for k in KS}
    trec.update({qid: zeros for qid in unjudged})
    for k in KS:
        rr[k].update({qid: {"recip_rank": 0.0} for qid in unjudged})

    ours = {qid: query_metrics(runs[qid], qrels[qid], KS) for qid in runs}
    expected = {
        qid: {
            name: value
            for k in KS
            for name, value in {
                f"recall@{k}": trec[qid][f"recall_{k}"],
                f"hit_rate@{k}": trec[qid][f"success_{k}"],
                f"precision@{k}": trec[qid][f"P_{k}"],
                f"mrr@{k}": rr[k][qid]["recip_rank"],
                f"ndcg@{k}": trec[qid][f"ndcg_cut_{k}"],
            }.items()
        }
        for qid in runs
    }
    for qid in runs:
        assert set(ours[qid]) == set(expected[qid])
        for name in expected[qid]:
            assert ours[qid][name] == pytest.approx(expected[qid][name], abs=1e-12), (qid, name)

    # the comparison is not vacuous: the metrics vary across queries and are non-trivial on average
    ours_mean = mean_metrics(ours)
    for name, value in ours_mean.items():
        assert value == pytest.approx(float(np.mean([expected[q][name] for q in runs])), abs=1e-12), name
    for k in KS:
        assert 0.05 < ours_mean[f"ndcg@{k}"] < 0.95
    for k in (5, 10, 20):  # (at k=1 nDCG only takes a few values: grade / best grade)
        assert len({round(ours[q][f"ndcg@{k}"], 9) for q in runs}) > 10


def test_matches_pytrec_eval_hit_rate_and_recall_semantics():
    # hit_rate@k is trec_eval's success_k; independently, it is 1 exactly when recall@k > 0
    runs, qrels = seeded_run()
    for qid in runs:
        r = query_metrics(runs[qid], qrels[qid], KS)
        for k in KS:
            assert r[f"hit_rate@{k}"] == (1.0 if r[f"recall@{k}"] > 0 else 0.0)
