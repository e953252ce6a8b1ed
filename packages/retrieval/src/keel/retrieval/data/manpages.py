r"""Man pages as a retrieval corpus with page links, for supervised retrieval and linked-page pre-training.

Passages are the sections of English man pages (``DESCRIPTION``, ``RETURN VALUE``, ``ERRORS`` ...),
cut into chunks of at most ``max_words`` words at paragraph boundaries and titled ``name(section)``.
``NAME`` and ``SEE ALSO`` are not passages (they become the queries and the links), nor are
``LIBRARY`` and ``COLOPHON``, which repeat the same line on every page of a project.

Queries: a page's one-line summary from ``NAME`` (``pipe \- overview of pipes and FIFOs`` gives
``overview of pipes and FIFOs``), relevant to the chunks of that page's ``DESCRIPTION``. Pages
sharing a summary give one query relevant to all of them. Splits are by page.

Besides the BEIR files the folder holds what the linked-page pre-training tasks of Chang et al.
(2020) need (body first selection: a sentence of a page's first section against another passage of
the same page; wiki link prediction: against a passage of a page that links to it):

* ``pages.jsonl``: one line per page: ``page`` (``pipe.7``), ``title``, ``names``, ``summary``,
  ``split``, ``passages`` (section heading -> passage ids, in page order) and ``see_also``;
* ``links.tsv``: ``source`` -> ``target`` for every ``SEE ALSO`` reference to another page of the
  corpus, after resolving aliases (``creat(2)`` is ``open(2)``), with a header line.

By default the pages are those of the Debian packages ``manpages`` and ``manpages-dev`` (the Linux
man-pages project: system calls, the C library, files, overviews), listed from dpkg's file lists,
so the corpus does not depend on what else a machine has installed.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from keel.core.data.corpora import SourceUnavailable
from keel.retrieval.data.beir import Passage, Query
from keel.retrieval.data.build import (
    assign_split,
    check_fractions,
    check_max_pages,
    chunk_paragraphs,
    sample_pages,
    write_corpus_folder,
    write_page_graph,
)
from keel.retrieval.data.troff import ManPage, inline, parse_man

DEFAULT_PACKAGES = ("manpages", "manpages-dev")
NOT_PASSAGES = frozenset({"NAME", "SEE ALSO", "LIBRARY", "COLOPHON"})
_PAGE_FILE = re.compile(r"^(?P<name>.+)\.(?P<section>\d[a-zA-Z0-9]*)(?:\.gz)?$")
_REFERENCE = re.compile(r"(?P<name>[A-Za-z0-9_][\w.:+-]*)\s?\((?P<section>\d[a-zA-Z0-9]*)\)")


@dataclass(frozen=True)
class PageFile:
    """One installed man page file: its key (``open.2``), path, and the key it redirects to, if any."""

    key: str
    path: Path
    alias_of: str | None = None


def _page_key(path: Path) -> str | None:
    match = _PAGE_FILE.match(path.name)
    return f"{match['name']}.{match['section']}" if match else None


def _read(path: Path) -> str:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        return handle.read()


def package_man_files(
    packages: Sequence[str], man_dir: str = "/usr/share/man", dpkg_info: str = "/var/lib/dpkg/info"
) -> list[Path]:
    """The English man page files that the named Debian packages installed (from dpkg's file lists).

    Raises:
        SourceUnavailable: If a package is not installed.
    """
    root = Path(man_dir)
    files = []
    for package in packages:
        lists = sorted(Path(dpkg_info).glob(f"{package}.list")) + sorted(Path(dpkg_info).glob(f"{package}:*.list"))
        if not lists:
            raise SourceUnavailable(
                f"the manpages corpus needs the Debian package {package}: apt-get install {package}"
            )
        for line in lists[0].read_text(encoding="utf-8", errors="replace").splitlines():
            path = Path(line.strip())
            if path.parent.parent == root and re.fullmatch(r"man\d", path.parent.name) and _page_key(path):
                files.append(path)
    return sorted(set(files))


def installed_man_files(man_dir: str = "/usr/share/man") -> list[Path]:
    """Every English man page file under ``man_dir/man<N>/``.

    Raises:
        SourceUnavailable: If there is no such folder.
    """
    root = Path(man_dir)
    folders = sorted(p for p in root.glob("man[0-9]") if p.is_dir())
    if not folders:
        raise SourceUnavailable(f"no man pages under {root}: apt-get install manpages manpages-dev")
    return sorted(p for folder in folders for p in folder.iterdir() if _page_key(p))


def resolve_files(paths: Sequence[Path]) -> list[PageFile]:
    """Key each file and find the redirects: symbolic links and ``.so`` pages become aliases."""
    out = []
    for path in paths:
        key = _page_key(path)
        if key is None or not (path.is_file() or path.is_symlink()):
            continue
        if path.is_symlink():
            target = _page_key(path.resolve())
            out.append(PageFile(key, path, target if target != key else None))
            continue
        head = _read(path)[:400].lstrip()
        if head.startswith(".so "):
            target = _page_key(Path(head[4:].split()[0]))
            out.append(PageFile(key, path, target))
        else:
            out.append(PageFile(key, path))
    return out


def summary_of(page: ManPage) -> tuple[list[str], str]:
    """The names and the one-line summary in a page's ``NAME`` section (``a, b - does x``)."""
    text = " ".join(" ".join(page.text_of("NAME")).split())
    names, _, summary = text.partition(" - ")
    return [n.strip() for n in names.split(",") if n.strip()], summary.strip()


def see_also(page: ManPage) -> list[tuple[str, str]]:
    """``(name, section)`` of every reference in a page's ``SEE ALSO`` section, in order."""
    text = " ".join(page.text_of("SEE ALSO"))
    return [(m["name"], m["section"]) for m in _REFERENCE.finditer(text)]


def build_manpages(
    out: str | os.PathLike[str],
    packages: Sequence[str] | None = DEFAULT_PACKAGES,
    man_dir: str = "/usr/share/man",
    dpkg_info: str = "/var/lib/dpkg/info",
    seed: int = 0,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_words: int = 160,
    min_query_words: int = 3,
    max_pages: int | None = None,
) -> Path:
    """Write the man-page corpus, queries, page records and links (see the module docstring).

    Args:
        out: The folder to write.
        packages: Debian packages whose man pages are read; ``None`` or empty reads every English
            page installed under ``man_dir`` (the corpus then depends on the machine).
        man_dir: Root of the man pages.
        dpkg_info: dpkg's folder of file lists.
        seed: Seed of the page split.
        dev_fraction: Share of pages in the dev split.
        test_fraction: Share of pages in the test split.
        max_words: Longest passage in words.
        min_query_words: Shortest summary used as a query.
        max_pages: Keep only this many pages, a seeded sample (links and aliases to the others are
            dropped); ``None`` keeps every page.

    Raises:
        SourceUnavailable: If a package (or any man page) is not installed.
        ConfigError: On bad fractions or ``max_pages`` < 1.
    """
    check_fractions(dev_fraction, test_fraction)
    check_max_pages(max_pages)
    paths = package_man_files(packages, man_dir, dpkg_info) if packages else installed_man_files(man_dir)
    files = resolve_files(paths)
    keys = [f.key for f in files if f.alias_of is None]
    kept = set(keys) if max_pages is None else sample_pages(keys, max_pages, seed)
    pages = {f.key: parse_man(_read(f.path)) for f in files if f.alias_of is None and f.key in kept}
    aliases = {f.key: f.alias_of for f in files if f.alias_of is not None and f.alias_of in pages}
    for key, page in pages.items():  # names in NAME are aliases too: "open, openat, creat"
        section = key.rsplit(".", 1)[1]
        for name in summary_of(page)[0]:
            aliases.setdefault(f"{inline(name)}.{section}", key)

    corpus: list[Passage] = []
    records = []
    relevant_by_text: dict[str, tuple[str, list[str]]] = {}
    links: list[tuple[str, str]] = []
    for key in sorted(pages):
        page = pages[key]
        name, section = key.rsplit(".", 1)
        title = f"{name}({section})"
        passages: dict[str, list[str]] = {}
        for heading, paragraphs in page.sections:
            if heading in NOT_PASSAGES or not heading or heading in passages:
                continue
            ids = []
            for k, chunk in enumerate(chunk_paragraphs(paragraphs, max_words)):
                pid = f"{key}/{heading.lower().replace(' ', '-')}/{k}"
                corpus.append(Passage(pid, chunk, title))
                ids.append(pid)
            passages[heading] = ids
        names, summary = summary_of(page)
        targets = []
        for ref_name, ref_section in see_also(page):
            ref = f"{ref_name}.{ref_section}"
            target = ref if ref in pages else aliases.get(ref)
            if target is not None and target != key and target not in targets:
                targets.append(target)
        links += [(key, target) for target in targets]
        split = assign_split(key, seed, dev_fraction, test_fraction)
        records.append(
            {"page": key, "title": title, "names": names, "summary": summary, "split": split,
             "passages": passages, "see_also": targets}
        )  # fmt: skip
        description = passages.get("DESCRIPTION", [])
        if description and len(summary.split()) >= min_query_words:
            relevant_by_text.setdefault(summary, (key, []))[1].extend(description)

    queries, qrels = [], {"train": {}, "dev": {}, "test": {}}
    for number, (text, (page_key, pids)) in enumerate(relevant_by_text.items()):
        query = Query(f"q{number}", text, "summary", page_key)
        queries.append(query)
        qrels[assign_split(page_key, seed, dev_fraction, test_fraction)][query.id] = dict.fromkeys(pids, 1)
    settings = {
        "packages": list(packages or []),
        "seed": seed,
        "dev_fraction": dev_fraction,
        "test_fraction": test_fraction,
        "max_words": max_words,
        "min_query_words": min_query_words,
        "max_pages": max_pages,
    }
    root = Path(out)
    write_page_graph(root, records, links)
    counts = {"pages": len(pages), "links": len(links)}
    return write_corpus_folder(root, "manpages", corpus, queries, qrels, settings, counts)
