"""The diffusion arithmetic every keel diffusion method shares, on top of diffusers' schedulers.

Training and sampling both go through a diffusers noise scheduler, so the forward process
(``add_noise``), the parameterisations and every sampler are diffusers' own. What keel adds:

- :func:`training_target`: the regression target of the three objectives, named as diffusers names
  them in ``prediction_type``: ``epsilon`` (Ho et al. 2020, eq. 14), ``v_prediction``
  (Salimans & Ho 2022, v = sqrt(abar) eps - sqrt(1 - abar) x0) and ``sample`` (x0).
- :func:`make_scheduler`: a sampler built from the training scheduler's config, so it inherits the
  noise schedule and the prediction type (a mismatch there is the classic silent sampling bug).
- :func:`denoise`: the one reverse-process loop, over any model function and any scheduler. It is
  the "denoising loop" that NUWA-XL counts and that T-Stitch splits between two models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from keel.core.errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}

# model_fn(x_t, t) -> the network's raw output (epsilon, v or x0, as the scheduler's prediction_type says)
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def training_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    prediction_type: str = "epsilon",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> DDPMScheduler:
    """The forward process used in training: a DDPM schedule (Ho et al. 2020 defaults).

    Raises:
        ConfigError: ``prediction_type`` is not one of :data:`PREDICTION_TYPES`.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        prediction_type=prediction_type,
        clip_sample=False,
    )


def make_scheduler(name: str, train_scheduler: SchedulerMixin, **overrides: object) -> SchedulerMixin:
    """A sampler of kind ``name`` sharing ``train_scheduler``'s betas and prediction type.

    Raises:
        ConfigError: ``name`` is no known sampler.
    """
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(dict(train_scheduler.config), **overrides)


def training_target(
    scheduler: SchedulerMixin, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the network regresses onto for ``scheduler.config.prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    if kind == "sample":
        return x0
    raise ConfigError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {kind!r}")


@torch.no_grad()
def denoise(
    model_fn: ModelFn,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run the reverse process from ``noise`` with ``scheduler`` for ``num_inference_steps`` steps.

    Args:
        model_fn: ``(x_t, t) -> output``; ``t`` is a 1-D tensor of the scheduler's (training-scale)
            timesteps, one per sample.
        scheduler: Any diffusers scheduler; its timesteps are (re)set here.
        noise: The starting sample x_T, already scaled by ``scheduler.init_noise_sigma`` if needed.
        num_inference_steps: Sampler steps.
        generator: For the samplers that draw noise at each step (DDPM, ancestral).
        on_step: Called as ``on_step(i, n)`` after each step (progress bars, step counting).

    Returns:
        The final sample x_0.
    """
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(x, t)
        output = model_fn(model_input, t.expand(x.shape[0]).to(x.device))
        x = scheduler.step(output, t, x, generator=generator).prev_sample
        if on_step is not None:
            on_step(i, len(timesteps))
    return x
