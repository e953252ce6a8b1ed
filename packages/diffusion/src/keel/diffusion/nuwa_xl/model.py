"""The Masked Temporal Diffusion (MTD) network of NUWA-XL (Yin et al. 2023, arXiv 2303.12346, Sec. 3).

MTD is the one backbone of both NUWA-XL models. It denoises an L-frame clip given *visual
conditions*, a subset of the clip's frames shown clean, and a binary mask saying which: the global
model sees none (it draws keyframes from prompts alone), a local model sees the first and last frame
(two keyframes from the level above) and fills the L - 2 frames between them.

Design choice (the official code is not public). The paper encodes frames with a temporal KL-VAE and
fuses the masked visual conditions into a 3-D UNet; the one public re-implementation injects them
through zero-initialised convolutions as a scale and shift of the UNet's features. Here the fusion is
the simplest one that carries the same information: the L noisy frames, the L condition frames (zero
where masked) and the L mask planes are stacked as the input channels of a 2-D UNet (a diffusers
``UNet2DModel`` built from a config by :func:`keel.diffusion.nn.unet.build_unet`), which predicts the
noise of all L frames as its output channels, added to the noisy frames themselves (a residual
connection: at high noise the noise nearly is the input, and copying 12 frames through the UNet's
first 32 channels is otherwise slow to learn).
Reasons: at 32x32 on a CPU a 2-D UNet over stacked frames costs about as much as one image model,
while a 3-D UNet costs L times more; every convolution of the first layer already sees every frame,
which is all the temporal reach a 12-frame clip needs; and pixels need no VAE at this size. The price
is a fixed L and no weight sharing across time, both acceptable for NUWA-XL, whose L is fixed.

Beside the timestep, two embeddings are added to the UNet's time embedding (``class_embed_type=
"identity"``): the *spacing* of the clip's frames in video frames (which level of the tree the call is
at, so one network serves every level), and the per-frame prompt ids (the paper's L prompts),
embedded and concatenated in frame order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from keel.core.errors import ConfigError
from keel.diffusion.nn.unet import build_unet


class MaskedTemporalUNet(nn.Module):
    """MTD on clips ``[B, L, C, H, W]``: frames, condition frames and masks stacked as UNet channels.

    Args:
        frames: L, frames per clip.
        channels: Channels per frame.
        sample_size: Frame side (a power of two at least ``2 ** (len(block_out_channels) - 1)``).
        block_out_channels: UNet widths, one per resolution.
        layers_per_block: ResNet layers per UNet block.
        attention_levels: Resolutions (indices into ``block_out_channels``) with self-attention.
        norm_num_groups: GroupNorm groups (must divide every width).
        num_conditions: Distinct per-frame prompt ids (0: no prompt embedding).
        condition_dim: Width of one frame's prompt embedding.
        input_skip: Add the noisy frames to the output, so the UNet learns only the correction.
    """

    def __init__(
        self,
        frames: int = 12,
        channels: int = 1,
        sample_size: int = 32,
        block_out_channels: Sequence[int] = (64, 128, 128),
        layers_per_block: int = 1,
        attention_levels: Sequence[int] = (2,),
        norm_num_groups: int = 32,
        num_conditions: int = 10,
        condition_dim: int = 16,
        input_skip: bool = True,
    ) -> None:
        super().__init__()
        widths = tuple(block_out_channels)
        self.frames, self.channels, self.sample_size = frames, channels, sample_size
        self.input_skip = input_skip
        embed_dim = widths[0] * 4  # the UNet's time-embedding width
        self.unet = build_unet(
            sample_size=sample_size,
            in_channels=frames * (2 * channels + 1),  # noisy frames, condition frames, mask planes
            out_channels=frames * channels,
            block_out_channels=widths,
            layers_per_block=layers_per_block,
            attention_levels=attention_levels,
            norm_num_groups=norm_num_groups,
            conditional=True,  # the spacing and prompt embeddings below, added to the time embedding
        )
        self.spacing_projection = Timesteps(widths[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.spacing_embedding = TimestepEmbedding(widths[0], embed_dim)
        self.condition_embedding = nn.Embedding(num_conditions, condition_dim) if num_conditions else None
        self.condition_projection = nn.Linear(frames * condition_dim, embed_dim) if num_conditions else None

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        condition_frames: torch.Tensor,
        visible: torch.Tensor,
        spacing: torch.Tensor,
        conditions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise of every frame of the noisy clips.

        Args:
            sample: Noisy clips ``[B, L, C, H, W]``.
            timestep: Diffusion timesteps ``[B]``.
            condition_frames: Clean frames ``[B, L, C, H, W]``; only the visible ones are read.
            visible: ``[B, L]`` bool, the frames given as visual condition.
            spacing: ``[B]`` frames of the video between two consecutive frames of the clip.
            conditions: Per-frame prompt ids ``[B, L]``, or None for none.

        Returns:
            The noise prediction ``[B, L, C, H, W]``.
        """
        batch, frames, channels, height, width = sample.shape
        if frames != self.frames or channels != self.channels:
            raise ConfigError(
                f"network built for {self.frames} frames of {self.channels} channels, got {tuple(sample.shape)}"
            )
        mask = visible.to(sample.dtype)[:, :, None, None, None]
        planes = mask.expand(-1, -1, 1, height, width)
        stacked = torch.cat([sample, condition_frames * mask, planes], dim=2).reshape(batch, -1, height, width)
        embedding = self.spacing_embedding(self.spacing_projection(spacing.to(sample.device)).to(sample.dtype))
        if self.condition_embedding is not None and conditions is not None:
            per_frame = self.condition_embedding(conditions.to(sample.device)).reshape(batch, -1)
            embedding = embedding + self.condition_projection(per_frame)
        output = self.unet(stacked, timestep, class_labels=embedding).sample
        output = output.reshape(batch, frames, channels, height, width)
        return output + sample if self.input_skip else output
