"""Denoiser networks built from configs (diffusers' UNet2DModel), never from downloaded weights."""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import UNet2DModel

from keel.core.errors import ConfigError


def build_unet(
    sample_size: int = 32,
    in_channels: int = 1,
    out_channels: int | None = None,
    block_out_channels: Sequence[int] = (32, 64, 64),
    layers_per_block: int = 1,
    attention_levels: Sequence[int] = (2,),
    norm_num_groups: int = 8,
    conditional: bool = False,
    dropout: float = 0.0,
) -> UNet2DModel:
    """A diffusers ``UNet2DModel`` with attention at the chosen resolution levels.

    Args:
        sample_size: Image side.
        in_channels: Input channels (more than the image's when conditions are concatenated).
        out_channels: Output channels; defaults to ``in_channels``.
        block_out_channels: Channels per resolution level (each level after the first halves the side).
        layers_per_block: ResNet layers per level.
        attention_levels: Indices of the levels that also self-attend.
        norm_num_groups: GroupNorm groups; must divide every entry of ``block_out_channels``.
        conditional: Accept a condition embedding of the time-embedding width through ``class_labels``
            (``class_embed_type="identity"``): the caller owns the embedding, so it can drop it for
            classifier-free guidance and perturb it for CEP.
        dropout: ResNet dropout.

    Raises:
        ConfigError: Inconsistent sizes.
    """
    channels = tuple(int(c) for c in block_out_channels)
    if any(c % norm_num_groups for c in channels):
        raise ConfigError(f"norm_num_groups={norm_num_groups} must divide every block_out_channels entry {channels}")
    if sample_size % 2 ** (len(channels) - 1):
        raise ConfigError(f"sample_size={sample_size} cannot be halved {len(channels) - 1} times")
    bad = [i for i in attention_levels if not 0 <= i < len(channels)]
    if bad:
        raise ConfigError(f"attention_levels {bad} out of range for {len(channels)} levels")
    down = tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(len(channels)))
    up = tuple("AttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(range(len(channels))))
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels or in_channels,
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=norm_num_groups,
        attention_head_dim=min(channels[-1], 32),
        class_embed_type="identity" if conditional else None,
        dropout=dropout,
    )


def condition_dim(unet: UNet2DModel) -> int:
    """Width of the embedding a conditional UNet adds to its time embedding."""
    return unet.time_embedding.linear_2.out_features
