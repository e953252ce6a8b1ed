"""What every corpus builder shares: stable split assignment, chunking, writing and the summary line."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from keel.core.data.tokenizer import write_text_atomic
from keel.core.errors import ConfigError, DataError
from keel.retrieval.data.beir import MANIFEST, SPLITS, Passage, Qrels, Query, write_beir

#: Each builder's output format, recorded in its manifests: bumped when the builder's output for the
#: same input changes, so that :func:`ensure_corpus` builds an older folder again (pydoc 2: the page
#: records and links of the linked-page pre-training tasks).
BUILD_FORMATS = {"wordnet": 1, "gcide": 1, "pydoc": 2, "manpages": 1}
#: The page records and page links that corpora with pages write beside their BEIR files.
PAGES_FILE, LINKS_FILE = "pages.jsonl", "links.tsv"
#: Builder settings that say where the sources are read from; a folder built elsewhere may differ in them.
SOURCE_SETTINGS = frozenset({"docs_dir", "man_dir", "dpkg_info", "wordnet_dir", "gcide_dir"})
CORPORA = ("wordnet", "gcide", "pydoc", "manpages")


def check_fractions(dev_fraction: float, test_fraction: float) -> None:
    """Raise a ConfigError unless both fractions are in [0, 1) and leave some training data."""
    if not (0 <= dev_fraction < 1 and 0 <= test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise ConfigError(f"dev_fraction={dev_fraction} and test_fraction={test_fraction} must be >= 0 and sum to < 1")


def stable_rank(*parts: object) -> int:
    """A 64-bit rank of ``parts`` joined by ``:``: the same on every machine and run, unlike ``hash``.

    Splits, page samples and labelled subsets are drawn by it, so what one item gets never depends
    on which other items exist.
    """
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign_split(group: str, seed: int, dev_fraction: float, test_fraction: float) -> str:
    """The split of a group (a page, a module, ...) from a seeded hash of its name.

    A group's split depends only on its name, the seed and the fractions, so it does not move when
    other groups are added or removed (a new Debian release of the data keeps old test pages in test).
    """
    u = stable_rank("keel-retrieval", seed, group) / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + dev_fraction:
        return "dev"
    return "train"


def check_max_pages(max_pages: int | None) -> None:
    """Raise a ConfigError unless ``max_pages`` is None (every page) or at least 1."""
    if max_pages is not None and max_pages < 1:
        raise ConfigError(f"max_pages must be >= 1 or None, got {max_pages}")


def sample_pages(names: Iterable[str], max_pages: int, seed: int) -> set[str]:
    """A seeded sample of ``max_pages`` page names, spread over the whole collection.

    Each name is ranked by a hash of the seed and the name, so a page's membership does not move
    when other pages are added and the same seed gives the same sample.
    """
    return set(sorted(names, key=lambda name: stable_rank("keel-retrieval:pages", seed, name))[:max_pages])


def chunk_paragraphs(paragraphs: Iterable[str], max_words: int) -> Iterator[str]:
    """Join consecutive paragraphs into chunks of at most ``max_words`` words.

    A paragraph longer than ``max_words`` is cut into pieces of ``max_words`` words (its line breaks
    are kept inside each piece, so code stays readable).
    """
    current: list[str] = []
    size = 0
    for paragraph in paragraphs:
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        words = len(paragraph.split())
        if current and size + words > max_words:
            yield "\n".join(current)
            current, size = [], 0
        if words > max_words:
            tokens = re.split(r"(\s+)", paragraph)  # words and the whitespace between them
            piece: list[str] = []
            count = 0
            for token in tokens:
                if token.strip():
                    if count == max_words:
                        yield "".join(piece).strip()
                        piece, count = [], 0
                    count += 1
                piece.append(token)
            current, size = ["".join(piece).strip()], count
            continue
        current.append(paragraph)
        size += words
    if current:
        yield "\n".join(current)


def write_page_graph(root: Path, records: Sequence[Mapping[str, Any]], links: Iterable[tuple[str, str]]) -> None:
    """Write ``pages.jsonl`` (one record per page) and ``links.tsv`` (``source``, ``target`` page keys).

    A record holds at least ``page`` (its key), ``title``, ``split`` and ``passages`` (section ->
    passage ids, in page order); the linked-page pre-training tasks read them
    (:class:`keel.retrieval.ict_bfs_wlp.PageGraph`). A builder writes them before
    :func:`write_corpus_folder`, so the folder's manifest, which marks it complete, goes first.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).unlink(missing_ok=True)
    write_text_atomic(root / PAGES_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_text_atomic(root / LINKS_FILE, "source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in links))


def read_pages(folder: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The page records (``pages.jsonl``) of a built corpus folder with pages (manpages, pydoc).

    Raises:
        DataError: If the folder has none.
    """
    path = Path(folder) / PAGES_FILE
    if not path.is_file():
        raise DataError(
            f"{path}: missing; the manpages and pydoc builders write it (keel retrieval build-corpus manpages|pydoc)"
        )
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def write_corpus_folder(
    out: str | os.PathLike[str],
    name: str,
    corpus: list[Passage],
    queries: list[Query],
    qrels: Mapping[str, Qrels],
    settings: Mapping[str, Any],
    extra_counts: Mapping[str, int] | None = None,
) -> Path:
    """Write a built corpus as a BEIR folder with its manifest, and print the one-line ``data:`` summary.

    Args:
        out: The folder.
        name: The builder's name (``wordnet``, ``pydoc``, ...).
        corpus: The passages.
        queries: The queries of every split (only those with qrels are written).
        qrels: ``train``, ``dev`` and ``test`` judgements.
        settings: The builder's arguments (recorded in the manifest).
        extra_counts: Builder-specific counts for the manifest and the summary (pages, links ...).
    """
    judged = {qid for split in qrels.values() for qid in split}
    queries = [q for q in queries if q.id in judged]
    counts = {
        "passages": len(corpus),
        "queries": {split: len(qrels.get(split, {})) for split in SPLITS},
        "qrels": {split: sum(len(j) for j in qrels.get(split, {}).values()) for split in SPLITS},
        **(extra_counts or {}),
    }
    manifest = {"builder": name, "format": BUILD_FORMATS.get(name, 1), "settings": dict(settings), "counts": counts}
    root = write_beir(out, corpus, queries, {split: qrels.get(split, {}) for split in SPLITS}, manifest)
    q, r = counts["queries"], counts["qrels"]
    extra = "".join(f", {k} {v:,}" for k, v in (extra_counts or {}).items())
    print(
        f"data: {name} -> {root}: {len(corpus):,} passages, queries train/dev/test "
        f"{q['train']:,}/{q['dev']:,}/{q['test']:,}, qrels {r['train']:,}/{r['dev']:,}/{r['test']:,}{extra}",
        flush=True,
    )
    return root


def build_corpus(name: str, out: str | os.PathLike[str], **settings: Any) -> Path:
    """Build one of the offline corpora, as ``keel retrieval build-corpus NAME``.

    Args:
        name: ``wordnet``, ``gcide``, ``pydoc`` or ``manpages``.
        out: The folder to write.
        **settings: Arguments of the corpus's builder (``max_pages=60`` for ``pydoc`` ...); its
            defaults when none are given.

    Raises:
        ConfigError: On an unknown name or setting.
        SourceUnavailable: If the Debian package the corpus is read from is not installed.
    """
    # imported here: the builders import this module
    from keel.retrieval.data.definitions import build_definitions
    from keel.retrieval.data.manpages import build_manpages
    from keel.retrieval.data.pydoc import build_pydoc

    builders = {"wordnet": build_definitions, "gcide": build_definitions, "pydoc": build_pydoc,
                "manpages": build_manpages}  # fmt: skip
    if name not in builders:
        raise ConfigError(f"unknown corpus '{name}'; corpora: {', '.join(CORPORA)}")
    builder = builders[name]
    unknown = sorted(set(settings) - set(inspect.signature(builder).parameters) | ({"sources"} & set(settings)))
    if unknown:
        raise ConfigError(f"the {name} builder has no setting(s) {unknown}")
    if builder is build_definitions:
        return build_definitions(out, [name], **settings)
    return builder(out, **settings)


def ensure_corpus(name: str, out: str | os.PathLike[str], settings: Mapping[str, Any] | None = None) -> Path:
    """``out`` holding corpus ``name`` built with ``settings``: built now when it is missing or unfinished.

    The manifest is written last, so a folder without one is built (again), and so is one an older
    format of the builder wrote (:data:`BUILD_FORMATS`; the same passages, queries and splits, and
    what the newer format adds). A folder with a current manifest is used as it is, after checking it
    was made by the same builder with the same settings (those naming where the sources were read
    from excepted).

    Raises:
        DataError: If the folder holds another corpus, or the same one built with other settings.
    """
    root, settings = Path(out), dict(settings or {})
    manifest = root / MANIFEST
    if not manifest.is_file():
        return build_corpus(name, root, **settings)
    recorded = json.loads(manifest.read_text(encoding="utf-8"))
    made_by = recorded.get("builder")
    if made_by != name:
        raise DataError(f"{root} holds the {made_by} corpus, not {name}; pick another data_dir")
    built_with = recorded.get("settings", {})
    # JSON has lists where a config may have tuples
    differ = {
        k: v for k, v in settings.items() if k not in SOURCE_SETTINGS and json.loads(json.dumps(v)) != built_with.get(k)
    }
    if differ:
        raise DataError(f"{root} was built with other settings than {differ}; pick another data_dir")
    if recorded.get("format", 1) < BUILD_FORMATS.get(name, 1):
        print(f"data: {root} was written by an older {name} builder; building it again", flush=True)
        # with the settings it was built with (a dictionary's "sources" is the corpus name itself)
        kept = {k: v for k, v in built_with.items() if k != "sources"}
        return build_corpus(name, root, **{**kept, **settings})
    return root
