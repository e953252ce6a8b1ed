"""``DiffusionModule``: the LightningModule every keel image-diffusion experiment trains.

Training minimises ``|| f(x_t, t, c) - target ||^2`` with ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``
and ``t ~ U{0, T-1}`` (Ho et al. 2020, Algorithm 1), where the target is eps, v or x_0 as the noise
scheduler's ``prediction_type`` says (:func:`keel.diffusion.sampling.training_target`). On top:

- classifier-free guidance: the condition is replaced by a learned "no condition" token with
  probability ``cfg_dropout`` during training, and sampling mixes
  ``out_u + w (out_c - out_u)`` (Ho & Salimans 2022, eq. 6) for guidance scale ``w``;
- CEP (:mod:`keel.diffusion.cep`): optional noise on the kept condition embeddings, training only;
- EMA weights (decay ``ema_decay`` with the usual ``(1 + n) / (10 + n)`` warm-up), used for
  validation, test and sampling;
- a grid of samples saved as ``samples/step_XXXXXX.png`` (and to TensorBoard) every N steps.

Validation and test losses draw their noise and timesteps from a generator seeded by the batch index,
so the numbers are comparable from one validation to the next.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from torch import nn
from torchmetrics import MeanMetric

from keel.core.errors import ConfigError
from keel.diffusion.cep import ConditionEmbeddingPerturbation
from keel.diffusion.ema import SavesEMAShadow, ema_decay_at, ema_update
from keel.diffusion.nn.denoiser import ConditionalDenoiser
from keel.diffusion.sampling import ModelFn, denoise, make_scheduler, training_scheduler, training_target


def image_grid(images: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """``[N, C, H, W]`` uint8 -> one ``[H * rows, W * cols, C]`` uint8 image, filled row by row."""
    n, c, h, w = images.shape
    cols = math.ceil(n / rows) if rows else math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.zeros(rows * cols, c, h, w, dtype=images.dtype)
    canvas[:n] = images
    return canvas.view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)


class DiffusionModule(SavesEMAShadow, L.LightningModule):
    """Trains and samples a (conditional) image diffusion model on ``{"image", "label"}`` batches.

    Args:
        denoiser: The network: a :class:`ConditionalDenoiser` (or a bare ``UNet2DModel``, wrapped
            unconditionally).
        optimizer: Optimizer factory (``_partial_``), called with the parameters.
        lr_scheduler: Optional factory called with the optimizer; stepped every optimizer step.
        noise_scheduler: The training forward process; defaults to DDPM, linear betas, 1000 steps,
            epsilon prediction.
        condition_key: Batch key of the condition (``label`` or an embedding key); ignored when the
            denoiser is unconditional.
        cfg_dropout: Probability of dropping the condition in training (classifier-free guidance).
        cep: Condition embedding perturbation applied in training (``None``: off).
        ema_decay: EMA decay of the weights used for evaluation and sampling (0 disables EMA).
        sampler: Default sampler for :meth:`sample` (``ddpm``, ``ddim``, ``dpm``, ``euler``).
        sample_steps: Default number of sampler steps.
        guidance_scale: Default classifier-free guidance scale (1: conditional model only).
        sample_every_n_steps: Save a grid of samples every N training steps (0: never).
        num_grid_samples: Images in that grid.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., Any] | None = None,
        noise_scheduler: SchedulerMixin | None = None,
        condition_key: str = "label",
        cfg_dropout: float = 0.1,
        cep: ConditionEmbeddingPerturbation | None = None,
        ema_decay: float = 0.999,
        sampler: str = "ddim",
        sample_steps: int = 50,
        guidance_scale: float = 1.0,
        sample_every_n_steps: int = 0,
        num_grid_samples: int = 64,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["denoiser", "optimizer", "lr_scheduler", "noise_scheduler", "cep"])
        if not isinstance(denoiser, ConditionalDenoiser):
            denoiser = ConditionalDenoiser(denoiser)
        if not 0 <= cfg_dropout < 1:
            raise ConfigError(f"cfg_dropout must be in [0, 1), got {cfg_dropout}")
        self.net = denoiser
        self.ema_net = copy.deepcopy(denoiser).requires_grad_(False) if ema_decay > 0 else None
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.noise_scheduler = noise_scheduler or training_scheduler()
        make_scheduler(sampler, self.noise_scheduler)  # fail at build time on an unknown sampler
        self.cep = cep if cep is not None else ConditionEmbeddingPerturbation(0.0)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._ema_shadow: list[torch.Tensor] | None = None  # fp32 EMA when the module runs in low precision
        self.losses = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})

    # ----------------------------------------------------------------------------------- networks
    @property
    def eval_net(self) -> ConditionalDenoiser:
        """The network used for evaluation and sampling: the EMA copy when there is one."""
        return self.ema_net if self.ema_net is not None else self.net

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the UNet denoises."""
        config = self.net.unet.config
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        return (config.in_channels, size, size)

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA step with decay ``min(ema_decay, (1 + n) / (10 + n))`` after n previous updates."""
        if self.ema_net is None:
            return
        decay = ema_decay_at(int(self.ema_updates), self.hparams.ema_decay)
        self._ema_shadow = ema_update(self.ema_net, self.net, decay, self._ema_shadow)
        self.ema_updates += 1

    # ----------------------------------------------------------------------------------- training
    def _condition(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not self.net.conditional:
            return None
        if self.hparams.condition_key not in batch:
            raise ConfigError(f"the conditional denoiser needs batch[{self.hparams.condition_key!r}]")
        return batch[self.hparams.condition_key]

    def step(self, batch: dict[str, torch.Tensor], stage: str, batch_idx: int = 0) -> torch.Tensor:
        """The diffusion loss of one batch; shared by train, val and test."""
        x0 = batch["image"]
        n = x0.shape[0]
        training = stage == "train"
        generator = None if training else torch.Generator(x0.device).manual_seed(batch_idx)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (n,), generator=generator, device=x0.device
        )
        x_t = self.noise_scheduler.add_noise(x0, noise, timesteps)
        net = self.net if training else self.eval_net
        condition = self._condition(batch)
        embedding = None
        if condition is not None:
            drop = None
            if training and self.hparams.cfg_dropout > 0:
                drop = torch.rand(n, device=x0.device) < self.hparams.cfg_dropout
            embedding = net.embed(condition, drop)
            if training and drop is not None:
                # CEP corrupts real conditions only; the "no condition" token stays a fixed point
                embedding = torch.where(drop.unsqueeze(-1), embedding, self.cep(embedding))
            elif training:
                embedding = self.cep(embedding)
        prediction = net(x_t, timesteps, embedding)
        loss = F.mse_loss(prediction.float(), training_target(self.noise_scheduler, x0, noise, timesteps).float())
        if training:
            self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=n)
        else:
            self.losses[stage](loss.detach(), n)
            self.log(f"{stage}/loss", self.losses[stage], on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The training loss (condition dropout and CEP on)."""
        return self.step(batch, "train", batch_idx)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Log ``val/loss`` with the EMA weights and batch-seeded noise."""
        self.step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Log ``test/loss`` like validation."""
        self.step(batch, "test", batch_idx)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Update the EMA weights; save a sample grid every ``sample_every_n_steps``."""
        self.update_ema()
        every = self.hparams.sample_every_n_steps
        if every and self.global_step % every == 0:
            self.save_sample_grid()

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimizer over the online network (never the EMA copy) and the optional step-wise schedule."""
        optimizer = self.optimizer_factory([p for p in self.net.parameters() if p.requires_grad])
        if self.lr_scheduler_factory is None:
            return {"optimizer": optimizer}
        kwargs: dict[str, Any] = {}
        given = getattr(self.lr_scheduler_factory, "keywords", {})
        if "max_steps" in inspect.signature(self.lr_scheduler_factory).parameters and "max_steps" not in given:
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ConfigError("the lr_scheduler needs max_steps: set trainer.max_steps")
            kwargs["max_steps"] = int(total)
        scheduler = self.lr_scheduler_factory(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------------- sampling
    def model_fn(
        self, condition: torch.Tensor | None = None, guidance_scale: float | None = None, use_ema: bool = True
    ) -> ModelFn:
        """``(x_t, t) -> output`` for :func:`keel.diffusion.sampling.denoise`, with guidance folded in.

        Args:
            condition: Labels or embeddings, one per sample (``None`` for unconditional models).
            guidance_scale: ``w`` in ``out_u + w (out_c - out_u)``; 1 skips the unconditional pass.
            use_ema: Use the EMA weights when there are any.
        """
        net = self.eval_net if use_ema else self.net
        scale = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
        embedding = net.embed(condition) if condition is not None else None

        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            conditional = net(x, t, embedding)
            if embedding is None or scale == 1.0:
                return conditional
            unconditional = net(x, t, net.null_condition(x.shape[0], x.device))
            return unconditional + scale * (conditional - unconditional)

        return fn

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        condition: torch.Tensor | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """Generate ``num_samples`` images ``[N, C, H, W]`` in [-1, 1] with any diffusers sampler."""
        if condition is not None and len(condition) != num_samples:
            raise ConfigError(f"got {len(condition)} conditions for {num_samples} samples")
        if self.net.conditional and condition is None:
            raise ConfigError("this model is conditional: pass one label or embedding per sample")
        scheduler = make_scheduler(sampler or self.hparams.sampler, self.noise_scheduler)
        noise = torch.randn((num_samples, *self.image_shape), generator=generator, device=self.device)
        model_fn = self.model_fn(condition, guidance_scale, use_ema)
        was_training = self.training
        self.eval()
        try:
            images = denoise(model_fn, scheduler, noise, steps or self.hparams.sample_steps, generator=generator)
        finally:
            self.train(was_training)
        return images.clamp(-1, 1)

    def grid_condition(self, num: int) -> torch.Tensor | None:
        """Conditions for a sample grid: classes in turn, or nothing for unconditional models."""
        if self.net.class_embedding is not None:
            return torch.arange(num, device=self.device) % self.net.num_classes
        return None

    @rank_zero_only
    def save_sample_grid(self) -> Path | None:
        """Write a grid of samples from the EMA weights to ``<run dir>/samples/step_XXXXXX.png``."""
        if self.net.projection is not None:
            return None  # embedding-conditional models have no canonical conditions to show
        num = self.hparams.num_grid_samples
        generator = torch.Generator(self.device).manual_seed(0)  # the same noise every time: progress is visible
        images = self.sample(num, self.grid_condition(num), generator=generator)
        grid = image_grid(((images + 1) * 127.5).round().to(torch.uint8).cpu())
        folder = Path(self.trainer.default_root_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{self.global_step:06d}.png"
        Image.fromarray(grid.squeeze(-1).numpy() if grid.shape[-1] == 1 else grid.numpy()).save(path)
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("samples", grid.permute(2, 0, 1), self.global_step)
        return path
