"""Tiny models for tests of keel-diffusion and of code built on it (random weights, CPU, milliseconds)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from keel.diffusion.module import DiffusionModule
from keel.diffusion.nn.denoiser import ConditionalDenoiser
from keel.diffusion.nn.unet import build_unet


def tiny_diffusion_module(conditional: bool = True, seed: int = 0, width: int = 8, **kwargs: Any) -> DiffusionModule:
    """A 16x16 one-channel :class:`DiffusionModule` (10 classes when ``conditional``), seeded."""
    torch.manual_seed(seed)
    unet = build_unet(16, 1, block_out_channels=(width, width), attention_levels=(), norm_num_groups=4,
                      conditional=conditional)  # fmt: skip
    denoiser = ConditionalDenoiser(unet, num_classes=10 if conditional else None)
    return DiffusionModule(denoiser, partial(torch.optim.AdamW, lr=1e-3), **kwargs)
