"""Sample quality on the digit classifier's features: Frechet distance, precision/recall, accuracy.

- Frechet distance: torchmetrics' ``FrechetInceptionDistance`` with the feature extractor swapped for
  :meth:`DigitClassifier.features` (its ``feature=`` argument takes any module), so the statistics,
  the matrix square root and the distributed reduction are torchmetrics' own.
- Precision and recall: the k-nearest-neighbour manifold estimate of Kynkaanniemi et al. (2019),
  "Improved Precision and Recall Metric for Assessing Generative Models", Sec. 3: a fake sample is
  precise when it falls inside the k-NN ball of some real sample; a real sample is recalled when it
  falls inside the k-NN ball of some fake sample (k = 3, their default).
- Accuracy: the share of class-conditional samples the classifier assigns to the requested class.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.utilities import dim_zero_cat

from keel.diffusion.eval.classifier import FEATURE_DIM, DigitClassifier


class DigitFeatures(nn.Module):
    """The classifier's penultimate features, shaped as torchmetrics' custom FID extractor expects."""

    num_features = FEATURE_DIM

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.classifier.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 128]`` features of images in model range."""
        return self.classifier.features(images.float())


def frechet_distance(classifier: DigitClassifier) -> FrechetInceptionDistance:
    """A torchmetrics FID metric whose features come from ``classifier`` (images in model range)."""
    return FrechetInceptionDistance(feature=DigitFeatures(classifier), normalize=False, reset_real_features=False)


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (the radius of its k-NN ball)."""
    distances = torch.cdist(features, features)
    # k + 1 because each point is its own nearest neighbour at distance 0
    return distances.kthvalue(k + 1, dim=1).values


def manifold_coverage(reference: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Share of ``queries`` inside at least one k-NN ball of ``reference`` (Kynkaanniemi et al. eq. 1-2)."""
    radii = knn_radii(reference, k)
    inside = torch.cdist(queries, reference) <= radii.unsqueeze(0)
    return inside.any(dim=1).float().mean()


class PrecisionRecall(Metric):
    """Improved precision and recall (k-NN manifolds) on digit-classifier features.

    Args:
        classifier: Supplies the feature space.
        k: Neighbourhood size.
    """

    full_state_update = False

    def __init__(self, classifier: DigitClassifier, k: int = 3, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.extractor = DigitFeatures(classifier)
        self.k = k
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")

    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add a batch of real or generated images (model range)."""
        features = self.extractor(images).double()
        (self.real_features if real else self.fake_features).append(features)

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"precision", "recall"}``."""
        real, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)
        if min(len(real), len(fake)) <= self.k:
            raise RuntimeError(f"precision/recall needs more than k={self.k} real and generated samples")
        return {"precision": manifold_coverage(real, fake, self.k), "recall": manifold_coverage(fake, real, self.k)}


@torch.no_grad()
def evaluate_images(
    classifier: DigitClassifier,
    real: torch.Tensor,
    fake: torch.Tensor,
    fake_labels: torch.Tensor | None = None,
    batch_size: int = 500,
    k: int = 3,
) -> dict[str, float]:
    """Score generated images against real ones (both ``[N, C, H, W]`` in [-1, 1]).

    Returns:
        ``fd``, ``precision``, ``recall``, and ``accuracy`` when ``fake_labels`` are given.
    """
    fid = frechet_distance(classifier)
    pr = PrecisionRecall(classifier, k=k)
    for start in range(0, len(real), batch_size):
        fid.update(real[start : start + batch_size], real=True)
        pr.update(real[start : start + batch_size], real=True)
    for start in range(0, len(fake), batch_size):
        fid.update(fake[start : start + batch_size], real=False)
        pr.update(fake[start : start + batch_size], real=False)
    scores = {"fd": float(fid.compute()), **{name: float(v) for name, v in pr.compute().items()}}
    if fake_labels is not None:
        predictions = torch.cat(
            [classifier(fake[i : i + batch_size]).argmax(-1) for i in range(0, len(fake), batch_size)]
        )
        scores["accuracy"] = float((predictions == fake_labels).float().mean())
    return scores
