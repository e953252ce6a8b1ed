"""Question -> passage retrieval over the Python 3.11 documentation (Debian's ``python3.11-doc``).

Passages are cut from the HTML pages along their structure:

* **API entries** (``<dl class="py function">``, method, class, attribute, data, exception ...): one
  passage per entry, titled with its qualified name (``os.path.abspath``), its text the signature
  and the description (a class's methods are their own entries, not part of the class's passage);
* **section prose**: the paragraphs of each section outside its subsections and API entries,
  joined into chunks of at most ``max_words`` words, titled with the page title. A section's own
  heading is left out of its text, so a heading used as a query is not copied into its answer.

Two kinds of queries, both written by the documentation's authors rather than generated:

* ``summary``: the first sentence of an API entry's description (``Return a normalized
  absolutized version of the pathname path.``), relevant to that entry. The sentence is removed
  from the entry's passage, so the query is never a substring of its answer. Entries sharing a
  first sentence give one query relevant to all of them.
* ``faq``: the headings of the FAQ pages that are questions (``How do I share global variables
  across modules?``), relevant to the chunks of the answer under them.

Splits are by page for ``summary`` queries (a test page's API is unseen in training, and sibling
entries of one page, which often share phrasing, stay together) and by question for ``faq``.
The ``whatsnew/`` pages (release notes and the changelog) and index pages are left out.

Like the man-page corpus, the folder also holds what the linked-page pre-training tasks of Chang et
al. (2020) read (:func:`keel.retrieval.data.build.write_page_graph`):

* ``pages.jsonl``: one line per page: ``page`` (``library/os.path``), ``title``, ``split`` (the
  page's split; an FAQ page's questions are split one by one), ``passages`` (each section's prose
  passages by section id, in page order, then the page's API entries under ``API``) and ``links``;
* ``links.tsv``: ``source`` -> ``target`` for every cross-reference of a page's main text
  (``<a class="reference internal">``) to another page of the corpus, the documentation's
  hyperlinks, as Wikipedia's are the paper's.
"""

from __future__ import annotations

import gzip
import html.parser
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from keel.core.data.corpora import SourceUnavailable
from keel.core.errors import ConfigError
from keel.retrieval.data.beir import Passage, Qrels, Query
from keel.retrieval.data.build import (
    assign_split,
    check_fractions,
    check_max_pages,
    chunk_paragraphs,
    sample_pages,
    write_corpus_folder,
    write_page_graph,
)

QUERY_KINDS = ("summary", "faq")
#: The ``pages.jsonl`` key of a page's API entries (after its sections).
API_SECTION = "API"
_SKIP_PAGES = re.compile(r"^(genindex.*|search|py-modindex|contents)\.html(\.gz)?$")
_SKIP_FOLDERS = ("whatsnew",)
_BLOCK = frozenset({"p", "div", "pre", "li", "dt", "dd", "table", "tr", "blockquote", "caption", "ul", "ol"})
_HEADING = re.compile(r"^h[1-6]$")
_PARAGRAPH_BREAK = "\x00"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`'\"])")


@dataclass
class Section:
    """A ``<section>`` of a page: its heading and its own prose paragraphs."""

    id: str
    heading: str = ""
    parts: list[str] = field(default_factory=list)

    @property
    def paragraphs(self) -> list[str]:
        """The prose paragraphs (outside subsections and API entries)."""
        return _paragraphs(self.parts)


@dataclass
class Entry:
    """An API entry (``<dl class="py ...">``): kind, anchor id, signature and description."""

    kind: str
    id: str = ""
    signature_parts: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    section: str = ""

    @property
    def signature(self) -> str:
        """The signature line(s) as shown."""
        return " ".join("".join(self.signature_parts).replace(_PARAGRAPH_BREAK, " ").split())

    @property
    def paragraphs(self) -> list[str]:
        """The description's paragraphs (nested entries excluded)."""
        return _paragraphs(self.parts)


def _paragraphs(parts: list[str]) -> list[str]:
    out = []
    for block in "".join(parts).split(_PARAGRAPH_BREAK):
        lines = [line.rstrip() for line in block.strip("\n").splitlines()]
        text = "\n".join(lines).strip()
        if text:
            out.append(text)
    return out


@dataclass
class Page:
    """A documentation page: its title, sections and API entries in document order, and its links.

    Attributes:
        links: The ``href`` of every cross-reference (``<a class="reference internal">``) in the main
            text, as written (relative to the page, maybe with an ``#anchor``).
    """

    path: str
    title: str = ""
    sections: list[Section] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    links: list[str] = field(default_factory=list)


class _PageParser(html.parser.HTMLParser):
    """Builds a :class:`Page` from the main body of a Sphinx page."""

    def __init__(self, path: str) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page(path)
        self.main_depth = 0  # nested <div>s inside <div role="main">; 0 = outside
        self.open: list[tuple[str, Section | Entry | None]] = []  # open section / dl / dt / dd elements
        self.skipping: list[str] = []
        self.pre = 0
        self.heading: list[str] | None = None

    def _target(self) -> list[str] | None:
        if self.heading is not None:
            return self.heading
        for index in range(len(self.open) - 1, -1, -1):
            tag, owner = self.open[index]
            if tag == "dt" and index > 0 and isinstance(self.open[index - 1][1], Entry):
                return self.open[index - 1][1].signature_parts  # type: ignore[union-attr]
            if isinstance(owner, Entry | Section):
                return owner.parts
        return None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if self.main_depth == 0:
            self.main_depth = int(tag == "div" and attributes.get("role") == "main")
            return
        self.main_depth += tag == "div"
        classes = (attributes.get("class") or "").split()
        if tag == "a" and {"reference", "internal"} <= set(classes) and attributes.get("href"):
            self.page.links.append(attributes["href"] or "")
        if tag in ("script", "style") or (tag == "a" and "headerlink" in classes):
            self.skipping.append(tag)
            return
        if tag == "section":
            section = Section(attributes.get("id") or f"s{len(self.page.sections)}")
            self.page.sections.append(section)
            self.open.append((tag, section))
        elif tag == "dl":
            entry = None
            if classes[:1] == ["py"] and len(classes) > 1:
                section = next((o for _, o in reversed(self.open) if isinstance(o, Section)), None)
                entry = Entry(classes[1], section=section.id if section else "")
                self.page.entries.append(entry)
            self.open.append((tag, entry))
        elif tag in ("dt", "dd"):
            self.open.append((tag, None))
            parent = self.open[-2][1] if len(self.open) > 1 else None
            if tag == "dt" and isinstance(parent, Entry) and not parent.id:
                parent.id = attributes.get("id") or ""
        if _HEADING.match(tag):
            self.heading = []
        self.pre += tag == "pre"
        if tag in _BLOCK:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if self.main_depth == 0:
            return
        if self.skipping:
            if tag == self.skipping[-1]:
                self.skipping.pop()
            return
        self.main_depth -= tag == "div"
        if tag in _BLOCK:
            self._break()
        self.pre -= tag == "pre" and self.pre > 0
        if _HEADING.match(tag) and self.heading is not None:
            text = " ".join("".join(self.heading).split())
            self.heading = None
            section = next((o for _, o in reversed(self.open) if isinstance(o, Section)), None)
            if section is not None and not section.heading:
                section.heading = text
            if tag == "h1" and not self.page.title:
                self.page.title = text
        if tag in ("section", "dl", "dt", "dd") and self.open and self.open[-1][0] == tag:
            self.open.pop()

    def _break(self) -> None:
        target = self._target()
        if target is not None and target is not self.heading:
            target.append(_PARAGRAPH_BREAK)

    def handle_data(self, data: str) -> None:
        if self.main_depth == 0 or self.skipping:
            return
        target = self._target()
        if target is None:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
        target.append(data)


def parse_page(markup: str, path: str = "") -> Page:
    """The title, sections and API entries of one Sphinx HTML page.

    Args:
        markup: The page's HTML.
        path: The page's path relative to the documentation root (kept as its id).
    """
    parser = _PageParser(path)
    parser.feed(markup)
    parser.close()
    return parser.page


def documentation_pages(
    folder: str | os.PathLike[str], max_pages: int | None = None, seed: int = 0
) -> Iterator[tuple[str, str]]:
    """``(relative path without .html, markup)`` of every content page under ``folder``, sorted.

    Args:
        folder: Root of the HTML documentation.
        max_pages: Keep only this many pages, chosen by a seeded hash of their paths (a sample spread
            over the whole documentation, the same for the same seed); ``None`` keeps every page.
        seed: Seed of that choice.

    Raises:
        SourceUnavailable: If ``folder`` holds no ``index.html``.
    """
    root = Path(folder)
    if not (root / "index.html").is_file():
        raise SourceUnavailable(f"the pydoc corpus needs {root}: apt-get install python3.11-doc")
    pages = sorted(
        p
        for p in root.rglob("*")
        if p.name.endswith((".html", ".html.gz"))
        and not _SKIP_PAGES.match(p.name)
        and not any(part.startswith("_") or part in _SKIP_FOLDERS for part in p.relative_to(root).parts[:-1])
    )
    if max_pages is not None:
        kept = sample_pages((p.relative_to(root).as_posix() for p in pages), max_pages, seed)
        pages = [p for p in pages if p.relative_to(root).as_posix() in kept]
    for page in pages:
        opener = gzip.open if page.name.endswith(".gz") else open
        with opener(page, "rt", encoding="utf-8", errors="replace") as handle:
            yield re.sub(r"\.html(\.gz)?$", "", page.relative_to(root).as_posix()), handle.read()


def link_target(page: str, href: str) -> str | None:
    """The page an ``href`` of ``page`` points to (``library/os``), or None.

    None: an anchor of the same page, or a link that leaves the documentation.
    """
    path = href.split("#", 1)[0]
    if not path or "://" in path or path.startswith(("mailto:", "/")):
        return None
    target = posixpath.normpath(posixpath.join(posixpath.dirname(page), path))
    target = re.sub(r"\.html(\.gz)?$", "", target)
    return None if target == page or target.startswith("..") else target


def first_sentence(paragraph: str) -> tuple[str, str]:
    """Split a paragraph into its first sentence and the rest."""
    flat = " ".join(paragraph.split())
    parts = _SENTENCE_END.split(flat, maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def _clean_title(text: str) -> str:
    return text.rstrip("¶").strip()


def build_pydoc(
    out: str | os.PathLike[str],
    docs_dir: str = "/usr/share/doc/python3.11/html",
    query_kinds: tuple[str, ...] = QUERY_KINDS,
    seed: int = 0,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_words: int = 160,
    min_query_words: int = 4,
    max_pages: int | None = None,
) -> Path:
    """Write the Python-documentation retrieval task as a BEIR folder (see the module docstring).

    Args:
        out: The folder to write.
        docs_dir: Root of the HTML documentation.
        query_kinds: ``summary`` and/or ``faq``.
        seed: Seed of the split.
        dev_fraction: Share of groups (pages, FAQ questions) in the dev split.
        test_fraction: Share of groups in the test split.
        max_words: Longest section-prose passage in words.
        min_query_words: Shortest query kept.
        max_pages: Read only this many pages, a seeded sample of the documentation (a small corpus
            for smoke tests and CPU experiments); ``None`` reads every page.

    Raises:
        ConfigError: On an unknown query kind, bad fractions or ``max_pages`` < 1.
        SourceUnavailable: If the documentation is not installed.
    """
    unknown = [k for k in query_kinds if k not in QUERY_KINDS]
    if unknown or not query_kinds:
        raise ConfigError(f"query kinds must be among {', '.join(QUERY_KINDS)}, got {list(query_kinds)}")
    check_fractions(dev_fraction, test_fraction)
    check_max_pages(max_pages)
    corpus: list[Passage] = []
    used_ids: set[str] = set()
    relevant_by_text: dict[str, tuple[str, str, list[str]]] = {}  # query text -> (kind, group, passage ids)
    records: list[dict] = []
    hrefs: dict[str, list[str]] = {}

    def add(pid: str, title: str, text: str) -> str:
        base, n = pid, 1
        while pid in used_ids:  # the same anchor documented twice on one page
            n += 1
            pid = f"{base}~{n}"
        used_ids.add(pid)
        corpus.append(Passage(pid, text, title))
        return pid

    def relate(text: str, kind: str, group: str, pid: str) -> None:
        if len(text.split()) >= min_query_words and kind in query_kinds:
            relevant_by_text.setdefault(text, (kind, group, []))[2].append(pid)

    for path, markup in documentation_pages(docs_dir, max_pages, seed):
        page = parse_page(markup, path)
        title = _clean_title(page.title)
        passages: dict[str, list[str]] = {}
        for section in page.sections:
            chunks = list(chunk_paragraphs(section.paragraphs, max_words))
            ids = [add(f"{path}#{section.id}:{k}", title, chunk) for k, chunk in enumerate(chunks)]
            passages.setdefault(section.id, []).extend(ids)
            heading = _clean_title(section.heading)
            if path.startswith("faq/") and heading.endswith("?"):
                for pid in ids:
                    relate(heading, "faq", f"faq:{path}#{section.id}", pid)
        for number, entry in enumerate(page.entries):
            paragraphs = entry.paragraphs
            summary, rest = first_sentence(paragraphs[0]) if paragraphs else ("", "")
            body = [rest, *paragraphs[1:]] if rest else paragraphs[1:]
            text = "\n".join([entry.signature, *body]).strip()
            pid = add(f"{path}#{entry.id or f'entry-{number}'}", entry.id or title, text)
            passages.setdefault(API_SECTION, []).append(pid)
            relate(summary, "summary", path, pid)
        split = assign_split(path, seed, dev_fraction, test_fraction)
        records.append({"page": path, "title": title, "split": split, "passages": passages})
        hrefs[path] = page.links

    links = []
    for record in records:  # only now is every page known
        targets = [link_target(record["page"], href) for href in hrefs[record["page"]]]
        record["links"] = [t for t in dict.fromkeys(targets) if t is not None and t in hrefs]
        links += [(record["page"], target) for target in record["links"]]

    queries, qrels = _queries_and_qrels(relevant_by_text, seed, dev_fraction, test_fraction)
    settings = {
        "query_kinds": list(query_kinds),
        "seed": seed,
        "dev_fraction": dev_fraction,
        "test_fraction": test_fraction,
        "max_words": max_words,
        "min_query_words": min_query_words,
        "max_pages": max_pages,
    }
    root = Path(out)
    write_page_graph(root, records, links)
    counts = {"pages": len(records), "links": len(links)}
    return write_corpus_folder(root, "pydoc", corpus, queries, qrels, settings, counts)


def _queries_and_qrels(
    relevant_by_text: dict[str, tuple[str, str, list[str]]], seed: int, dev_fraction: float, test_fraction: float
) -> tuple[list[Query], dict[str, Qrels]]:
    queries, qrels = [], {"train": {}, "dev": {}, "test": {}}
    for number, (text, (kind, group, pids)) in enumerate(relevant_by_text.items()):
        query = Query(f"q{number}", text, kind, group)
        queries.append(query)
        qrels[assign_split(group, seed, dev_fraction, test_fraction)][query.id] = dict.fromkeys(pids, 1)
    return queries, qrels
