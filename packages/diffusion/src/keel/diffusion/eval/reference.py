"""The real images and the classifier an analysis scores generated samples against.

:func:`reference_set` rebuilds a finished run's DataModule from its ``resolved.yaml``, so the
reference is exactly the test split of the data the model was trained on, and trains (or loads from
the cache) the digit classifier on that data's training split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from keel.core.errors import ConfigError
from keel.core.instantiate import instantiate
from keel.diffusion.eval.classifier import DigitClassifier, accuracy, cached_digit_classifier
from keel.diffusion.eval.metrics import evaluate_images


@dataclass
class ReferenceSet:
    """Real test images plus the classifier that provides features and accuracy.

    Attributes:
        classifier: The digit classifier (eval mode).
        images: Real test images in model range.
        labels: Their labels.
        classifier_accuracy: The classifier's accuracy on ``images`` (how far to trust its features).
    """

    classifier: DigitClassifier
    images: torch.Tensor
    labels: torch.Tensor
    classifier_accuracy: float

    @property
    def size(self) -> int:
        """Number of real reference images."""
        return len(self.images)

    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """FD, precision, recall (and accuracy when ``labels`` are given) of generated ``images``."""
        return evaluate_images(self.classifier, self.images, images.float().cpu(), labels)


def reference_set(run_dir: str | Path, cache_dir: str | Path, classifier_steps: int = 1000) -> ReferenceSet:
    """The test split and a cached classifier for the data of the run in ``run_dir``.

    Raises:
        ConfigError: The run's data is not an image DataModule with train and test splits.
    """
    cfg = OmegaConf.load(Path(run_dir) / "resolved.yaml")
    data = instantiate(cfg.data)
    data.setup("fit")
    splits = getattr(data, "splits", None)
    if not splits or "train" not in splits or "test" not in splits:
        raise ConfigError(f"{run_dir}: the run's data has no train/test image splits to score against")
    train, test = splits["train"], splits["test"]
    settings = {key: cfg.data.get(key) for key in ("source", "path", "image_size", "split_seed", "test_fraction")}
    settings["limit_train"] = None  # the classifier always sees the whole training split
    if cfg.data.get("limit_train"):
        full = instantiate(cfg.data, limit_train=None)
        full.setup("fit")
        train = full.splits["train"]
    classifier = cached_digit_classifier(cache_dir, train.images, train.labels, settings, steps=classifier_steps)
    return ReferenceSet(classifier, test.images, test.labels, accuracy(classifier, test.images, test.labels))


def class_balanced_labels(num_samples: int, num_classes: int = 10) -> torch.Tensor:
    """Labels 0, 1, ..., K-1, 0, 1, ...: every class equally often (up to one)."""
    return torch.arange(num_samples) % num_classes


@torch.no_grad()
def sample_in_batches(
    module: torch.nn.Module,
    labels: torch.Tensor | None,
    num_samples: int,
    sampler: str,
    steps: int,
    guidance_scale: float,
    seed: int,
    batch_size: int = 500,
) -> torch.Tensor:
    """``module.sample`` over ``num_samples`` images in batches, from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, num_samples, batch_size):
        part = labels[start : start + batch_size] if labels is not None else None
        count = min(batch_size, num_samples - start)
        chunks.append(module.sample(count, part, sampler, steps, guidance_scale, generator))
    return torch.cat(chunks)
