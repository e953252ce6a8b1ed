"""Exponential moving average of a network's weights, exact under bf16 training.

Both :class:`~keel.diffusion.module.DiffusionModule` and
:class:`~keel.diffusion.nuwa_xl.module.NuwaXLModule` keep an EMA copy of their network and step it
with :func:`ema_update` after every optimizer step.
"""

from __future__ import annotations

from typing import Any

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


class SavesEMAShadow:
    """LightningModule mixin: the fp32 EMA shadow ``self._ema_shadow`` travels with the checkpoint.

    Without it a resumed bf16 run would restart its average from the bf16-rounded EMA weights.
    """

    _ema_shadow: list[torch.Tensor] | None
    device: torch.device

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the fp32 EMA shadow (when there is one) as ``checkpoint["ema_fp32"]``."""
        if self._ema_shadow is not None:
            checkpoint["ema_fp32"] = [t.cpu() for t in self._ema_shadow]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the fp32 EMA shadow saved by :meth:`on_save_checkpoint`."""
        shadow = checkpoint.get("ema_fp32")
        self._ema_shadow = [t.to(self.device) for t in shadow] if shadow is not None else None
