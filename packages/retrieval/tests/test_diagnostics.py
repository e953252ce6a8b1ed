"""The data measurements behind README figures, by hand on small folders, and the diagnose command."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from keel.core.distill.data import encode, pad, teacher_tokenizer
from keel.retrieval.cli import main
from keel.retrieval.data.beir import BeirData, Passage, Query
from keel.retrieval.diagnostics import (
    headword_overlap,
    pair_concentration,
    pseudo_query_room,
    teacher_layer_losses,
    top_share,
)
from keel.retrieval.nn import biencoder_from_pretrained


def test_top_share_by_hand() -> None:
    result = top_share(["a", "b", "a", "c", "a", "b"], 2)
    assert result == {"count": 6, "distinct": 3, "top_share": 5 / 6, "most_common": [["a", 3], ["b", 2]]}
    assert top_share([], 3)["top_share"] == 0.0


def test_pair_concentration_counts_queries_positives_and_sections() -> None:
    corpus = {pid: Passage(pid, text, "") for pid, text in [("p1", "same"), ("p2", "same"), ("p3", "other")]}
    graph = SimpleNamespace(sections={"page": {"SYNOPSIS": ["p1"], "DESCRIPTION": ["p2", "p3"]}})
    pairs = [("q", "p1"), ("q", "p2"), ("r", "p3"), ("s", Passage("ict:p3", "edited", ""))]
    result = pair_concentration(pairs, BeirData(corpus, {}), graph, top=1)
    assert result["pairs"] == 4
    assert result["queries"]["most_common"] == [["q", 2]]
    assert result["positive_texts"]["most_common"] == [["same", 2]]  # two passages, one text
    assert result["positive_sections"]["most_common"] == [["DESCRIPTION", 3]]  # ICT's edited p3 counts as p3
    assert result["positive_sections"]["top_share"] == 0.75


def test_headword_overlap_matches_five_letter_prefixes() -> None:
    corpus = {"w:run": Passage("w:run", "running"), "w:cat": Passage("w:cat", "catalogue")}
    queries = {"d1": Query("d1", "the act of a runner who is running"), "d2": Query("d2", "a list of items")}
    data = BeirData(corpus, queries, {"test": {"d1": {"w:run": 1}, "d2": {"w:cat": 1}}})
    assert headword_overlap(data, "test") == {"queries": 2, "share": 0.5}  # "running" in d1; nothing in d2


def test_pseudo_query_room_by_hand() -> None:
    corpus = {"p": Passage("p", "text"), "r": Passage("r", "text")}
    queries = {"q": Query("q", "open a file"), "s": Query("s", "close it")}
    data = BeirData(corpus, queries, {"train": {"q": {"p": 1, "r": 1}, "s": {"p": 1}}})
    candidates = {"p": ["open a file", "open the file now", "socket"], "r": ["socket"]}
    result = pseudo_query_room(data, lambda passages: [candidates[p.id] for p in passages], "train")
    # q/p: the real query is dropped, 2 left (one scores 0); q/r: 1 (scores 0); s/p: 3, all scoring 0, tied
    assert result["positives"] == 3
    assert result["candidates_per_positive"] == pytest.approx(6 / 3)
    assert result["fewer_than_3"] == pytest.approx(2 / 3)
    assert result["at_most_1"] == pytest.approx(1 / 3)
    assert result["all_tied"] == pytest.approx(1 / 3)
    assert result["candidates_scoring_0"] == pytest.approx(5 / 6)


def test_teacher_layer_losses_end_with_the_models_own_in_batch_loss(tiny_model_dir: Path, tiny_beir: Path) -> None:
    from keel.retrieval.data import read_beir

    data = read_beir(tiny_beir)
    model = biencoder_from_pretrained(str(tiny_model_dir), pooling="mean", temperature=0.05)
    tokenizer = teacher_tokenizer(str(tiny_model_dir))
    model.train()
    result = teacher_layer_losses(model, tokenizer, data, "train", batches=1, batch_size=4, max_length=16)
    assert model.training, "the model is left in the mode it was in"
    assert result["layers"] == 2
    (losses,), (weights,) = result["losses"], result["weights"]
    assert sum(weights) == pytest.approx(1.0)
    assert (weights[0] > weights[1]) == (losses[0] < losses[1])  # the better layer weighs more
    # the last layer's loss, through the model's own encode(): the batch is the 4 judged train queries
    queries = data.split_queries("train")
    chosen = random.Random(0).sample(sorted(data.qrels["train"]), 4)
    q = pad(encode(tokenizer, [queries[qid].text for qid in chosen], 16))
    p = pad(encode(tokenizer, [data.corpus[next(iter(data.qrels["train"][qid]))].full_text for qid in chosen], 16))
    model.eval()
    with torch.no_grad():
        scores = model.encode(*q, "query") @ model.encode(*p, "passage").T / 0.05
    assert losses[-1] == pytest.approx(F.cross_entropy(scores, torch.arange(4)).item(), rel=1e-4)


def test_diagnose_prints_json_last(tiny_beir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", "overlap", "--data", str(tiny_beir)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["queries"] == 3


def test_diagnose_builds_what_the_experiments_configs_build() -> None:
    """The pair builders and the pseudo-query expander come from the experiments' configs, with the seed given."""
    from keel.retrieval.capstone import PassageQueries
    from keel.retrieval.cli import _experiment_node
    from keel.retrieval.ict_bfs_wlp import BodyFirstSelection, WikiLinkPrediction

    bfs = _experiment_node("retrieval/ict_bfs_wlp", "data.pretrain.train_pairs.tasks.bfs", 3)
    assert isinstance(bfs, BodyFirstSelection)
    assert (bfs.seed, bfs.pairs_per_page) == (3, 8)
    wlp = _experiment_node("retrieval/ict_bfs_wlp", "data.pretrain.train_pairs.tasks.wlp", 0)
    assert isinstance(wlp, WikiLinkPrediction)
    assert wlp.pairs_per_link == 2
    expander = _experiment_node("retrieval/capstone", "data.expander", 0)
    assert isinstance(expander, PassageQueries)
    assert (expander.max_queries, expander.min_words, expander.max_words) == (10, 3, 24)
