"""Frechet distance, k-NN precision/recall and the cached digit classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from keel.diffusion.eval.classifier import DigitClassifier, cached_digit_classifier
from keel.diffusion.eval.metrics import evaluate_images, knn_radii, manifold_coverage


def test_knn_radius_and_coverage_by_hand() -> None:
    # points on a line at 0, 1, 3, 7: nearest other points are 1, 1, 2, 4 away
    reference = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    torch.testing.assert_close(knn_radii(reference, k=1), torch.tensor([1.0, 1.0, 2.0, 4.0]))
    # 2.5 is inside 3's ball (radius 2); 12 is outside every ball (7's reaches 11); -0.5 inside 0's
    queries = torch.tensor([[2.5], [12.0], [-0.5], [11.0]])
    assert manifold_coverage(reference, queries, k=1).item() == pytest.approx(0.75)


def features_only_classifier() -> DigitClassifier:
    torch.manual_seed(0)
    return DigitClassifier(1, 10, width=8).eval()


def test_frechet_distance_is_zero_for_one_set_and_grows_with_a_shift() -> None:
    classifier = features_only_classifier()
    real = torch.rand(200, 1, 16, 16) * 2 - 1
    same = evaluate_images(classifier, real, real.clone())
    assert same["fd"] == pytest.approx(0.0, abs=1e-3)
    assert same["precision"] == same["recall"] == 1.0
    darker = evaluate_images(classifier, real, (real - 0.3).clamp(-1, 1))
    much_darker = evaluate_images(classifier, real, (real - 0.9).clamp(-1, 1))
    assert 0 < darker["fd"] < much_darker["fd"]
    assert much_darker["precision"] < same["precision"]


def test_accuracy_of_conditional_samples() -> None:
    classifier = features_only_classifier()
    images = torch.rand(50, 1, 16, 16)
    predicted = classifier(images).argmax(-1)
    scores = evaluate_images(classifier, images, images, fake_labels=predicted)
    assert scores["accuracy"] == 1.0
    assert evaluate_images(classifier, images, images, fake_labels=(predicted + 1) % 10)["accuracy"] == 0.0


def test_classifier_is_trained_once_and_reloaded(tmp_path: Path) -> None:
    images = torch.rand(64, 1, 16, 16) * 2 - 1
    labels = torch.arange(64) % 10
    settings = {"source": "test", "split_seed": 0}
    first = cached_digit_classifier(tmp_path, images, labels, settings, steps=3)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    again = cached_digit_classifier(tmp_path, images, labels, settings, steps=3)
    torch.testing.assert_close(first(images), again(images))
    cached_digit_classifier(tmp_path, images, labels, {**settings, "split_seed": 1}, steps=3)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2  # other data, other classifier
