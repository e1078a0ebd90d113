"""Tests for ragr.eval.metrics against hand computations and pytrec_eval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ragr.eval.metrics import aggregate, query_metrics, rank_order, rerank_metrics

KS = (1, 3, 5, 10, 100)


# --------------------------------------------------------------------------- #
# Hand-worked examples
# --------------------------------------------------------------------------- #


def test_hand_worked_binary_example() -> None:
    # Ranked labels: 0, 1, 0, 1 -> relevant at ranks 2 and 4.
    m = query_metrics([0.9, 0.8, 0.7, 0.1], [0, 1, 0, 1], ks=KS)
    assert m is not None
    assert m["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert m["mrr"] == pytest.approx(0.5)
    assert m["mrr@1"] == 0.0
    assert m["mrr@3"] == pytest.approx(0.5)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["ndcg@1"] == 0.0
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3)) / idcg)
    assert m["recall@1"] == 0.0
    assert m["p@1"] == 0.0
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["p@3"] == pytest.approx(1 / 3)
    # Fewer candidates than k: p@k still divides by k (trec_eval convention).
    assert m["recall@10"] == pytest.approx(1.0)
    assert m["p@10"] == pytest.approx(2 / 10)
    assert m["p@100"] == pytest.approx(2 / 100)
    expected_keys = {"map", "mrr"} | {
        f"{name}@{k}" for name in ("mrr", "ndcg", "recall", "p") for k in KS
    }
    assert set(m) == expected_keys


def test_graded_ndcg_uses_linear_gain() -> None:
    # Ranked labels: 1, 3, 0, 2.
    m = query_metrics([4.0, 3.0, 2.0, 1.0], [1, 3, 0, 2], ks=(2, 10))
    assert m is not None
    dcg10 = 1 / math.log2(2) + 3 / math.log2(3) + 0 + 2 / math.log2(5)
    idcg10 = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@10"] == pytest.approx(dcg10 / idcg10)
    assert m["ndcg@2"] == pytest.approx((1 + 3 / math.log2(3)) / (3 + 2 / math.log2(3)))
    # Binary metrics treat any label > 0 as relevant: ranks 1, 2, 4.
    assert m["map"] == pytest.approx((1 / 1 + 2 / 2 + 3 / 4) / 3)
    assert m["mrr"] == 1.0
    assert m["recall@2"] == pytest.approx(2 / 3)
    assert m["p@2"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- #
# Ties
# --------------------------------------------------------------------------- #


def test_all_tied_scores_are_pessimistic() -> None:
    m = query_metrics([0.5, 0.5, 0.5], [1, 0, 0], ks=(1, 3))
    assert m is not None
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["map"] == pytest.approx(1 / 3)
    assert m["mrr@1"] == 0.0
    assert m["mrr@3"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(4)) / 1.0)


def test_rank_order_tie_policy() -> None:
    # Among the 0.5 ties: label 0 (idx 1), then 1 (idx 3), then 2 (idx 0).
    assert rank_order([0.5, 0.5, 0.9, 0.5], [2, 0, 0, 1]).tolist() == [2, 1, 3, 0]
    # Ties on both score and label keep input order.
    assert rank_order([0.0, 0.0, 0.0, 0.0], [0, 1, 0, 1]).tolist() == [0, 2, 1, 3]
    # Plain descending sort without ties.
    assert rank_order([0.1, 0.3, 0.2], [0, 0, 0]).tolist() == [1, 2, 0]


def test_fp32_scores_are_accepted() -> None:
    s32 = np.array([0.1, 0.7, 0.3, 0.7], dtype=np.float32)
    labels = [1, 1, 0, 0]
    assert rank_order(s32, labels).tolist() == [3, 1, 2, 0]
    m = query_metrics(s32, labels, ks=(2,))
    assert m is not None
    # Ranked labels: 0, 1, 0, 1.
    assert m["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)


# --------------------------------------------------------------------------- #
# Queries without positives
# --------------------------------------------------------------------------- #


def test_query_without_positives_is_skipped() -> None:
    assert query_metrics([0.3, 0.2], [0, 0]) is None
    assert query_metrics([], []) is None

    q1 = query_metrics([0.9, 0.1], [1, 0], ks=(1,))  # perfect
    q2 = query_metrics([0.9, 0.1], [0, 1], ks=(1,))  # relevant at rank 2
    agg = aggregate([q1, None, q2, None])
    assert agg["num_queries"] == 2
    assert agg["num_skipped"] == 2
    assert agg["mrr"] == pytest.approx((1.0 + 0.5) / 2)
    assert agg["map"] == pytest.approx((1.0 + 0.5) / 2)
    assert agg["p@1"] == pytest.approx(0.5)
    assert agg["recall@1"] == pytest.approx(0.5)

    agg2 = rerank_metrics(
        [[0.9, 0.1], [0.5, 0.4], [0.9, 0.1], [0.2]], [[1, 0], [0, 0], [0, 1], [0]], ks=(1,)
    )
    assert agg2 == pytest.approx(agg)

    assert aggregate([None, None]) == {"num_queries": 0, "num_skipped": 2}


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        query_metrics([0.1, 0.2], [1])
    with pytest.raises(ValueError):
        query_metrics([float("nan"), 0.2], [1, 0])
    with pytest.raises(ValueError):
        query_metrics([0.1, 0.2], [1, 0], ks=(0,))
    with pytest.raises(ValueError):
        rerank_metrics([[0.1]], [[1], [0]])


# --------------------------------------------------------------------------- #
# Random runs against pytrec_eval
# --------------------------------------------------------------------------- #


def _random_queries(
    rng: np.random.Generator, n_queries: int, n_cands: int, max_label: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    scores, labels = [], []
    for _ in range(n_queries):
        s = rng.random(n_cands)
        assert len(np.unique(s)) == n_cands  # no ties
        y = rng.integers(0, max_label + 1, size=n_cands)
        if not (y > 0).any():
            y[rng.integers(n_cands)] = rng.integers(1, max_label + 1)
        scores.append(s)
        labels.append(y)
    return scores, labels


def _hand_mrr_at(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    ranked = [lab for _, lab in sorted(zip(scores.tolist(), labels.tolist()), reverse=True)]
    for r, lab in enumerate(ranked[:k], start=1):
        if lab > 0:
            return 1.0 / r
    return 0.0


@pytest.mark.parametrize(
    ("max_label", "n_cands"),
    [(1, 20), (3, 20), (3, 7)],
    ids=["binary", "graded", "graded-short-list"],
)
def test_random_runs_match_pytrec_eval(max_label: int, n_cands: int) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(1234 + max_label + n_cands)
    scores, labels = _random_queries(rng, 50, n_cands, max_label)

    qrels, run, run_top10 = {}, {}, {}
    for qi, (s, y) in enumerate(zip(scores, labels)):
        qid = f"q{qi}"
        docs = [f"d{j}" for j in range(n_cands)]
        qrels[qid] = {d: int(lab) for d, lab in zip(docs, y)}
        run[qid] = {d: float(sc) for d, sc in zip(docs, s)}
        top = np.argsort(-s)[:10]
        run_top10[qid] = {docs[j]: float(s[j]) for j in top}

    full = pytrec_eval.RelevanceEvaluator(
        qrels, {"map", "recip_rank", "ndcg_cut_10", "recall_10", "P_10"}
    ).evaluate(run)
    # trec_eval has no MRR cutoff: recip_rank on the run truncated to the top 10
    # is MRR@10.
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run_top10)

    mapping = {
        "map": "map",
        "mrr": "recip_rank",
        "ndcg@10": "ndcg_cut_10",
        "recall@10": "recall_10",
        "p@10": "P_10",
    }
    per_query = []
    for qi, (s, y) in enumerate(zip(scores, labels)):
        qid = f"q{qi}"
        m = query_metrics(s, y, ks=KS)
        assert m is not None
        per_query.append(m)
        for ours, theirs in mapping.items():
            assert m[ours] == pytest.approx(full[qid][theirs], abs=1e-9, rel=0), (qid, ours)
        assert m["mrr@10"] == pytest.approx(cut[qid]["recip_rank"], abs=1e-9, rel=0), qid
        assert m["mrr@10"] == pytest.approx(_hand_mrr_at(s, y, 10), abs=1e-9, rel=0), qid

    agg = rerank_metrics(scores, labels, ks=KS)
    assert agg["num_queries"] == 50
    assert agg["num_skipped"] == 0
    for ours, theirs in mapping.items():
        expected = float(np.mean([full[f"q{qi}"][theirs] for qi in range(50)]))
        assert agg[ours] == pytest.approx(expected, abs=1e-9, rel=0), ours
    expected_mrr10 = float(np.mean([cut[f"q{qi}"]["recip_rank"] for qi in range(50)]))
    assert agg["mrr@10"] == pytest.approx(expected_mrr10, abs=1e-9, rel=0)
    assert aggregate(per_query) == agg
