"""Inner-product search over embeddings with faiss: exact (flat) or inverted-file (IVF) indexes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from keel.core.errors import ConfigError, DataError
from keel.retrieval._optional import require

INDEX_KINDS = ("flat", "ivf")


def build_index(embeddings: np.ndarray, kind: str = "flat", nlist: int | None = None, nprobe: int = 8) -> Any:
    """A faiss inner-product index holding ``embeddings`` (row ``i`` gets id ``i``).

    Args:
        embeddings: ``[n, d]`` passage embeddings.
        kind: ``flat`` (exact search) or ``ivf`` (k-means cells; approximate, faster on large corpora).
        nlist: IVF only: number of cells (default about ``4 * sqrt(n)``, at most ``n / 39`` so that
            faiss has its 39 training points per centroid).
        nprobe: IVF only: cells visited per query.

    Raises:
        ConfigError: On an unknown kind.
        DataError: If there are no embeddings.
    """
    faiss = require("faiss")
    if kind not in INDEX_KINDS:
        raise ConfigError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got '{kind}'")
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise DataError(f"cannot index embeddings of shape {vectors.shape}")
    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        cells = nlist or max(1, min(int(4 * len(vectors) ** 0.5), len(vectors) // 39))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(nprobe, cells)
    index.add(vectors)
    return index


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best rows for each query: ``(scores, row ids)``, both ``[queries, k]``, best first.

    Missing results (fewer than ``k`` rows, or an IVF probe that found fewer) have id -1.
    """
    vectors = np.ascontiguousarray(queries, dtype=np.float32)
    return index.search(vectors, min(k, index.ntotal))


def save_index(index: Any, path: str | os.PathLike[str]) -> Path:
    """Write an index to ``path`` (a temporary file renamed into place)."""
    faiss = require("faiss")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)
    return path


def load_index(path: str | os.PathLike[str]) -> Any:
    """Read an index written by :func:`save_index`.

    Raises:
        DataError: If the file is missing or not a faiss index.
    """
    faiss = require("faiss")
    if not Path(path).is_file():
        raise DataError(f"{path}: no such index file")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as err:
        raise DataError(f"{path}: not a faiss index ({str(err).splitlines()[0][:120]})") from None
