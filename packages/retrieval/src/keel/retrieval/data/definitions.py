"""Definition -> headword retrieval from WordNet and GCIDE, written as a BEIR folder.

The task of keel-core's MiniLM experiment (:mod:`keel.core.distill.data`), over the whole
vocabulary: a query is a definition, the corpus is every headword of the task (one passage per
word, its text the word), and a definition is relevant to each headword it defines (synonyms share
definitions). Headwords are split into train/dev/test with keel-core's
:func:`~keel.core.distill.data.split_by_headword`, so a test word and all its senses are unseen in
training, and no training definition is also a dev or test definition.

WordNet pairs are keel-core's :func:`~keel.core.distill.data.definition_pairs`. GCIDE pairs come
from the Webster 1913 entries of the dictionary (:func:`gcide_definition_pairs`); its entries
copied from WordNet are skipped, since WordNet is its own source.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from keel.core.data.corpora import gcide, wordnet
from keel.core.distill.data import DefinitionPair, definition_pairs, split_by_headword, words
from keel.core.errors import ConfigError
from keel.retrieval.data.beir import Passage, Qrels, Query
from keel.retrieval.data.build import write_corpus_folder

SOURCES = ("wordnet", "gcide")

# A Webster entry opens with its capitalised headword and a comma: "Annex, v. t. [F. annexer ...] ..."
_WEBSTER_HEAD = re.compile(r"^(?P<head>[A-Z][a-z]+), (?P<body>.*)$", re.S)
_HEADWORD = re.compile(r"[a-z]{3,}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_SENSE_NUMBER = re.compile(r"(?:^|\s)\d{1,2}\.\s+")
# part-of-speech and grammar abbreviations at the start of a sense: "n.", "v. t.", "a.", "p. p." ...
_LEADING_ABBREVIATIONS = re.compile(r"^(?:(?:[a-z]{1,6}\.|&)\s*)+")
_LEADING_LABELS = re.compile(r"^(?:\([^()]*\)\s*)+")  # field labels such as "(Law)" or "(a)"
# cross-references and inflections, not definitions: "See Cetewale", "Same as ...", "imp. & p. p. of ..."
_NOT_A_DEFINITION = re.compile(r"^(?:see\b|same as\b|alt\. of\b|pl\. of\b|imp\.|p\. ?p\.|obs\.|syn\.)", re.I)
# variant spellings after the headword: "Embolismatic, Embolismatical, a. ..."
_VARIANT_HEADS = re.compile(r"^(?:[A-Z][a-z-]*\s*,\s*)+")


def webster_senses(entry: str) -> tuple[str, list[str]] | None:
    """The headword and the definitions of one GCIDE entry from Webster 1913.

    Each numbered sense gives its first sentence, without the etymology and usage labels in
    brackets, leading part-of-speech abbreviations and field labels, quoted examples ("...") and
    citations (``--Author``), and ``; as, ...`` examples.

    Returns:
        ``(headword, definitions)`` with the headword lower-cased, or ``None`` for an entry that is
        not a Webster entry (GCIDE's copies of WordNet start with a lower-case headword).
    """
    match = _WEBSTER_HEAD.match(entry.strip())
    if match is None:
        return None
    body = _BRACKETS.sub(" ", _VARIANT_HEADS.sub("", match["body"]).replace("\n", " "))
    senses = [s for s in _SENSE_NUMBER.split(body) if s.strip()]
    definitions = []
    for sense in senses:
        text = _LEADING_LABELS.sub("", _LEADING_ABBREVIATIONS.sub("", sense.strip()))
        text = re.split(r'--|"|;\s*as[,:]|;\s*as in\b', text, maxsplit=1)[0]
        text = re.split(r"(?<=[a-z)])\.(?:\s|$)", text, maxsplit=1)[0]  # the first sentence
        text = re.sub(r"\s+", " ", text).strip(" ;,.:")
        if text and not _NOT_A_DEFINITION.match(text):
            definitions.append(text)
    return match["head"].lower(), definitions


def gcide_definition_pairs(entries: Iterable[str] | None = None, min_words: int = 3) -> list[DefinitionPair]:
    """Every (definition, single-word headword) pair of GCIDE's Webster entries, de-duplicated.

    The filters match WordNet's (:func:`keel.core.distill.data.definition_pairs`): a headword is one
    lower-case word of at least three letters, a definition has at least ``min_words`` words and
    does not contain its headword.

    Args:
        entries: GCIDE entries as :func:`keel.core.data.corpora.gcide` yields them (read from
            ``/usr/share/dictd`` when omitted).
        min_words: The shortest definition kept.
    """
    pairs: dict[DefinitionPair, None] = {}
    for entry in gcide() if entries is None else entries:
        parsed = webster_senses(entry)
        if parsed is None or not _HEADWORD.fullmatch(parsed[0]):
            continue
        headword, definitions = parsed
        for text in definitions:
            if len(text.split()) >= min_words and headword not in words(text):
                pairs[DefinitionPair(text, headword)] = None
    return list(pairs)


def build_definitions(
    out: str | os.PathLike[str],
    sources: Sequence[str] = ("wordnet",),
    seed: int = 0,
    dev_words: int = 500,
    test_words: int = 1000,
    wordnet_dir: str = "/usr/share/wordnet",
    gcide_dir: str = "/usr/share/dictd",
) -> Path:
    """Write the definition -> headword task as a BEIR folder.

    Args:
        out: The folder to write.
        sources: ``wordnet`` and/or ``gcide``; pairs of both are pooled before the split.
        seed: Seed of the headword split.
        dev_words: Headwords held out for the dev split.
        test_words: Headwords held out for the test split.
        wordnet_dir: Where WordNet's ``data.*`` files are.
        gcide_dir: Where ``gcide.index`` and ``gcide.dict.dz`` are.

    Raises:
        ConfigError: On an unknown source.
        SourceUnavailable: If a source's Debian package is not installed (the message names it).
        DataError: If there are too few headwords for the held-out splits.
    """
    sources = list(dict.fromkeys(sources))
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ConfigError(f"definition sources must be among {', '.join(SOURCES)}, got {sources}")
    readers = {"wordnet": lambda: wordnet(wordnet_dir), "gcide": lambda: gcide(gcide_dir)}
    documents = {name: readers[name]() for name in sources}  # fail on a missing source before any work
    pooled: dict[DefinitionPair, None] = {}
    for name in sources:
        found = definition_pairs(documents[name]) if name == "wordnet" else gcide_definition_pairs(documents[name])
        pooled.update(dict.fromkeys(found))
    split = split_by_headword(list(pooled), seed, dev_words, test_words)

    by_split = {"train": split.train, "dev": split.val, "test": split.test}
    headwords = sorted({p.headword for pairs in by_split.values() for p in pairs})
    corpus = [Passage(f"w:{word}", word) for word in headwords]
    queries: list[Query] = []
    qrels: dict[str, Qrels] = {}
    for name, pairs in by_split.items():
        judged: Qrels = {}
        texts = sorted({p.definition for p in pairs})
        ids = {text: f"{name}-{i}" for i, text in enumerate(texts)}
        queries += [Query(ids[text], text, kind="definition") for text in texts]
        for pair in pairs:
            judged.setdefault(ids[pair.definition], {})[f"w:{pair.headword}"] = 1
        qrels[name] = judged
    settings = {"sources": sources, "seed": seed, "dev_words": dev_words, "test_words": test_words}
    name = "+".join(sources)
    return write_corpus_folder(out, name, corpus, queries, qrels, settings, {"pairs": len(pooled)})
