"""Multi-view scoring by hand: max over a passage's expansions, or its mean embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from keel.core.distill.data import encode, pad, teacher_tokenizer
from keel.core.errors import ConfigError
from keel.retrieval.capstone import max_over_views, mean_view_vectors, multi_view_run
from keel.retrieval.data.beir import BeirData, Passage, Query
from keel.retrieval.nn import biencoder_from_pretrained


def test_max_over_views_by_hand() -> None:
    scores = np.array([[0.1, 0.9, 0.3, 0.2, 0.5, 0.4], [1.0, 0.0, 0.0, 0.7, 0.2, 0.1]])
    np.testing.assert_allclose(max_over_views(scores, [2, 1, 3]), [[0.9, 0.3, 0.5], [1.0, 0.0, 0.7]])
    with pytest.raises(ValueError, match="at least one view"):
        max_over_views(scores, [2, 0, 4])


def test_mean_view_vectors_by_hand() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(mean_view_vectors(vectors, [2, 1], normalize=False), [[0.5, 0.5], [3.0, 4.0]])
    np.testing.assert_allclose(
        mean_view_vectors(vectors, [2, 1], normalize=True), [[2**-0.5, 2**-0.5], [0.6, 0.8]], rtol=1e-6
    )


@pytest.fixture
def small_corpus() -> BeirData:
    corpus = {
        "p0": Passage("p0", "The open function opens a file and returns a file object.", "open"),
        "p1": Passage("p1", "A socket is an endpoint for network communication.", "socket"),
        "p2": Passage("p2", "Sorted returns a new sorted list.", "sorted"),
    }
    queries = {"q": Query("q", "how do I read a file"), "r": Query("r", "network endpoint")}
    return BeirData(corpus, queries, {"test": {"q": {"p0": 1}, "r": {"p1": 1}}})


def test_multi_view_run_scores_each_passage_by_its_best_view(tiny_model_dir: Path, small_corpus: BeirData) -> None:
    torch.manual_seed(0)
    model = biencoder_from_pretrained(str(tiny_model_dir))
    model.train()
    expansions = {"p0": ["read a file", "file object", "unused third"], "p2": ["sort a list"]}  # p1: none
    run = multi_view_run(
        model, small_corpus, "test", expansions, views=2, passage_max_length=32, expansion_max_length=8
    )
    assert model.training  # left in the mode it was in

    tokenizer = teacher_tokenizer(str(tiny_model_dir))
    model.eval()

    def embed(rows: list[list[int]]) -> torch.Tensor:
        ids, mask = pad(rows)
        with torch.no_grad():
            return model.encode(ids, mask, "passage")

    def views(pid: str, chosen: list[str]) -> torch.Tensor:
        (passage,) = encode(tokenizer, [small_corpus.corpus[pid].full_text], 32)
        rows = [passage + q[1:] for q in encode(tokenizer, chosen, 8)] or [passage]
        return embed(rows)

    ids, mask = pad(encode(tokenizer, ["how do I read a file", "network endpoint"], 64))
    with torch.no_grad():
        queries = model.encode(ids, mask, "query")
    expected = {
        "p0": (queries @ views("p0", ["read a file", "file object"]).T).max(1).values,  # the third is not a view
        "p1": (queries @ views("p1", []).T).max(1).values,
        "p2": (queries @ views("p2", ["sort a list"]).T).max(1).values,
    }
    for row, qid in enumerate(("q", "r")):
        for pid, scores in expected.items():
            assert run[qid][pid] == pytest.approx(float(scores[row]), abs=1e-5), (qid, pid)

    averaged = multi_view_run(model, small_corpus, "test", expansions, views=2, aggregation="mean",
                              passage_max_length=32, expansion_max_length=8)  # fmt: skip
    mean = torch.nn.functional.normalize(views("p0", ["read a file", "file object"]).mean(0), dim=-1)
    assert averaged["q"]["p0"] == pytest.approx(float(queries[0] @ mean), abs=1e-5)
    with pytest.raises(ConfigError, match="aggregation"):
        multi_view_run(model, small_corpus, "test", expansions, aggregation="sum")
