"""DiffusionModule: the loss, classifier-free guidance, EMA, sampling and the sample grid."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from keel.core.errors import ConfigError
from keel.diffusion.cep import ConditionEmbeddingPerturbation
from keel.diffusion.module import DiffusionModule, image_grid
from keel.diffusion.nn.denoiser import ConditionalDenoiser
from keel.diffusion.nn.unet import build_unet
from keel.diffusion.sampling import training_scheduler, training_target
from keel.diffusion.testing import tiny_diffusion_module as tiny_module


def batch(n: int = 6) -> dict[str, torch.Tensor]:
    return {"image": torch.rand(n, 1, 16, 16) * 2 - 1, "label": torch.arange(n) % 10}


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_loss_is_the_mse_to_the_objective_target(kind: str) -> None:
    module = tiny_module(noise_scheduler=training_scheduler(prediction_type=kind), cfg_dropout=0.0)
    data = batch()
    seen = {}

    def record(x: torch.Tensor, t: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        seen["x_t"], seen["t"] = x, t
        return torch.zeros_like(x)

    module.ema_net.forward = record  # validation uses the EMA network
    loss = module.step(data, "val", batch_idx=3)
    # recover the noise the step drew from x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
    abar = module.noise_scheduler.alphas_cumprod[seen["t"]].view(-1, 1, 1, 1)
    noise = (seen["x_t"] - abar.sqrt() * data["image"]) / (1 - abar).sqrt()
    target = training_target(module.noise_scheduler, data["image"], noise, seen["t"])
    torch.testing.assert_close(loss, target.pow(2).mean(), rtol=1e-4, atol=1e-5)


def test_validation_loss_is_reproducible_and_training_loss_is_not() -> None:
    module = tiny_module()
    data = batch()
    assert module.step(data, "val", 0) == module.step(data, "val", 0)
    assert module.step(data, "val", 0) != module.step(data, "val", 1)
    assert module.step(data, "train", 0) != module.step(data, "train", 0)


def test_guidance_mixes_conditional_and_unconditional_outputs() -> None:
    module = tiny_module(ema_decay=0.0)
    net = module.net
    x, t, labels = torch.randn(4, 1, 16, 16), torch.full((4,), 500), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        conditional = net(x, t, net.embed(labels))
        unconditional = net(x, t, net.null_condition(4, x.device))
        guided = module.model_fn(labels, guidance_scale=3.0)(x, t)
        plain = module.model_fn(labels, guidance_scale=1.0)(x, t)
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional))
    torch.testing.assert_close(plain, conditional)


def test_condition_dropout_uses_the_null_token() -> None:
    module = tiny_module()
    labels = torch.tensor([3, 3])
    dropped = module.net.embed(labels, drop=torch.tensor([True, False]))
    torch.testing.assert_close(dropped[0], module.net.null_condition(1, labels.device)[0])
    torch.testing.assert_close(dropped[1], module.net.embed(torch.tensor([3]))[0])


def test_cep_perturbs_kept_conditions_in_training_only() -> None:
    module = tiny_module(cep=ConditionEmbeddingPerturbation(gamma=5.0), cfg_dropout=0.0)
    captured = []
    original = module.net.forward

    def spy(x: torch.Tensor, t: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        captured.append(embedding.detach().clone())
        return original(x, t, embedding)

    module.net.forward = spy
    module.ema_net.forward = spy
    data = batch()
    module.train()
    module.step(data, "train")
    clean = module.net.embed(data["label"]).detach()
    assert (captured[-1] - clean).abs().max() > 0.1  # gamma / sqrt(d) = 5 / sqrt(32): visibly perturbed
    module.eval()
    module.step(data, "val")
    torch.testing.assert_close(captured[-1], module.ema_net.embed(data["label"]).detach())


def test_ema_follows_the_warmup_decay() -> None:
    module = tiny_module(ema_decay=0.9)
    before = [p.detach().clone() for p in module.ema_net.parameters()]
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(1.0)
    module.update_ema()  # n = 0: decay = min(0.9, 1/10) = 0.1
    for ema, old, new in zip(module.ema_net.parameters(), before, module.net.parameters(), strict=True):
        torch.testing.assert_close(ema, 0.1 * old + 0.9 * new)
    assert int(module.ema_updates) == 1


def test_sampling_is_seeded_and_shaped() -> None:
    module = tiny_module()
    labels = torch.arange(4)
    a = module.sample(4, labels, steps=3, generator=torch.Generator().manual_seed(1))
    b = module.sample(4, labels, steps=3, generator=torch.Generator().manual_seed(1))
    assert a.shape == (4, 1, 16, 16)
    torch.testing.assert_close(a, b)
    assert a.abs().max() <= 1
    with pytest.raises(ConfigError, match="conditional"):
        module.sample(4, steps=2)
    with pytest.raises(ConfigError, match="4 samples"):
        module.sample(4, torch.arange(3), steps=2)


def test_unconditional_unet_with_labels_is_refused() -> None:
    unet = build_unet(16, 1, block_out_channels=(8, 8), attention_levels=(), norm_num_groups=4)
    with pytest.raises(ConfigError, match="conditional"):
        ConditionalDenoiser(unet, num_classes=10)
    module = DiffusionModule(unet, partial(torch.optim.AdamW, lr=1e-3))
    assert module.sample(2, steps=2).shape == (2, 1, 16, 16)


def test_image_grid_places_images_row_by_row() -> None:
    images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 2, 2)
    grid = image_grid(images)
    assert grid.shape == (4, 6, 1)  # 2 rows of 3 columns of 2x2 images
    assert grid[0, 2, 0] == 1  # second image, first row
    assert grid[2, 0, 0] == 3  # fourth image opens the second row
    assert grid[2, 4, 0] == 0  # the empty sixth slot is black


class Digits(Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.full((1, 16, 16), (i % 2) * 2 - 1.0), "label": torch.tensor(i % 10)}


def test_fit_logs_losses_and_writes_sample_grids(tmp_path: Path) -> None:
    module = tiny_module(sample_every_n_steps=2, num_grid_samples=4, sample_steps=2)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, limit_val_batches=1, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    loader = DataLoader(Digits(), batch_size=4)
    trainer.fit(module, loader, loader)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]
    assert {"train/loss", "val/loss"} <= set(trainer.callback_metrics)
    # the EMA network moved towards the trained one
    assert int(module.ema_updates) == 4


def test_ema_keeps_small_updates_when_the_module_runs_in_bf16() -> None:
    module = tiny_module(ema_decay=0.999).to(torch.bfloat16)
    start = [p.detach().float().clone() for p in module.ema_net.parameters()]
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(1.0)
    module.ema_updates.fill_(10_000)  # past the warm-up: decay 0.999, 0.1% per update
    for _ in range(50):
        module.update_ema()
    moved = 1 - 0.999**50  # about 0.049 of the way to the online weights
    for ema, old in zip(module.ema_net.parameters(), start, strict=True):
        assert ema.dtype == torch.bfloat16
        # a bf16-only average would round every 0.1% step away and never move
        torch.testing.assert_close(ema.float() - old, torch.full_like(old, moved), atol=0.02, rtol=0)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    restored = tiny_module(ema_decay=0.999)
    restored.on_load_checkpoint(checkpoint)
    for a, b in zip(restored._ema_shadow, module._ema_shadow, strict=True):
        assert torch.equal(a, b)
