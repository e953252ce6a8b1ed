"""Condition embedding perturbation (CEP), the training-time corruption of Chen et al. (2024).

The paper's analysis shows that slightly corrupted conditions during pre-training raise the entropy
of the learned distribution and bring it closer (in 2-Wasserstein distance) to the data; CEP gets
the same effect without corrupting the data, by adding noise to the condition embedding c that the
denoiser sees during training only:

    c' = c + xi,    Gaussian:  xi ~ N(0, (gamma / sqrt(d))^2 I)
                    uniform:   xi ~ U(-gamma / sqrt(d), gamma / sqrt(d))^d

with d the embedding dimension. The scale gamma / sqrt(d) keeps the perturbation's norm about gamma
whatever d is (for the Gaussian, E||xi||^2 = gamma^2). The paper's text was not available to check
the uniform variant's exact bounds; keel follows the two public trainers that implement CEP (a
Gaussian with standard deviation gamma / sqrt(d), and a uniform "scaled by the embedding dimension"),
reading the latter as the same bound gamma / sqrt(d). Sampling never perturbs (``training`` only).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from keel.core.errors import ConfigError

KINDS = ("gaussian", "uniform")


class ConditionEmbeddingPerturbation(nn.Module):
    """Adds CEP noise to ``[N, d]`` condition embeddings while ``self.training`` is true.

    Args:
        gamma: Perturbation scale; 0 turns CEP off.
        kind: ``gaussian`` or ``uniform``.
    """

    def __init__(self, gamma: float = 1.0, kind: str = "gaussian") -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"CEP kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if gamma < 0:
            raise ConfigError(f"CEP gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.kind = kind

    def scale(self, dim: int) -> float:
        """The per-coordinate scale gamma / sqrt(d)."""
        return self.gamma / math.sqrt(dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``embedding`` plus noise in training mode; unchanged in eval mode or when gamma is 0."""
        if not self.training or self.gamma == 0:
            return embedding
        scale = self.scale(embedding.shape[-1])
        if self.kind == "gaussian":
            noise = torch.randn_like(embedding) * scale
        else:
            noise = (torch.rand_like(embedding) * 2 - 1) * scale
        return embedding + noise

    def extra_repr(self) -> str:
        """Shown in the module's repr."""
        return f"gamma={self.gamma}, kind={self.kind}"
