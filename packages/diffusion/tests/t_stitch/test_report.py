"""The T-Stitch analysis' arithmetic: seed summaries and the largest share without quality loss."""

from __future__ import annotations

import pytest
import torch

from keel.diffusion.t_stitch.report import forward_flops, largest_safe_fraction, summarise
from keel.diffusion.testing import tiny_diffusion_module


def seed_rows(fds: dict[str, float]) -> dict:
    stitch = {k: {"fd": v, "seconds": 1.0 - float(k) / 2} for k, v in fds.items()}
    return {"stitch": stitch, "large_fewer_steps": {}, "small_cost_ratio": 0.25}


def test_summary_is_mean_and_sd_over_seeds() -> None:
    summary = summarise({0: seed_rows({"0": 10.0, "1": 20.0}), 1: seed_rows({"0": 12.0, "1": 30.0})}, [0.0, 1.0])
    assert summary["stitch"]["0"]["fd"] == pytest.approx((11.0, 2**0.5))
    assert summary["stitch"]["1"]["fd"][0] == 25.0
    assert summary["small_cost_ratio"][0] == 0.25


def test_largest_safe_fraction_stops_at_the_first_loss() -> None:
    rows = {0: seed_rows({"0": 10.0, "0.2": 10.3, "0.4": 10.4, "0.6": 12.0, "0.8": 10.1, "1": 30.0})}
    summary = summarise(rows, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # within 5% of FD(0) = 10 up to 0.4; 0.6 breaks the prefix even though 0.8 would pass again
    assert largest_safe_fraction(summary, tolerance=0.05) == 0.4
    assert largest_safe_fraction(summary, tolerance=0.25) == 0.8


def test_seed_spread_widens_the_band() -> None:
    rows = {0: seed_rows({"0": 8.0, "0.2": 10.5}), 1: seed_rows({"0": 12.0, "0.2": 11.5})}
    summary = summarise(rows, [0.0, 0.2])  # FD(0) = 10 ± 2.83: 11 is inside the seed spread
    assert largest_safe_fraction(summary, tolerance=0.0) == 0.2


def test_flops_grow_with_the_network() -> None:
    small, large = tiny_diffusion_module(width=4), tiny_diffusion_module(width=16)
    assert 0 < forward_flops(small) < forward_flops(large)
    assert forward_flops(small, batch=4) * 2 == forward_flops(small, batch=8)
    assert torch.is_grad_enabled()
