"""A UNet plus the condition embedding it is trained with, as one plain torch module.

Keeping the embedding beside the UNet (rather than inside diffusers' class embedding) lets the
training loop drop it for classifier-free guidance (Ho & Salimans 2022) and perturb it for CEP, and
lets EMA average both together.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn

from keel.core.errors import ConfigError
from keel.diffusion.nn.unet import condition_dim


class ConditionalDenoiser(nn.Module):
    """``(x_t, t, condition) -> output`` for an unconditional, class- or embedding-conditional UNet.

    Args:
        unet: A ``UNet2DModel``; conditional ones must use ``class_embed_type="identity"``
            (:func:`keel.diffusion.nn.unet.build_unet` with ``conditional=True``).
        num_classes: Class conditioning with this many classes; index ``num_classes`` is the learned
            "no condition" token of classifier-free guidance.
        embedding_dim: Conditioning on external embeddings of this width (text or image features),
            linearly projected; a learned vector stands for "no condition".
    """

    def __init__(self, unet: UNet2DModel, num_classes: int | None = None, embedding_dim: int | None = None) -> None:
        super().__init__()
        if num_classes and embedding_dim:
            raise ConfigError("condition on classes or on embeddings, not both")
        conditional = unet.config.class_embed_type == "identity"
        if bool(num_classes or embedding_dim) != conditional:
            raise ConfigError(
                "a conditional denoiser needs a UNet built with conditional=True (class_embed_type identity), "
                "and an unconditional one a UNet without it"
            )
        self.unet = unet
        self.num_classes = num_classes
        self.class_embedding: nn.Embedding | None = None
        self.projection: nn.Linear | None = None
        if num_classes:
            self.class_embedding = nn.Embedding(num_classes + 1, condition_dim(unet))
            # DiT's LabelEmbedder initialisation (std 0.02), not torch's N(0, 1): the class signal starts
            # small beside the time embedding, and CEP's gamma is measured against embeddings of that scale
            nn.init.normal_(self.class_embedding.weight, std=0.02)
        elif embedding_dim:
            self.projection = nn.Linear(embedding_dim, condition_dim(unet))
            self.null_embedding = nn.Parameter(torch.zeros(condition_dim(unet)))

    @property
    def conditional(self) -> bool:
        """Whether the denoiser takes a condition."""
        return self.class_embedding is not None or self.projection is not None

    def embed(self, condition: torch.Tensor | None, drop: torch.Tensor | None = None) -> torch.Tensor | None:
        """Condition embeddings ``[N, d]``; rows where ``drop`` is true get the "no condition" embedding.

        Args:
            condition: Class indices ``[N]`` or embeddings ``[N, embedding_dim]``; ``None`` means
                unconditional for every row.
            drop: Boolean ``[N]``.
        """
        if not self.conditional:
            if condition is not None:
                raise ConfigError("this denoiser is unconditional but was given a condition")
            return None
        if condition is None:
            raise ConfigError("this denoiser is conditional: pass labels or embeddings (or drop them all)")
        if self.class_embedding is not None:
            labels = condition.long()
            if drop is not None:
                labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
            return self.class_embedding(labels)
        embedded = self.projection(condition.float())
        if drop is not None:
            embedded = torch.where(drop.unsqueeze(-1), self.null_embedding.expand_as(embedded), embedded)
        return embedded

    def null_condition(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """The embedding of "no condition" for ``batch`` rows (``None`` when unconditional)."""
        if self.class_embedding is not None:
            return self.class_embedding(torch.full((batch,), self.num_classes, device=device))
        if self.projection is not None:
            return self.null_embedding.expand(batch, -1)
        return None

    def forward(self, x: torch.Tensor, t: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's output for noisy ``x`` at timesteps ``t`` given an already computed embedding."""
        return self.unet(x, t, class_labels=embedding).sample
