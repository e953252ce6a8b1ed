from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from keel.diffusion.data.video import MovingDigitsDataModule
from keel.diffusion.nuwa_xl.model import MaskedTemporalUNet
from keel.diffusion.nuwa_xl.module import NuwaXLModule


def _network() -> MaskedTemporalUNet:
    torch.manual_seed(0)
    return MaskedTemporalUNet(
        frames=5,
        sample_size=8,
        block_out_channels=(8, 16),
        attention_levels=(),
        norm_num_groups=4,
        num_conditions=10,
        condition_dim=4,
    )


def _data() -> MovingDigitsDataModule:
    return MovingDigitsDataModule(
        frames_per_clip=5,
        depth=2,
        train_videos=8,
        eval_videos=2,
        canvas_size=8,
        digit_size=4,
        periods=(6.0, 30.0),
        train_examples=64,
        eval_examples=16,
        batch_size=16,
        eval_batch_size=16,
    )


class _WrongOnGivenFrames(nn.Module):
    """Predicts zero noise for generated frames and a huge value for the given ones."""

    frames, channels, sample_size = 5, 1, 8

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, sample, timestep, condition_frames, visible, spacing, conditions=None):  # noqa: ANN001, ANN201
        return self.scale * 1e4 * visible[:, :, None, None, None].float().expand_as(sample)


# step() is called outside a Trainer below; Lightning warns that nothing is logged then
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def test_loss_counts_only_the_frames_to_generate() -> None:
    module = NuwaXLModule(_WrongOnGivenFrames(), functools.partial(torch.optim.SGD, lr=0.1))
    data = _data()
    data.setup()
    batch = next(iter(data.val_dataloader()))
    assert batch["visible"].any(), "the batch holds local or continuation examples"
    loss = module.step(batch, "val")
    assert loss.item() < 3.0, "the given frames' error would make the loss about 1e8"
    assert abs(loss.item() - 1.0) < 0.3, "zero prediction of unit-variance noise: MSE about 1"


def test_training_reduces_the_loss_on_a_fixed_batch() -> None:
    module = NuwaXLModule(_network(), functools.partial(torch.optim.AdamW, lr=3e-3), ema_decay=0.0)
    data = _data()
    data.setup()
    batch = next(iter(data.val_dataloader()))
    optimizer = module.configure_optimizers()
    before = module.step(batch, "val").item()
    for _ in range(40):
        optimizer.zero_grad()
        module.step(batch, "train").backward()
        optimizer.step()
    assert module.step(batch, "val").item() < 0.7 * before
    assert module.step(batch, "val").item() == module.step(batch, "val").item(), "evaluation noise is fixed"


def test_fit_logs_train_and_val_loss_and_saves_hyperparameters(tmp_path: Path) -> None:
    module = NuwaXLModule(_network(), functools.partial(torch.optim.AdamW, lr=1e-3), inference_steps=7)
    trainer = L.Trainer(
        max_steps=3,
        limit_val_batches=1,
        val_check_interval=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=_data())
    assert {"train/loss", "val/loss"} <= set(trainer.callback_metrics)
    assert module.hparams.inference_steps == 7
    assert "network" not in module.hparams
    trainer.test(module, datamodule=_data())
    assert "test/loss" in trainer.callback_metrics


def test_evaluation_uses_the_moving_average_of_the_weights() -> None:
    module = NuwaXLModule(_network(), functools.partial(torch.optim.SGD, lr=0.1), ema_decay=0.9)
    assert module.eval_network is module.ema_network
    start = [p.clone() for p in module.ema_network.parameters()]
    with torch.no_grad():
        for parameter in module.network.parameters():
            parameter.add_(1.0)
    module.update_ema()  # first update: decay min(0.9, 1 / 10) = 0.1, so 90% of the way
    moved = [(ema - before).mean().item() for ema, before in zip(module.ema_network.parameters(), start, strict=True)]
    assert all(abs(shift - 0.9) < 1e-5 for shift in moved)
    assert int(module.ema_updates) == 1
    assert NuwaXLModule(_network(), functools.partial(torch.optim.SGD, lr=0.1), ema_decay=0.0).ema_network is None


class _CleanFrameOracle(nn.Module):
    """Returns the clean frames it is handed (in training the module passes every frame as condition)."""

    frames, channels, sample_size = 5, 1, 8

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, sample, timestep, condition_frames, visible, spacing, conditions=None):  # noqa: ANN001, ANN201
        return self.scale * condition_frames


def test_sample_prediction_regresses_the_clean_frames_and_samples_with_the_same_type() -> None:
    data = _data()
    data.setup()
    batch = next(iter(data.val_dataloader()))
    optimizer = functools.partial(torch.optim.SGD, lr=0.1)
    clean = NuwaXLModule(_CleanFrameOracle(), optimizer, prediction_type="sample", ema_decay=0.0)
    noise = NuwaXLModule(_CleanFrameOracle(), optimizer, ema_decay=0.0)
    assert clean.step(batch, "val").item() < 1e-10, "x0 target: the clean frames are exact"
    assert noise.step(batch, "val").item() > 0.5, "epsilon target: clean frames are not the noise"
    assert clean.sampler().config.prediction_type == "sample"
    assert noise.sampler().config.prediction_type == "epsilon"


def test_ema_keeps_small_updates_in_bf16_and_saves_its_fp32_shadow() -> None:
    module = NuwaXLModule(_network(), functools.partial(torch.optim.SGD, lr=0.1), ema_decay=0.999).to(torch.bfloat16)
    start = [p.detach().float().clone() for p in module.ema_network.parameters()]
    with torch.no_grad():
        for p in module.network.parameters():
            p.add_(1.0)
    module.ema_updates.fill_(10_000)  # past the warm-up: 0.1% per update, below bf16's resolution near 1
    for _ in range(50):
        module.update_ema()
    for ema, old in zip(module.ema_network.parameters(), start, strict=True):
        torch.testing.assert_close(ema.float() - old, torch.full_like(old, 1 - 0.999**50), atol=0.02, rtol=0)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert len(checkpoint["ema_fp32"]) == len(start)
