"""The NUWA-XL LightningModule: one Masked Temporal Diffusion network trained on long videos.

Global and local models (and the autoregressive baseline's model) are ONE network here, told apart by
what the batch asks of it: the visible-frame mask (none visible: global keyframes; first and last:
local infilling; first few: autoregressive continuation) and the frame-spacing embedding (which level
of the tree). The paper trains separate global and local models of the same MTD architecture; sharing
the weights halves the parameters a CPU has to train, lets the local levels learn from each other, and
makes the comparison with the autoregressive baseline exact: both inference schemes run the very same
weights. The share of each task is the DataModule's ``task_weights``.

The objective defaults to NUWA-XL's (the MTD slide's "MSE loss" on the predicted noise): epsilon
prediction at a uniformly drawn timestep, through :mod:`keel.diffusion.sampling` so the forward process
and the samplers are the ones every keel diffusion method uses. ``prediction_type="sample"`` regresses
the clean frames instead (x0 prediction). The CPU profile uses it: a stacked-frame UNet whose full
resolution has 32 channels for 12 frames cannot carry 12 independent noise fields, and an epsilon
network of that size leaves grain in every frame at low noise (more sampler steps make it worse),
while at low noise the clean frames are nearly the input. The loss averages over the frames the
network must generate; the visible frames are given, and inference copies them into the output.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric

from keel.core.errors import NonFiniteLossError
from keel.diffusion.data.video import TASKS
from keel.diffusion.ema import SavesEMAShadow, ema_decay_at, ema_update
from keel.diffusion.nuwa_xl.model import MaskedTemporalUNet
from keel.diffusion.sampling import SCHEDULERS, make_scheduler, training_scheduler, training_target


class NuwaXLModule(SavesEMAShadow, L.LightningModule):
    """Train MTD on (task, level, segment) examples; after testing, generate long videos both ways.

    Each stage logs ``{stage}/loss`` (noise MSE over generated frames) and, for validation and test,
    ``{stage}/loss_<task>`` per task. When ``evaluation`` is given, the end of the test epoch generates
    long videos with NUWA-XL and with the autoregressive baseline and logs what it measures under
    ``test/`` (see :class:`keel.diffusion.nuwa_xl.evaluate.LongVideoEvaluation`).

    Args:
        network: The MTD network.
        optimizer: Factory taking the parameters, e.g. ``partial(torch.optim.AdamW, lr=2e-4)``.
        lr_scheduler: Optional factory taking the optimizer; stepped every optimizer step.
        num_train_timesteps: Diffusion steps of the training process.
        beta_schedule: diffusers beta schedule of the training process.
        sampler: Sampler for generation (``ddim`` is deterministic: batching cannot change a clip).
        inference_steps: Sampler steps per denoising loop.
        prediction_type: What the network predicts: ``epsilon`` (the paper's), ``v_prediction`` or
            ``sample`` (the clean frames).
        clip_sample: Clip the sampler's predicted clean frames to [-1, 1] at every step, as DDPM's
            sampler does for pixel data (Ho et al. 2020); without it an imperfect noise prediction at
            high noise levels is amplified by 1 / sqrt(alphabar_t), hundreds of times.
        ema_decay: Decay of the exponential moving average of the weights that validation, testing and
            generation use, with the usual ``(1 + n) / (10 + n)`` warm-up (0: the raw weights).
        evaluation: The long-video benchmark run after testing, or None.
    """

    def __init__(
        self,
        network: MaskedTemporalUNet,
        optimizer: Callable[[Iterable[nn.Parameter]], Optimizer],
        lr_scheduler: Callable[[Optimizer], Any] | None = None,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        sampler: str = "ddim",
        inference_steps: int = 25,
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
        ema_decay: float = 0.995,
        evaluation: Any | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network", "optimizer", "lr_scheduler", "evaluation"])
        self.network = network
        self.ema_network = copy.deepcopy(network).requires_grad_(False) if ema_decay > 0 else None
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._ema_shadow: list[torch.Tensor] | None = None  # fp32 EMA when the module runs in bf16
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.evaluation = evaluation
        self.noise_scheduler = training_scheduler(num_train_timesteps, beta_schedule, prediction_type)
        make_scheduler(sampler, self.noise_scheduler)  # an unknown sampler fails now, not after training
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    @property
    def eval_network(self) -> MaskedTemporalUNet:
        """The weights evaluation and generation use: the EMA copy when there is one."""
        return self.ema_network if self.ema_network is not None else self.network

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA step with decay ``min(ema_decay, (1 + n) / (10 + n))`` after n earlier updates."""
        if self.ema_network is None:
            return
        decay = ema_decay_at(int(self.ema_updates), self.hparams.ema_decay)
        self._ema_shadow = ema_update(self.ema_network, self.network, decay, self._ema_shadow)
        self.ema_updates += 1

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Update the EMA weights after every training batch."""
        self.update_ema()

    def sampler(self) -> Any:
        """A fresh sampler sharing the training process's noise schedule (clipping where it can)."""
        sampler_class = SCHEDULERS[self.hparams.sampler]
        if "clip_sample" not in inspect.signature(sampler_class.__init__).parameters:
            return make_scheduler(self.hparams.sampler, self.noise_scheduler)
        return make_scheduler(self.hparams.sampler, self.noise_scheduler, clip_sample=self.hparams.clip_sample)

    def _noise_and_timesteps(
        self, frames: torch.Tensor, stage: str, batch_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if stage == "train":
            noise = torch.randn_like(frames)
            timesteps = torch.randint(0, self.hparams.num_train_timesteps, (len(frames),), device=frames.device)
            return noise, timesteps
        # evaluation draws the same noise and timesteps every time, so val/loss moves only with the weights
        generator = torch.Generator().manual_seed(batch_idx)
        noise = torch.randn(frames.shape, generator=generator).to(frames)
        timesteps = torch.randint(0, self.hparams.num_train_timesteps, (len(frames),), generator=generator)
        return noise, timesteps.to(frames.device)

    def step(self, batch: dict[str, torch.Tensor], stage: str, batch_idx: int = 0) -> torch.Tensor:
        """Noise the clips, predict the target, and average the squared error over generated frames.

        Args:
            batch: ``frames`` ``[B, L, C, H, W]``, ``visible`` ``[B, L]``, ``conditions`` ``[B, L]``,
                ``spacing`` and ``task`` ``[B]`` (see :mod:`keel.diffusion.data.video`).
            stage: ``train``, ``val`` or ``test``.
            batch_idx: Seeds the evaluation noise.

        Returns:
            The mean loss over the batch's generated frames.

        Raises:
            NonFiniteLossError: The loss is NaN or infinite.
        """
        frames, visible = batch["frames"], batch["visible"]
        noise, timesteps = self._noise_and_timesteps(frames, stage, batch_idx)
        noisy = self.noise_scheduler.add_noise(frames, noise, timesteps)
        target = training_target(self.noise_scheduler, frames, noise, timesteps)
        network = self.network if stage == "train" else self.eval_network
        prediction = network(noisy, timesteps, frames, visible, batch["spacing"], batch.get("conditions"))
        per_frame = (prediction.float() - target.float()).pow(2).mean(dim=(2, 3, 4))  # [B, L]
        generated = (~visible).float()
        loss = (per_frame * generated).sum() / generated.sum().clamp(min=1.0)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite {stage} loss ({loss.item()}) at global step {self.global_step}")
        size = len(frames)
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=generated.sum())
        if stage == "train":
            self.log("train/loss", loss.detach(), prog_bar=True, batch_size=size)
        else:
            per_example = (per_frame * generated).sum(1) / generated.sum(1).clamp(min=1.0)
            for index, task in enumerate(TASKS):
                chosen = batch["task"] == index
                if chosen.any():
                    value = per_example[chosen].mean().detach()
                    self.log(f"{stage}/loss_{task}", value, batch_size=int(chosen.sum()), on_epoch=True)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss."""
        return self.step(batch, "train", batch_idx)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Accumulate the validation loss."""
        return self.step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Accumulate the test loss."""
        return self.step(batch, "test", batch_idx)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/loss`` over the whole validation set."""
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.val_loss.reset()

    def on_test_epoch_end(self) -> None:
        """Log ``test/loss``, then run the long-video benchmark (rank 0) and log its numbers."""
        self.log("test/loss", self.test_loss.compute())
        self.test_loss.reset()
        if self.evaluation is None or not self.trainer.is_global_zero:
            return
        out_dir = Path(self.trainer.default_root_dir)
        results = self.evaluation(self.eval_network, self.sampler(), self.trainer.datamodule, out_dir)
        for name, value in results.items():
            self.log(f"test/{name}", float(value), rank_zero_only=True)

    def configure_optimizers(self) -> Any:
        """The optimizer (and the per-step learning-rate schedule, if any)."""
        optimizer = self.optimizer_factory(self.network.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        schedule = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
