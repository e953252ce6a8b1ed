"""The shared diffusion arithmetic: targets, samplers built from the training schedule, the loop."""

from __future__ import annotations

import pytest
import torch

from keel.core.errors import ConfigError
from keel.diffusion.sampling import PREDICTION_TYPES, denoise, make_scheduler, training_scheduler, training_target


def test_v_target_matches_salimans_and_ho() -> None:
    scheduler = training_scheduler(prediction_type="v_prediction")
    x0, noise = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    t = torch.tensor([0, 10, 500, 999])
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    torch.testing.assert_close(training_target(scheduler, x0, noise, t), expected)
    assert training_target(training_scheduler(prediction_type="epsilon"), x0, noise, t) is noise
    assert training_target(training_scheduler(prediction_type="sample"), x0, noise, t) is x0


def test_unknown_prediction_type_and_sampler_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="prediction_type"):
        training_scheduler(prediction_type="score")
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_scheduler("heun2", training_scheduler())


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm", "euler"])
def test_sampler_inherits_schedule_and_prediction_type(name: str) -> None:
    train = training_scheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")
    sampler = make_scheduler(name, train)
    assert sampler.config.prediction_type == "v_prediction"
    assert sampler.config.beta_schedule == "scaled_linear"
    torch.testing.assert_close(sampler.alphas_cumprod, train.alphas_cumprod)


def oracle(target: torch.Tensor, scheduler, kind: str):  # type: ignore[no-untyped-def]
    """The exact denoiser of a dataset holding one point: every prediction type knows x0 = target."""
    abar_all = scheduler.alphas_cumprod

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = abar_all[t.long()].view(-1, 1, 1, 1)
        eps = (x - abar.sqrt() * target) / (1 - abar).sqrt()
        if kind == "epsilon":
            return eps
        if kind == "v_prediction":
            return abar.sqrt() * eps - (1 - abar).sqrt() * target
        return target.expand_as(x)

    return fn


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
@pytest.mark.parametrize("name", ["ddim", "dpm"])
def test_denoise_recovers_the_single_data_point_with_an_exact_model(kind: str, name: str) -> None:
    # With the exact denoiser of a one-point dataset, a deterministic sampler must land on that point
    # from any noise; a wrong target, a wrong timestep scale or a mismatched schedule breaks this.
    train = training_scheduler(prediction_type=kind)
    target = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    scheduler = make_scheduler(name, train)
    result = denoise(oracle(target, scheduler, kind), scheduler, noise, num_inference_steps=20)
    torch.testing.assert_close(result, target.expand_as(result), atol=2e-3, rtol=0)


def test_denoise_reports_each_step() -> None:
    seen = []
    train = training_scheduler()
    scheduler = make_scheduler("ddim", train)
    denoise(
        lambda x, t: torch.zeros_like(x),
        scheduler,
        torch.randn(1, 1, 2, 2),
        7,
        on_step=lambda i, n: seen.append((i, n)),
    )
    assert seen == [(i, 7) for i in range(7)]
