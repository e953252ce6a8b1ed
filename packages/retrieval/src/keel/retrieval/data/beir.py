"""BEIR folders and training pairs with hard negatives: reading, writing, checking.

A BEIR folder (the layout of the BEIR benchmark, read by its ``GenericDataLoader``)::

    corpus.jsonl          {"_id": "d1", "title": "...", "text": "..."}   one passage per line
    queries.jsonl         {"_id": "q1", "text": "..."}                   every split's queries
    qrels/train.tsv       query-id <TAB> corpus-id <TAB> score, after a header line
    qrels/dev.tsv
    qrels/test.tsv

Every split searches the whole corpus. keel's builders also write ``manifest.json`` (how the folder
was built and its counts); extra keys in a query line (``"kind"``, ``"group"``) are ignored by BEIR.

Training pairs (one JSON object per line)::

    {"query": "...", "query_id": "q1", "positives": ["d1"], "negatives": ["d7", "d9"]}

``negatives`` are hard negatives (e.g. BM25's top passages that are not relevant); ``query_id`` is
optional. :func:`pairs_from_qrels` turns a split's qrels into pairs; a *pair builder* (any
callable ``BeirData -> Iterable[(query text, passage id or Passage)]``, such as the self-supervised
tasks of a method folder) makes pairs from the corpus alone.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from keel.core.errors import DataError

SPLITS = ("train", "dev", "test")
QRELS_HEADER = ("query-id", "corpus-id", "score")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Passage:
    """One corpus entry."""

    id: str
    text: str
    title: str = ""

    @property
    def full_text(self) -> str:
        """``title + " " + text``, the input BEIR's dense and sparse baselines index."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass(frozen=True)
class Query:
    """One query; ``kind`` and ``group`` are keel's optional annotations (what made it, its split unit)."""

    id: str
    text: str
    kind: str = ""
    group: str = ""


Qrels = dict[str, dict[str, int]]  # query id -> passage id -> relevance grade


@dataclass
class BeirData:
    """A BEIR folder in memory.

    Attributes:
        corpus: Passages by id, in file order.
        queries: Queries by id, in file order.
        qrels: Split name -> query id -> passage id -> grade.
        root: The folder it was read from, if any.
    """

    corpus: dict[str, Passage]
    queries: dict[str, Query]
    qrels: dict[str, Qrels] = field(default_factory=dict)
    root: Path | None = None

    def split_queries(self, split: str) -> dict[str, Query]:
        """The queries that have judgements in ``split``, in qrels order.

        Raises:
            DataError: If the folder has no qrels for ``split``.
        """
        if split not in self.qrels:
            where = f"{self.root}: " if self.root else ""
            raise DataError(f"{where}no qrels for split '{split}' (have: {', '.join(sorted(self.qrels)) or 'none'})")
        return {qid: self.queries[qid] for qid in self.qrels[split]}


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object")
            yield number, record


def _id(record: dict[str, Any], path: Path, number: int) -> str:
    value = record.get("_id")
    if value is None or str(value) == "":
        raise DataError(f"{path}:{number}: no _id")
    return str(value)


def read_corpus(path: str | os.PathLike[str]) -> dict[str, Passage]:
    """Read ``corpus.jsonl``.

    Raises:
        DataError: If the file is missing, a line is not JSON, or an id is missing or repeated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no corpus.jsonl (not a BEIR folder?)")
    corpus: dict[str, Passage] = {}
    for number, record in _jsonl(path):
        pid = _id(record, path, number)
        if pid in corpus:
            raise DataError(f"{path}:{number}: passage id {pid!r} repeated")
        corpus[pid] = Passage(pid, str(record.get("text", "")), str(record.get("title", "") or ""))
    if not corpus:
        raise DataError(f"{path}: empty corpus")
    return corpus


def read_queries(path: str | os.PathLike[str]) -> dict[str, Query]:
    """Read ``queries.jsonl``.

    Raises:
        DataError: If the file is missing, a line is not JSON, or an id is missing or repeated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no queries.jsonl (not a BEIR folder?)")
    queries: dict[str, Query] = {}
    for number, record in _jsonl(path):
        qid = _id(record, path, number)
        if qid in queries:
            raise DataError(f"{path}:{number}: query id {qid!r} repeated")
        queries[qid] = Query(
            qid, str(record.get("text", "")), str(record.get("kind", "")), str(record.get("group", ""))
        )
    return queries


def read_qrels(path: str | os.PathLike[str]) -> Qrels:
    """Read a qrels TSV (header line, then ``query-id corpus-id score``).

    Raises:
        DataError: If a row does not have three fields or its score is not an integer.
    """
    path = Path(path)
    qrels: Qrels = {}
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header is None:
            return qrels
        for number, row in enumerate(rows, 2):
            if not row:
                continue
            if len(row) != 3:
                raise DataError(f"{path}:{number}: expected query-id, corpus-id, score; got {len(row)} fields")
            try:
                score = int(row[2])
            except ValueError:
                raise DataError(f"{path}:{number}: score {row[2]!r} is not an integer") from None
            qrels.setdefault(row[0], {})[row[1]] = score
    return qrels


def read_beir(folder: str | os.PathLike[str], splits: Sequence[str] | None = None) -> BeirData:
    """Read a BEIR folder and check that its qrels name only known queries and passages.

    Args:
        folder: The folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``.
        splits: The qrels to read (default: every ``qrels/*.tsv``).

    Raises:
        DataError: On a missing or malformed file, or a qrel naming an unknown id.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: no such BEIR folder")
    corpus = read_corpus(root / "corpus.jsonl")
    queries = read_queries(root / "queries.jsonl")
    names = list(splits) if splits is not None else sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
    qrels: dict[str, Qrels] = {}
    for split in names:
        path = root / "qrels" / f"{split}.tsv"
        if not path.is_file():
            raise DataError(f"{path}: no qrels for split '{split}'")
        qrels[split] = read_qrels(path)
        for qid, judged in qrels[split].items():
            if qid not in queries:
                raise DataError(f"{path}: query id {qid!r} is not in queries.jsonl")
            unknown = next((pid for pid in judged if pid not in corpus), None)
            if unknown is not None:
                raise DataError(f"{path}: corpus id {unknown!r} (query {qid!r}) is not in corpus.jsonl")
    return BeirData(corpus, queries, qrels, root)


def _write_atomic(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as handle:
            for line in lines:
                handle.write(line)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_beir(
    folder: str | os.PathLike[str],
    corpus: Iterable[Passage],
    queries: Iterable[Query],
    qrels: Mapping[str, Qrels],
    manifest: Mapping[str, Any] | None = None,
) -> Path:
    """Write a BEIR folder (each file written to a temporary name, then renamed).

    Args:
        folder: Created if missing.
        corpus: The passages.
        queries: The queries of every split.
        qrels: Split name -> query id -> passage id -> grade.
        manifest: Written as ``manifest.json`` last, so its presence marks a complete folder.
    """
    root = Path(folder)
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        (root / MANIFEST).unlink(missing_ok=True)  # an interrupted rebuild must not look complete

    def corpus_lines() -> Iterator[str]:
        for p in corpus:
            yield json.dumps({"_id": p.id, "title": p.title, "text": p.text}, ensure_ascii=False) + "\n"

    def query_lines() -> Iterator[str]:
        for q in queries:
            record = {"_id": q.id, "text": q.text}
            record |= {k: v for k, v in (("kind", q.kind), ("group", q.group)) if v}
            yield json.dumps(record, ensure_ascii=False) + "\n"

    _write_atomic(root / "corpus.jsonl", corpus_lines())
    _write_atomic(root / "queries.jsonl", query_lines())
    for split, judged in qrels.items():
        rows = ("\t".join(map(str, row)) + "\n" for row in _qrel_rows(judged))
        _write_atomic(root / "qrels" / f"{split}.tsv", ["\t".join(QRELS_HEADER) + "\n", *rows])
    if manifest is not None:
        _write_atomic(root / MANIFEST, [json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"])
    return root


def _qrel_rows(qrels: Qrels) -> Iterator[tuple[str, str, int]]:
    for qid, judged in qrels.items():
        for pid, score in judged.items():
            yield qid, pid, int(score)


# ---------------------------------------------------------------------------------------------------
# Training pairs


@dataclass
class TrainingPair:
    """A query with its positive passage ids and hard-negative ids."""

    query: str
    positives: list[str]
    negatives: list[str] = field(default_factory=list)
    query_id: str | None = None


def write_training_pairs(path: str | os.PathLike[str], pairs: Iterable[TrainingPair]) -> Path:
    """Write training pairs as JSON lines (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def lines() -> Iterator[str]:
        for pair in pairs:
            record: dict[str, Any] = {"query": pair.query}
            if pair.query_id is not None:
                record["query_id"] = pair.query_id
            record |= {"positives": pair.positives, "negatives": pair.negatives}
            yield json.dumps(record, ensure_ascii=False) + "\n"

    _write_atomic(path, lines())
    return path


def read_training_pairs(
    path: str | os.PathLike[str], corpus: Mapping[str, Passage] | None = None
) -> list[TrainingPair]:
    """Read training pairs, checking their passage ids against ``corpus`` when given.

    Raises:
        DataError: If the file is missing, a line is malformed, a pair has no positive, or an id is
            not in the corpus.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such training-pairs file")
    pairs = []
    for number, record in _jsonl(path):
        query, positives = record.get("query"), record.get("positives")
        negatives = record.get("negatives", [])
        if not isinstance(query, str) or not query.strip():
            raise DataError(f"{path}:{number}: 'query' must be a non-empty string")
        if isinstance(positives, str):
            positives = [positives]
        if not isinstance(positives, list) or not positives or not isinstance(negatives, list):
            raise DataError(f"{path}:{number}: 'positives' must be a non-empty list of ids, 'negatives' a list")
        positives, negatives = [str(p) for p in positives], [str(n) for n in negatives]
        if corpus is not None:
            unknown = next((pid for pid in positives + negatives if pid not in corpus), None)
            if unknown is not None:
                raise DataError(f"{path}:{number}: passage id {unknown!r} is not in the corpus")
        qid = record.get("query_id")
        pairs.append(TrainingPair(query, positives, negatives, None if qid is None else str(qid)))
    if not pairs:
        raise DataError(f"{path}: no training pairs")
    return pairs


class PairBuilder(Protocol):
    """Makes (query text, positive passage) pairs from a BEIR folder.

    Supervised pairs come from qrels (:class:`QrelsPairs`); self-supervised tasks (e.g. inverse cloze
    or linked-page prediction in a method folder) derive them from the corpus alone. A positive is
    the id of a corpus passage, or a new :class:`Passage` the builder made (the inverse cloze task's
    passage without its query sentence), which joins the training corpus (see :func:`group_pairs`).
    """

    def __call__(self, data: BeirData) -> Iterable[tuple[str, str | Passage]]:
        """Yield ``(query text, passage id or new passage)`` pairs."""
        ...


@dataclass(frozen=True)
class QrelsPairs:
    """The judged pairs of one split: every (query, passage) with a grade of at least ``min_score``."""

    split: str = "train"
    min_score: int = 1

    def __call__(self, data: BeirData) -> Iterator[tuple[str, str]]:
        """Yield ``(query text, passage id)`` for each relevant judgement of the split."""
        for qid, judged in data.qrels.get(self.split, {}).items():
            for pid, score in judged.items():
                if score >= self.min_score:
                    yield data.queries[qid].text, pid


def group_pairs(
    pairs: Iterable[tuple[str, str | Passage]], corpus: MutableMapping[str, Passage] | None = None
) -> list[TrainingPair]:
    """Group ``(query text, positive)`` pairs by query text (first-seen order): one pair per query.

    Args:
        pairs: Positives are passage ids, or new :class:`Passage` objects a pair builder made.
        corpus: Where new passages are added under their ids (needed when there are any).

    Raises:
        DataError: If a new passage comes without a corpus, or reuses an id with a different text.
    """
    grouped: dict[str, list[str]] = {}
    for query, positive in list(pairs):  # a lazy builder may be reading the corpus that grows here
        if isinstance(positive, Passage):
            if corpus is None:
                raise DataError(f"a pair builder made passage {positive.id!r} but no corpus takes new passages")
            known = corpus.setdefault(positive.id, positive)
            if known != positive:
                raise DataError(f"a pair builder made passage {positive.id!r}, an id the corpus already uses")
            positive = positive.id
        positives = grouped.setdefault(query, [])
        if positive not in positives:
            positives.append(positive)
    return [TrainingPair(query, positives) for query, positives in grouped.items()]


def pairs_from_qrels(data: BeirData, split: str = "train", min_score: int = 1) -> list[TrainingPair]:
    """One training pair per judged query of ``split`` with all its relevant passages, no negatives yet."""
    pairs = []
    for qid, judged in data.split_queries(split).items():
        positives = [pid for pid, score in data.qrels[split][qid].items() if score >= min_score]
        if positives:
            pairs.append(TrainingPair(judged.text, positives, [], qid))
    return pairs


def add_hard_negatives(
    pairs: Sequence[TrainingPair],
    search: Callable[[list[str], int], list[list[str]]],
    count: int,
    depth: int | None = None,
) -> list[TrainingPair]:
    """Attach to each pair the ``count`` best-ranked passages that are not among its positives.

    Args:
        pairs: The pairs to extend (not modified).
        search: Ranks passage ids for a list of query texts, best first, ``depth`` per query
            (e.g. :meth:`keel.retrieval.eval.BM25.search_ids`).
        count: Hard negatives per pair.
        depth: How deep to search (default ``count`` plus the largest number of positives).
    """
    depth = depth or count + max((len(p.positives) for p in pairs), default=0)
    ranked = search([p.query for p in pairs], depth)
    out = []
    for pair, ids in zip(pairs, ranked, strict=True):
        positives = set(pair.positives)
        negatives = [pid for pid in ids if pid not in positives][:count]
        out.append(TrainingPair(pair.query, list(pair.positives), negatives, pair.query_id))
    return out
