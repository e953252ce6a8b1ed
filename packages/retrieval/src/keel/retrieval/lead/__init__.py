"""LEAD (Sun et al., WSDM 2024), *Liberal Feature-based Distillation for Dense Retrieval*.

- :mod:`~keel.retrieval.lead.model`: per-layer pooled embeddings, in-batch score distributions,
  their KL, the sorted layer draws and the teacher-loss layer weights (plain torch), and a student
  cut from the teacher's first layers.
- :mod:`~keel.retrieval.lead.module`: :class:`LEADModule`, a bi-encoder module whose training loss
  adds LEAD's layer-wise and final-layer distillation from a frozen teacher.
"""

from keel.retrieval.lead.model import (
    LayerDistillation,
    keep_first_layers,
    layer_distillation,
    layer_embeddings,
    layer_weights,
    masked_scores,
    num_layers,
    sample_layers,
    score_kl,
    truncated_biencoder,
)
from keel.retrieval.lead.module import LEADModule

__all__ = [
    "LEADModule",
    "LayerDistillation",
    "keep_first_layers",
    "layer_distillation",
    "layer_embeddings",
    "layer_weights",
    "masked_scores",
    "num_layers",
    "sample_layers",
    "score_kl",
    "truncated_biencoder",
]
