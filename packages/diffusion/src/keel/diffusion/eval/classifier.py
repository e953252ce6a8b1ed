"""The digit classifier whose features stand in for Inception in keel's Frechet distance.

Inception-v3 weights cannot be downloaded here, and on 28x28 digits they would be a poor feature
space anyway. Following the common practice for MNIST generative models (a classifier trained on the
real data provides the embedding, as in "FID on MNIST" evaluations), keel trains a small CNN on the
real training digits and uses its penultimate activations as features. The same network scores the
class accuracy of conditional samples.

The classifier is cached by its training settings (a safetensors file), so every experiment and
seed scores against the very same feature space.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from keel.core.errors import DataError

FEATURE_DIM = 128


class DigitClassifier(nn.Module):
    """A small CNN on ``[N, C, H, W]`` images in [-1, 1], any size >= 8 (global average pooling).

    Args:
        in_channels: Image channels.
        num_classes: Output classes.
        width: Channels of the first convolution (doubled twice).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width}

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
            )  # fmt: skip

        self.body = nn.Sequential(
            block(in_channels, width), nn.MaxPool2d(2),
            block(width, 2 * width), nn.MaxPool2d(2),
            block(2 * width, 4 * width),
        )  # fmt: skip
        self.project = nn.Linear(4 * width, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``[N, 128]``: the feature space of the Frechet distance."""
        pooled = self.body(images).mean(dim=(2, 3))
        return F.silu(self.project(pooled))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, num_classes]``."""
        return self.head(self.features(images))


def train_digit_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    augment: bool = True,
) -> DigitClassifier:
    """Train :class:`DigitClassifier` on real images (model range) with AdamW and a cosine schedule.

    Augmentation is a random shift of up to 2 pixels, so that the features do not hinge on exact
    pixel positions a generator may miss by one.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier(images.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(steps):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        batch = images[index]
        if augment:
            dx, dy = torch.randint(-2, 3, (2,), generator=generator).tolist()
            batch = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
        loss = F.cross_entropy(model(batch), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Share of ``images`` the classifier labels as ``labels``."""
    predictions = torch.cat([model(images[i : i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)])
    return (predictions == labels).float().mean().item()


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def cached_digit_classifier(
    cache_dir: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: dict,
    steps: int = 1500,
    seed: int = 0,
) -> DigitClassifier:
    """Load the classifier trained with ``settings`` from ``cache_dir``, training and saving it if absent.

    Args:
        cache_dir: Folder of cached classifiers (``digit_classifier-<hash>.safetensors``).
        images: Real training images (model range), used only when training.
        labels: Their labels.
        settings: What identifies the training data (source, split seed, image size): part of the key.
        steps: Training steps.
        seed: Training seed.
    """
    key = _fingerprint({**settings, "steps": steps, "seed": seed, "shape": list(images.shape[1:])})
    file = Path(cache_dir) / f"digit_classifier-{key}.safetensors"
    if file.is_file():
        tensors = load_file(file)
        config = json.loads(Path(file.with_suffix(".json")).read_text())
        model = DigitClassifier(**config)
        try:
            model.load_state_dict(tensors)
        except RuntimeError as err:
            raise DataError(f"{file} does not hold a DigitClassifier: {err}") from err
        return model.eval()
    model = train_digit_classifier(images, labels, steps=steps, seed=seed)
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(temporary))
    file.with_suffix(".json").write_text(json.dumps(model.config))
    temporary.replace(file)  # atomic: a crashed run never leaves half a classifier behind
    return model
