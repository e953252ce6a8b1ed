"""Plain torch parts of dense retrieval (no Lightning): the bi-encoder and its contrastive loss."""

from keel.retrieval.nn.biencoder import (
    POOLINGS,
    BiEncoder,
    biencoder_from_pretrained,
    biencoder_from_scratch,
    pool,
)
from keel.retrieval.nn.loss import (
    ContrastiveOutput,
    Gather,
    contrastive_loss,
    false_negative_mask,
    reciprocal_ranks,
)

__all__ = [
    "POOLINGS",
    "BiEncoder",
    "ContrastiveOutput",
    "Gather",
    "biencoder_from_pretrained",
    "biencoder_from_scratch",
    "contrastive_loss",
    "false_negative_mask",
    "pool",
    "reciprocal_ranks",
]
