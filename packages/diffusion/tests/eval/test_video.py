from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from keel.diffusion.eval.video import (
    centre_of_mass,
    identity_agreement,
    motion_smoothness,
    temporal_consistency,
)


def _circle(frames: int) -> torch.Tensor:
    t = torch.arange(frames, dtype=torch.float32)
    return torch.stack([16 + 6 * torch.sin(t / 20), 16 + 6 * torch.cos(t / 20)], dim=1)


def test_centre_of_mass_of_a_pixel_and_of_a_blank_frame() -> None:
    frames = torch.full((2, 1, 8, 8), -1.0)
    frames[0, 0, 2, 5] = 1.0
    centres = centre_of_mass(frames)
    torch.testing.assert_close(centres[0], torch.tensor([2.5, 5.5]))
    torch.testing.assert_close(centres[1], torch.tensor([4.0, 4.0]))


def test_smooth_motion_scores_better_than_jittered_motion() -> None:
    smooth = _circle(200)
    jittered = smooth + 0.5 * torch.randn(smooth.shape, generator=torch.Generator().manual_seed(0))
    assert motion_smoothness(smooth)["acceleration"] < 0.1 * motion_smoothness(jittered)["acceleration"]


def test_kinks_at_seams_raise_the_boundary_ratio() -> None:
    path = _circle(120)
    seams = list(range(10, 110, 10))
    kinked = path.clone()
    for seam in seams:
        kinked[seam] += torch.tensor([2.0, 0.0])
    clean, broken = motion_smoothness(path, seams), motion_smoothness(kinked, seams)
    assert clean["boundary_ratio"] == pytest.approx(1.0, abs=0.1)
    assert broken["boundary_ratio"] > 10
    assert broken["boundary_jump"] > clean["boundary_jump"]
    assert math.isnan(motion_smoothness(path)["boundary_ratio"])


def test_identity_agreement_counts_plan_consistency_switches_and_drift() -> None:
    predicted = torch.tensor([3, 3, 3, 3, 3, 3, 5, 5])
    scores = identity_agreement(predicted, 3)
    assert scores["identity_accuracy"] == pytest.approx(0.75)
    assert scores["identity_consistency"] == pytest.approx(0.75)
    assert scores["identity_switches"] == pytest.approx(1 / 7)
    assert scores["identity_drift"] == pytest.approx(1.0)
    perfect = identity_agreement(torch.full((8,), 4), torch.full((8,), 4))
    assert perfect == {
        "identity_accuracy": 1.0,
        "identity_consistency": 1.0,
        "identity_switches": 0.0,
        "identity_drift": 0.0,
    }


class _BrightnessClassifier(nn.Module):
    """Class 1 for frames brighter than the mean pixel -0.9, else class 0."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        bright = (images.mean(dim=(1, 2, 3)) > -0.9).float()
        return torch.stack([1 - bright, bright], dim=1)


def test_temporal_consistency_combines_both_families() -> None:
    frames = torch.full((30, 1, 16, 16), -1.0)
    for t in range(30):
        frames[t, 0, 6:10, 2 + t // 3 : 6 + t // 3] = 1.0
    frames[25:] = -1.0  # the content vanishes near the end
    scores = temporal_consistency(frames, _BrightnessClassifier(), planned=1, seams=[10, 20])
    assert scores["identity_accuracy"] == pytest.approx(25 / 30)
    assert scores["identity_drift"] > 0
    assert {"acceleration", "boundary_ratio", "speed"} <= set(scores)
    assert all(isinstance(value, float) for value in scores.values())
