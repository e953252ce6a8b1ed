"""CEP: the perturbation's distribution and scale, and that it is off outside training."""

from __future__ import annotations

import math

import pytest
import torch

from keel.core.errors import ConfigError
from keel.diffusion.cep import ConditionEmbeddingPerturbation


@pytest.mark.parametrize("dim", [16, 256])
def test_gaussian_noise_has_std_gamma_over_sqrt_d(dim: int) -> None:
    torch.manual_seed(0)
    cep = ConditionEmbeddingPerturbation(gamma=2.0, kind="gaussian").train()
    embedding = torch.randn(4000, dim)
    noise = cep(embedding) - embedding
    assert noise.std().item() == pytest.approx(2.0 / math.sqrt(dim), rel=0.02)
    assert noise.mean().abs().item() < 0.01
    # the norm of the perturbation is about gamma whatever the width
    assert noise.norm(dim=1).mean().item() == pytest.approx(2.0, rel=0.05)


def test_uniform_noise_is_bounded_by_gamma_over_sqrt_d() -> None:
    torch.manual_seed(0)
    cep = ConditionEmbeddingPerturbation(gamma=1.0, kind="uniform").train()
    embedding = torch.zeros(2000, 64)
    noise = cep(embedding)
    bound = 1.0 / 8.0
    assert noise.abs().max().item() <= bound
    assert noise.abs().max().item() > 0.99 * bound
    assert noise.var().item() == pytest.approx(bound**2 / 3, rel=0.03)  # variance of U(-b, b)


def test_off_in_eval_mode_and_at_gamma_zero() -> None:
    embedding = torch.randn(8, 32)
    assert torch.equal(ConditionEmbeddingPerturbation(3.0).eval()(embedding), embedding)
    assert torch.equal(ConditionEmbeddingPerturbation(0.0).train()(embedding), embedding)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="kind"):
        ConditionEmbeddingPerturbation(1.0, kind="laplace")
    with pytest.raises(ConfigError, match="gamma"):
        ConditionEmbeddingPerturbation(-1.0)
