"""The CEP analysis compares each arm with gamma = 0 seed by seed."""

from __future__ import annotations

import pytest

from keel.diffusion.cep.report import compare


def test_paired_comparison_counts_seeds_that_improve() -> None:
    baseline = {0: {"fd": 10.0, "recall": 0.5}, 1: {"fd": 12.0, "recall": 0.4}, 2: {"fd": 11.0, "recall": 0.6}}
    arm = {0: {"fd": 9.0, "recall": 0.55}, 1: {"fd": 12.5, "recall": 0.45}, 2: {"fd": 10.0, "recall": 0.5}}
    result = compare(baseline, arm)
    assert result["seeds"] == 3
    assert result["fd_better_seeds"] == 2
    assert result["recall_better_seeds"] == 2
    assert result["fd_diff"] == pytest.approx((-1.0 + 0.5 - 1.0) / 3)
    assert result["recall_diff"] == pytest.approx((0.05 + 0.05 - 0.1) / 3)


def test_only_shared_seeds_are_paired() -> None:
    result = compare({0: {"fd": 1.0, "recall": 0.1}}, {0: {"fd": 0.5, "recall": 0.2}, 7: {"fd": 0.1, "recall": 0.9}})
    assert result["seeds"] == 1
    assert result["fd_better_seeds"] == 1
