"""BEIR folders and training pairs: round trips, the on-disk format, and one-line errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.core.errors import DataError
from keel.retrieval.data import (
    QrelsPairs,
    TrainingPair,
    add_hard_negatives,
    group_pairs,
    pairs_from_qrels,
    read_beir,
    read_training_pairs,
    write_training_pairs,
)


def test_round_trip_and_file_format(tiny_beir: Path) -> None:
    data = read_beir(tiny_beir)
    assert sorted(data.qrels) == ["dev", "test", "train"]
    assert len(data.corpus) == 10
    assert data.corpus["p-cat"].title == "Cats"
    assert data.corpus["p-cat"].full_text.startswith("Cats The cat is")
    assert data.qrels["train"]["q1"] == {"p-cat": 1, "p-cat-copy": 1}
    assert list(data.split_queries("test")) == ["q7", "q8", "q9"]
    lines = (tiny_beir / "qrels" / "train.tsv").read_text().splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    assert lines[1] == "q1\tp-cat\t1"
    first = json.loads((tiny_beir / "corpus.jsonl").read_text().splitlines()[0])
    assert first == {
        "_id": "p-cat",
        "title": "Cats",
        "text": "The cat is a small domesticated carnivorous mammal with soft fur.",
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: (d / "corpus.jsonl").unlink(), "no corpus.jsonl"),
        (
            lambda d: (d / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\nnot json\n'),
            "queries.jsonl:2: not JSON",
        ),
        (lambda d: (d / "corpus.jsonl").write_text('{"title": "t", "text": "x"}\n'), "corpus.jsonl:1: no _id"),
        (lambda d: (d / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq5\tp-nope\t1\n"), "'p-nope'"),
        (
            lambda d: (d / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq5\tp-csv\thigh\n"),
            "not an integer",
        ),
        (lambda d: (d / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq99\tp-csv\t1\n"), "'q99'"),
    ],
)
def test_bad_folders_raise_data_errors(tiny_beir: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    edit(tiny_beir)
    with pytest.raises(DataError, match=message):
        read_beir(tiny_beir)


def test_missing_split(tiny_beir: Path) -> None:
    with pytest.raises(DataError, match="no qrels for split 'valid'"):
        read_beir(tiny_beir, ["valid"])
    with pytest.raises(DataError, match="no such BEIR folder"):
        read_beir(tiny_beir / "nothing")


def test_training_pairs_round_trip_and_checks(tiny_beir: Path, tmp_path: Path) -> None:
    data = read_beir(tiny_beir)
    pairs = [TrainingPair("q text", ["p-cat"], ["p-dog", "p-csv"], "q1"), TrainingPair("other", ["p-zip"])]
    path = write_training_pairs(tmp_path / "pairs.jsonl", pairs)
    assert json.loads(path.read_text().splitlines()[0]) == {
        "query": "q text", "query_id": "q1", "positives": ["p-cat"], "negatives": ["p-dog", "p-csv"]
    }  # fmt: skip
    assert read_training_pairs(path, data.corpus) == pairs
    path.write_text('{"query": "x", "positives": ["p-unknown"]}\n')
    with pytest.raises(DataError, match="pairs.jsonl:1: passage id 'p-unknown'"):
        read_training_pairs(path, data.corpus)
    path.write_text('{"query": "x", "positives": []}\n')
    with pytest.raises(DataError, match="non-empty list"):
        read_training_pairs(path)


def test_pairs_from_qrels_and_pair_builders(tiny_beir: Path) -> None:
    data = read_beir(tiny_beir)
    from_qrels = pairs_from_qrels(data, "train")
    assert [p.query_id for p in from_qrels] == ["q1", "q2", "q3", "q4"]
    assert from_qrels[0].positives == ["p-cat", "p-cat-copy"]
    grouped = group_pairs(QrelsPairs("train")(data))
    assert [(p.query, p.positives) for p in grouped] == [(p.query, p.positives) for p in from_qrels]


def test_hard_negatives_skip_the_positives() -> None:
    pairs = [TrainingPair("a", ["d1"]), TrainingPair("b", ["d2", "d3"])]

    def search(queries: list[str], depth: int) -> list[list[str]]:
        assert depth == 4  # 2 negatives + at most 2 positives
        return [["d1", "d5", "d6", "d7"], ["d3", "d9", "d2", "d8"]]

    out = add_hard_negatives(pairs, search, 2)
    assert [p.negatives for p in out] == [["d5", "d6"], ["d9", "d8"]]
    assert pairs[0].negatives == [], "the input pairs are not modified"
