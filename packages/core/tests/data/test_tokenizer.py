"""Tests of the split-file format, byte-level BPE training, exact round trips and tokenizer reuse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from keel.core.data.corpora import build_english_corpus
from keel.core.data.tokenizer import (
    DOC_SEPARATOR,
    EOT,
    check_text_file,
    iter_document_pieces,
    load_or_train_tokenizer,
    meta_path,
    read_documents,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)
from keel.core.errors import ConfigError, DataError

VOCAB = 600


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_english_corpus(tmp_path_factory.mktemp("corpus"), ["pydoc_topics"])


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    return train_bpe_tokenizer(corpus / "train.txt", VOCAB, tmp_path_factory.mktemp("tok") / "tok.json")


def _copy_train(corpus: Path, folder: Path) -> Path:
    """A small training file (the held-out splits' text), so the reuse tests can retrain quickly."""
    train = folder / "train.txt"
    train.write_bytes((corpus / "val.txt").read_bytes() + (corpus / "test.txt").read_bytes())
    return train


# -- split files ------------------------------------------------------------------------------


def test_read_documents_round_trips_separated_documents(tmp_path: Path) -> None:
    docs = ["first line\n\nsecond paragraph", "  indented\tcode\n    more", "last"]
    path = tmp_path / "x.txt"
    path.write_text("".join(f"{d}\n{DOC_SEPARATOR}\n" for d in docs), encoding="utf-8")
    assert list(read_documents(path)) == docs


def test_plain_text_file_is_one_document_and_long_ones_come_in_pieces(tmp_path: Path) -> None:
    path = tmp_path / "plain.txt"
    text = "".join(f"line {i}\n" for i in range(1000))
    path.write_text(text, encoding="utf-8")
    assert list(read_documents(path)) == [text]
    pieces = list(iter_document_pieces(path, max_chars=100))
    assert len(pieces) > 10
    assert all(len(p) <= 100 for p, _ in pieces)
    assert [ends for _, ends in pieces].count(True) == 1
    assert pieces[-1][1]
    assert "".join(p for p, _ in pieces) == text


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty"),
        (b"  \n\n\t", "only whitespace"),
        (b"text\x00\x01\x02 more", "binary"),
        ("caf\u00e9 latin-1".encode("latin-1"), "not UTF-8"),
        (b"ends inside \xe2\x82", "not UTF-8"),
    ],
)
def test_check_text_file_rejects_bad_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=problem) as info:
        check_text_file(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_check_text_file_rejects_missing_paths_and_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        check_text_file(tmp_path / "absent.txt")
    with pytest.raises(DataError, match="not a regular file"):
        check_text_file(tmp_path)
    good = tmp_path / "good.txt"
    good.write_text("héllo wörld\n", encoding="utf-8")
    assert check_text_file(good) == good


# -- tokenizers ------------------------------------------------------------------------------


def test_vocabulary_is_filled_and_has_the_special_token(trained) -> None:
    assert trained.get_vocab_size() == VOCAB
    eot = trained.token_to_id(EOT)
    assert eot is not None
    assert trained.encode(f"one{EOT}two").ids.count(eot) == 1


@pytest.mark.parametrize(
    "text",
    [
        "The if statement is used for conditional execution.",
        "  leading spaces,\ttabs\n\n\nand blank lines  \n",
        "naïve café — 東京 🙂 ∑x² ½",
        "def f(x):\n    return {'a': [1, 2.5e-3]}  # comment\n",
        "",
    ],
)
def test_decode_encode_round_trips_exactly(trained, text: str) -> None:
    assert trained.decode(trained.encode(text).ids) == text


def test_held_out_documents_round_trip_and_compress(trained, corpus: Path) -> None:
    for doc in read_documents(corpus / "val.txt"):
        ids = trained.encode(doc).ids
        assert trained.decode(ids) == doc
        assert len(ids) < len(doc.encode("utf-8")) / 2  # merges were learned, not just bytes


def test_training_skips_separator_lines(trained) -> None:
    # "<|endoftext|>" is in the training file 70+ times; had it been trained on, its pieces would be merged.
    pieces = "".join(token for token in trained.get_vocab() if token != EOT)
    assert "<|" not in pieces
    assert "endoftext" not in pieces


def test_small_vocabulary_is_rejected(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(ConfigError, match="too small"):
        train_bpe_tokenizer(corpus / "train.txt", 100, tmp_path / "t.json")


def test_bad_training_files_raise_data_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty.txt: file is empty"):
        train_bpe_tokenizer(tmp_path / "empty.txt", 300, tmp_path / "t.json")
    with pytest.raises(DataError, match="missing.txt: no such file"):
        load_or_train_tokenizer(tmp_path / "missing.txt", 300, tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


def test_load_or_train_reuses_a_matching_tokenizer(tmp_path: Path, corpus: Path) -> None:
    train, out = _copy_train(corpus, tmp_path), tmp_path / "tokenizer-bpe-300.json"
    first = load_or_train_tokenizer(train, 300, out)
    stamp = out.stat().st_mtime_ns
    meta = json.loads(meta_path(out).read_text())
    assert meta["vocab_size"] == 300
    assert meta["train_files"][0]["name"] == "train.txt"
    again = load_or_train_tokenizer(train, 300, out)
    assert out.stat().st_mtime_ns == stamp
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(first)
    # Same content with a new modification time (a copy, a touch): the content hash says reuse.
    os.utime(train, ns=(stamp + 10**9, stamp + 10**9))
    load_or_train_tokenizer(train, 300, out)
    assert out.stat().st_mtime_ns == stamp


def test_load_or_train_retrains_when_inputs_change(tmp_path: Path, corpus: Path) -> None:
    train, out = _copy_train(corpus, tmp_path), tmp_path / "tok.json"
    base = tokenizer_fingerprint(load_or_train_tokenizer(train, 300, out))
    with train.open("a", encoding="utf-8") as handle:
        handle.write("zyzzyva quokka " * 500 + f"\n{EOT}\n")
    changed = load_or_train_tokenizer(train, 300, out)
    assert tokenizer_fingerprint(changed) != base
    assert len(changed.encode(" zyzzyva").ids) == 1  # the new text was learned
    assert tokenizer_fingerprint(load_or_train_tokenizer(train, 320, out)) != tokenizer_fingerprint(changed)
    assert json.loads(meta_path(out).read_text())["vocab_size"] == 320


def test_corrupt_tokenizer_file_is_retrained(tmp_path: Path, corpus: Path) -> None:
    train, out = _copy_train(corpus, tmp_path), tmp_path / "tok.json"
    good = tokenizer_fingerprint(load_or_train_tokenizer(train, 300, out))
    out.write_text(out.read_text()[:100])
    assert tokenizer_fingerprint(load_or_train_tokenizer(train, 300, out)) == good
