"""CEP: condition embedding perturbation, a training option of :class:`DiffusionModule`.

Chen et al. 2024, "Slight Corruption in Pre-training Data Makes Better Diffusion Models", arXiv 2405.20494.
"""

from keel.diffusion.cep.perturbation import ConditionEmbeddingPerturbation

__all__ = ["ConditionEmbeddingPerturbation"]
