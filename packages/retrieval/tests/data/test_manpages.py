"""Man pages: troff to text by hand, and the corpus with its queries, aliases and SEE ALSO links."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from keel.core.data.corpora import SourceUnavailable
from keel.core.errors import ConfigError
from keel.retrieval.data import build_manpages, parse_man, read_beir, read_pages
from keel.retrieval.data.troff import inline, macro_arguments

PIPE = r""".\" Copyright line: a comment
.TH pipe 7 2022-12-04 "Linux man-pages 6.03"
.SH NAME
pipe \- overview of pipes and FIFOs
.SH DESCRIPTION
Pipes provide a
.I unidirectional
channel; a pipe has a
.IR "write end" .
.PP
A pipe is created using
.BR pipe (2),
which returns \fBtwo\fP file descriptors \(em one per end.
.SS I/O on pipes
.TP
.B O_NONBLOCK
Reads do not block.
.nf
.EX
int fd[2];
pipe(fd);
.EE
.fi
.TS
l l.
Name<TAB>Value
PIPE_BUF<TAB>4096
.TE
.SH SEE ALSO
.BR mkfifo (3),
.BR open (2),
.BR creat (2),
.BR fifo (7)
""".replace("<TAB>", "\t")


def test_inline_escapes_and_arguments() -> None:
    assert (
        inline(r"\fBbold\fR and \fIitalic\fP \- \(em \*(lqq\*(rq a\ b \e \[u00E9]")
        == "bold and italic - — “q” a b \\ é"
    )
    assert inline(r"text \" a comment") == "text "
    assert macro_arguments(r'"write end" . "say ""hi""" a\ b') == ["write end", ".", 'say "hi"', r"a\ b"]


def test_parse_man_by_hand() -> None:
    page = parse_man(PIPE)
    assert (page.name, page.section) == ("pipe", "7")
    assert [h for h, _ in page.sections] == ["NAME", "DESCRIPTION", "SEE ALSO"]
    assert page.text_of("NAME") == ["pipe - overview of pipes and FIFOs"]
    assert page.text_of("description") == [
        "Pipes provide a unidirectional channel; a pipe has a write end.",
        "A pipe is created using pipe(2), which returns two file descriptors — one per end.",
        "I/O on pipes",
        "O_NONBLOCK",
        "Reads do not block.\nint fd[2];\npipe(fd);",
        "Name  Value",
        "PIPE_BUF  4096",
    ]
    assert page.text_of("SEE ALSO") == ["mkfifo(3), open(2), creat(2), fifo(7)"]


def _page(folder: Path, name: str, text: str) -> Path:
    path = folder / f"man{name.rsplit('.', 1)[1][0]}" / f"{name}.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as handle:
        handle.write(text)
    return path


def man_tree(root: Path) -> tuple[Path, Path]:
    """A man folder with 3 pages, a .so redirect, a symbolic link and a page of another package."""
    man = root / "man"
    files = [
        _page(man, "pipe.7", PIPE),
        _page(
            man,
            "open.2",
            ".TH open 2\n.SH NAME\nopen, openat \\- open and possibly create a file\n"
            ".SH DESCRIPTION\nThe open() call opens the file.\n.SH SEE ALSO\n.BR pipe (7)\n",
        ),  # fmt: skip
        _page(man, "fifo.7", ".TH fifo 7\n.SH NAME\nfifo \\- named pipe\n.SH DESCRIPTION\nA FIFO is a pipe.\n"),
        _page(man, "creat.2", ".so man2/open.2\n"),
    ]
    link = man / "man2" / "openat2.2.gz"
    link.symlink_to("open.2.gz")
    files.append(link)
    _page(man, "other.1", ".TH other 1\n.SH NAME\nother \\- not in the package\n.SH DESCRIPTION\nElse.\n")
    info = root / "dpkg"
    info.mkdir()
    (info / "manpages.list").write_text("\n".join(["/.", str(man), *map(str, files)]) + "\n")
    return man, info


def test_build_pages_queries_and_links(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    man, info = man_tree(tmp_path)
    out = build_manpages(
        tmp_path / "beir", ["manpages"], str(man), str(info), dev_fraction=0, test_fraction=0, max_words=20
    )
    assert "pages 3, links 3" in capsys.readouterr().out
    data = read_beir(out)
    assert "other.1/description/0" not in data.corpus, "only the named package's pages"
    assert sorted(data.corpus) == [
        "fifo.7/description/0", "open.2/description/0",
        "pipe.7/description/0", "pipe.7/description/1", "pipe.7/description/2",
    ]  # fmt: skip
    # 11 + 15 words would pass 20: the second paragraph opens a new chunk
    assert data.corpus["pipe.7/description/1"].text.startswith("A pipe is created")
    assert data.corpus["pipe.7/description/0"].title == "pipe(7)"
    queries = {q.text: data.qrels["train"][qid] for qid, q in data.queries.items()}
    assert queries == {
        "overview of pipes and FIFOs": {f"pipe.7/description/{k}": 1 for k in range(3)},
        "open and possibly create a file": {"open.2/description/0": 1},
    }, "'named pipe' has 2 words: too short a query"
    links = (out / "links.tsv").read_text().splitlines()
    # creat(2) is a .so redirect to open(2); mkfifo(3) is not in the corpus
    assert links == ["source\ttarget", "open.2\tpipe.7", "pipe.7\topen.2", "pipe.7\tfifo.7"]
    pages = {p["page"]: p for p in read_pages(out)}
    assert pages["open.2"]["names"] == ["open", "openat"]
    assert pages["pipe.7"]["see_also"] == ["open.2", "fifo.7"]
    assert json.loads((out / "manifest.json").read_text())["counts"]["links"] == 3


def test_max_pages_keeps_a_seeded_sample_and_its_links(tmp_path: Path) -> None:
    man, info = man_tree(tmp_path)
    samples = []
    for seed in range(6):
        out = build_manpages(tmp_path / f"beir{seed}", ["manpages"], str(man), str(info), seed=seed, max_pages=2)
        pages = {p["page"] for p in read_pages(out)}
        assert len(pages) == 2
        assert {pid.split("/")[0] for pid in read_beir(out).corpus} <= pages
        for line in (out / "links.tsv").read_text().splitlines()[1:]:
            assert set(line.split("\t")) <= pages, "links only between kept pages"
        assert json.loads((out / "manifest.json").read_text())["settings"]["max_pages"] == 2
        samples.append(frozenset(pages))
    assert len(set(samples)) > 1, "the seed picks the sample"
    again = build_manpages(tmp_path / "again", ["manpages"], str(man), str(info), seed=0, max_pages=2)
    assert {p["page"] for p in read_pages(again)} == samples[0]
    with pytest.raises(ConfigError, match="max_pages"):
        build_manpages(tmp_path / "x", ["manpages"], str(man), str(info), max_pages=0)


def test_missing_package_names_the_install(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="apt-get install manpages-dev"):
        build_manpages(tmp_path / "beir", ["manpages-dev"], dpkg_info=str(tmp_path))


@pytest.mark.skipif(not Path("/usr/share/man/man7/pipe.7.gz").is_file(), reason="needs apt-get install manpages")
def test_real_page() -> None:
    with gzip.open("/usr/share/man/man7/pipe.7.gz", "rt") as handle:
        page = parse_man(handle.read())
    assert page.text_of("NAME") == ["pipe - overview of pipes and FIFOs"]
    assert "fifo(7)" in page.text_of("SEE ALSO")[0]
    assert page.text_of("DESCRIPTION")[0].startswith("Pipes and FIFOs (also known as named pipes)")
