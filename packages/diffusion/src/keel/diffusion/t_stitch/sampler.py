"""Trajectory stitching: the small model takes the first ``small_fraction`` of the trajectory.

The official DiT code (NVlabs/T-Stitch, ``dit/models.py``, class ``TStitch``) switches on the
ORIGINAL timestep: the small model answers when ``t / T >= 1 - ratio``, i.e. it handles the
highest-noise fraction ``ratio`` of the timestep range, whatever sampler and step count are used;
the whole batch switches together. Its Stable Diffusion pipelines switch on the step index instead
(``(i + 1) / n <= ratio``). keel offers both (``switch="timestep"``, the default, or ``"step"``).
Both models must share the noise schedule and the prediction type; :func:`check_compatible` refuses
anything else, because a mismatch silently produces garbage rather than an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from keel.core.errors import ConfigError
from keel.diffusion.module import DiffusionModule
from keel.diffusion.sampling import ModelFn, denoise, make_scheduler

SWITCHES = ("timestep", "step")


def check_compatible(small: DiffusionModule, large: DiffusionModule) -> None:
    """Raise :class:`ConfigError` unless both models share schedule, prediction type and image shape."""
    a, b = small.noise_scheduler.config, large.noise_scheduler.config
    for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type"):
        if a.get(key) != b.get(key):
            raise ConfigError(f"T-Stitch needs one noise schedule: small has {key}={a.get(key)}, large {b.get(key)}")
    if not torch.equal(small.noise_scheduler.alphas_cumprod, large.noise_scheduler.alphas_cumprod):
        raise ConfigError("T-Stitch needs one noise schedule: the models' alphas_cumprod differ")
    if small.image_shape != large.image_shape:
        raise ConfigError(f"T-Stitch needs one image shape: small {small.image_shape}, large {large.image_shape}")


@dataclass
class StitchedModel:
    """A model function that answers with ``small`` early in the trajectory and ``large`` after.

    Attributes:
        small: The small model's function ``(x_t, t) -> output``.
        large: The large model's function.
        small_fraction: Share of the trajectory given to the small model, in [0, 1].
        num_train_timesteps: T of the shared schedule (timestep switching).
        num_steps: Sampler steps (step switching).
        switch: ``timestep`` or ``step``.
        calls: How many times each model was called (for cost accounting and tests).
    """

    small: ModelFn
    large: ModelFn
    small_fraction: float
    num_train_timesteps: int = 1000
    num_steps: int = 0
    switch: str = "timestep"
    calls: dict[str, int] = field(default_factory=lambda: {"small": 0, "large": 0})
    _step: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.small_fraction <= 1.0:
            raise ConfigError(f"small_fraction must be in [0, 1], got {self.small_fraction}")
        if self.switch not in SWITCHES:
            raise ConfigError(f"switch must be one of {', '.join(SWITCHES)}, got {self.switch!r}")
        if self.switch == "step" and self.num_steps <= 0:
            raise ConfigError("step switching needs num_steps")

    def uses_small(self, t: torch.Tensor) -> bool:
        """Whether the small model answers at timestep ``t`` (the next step, for step switching)."""
        if self.switch == "timestep":
            # official DiT rule on the original timestep; t[0] decides for the whole batch
            return float(t.flatten()[0]) / self.num_train_timesteps >= 1.0 - self.small_fraction
        return (self._step + 1) / self.num_steps <= self.small_fraction  # official diffusers-pipeline rule

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Route one denoising call to the small or the large model."""
        name = "small" if self.uses_small(t) else "large"
        self.calls[name] += 1
        self._step += 1
        return (self.small if name == "small" else self.large)(x, t)


@torch.no_grad()
def t_stitch_sample(
    small: DiffusionModule,
    large: DiffusionModule,
    small_fraction: float,
    num_samples: int,
    condition: torch.Tensor | None = None,
    sampler: str = "ddim",
    steps: int = 50,
    guidance_scale: float = 1.0,
    switch: str = "timestep",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Sample with T-Stitch; returns the images in [-1, 1] and the number of calls of each model.

    With ``small_fraction`` 0 this is exactly the large model's sampling (same noise, same sampler),
    and with 1 exactly the small model's.
    """
    check_compatible(small, large)
    small.eval()
    large.eval()
    stitched = StitchedModel(
        small=small.model_fn(condition, guidance_scale),
        large=large.model_fn(condition, guidance_scale),
        small_fraction=small_fraction,
        num_train_timesteps=large.noise_scheduler.config.num_train_timesteps,
        num_steps=steps,
        switch=switch,
    )
    scheduler = make_scheduler(sampler, large.noise_scheduler)
    noise = torch.randn((num_samples, *large.image_shape), generator=generator, device=large.device)
    images = denoise(stitched, scheduler, noise, steps, generator=generator)
    return images.clamp(-1, 1), stitched.calls
