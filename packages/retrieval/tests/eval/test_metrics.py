"""MRR@10, nDCG@10 and R@100 through ir_measures, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keel.retrieval.eval import evaluate_run, run_from_search


def test_metrics_by_hand() -> None:
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"d": 1}, "q4": {"e": 0}}
    run = {
        "q1": {"x": 3.0, "a": 2.0, "y": 1.5, "b": 1.0},  # relevant at ranks 2 and 4
        "q2": {f"n{i}": 100.0 - i for i in range(10)} | {"c": 50.0},  # rank 11: no RR@10, no nDCG@10
        # q3 is not answered: it counts as 0; q4 has no relevant passage: it is not averaged
    }
    metrics = evaluate_run(qrels, run)
    ideal = 1 + 1 / math.log2(3)
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(5)) / ideal
    assert metrics["MRR@10"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert metrics["nDCG@10"] == pytest.approx(ndcg_q1 / 3)
    assert metrics["R@100"] == pytest.approx((1 + 1 + 0) / 3)


def test_run_from_search_drops_missing_rows() -> None:
    run = run_from_search(["q1"], ["a", "b", "c"], np.array([[0.9, 0.5, -1.0]]), np.array([[2, 0, -1]]))
    assert run == {"q1": {"c": 0.9, "a": 0.5}}
