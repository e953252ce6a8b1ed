"""The paragraph-level pre-training tasks of Chang et al. (2020) as pair builders over linked pages.

Chang, Yu, Chang, Yang and Kumar, *Pre-training Tasks for Embedding-based Large-scale Retrieval*
(ICLR 2020): a two-tower model is pre-trained on (query, document) pairs that a task
derives from Wikipedia without labels. Here the pages are Linux man pages (keel's ``manpages``
corpus), whose ``SEE ALSO`` references play the part of Wikipedia's hyperlinks, or the pages of
the Python documentation (``pydoc``), whose cross-references are hyperlinks; both folders hold
``pages.jsonl`` and ``links.tsv`` (:class:`PageGraph`):

* **ICT**, inverse cloze task (:class:`InverseCloze`): the query is a random sentence of a passage;
  the positive is that passage without the sentence, under its page's title (the paper's
  ``d = title [SEP] passage``; keel's passages are encoded as ``title + " " + text``).
* **BFS**, body first selection (:class:`BodyFirstSelection`): the query is a random sentence of
  the page's *first section*; the positive a random other passage of the same page.
* **WLP**, wiki link prediction (:class:`WikiLinkPrediction`): the query is a random sentence of
  the first section of page A; the positive a random passage of a page B linked with A.

**First section.** Wikipedia's first section is the page's lead. A man page's ``NAME`` line is its
one-line summary and is the *downstream* query (summary -> DESCRIPTION), so it is never used here;
``SYNOPSIS`` is code. The first section is the first section with passages other than ``SYNOPSIS``
(nearly always ``DESCRIPTION``). A Python documentation page's first section is the prose of its
top section (a module page's introduction), or of the first section with prose; its API entries
(recorded under ``API``) never are.

**Sentences** (:func:`split_sentences`): a passage's lines are separate sentences (keel's man-page
text keeps each paragraph, list item and code line on its own line); within a line, a sentence
ends at ``.``, ``!`` or ``?`` (optionally followed by a closing quote or bracket) when whitespace and
then an upper-case letter, a digit or an opening quote or bracket follow, except after a known
abbreviation (``e.g.``, ``i.e.``, ``etc.`` ...). A query sentence must have at least ``min_words``
plain words (letters, with an apostrophe or hyphen inside and punctuation around), which rules out
code lines such as ``int CPU_COUNT_S(size_t setsize, cpu_set_t *set);``, and it must be distinctive:
a sentence found in more than ``max_copies`` passages of the corpus is boilerplate and never a
query (the man pages repeat "For an explanation of the terms used in this section, see
attributes(7)." in 468 passages; as an ICT query it would have hundreds of positives).

**Ambiguities resolved.** The paper pairs a BFS query with a random passage of the same page; here
that passage is never the one holding the query sentence (it would make BFS an ICT whose sentence was
left in). ICT removes every copy of the query sentence, so the query never appears verbatim in its
positive. WLP's positive page is one that links *to* the query's page (``direction="in"``: B's
``SEE ALSO`` cites A, as reviews of the paper describe the task; the paper released no code to
settle it); ``out`` and ``both`` are options. Every builder is deterministic: each random choice
is seeded by the builder's seed and the passage, page or link it is made for, so adding pages does
not move other pairs.

:class:`TaskMixture` unions the tasks' pairs in fixed proportions, and :class:`LabelledFraction`
keeps a fixed share of the labelled training queries for the fine-tuning stage (the paper's
1% / 5% / 80% training splits of ReQA).
"""

from __future__ import annotations

import csv
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel.core.errors import ConfigError, DataError
from keel.retrieval.data.beir import BeirData, Passage
from keel.retrieval.data.build import read_pages, stable_rank
from keel.retrieval.data.pydoc import API_SECTION

#: Words after which a full stop does not end a sentence (compared in lower case).
ABBREVIATIONS = frozenset({"e.g.", "i.e.", "etc.", "cf.", "vs.", "viz.", "approx.", "no.", "fig.", "mr.", "dr."})
#: A candidate sentence end: the punctuation (and a closing quote/bracket), whitespace, then a
#: capital, a digit or an opening quote/bracket.
_BOUNDARY = re.compile(r"(?<=[.!?])([\"')\]”’]?)\s+(?=[\"'(\[“‘A-Z0-9])")
#: Sections that are never a page's "first section": a man page's code (its NAME and SEE ALSO hold
#: no passages) and a documentation page's API entries.
NOT_FIRST = frozenset({"SYNOPSIS", API_SECTION})
DIRECTIONS = ("in", "out", "both")
#: A plain word: letters (an apostrophe or hyphen inside), with punctuation or brackets around.
_WORD = re.compile(r"^[(\[\"'“‘]?[A-Za-z][A-Za-z'’-]*[)\]\"'”’.,;:!?]*$")


def split_sentences(text: str) -> list[str]:
    """The sentences of a passage, by the rule in the module docstring."""
    sentences = []
    for line in text.splitlines():
        start = 0
        for match in _BOUNDARY.finditer(line):
            end = match.start() + len(match.group(1))
            words = line[start:end].split()
            if words and words[-1].lower().rstrip("\"')]”’") in ABBREVIATIONS:
                continue
            sentences.append(line[start:end].strip())
            start = match.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if s]


def is_query_sentence(sentence: str, min_words: int) -> bool:
    """Whether a sentence may be a query: at least ``min_words`` plain words (not code)."""
    return sum(bool(_WORD.match(word)) for word in sentence.split()) >= min_words


def sentence_copies(data: BeirData) -> Counter[str]:
    """For every sentence of the corpus, the number of passages it occurs in."""
    return Counter(sentence for passage in data.corpus.values() for sentence in set(split_sentences(passage.text)))


def _query_filter(data: BeirData, min_words: int, max_copies: int | None) -> Callable[[str], bool]:
    """Whether a sentence may be a query: prose (see :func:`is_query_sentence`) and not boilerplate."""
    copies = sentence_copies(data) if max_copies is not None else Counter()
    limit = max_copies if max_copies is not None else float("inf")
    return lambda sentence: copies[sentence] <= limit and is_query_sentence(sentence, min_words)


def _rng(*parts: object) -> random.Random:
    """A generator seeded by its parts (a string seed is hashed stably by ``random``)."""
    return random.Random(":".join(map(str, parts)))


@dataclass(frozen=True)
class PageGraph:
    """What BFS and WLP read besides the corpus: the pages' sections and their links.

    Attributes:
        sections: Page key (``pipe.7``, ``library/os.path``) -> section -> passage ids, in page order.
        splits: Page key -> its split (``train``, ``dev`` or ``test``).
        links: ``(source, target)`` page keys: ``source`` cites ``target`` (``SEE ALSO``, a
            cross-reference).
    """

    sections: dict[str, dict[str, list[str]]]
    splits: dict[str, str]
    links: list[tuple[str, str]]

    @classmethod
    def read(cls, folder: str | Path) -> PageGraph:
        """Read ``pages.jsonl`` and ``links.tsv`` of a built ``manpages`` or ``pydoc`` folder.

        Raises:
            DataError: If the folder has no pages or links.
        """
        records = list(read_pages(folder))
        path = Path(folder) / "links.tsv"
        if not path.is_file():
            raise DataError(f"{path}: missing (build the folder with keel retrieval build-corpus manpages|pydoc)")
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
        return cls(
            {r["page"]: r["passages"] for r in records},
            {r["page"]: r["split"] for r in records},
            [(row[0], row[1]) for row in rows if len(row) == 2],
        )

    def first_section(self, page: str) -> list[str]:
        """Passage ids of the page's first section (see the module docstring); empty if none."""
        for heading, ids in self.sections.get(page, {}).items():
            if heading not in NOT_FIRST and ids:
                return ids
        return []

    def passages(self, page: str) -> list[str]:
        """Every passage id of the page, in page order."""
        return [pid for ids in self.sections.get(page, {}).values() for pid in ids]


def _graph(data: BeirData) -> PageGraph:
    if data.root is None:
        raise DataError("BFS and WLP read pages.jsonl and links.tsv beside the corpus; read the folder from disk")
    return PageGraph.read(data.root)


def _pages(graph: PageGraph, splits: Sequence[str] | None) -> list[str]:
    return sorted(p for p in graph.sections if splits is None or graph.splits.get(p) in splits)


def _first_section_sentences(
    data: BeirData, graph: PageGraph, page: str, accept: Callable[[str], bool]
) -> list[tuple[str, str]]:
    """``(passage id, sentence)`` for every accepted sentence of the page's first section."""
    return [
        (pid, sentence)
        for pid in graph.first_section(page)
        for sentence in split_sentences(data.corpus[pid].text)
        if accept(sentence)
    ]


@dataclass(frozen=True)
class InverseCloze:
    """ICT: a random sentence of a passage -> the passage without it (one pair per passage).

    Args:
        seed: Seed of the sentence chosen in each passage.
        min_words: Shortest query sentence, in plain words.
        max_copies: A sentence in more passages than this is boilerplate, never a query (None: any).
        splits: Only passages of pages in these splits (needs ``pages.jsonl``); ``None`` reads every
            passage of the corpus (pre-training text; queries never come from the qrels).
    """

    seed: int = 0
    min_words: int = 4
    max_copies: int | None = 1
    splits: Sequence[str] | None = None

    def __call__(self, data: BeirData) -> Iterator[tuple[str, Passage]]:
        """Yield ``(sentence, passage without it)``; the new passage's id is ``ict:<passage id>``."""
        allowed = None
        if self.splits is not None:
            graph = _graph(data)
            allowed = {pid for page in _pages(graph, self.splits) for pid in graph.passages(page)}
        accept = _query_filter(data, self.min_words, self.max_copies)
        for pid, passage in data.corpus.items():
            if allowed is not None and pid not in allowed:
                continue
            sentences = split_sentences(passage.text)
            candidates = [s for s in dict.fromkeys(sentences) if accept(s)]
            if not candidates:
                continue
            query = _rng("ict", self.seed, pid).choice(candidates)
            rest = [s for s in sentences if s != query]  # every copy goes
            if rest:
                yield query, Passage(f"ict:{pid}", " ".join(rest), passage.title)


@dataclass(frozen=True)
class BodyFirstSelection:
    """BFS: a random sentence of a page's first section -> a random other passage of the same page.

    Args:
        seed: Seed of the choices made for each page.
        pairs_per_page: Pairs drawn per page (repeated draws are kept once).
        min_words: Shortest query sentence, in plain words.
        max_copies: A sentence in more passages than this is boilerplate, never a query (None: any).
        splits: Only pages of these splits; ``None`` uses every page.
    """

    seed: int = 0
    pairs_per_page: int = 1
    min_words: int = 4
    max_copies: int | None = 1
    splits: Sequence[str] | None = None

    def __call__(self, data: BeirData) -> Iterator[tuple[str, str]]:
        """Yield ``(first-section sentence, passage id of the same page)``."""
        graph = _graph(data)
        accept = _query_filter(data, self.min_words, self.max_copies)
        for page in _pages(graph, self.splits):
            sentences = _first_section_sentences(data, graph, page, accept)
            rng = _rng("bfs", self.seed, page)
            for _ in range(self.pairs_per_page if sentences else 0):
                source, query = rng.choice(sentences)
                others = [pid for pid in graph.passages(page) if pid != source]
                if others:
                    yield query, rng.choice(others)


@dataclass(frozen=True)
class WikiLinkPrediction:
    """WLP: a random sentence of page A's first section -> a random passage of a page B linked with A.

    Args:
        seed: Seed of the choices made for each link.
        direction: ``in``: B cites A in its ``SEE ALSO`` (the task as reviews of the paper describe
            it); ``out``: A cites B; ``both``: either (a link then gives a pair each way).
        pairs_per_link: Pairs drawn per link and direction (repeated draws are kept once).
        min_words: Shortest query sentence, in plain words.
        max_copies: A sentence in more passages than this is boilerplate, never a query (None: any).
        splits: Only links between pages of these splits; ``None`` uses every link.
    """

    seed: int = 0
    direction: str = "in"
    pairs_per_link: int = 1
    min_words: int = 4
    max_copies: int | None = 1
    splits: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, got '{self.direction}'")

    def __call__(self, data: BeirData) -> Iterator[tuple[str, str]]:
        """Yield ``(first-section sentence of A, passage id of B)``."""
        graph = _graph(data)
        pages = set(_pages(graph, self.splits))
        accept = _query_filter(data, self.min_words, self.max_copies)
        sentences_of: dict[str, list[tuple[str, str]]] = {}
        for source, target in graph.links:
            if source not in pages or target not in pages:
                continue
            # (query page A, positive page B); "in": the citing page's passage answers the cited page
            ends = {"in": [(target, source)], "out": [(source, target)]}.get(
                self.direction, [(target, source), (source, target)]
            )
            for query_page, passage_page in ends:
                if query_page not in sentences_of:
                    sentences_of[query_page] = _first_section_sentences(data, graph, query_page, accept)
                sentences = sentences_of[query_page]
                passages = graph.passages(passage_page)
                if not sentences or not passages:
                    continue
                rng = _rng("wlp", self.seed, query_page, passage_page)
                for _ in range(self.pairs_per_link):
                    yield rng.choice(sentences)[1], rng.choice(passages)


Pair = tuple[str, str | Passage]


def mixture_counts(available: Mapping[str, int], weights: Mapping[str, float], size: int | None) -> dict[str, int]:
    """How many pairs each task contributes so that the counts follow ``weights`` exactly.

    Counts are rounded by largest remainder, so they sum to the size.

    Args:
        available: Task name -> its number of distinct pairs.
        weights: Task name -> mixing weight; tasks with weight 0 contribute nothing.
        size: Pairs in the mixture; ``None``: the largest mixture in which no task repeats a pair.

    Raises:
        ConfigError: If a task has fewer pairs than its share of ``size``, or no weight is positive.
    """
    total = sum(weights.values())
    if total <= 0 or any(w < 0 for w in weights.values()):
        raise ConfigError(f"weights must be >= 0 with a positive sum, got {dict(weights)}")
    shares = {name: w / total for name, w in weights.items() if w > 0}
    if size is None:
        size = min(math.floor(available[name] / share + 1e-9) for name, share in shares.items())
    exact = {name: share * size for name, share in shares.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (counts[name] - exact[name], name))
    for name in by_remainder[: size - sum(counts.values())]:
        counts[name] += 1
    short = {name: (count, available[name]) for name, count in counts.items() if count > available[name]}
    if short:
        name, (count, have) = next(iter(short.items()))
        raise ConfigError(f"task {name} has {have:,} distinct pairs, fewer than its share {count:,} of size {size:,}")
    return counts


class TaskMixture:
    """The union of several pair builders' pairs, in fixed proportions (a :class:`PairBuilder`).

    Each task's distinct pairs are built, then a seeded sample of each, sized by
    :func:`mixture_counts`, is kept. A task with weight 0 is not built at all. It prints one
    ``data:`` line with the counts.

    Args:
        tasks: Task name -> pair builder.
        weights: Task name -> mixing weight (default 1 each); normalised to shares of the mixture.
        size: Pairs in the mixture; default the largest in which no task repeats a pair.
        seed: Seed of the samples.
    """

    def __init__(
        self,
        tasks: Mapping[str, Any],
        weights: Mapping[str, float] | None = None,
        size: int | None = None,
        seed: int = 0,
    ) -> None:
        weights = dict(weights) if weights is not None else dict.fromkeys(tasks, 1.0)
        unknown = sorted(set(weights) - set(tasks))
        if unknown:
            raise ConfigError(f"weights name unknown tasks {unknown}; tasks: {', '.join(tasks)}")
        if size is not None and size < 1:
            raise ConfigError(f"size must be >= 1, got {size}")
        self.tasks = dict(tasks)
        self.weights = {name: float(weights.get(name, 0.0)) for name in tasks}
        self.size = size
        self.seed = seed
        self.counts: dict[str, int] = {}

    def __call__(self, data: BeirData) -> list[Pair]:
        """The mixed pairs, task by task (the training loader shuffles them)."""
        active = {name: w for name, w in self.weights.items() if w > 0}
        pools = {name: list(dict.fromkeys(self.tasks[name](data))) for name in active}
        self.counts = mixture_counts({n: len(p) for n, p in pools.items()}, active, self.size)
        mixed: list[Pair] = []
        for name, pool in pools.items():
            mixed += _rng("mixture", self.seed, name).sample(pool, self.counts[name])
        shown = ", ".join(f"{name} {self.counts[name]:,} of {len(pool):,}" for name, pool in pools.items())
        print(f"data: pre-training pairs {len(mixed):,}: {shown}", flush=True)
        return mixed


@dataclass(frozen=True)
class LabelledFraction:
    """A fixed share of a split's judged queries with all their relevant passages (a :class:`PairBuilder`).

    Queries are ordered by a seeded hash of their id and the first ``round(fraction * n)`` (at least
    one) are kept, so a smaller fraction's queries are a subset of a larger one's.

    Args:
        fraction: Share of the split's queries, in (0, 1].
        split: The qrels split.
        seed: Seed of the order (fixed by default, so every run sees the same labelled queries).
        min_score: Lowest grade that counts as relevant.
    """

    fraction: float
    split: str = "train"
    seed: int = 0
    min_score: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")

    def query_ids(self, data: BeirData) -> list[str]:
        """The kept query ids, in hash order."""
        ordered = sorted(data.split_queries(self.split), key=lambda qid: stable_rank(self.seed, qid))
        return ordered[: max(1, round(self.fraction * len(ordered)))]

    def __call__(self, data: BeirData) -> Iterator[tuple[str, str]]:
        """Yield ``(query text, relevant passage id)`` for the kept queries."""
        for qid in self.query_ids(data):
            for pid, score in data.qrels[self.split][qid].items():
                if score >= self.min_score:
                    yield data.queries[qid].text, pid
