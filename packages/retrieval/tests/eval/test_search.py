"""faiss indexes against numpy, BM25 rankings, and the one-line error for a missing extra."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from keel.core.errors import ConfigError, DataError, EnvironmentProblem
from keel.retrieval._optional import require
from keel.retrieval.eval import BM25, build_index, load_index, save_index, search


def _vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_flat_index_is_exact_inner_product_search(tmp_path: Path) -> None:
    passages, queries = _vectors(300, 0), _vectors(5, 1)
    index = build_index(passages, "flat")
    scores, rows = search(index, queries, 10)
    expected = np.argsort(-(queries @ passages.T), axis=1)[:, :10]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores[:, 0], (queries @ passages.T).max(1), rtol=1e-5)
    reloaded = load_index(save_index(index, tmp_path / "flat.faiss"))
    np.testing.assert_array_equal(search(reloaded, queries, 10)[1], rows)


def test_ivf_visiting_every_cell_equals_flat() -> None:
    passages, queries = _vectors(800, 2), _vectors(5, 3)
    ivf = build_index(passages, "ivf", nlist=8, nprobe=8)
    np.testing.assert_array_equal(search(ivf, queries, 20)[1], search(build_index(passages), queries, 20)[1])
    assert build_index(passages, "ivf", nprobe=1).nlist == 20, "default: at most n / 39 cells"


def test_bad_index_requests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="index kind"):
        build_index(_vectors(5, 0), "hnsw")
    with pytest.raises(DataError, match="shape"):
        build_index(np.zeros((0, 4), dtype=np.float32))
    (tmp_path / "junk.faiss").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a faiss index"):
        load_index(tmp_path / "junk.faiss")


def test_bm25_ranks_by_term_overlap_with_stemming() -> None:
    texts = ["the cat runs fast", "dogs bark loudly", "a cat and a dog", "stock prices rose"]
    bm25 = BM25(["cat-run", "dog", "cat-dog", "stock"], texts)
    ranked = bm25.search_ids(["running cats", "barking dog", "quantum"], 4)
    assert ranked[0][0] == "cat-run", "'running' and 'cats' stem to 'run' and 'cat'"
    assert ranked[1][:2] == ["dog", "cat-dog"]
    assert ranked[2] == [], "no shared term: no result"


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(EnvironmentProblem, match=r"pip install 'keel-retrieval\[faiss\]'"):
        require("faiss")
