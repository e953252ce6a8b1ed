"""Exponential moving average of a network's weights, exact under bf16 training.

Both :class:`~keel.diffusion.module.DiffusionModule` and
:class:`~keel.diffusion.nuwa_xl.module.NuwaXLModule` keep an EMA copy of their network and step it
with :func:`ema_update` after every optimizer step.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay_at(updates: int, ema_decay: float) -> float:
    """The decay of update ``updates + 1``: ``min(ema_decay, (1 + n) / (10 + n))`` (the usual warm-up)."""
    return min(ema_decay, (1 + updates) / (10 + updates))


@torch.no_grad()
def ema_update(
    ema_net: nn.Module, net: nn.Module, decay: float, shadow: list[torch.Tensor] | None = None
) -> list[torch.Tensor] | None:
    """Move ``ema_net``'s parameters toward ``net``'s by ``1 - decay``; copy the buffers.

    Under bf16 training (DeepSpeed casts the whole module, EMA copy included) an update of
    ``1 - decay`` = 0.1% is below bf16's resolution and would vanish, so a low-precision EMA is averaged
    in an fp32 ``shadow`` (created on the first call) and the rounded result copied into ``ema_net``.

    Returns:
        The fp32 shadow to pass to the next call (None while the EMA is fp32 itself); save it with
        the checkpoint so that a resumed run averages on exactly.
    """
    ema_params = list(ema_net.parameters())
    params = [p.detach() for p in net.parameters()]
    if all(p.dtype == torch.float32 for p in ema_params):
        torch._foreach_lerp_(ema_params, params, 1 - decay)
    else:
        if shadow is None:
            shadow = [p.detach().float().clone() for p in ema_params]
        torch._foreach_lerp_(shadow, [p.float() for p in params], 1 - decay)
        for ema, averaged in zip(ema_params, shadow, strict=True):
            ema.copy_(averaged)
    for ema_buffer, buffer in zip(ema_net.buffers(), net.buffers(), strict=True):
        ema_buffer.copy_(buffer)
    return shadow
