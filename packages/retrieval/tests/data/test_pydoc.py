"""The Python-documentation corpus: page structure, summary and FAQ queries, leak-free passages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.core.data.corpora import SourceUnavailable
from keel.core.errors import ConfigError
from keel.retrieval.data import build_pydoc, ensure_corpus, parse_page, read_beir, read_pages
from keel.retrieval.data.pydoc import link_target
from keel.retrieval.ict_bfs_wlp import BodyFirstSelection, PageGraph, WikiLinkPrediction

LIBRARY_PAGE = """<html><body><div class="sphinxsidebar">Navigation that is not content</div>
<div class="body" role="main">
<section id="module-shelf">
<h1>shelf — Keep things<a class="headerlink" href="#module-shelf">¶</a></h1>
<p>This module keeps
things on a shelf.</p>
<dl class="py function">
<dt class="sig sig-object py" id="shelf.put"><span>shelf.put</span>(<em>item</em>)
<a class="headerlink" href="#x">¶</a></dt>
<dd><p>Put an item on the shelf for later use. The item must be hashable.</p>
<div class="highlight"><pre>put(1)
put(2)</pre></div>
</dd></dl>
<dl class="py class">
<dt class="sig sig-object py" id="shelf.Shelf"><em>class </em>shelf.Shelf</dt>
<dd><p>A wooden shelf that holds many items.</p>
<dl class="py method">
<dt class="sig sig-object py" id="shelf.Shelf.clear">clear()</dt>
<dd><p>Remove every item from the shelf at once.</p></dd></dl>
</dd></dl>
<section id="notes"><h2>Notes</h2>
<p>Shelves are not <a class="reference internal" href="#shelf.put">thread</a> safe.</p></section>
</section>
</div></body></html>"""

FAQ_PAGE = """<html><body><div role="main"><section id="general-faq"><h1>General FAQ</h1>
<section id="why-is-it-slow"><h2>Why is the shelf so slow to fill?</h2>
<p>Because every item is <a class="reference internal" href="../library/shelf.html#shelf.put">checked</a> twice
before it is <a class="reference internal" href="../whatsnew/3.11.html">stored</a> on
<a class="reference external" href="https://example.org/shelf.html">it</a>.</p></section>
<section id="history"><h2>History of shelves</h2><p>Shelves are old.</p></section>
</section></div></body></html>"""


def test_parse_page_structure() -> None:
    page = parse_page(LIBRARY_PAGE, "library/shelf")
    assert page.title == "shelf — Keep things"
    assert [(s.id, s.heading) for s in page.sections] == [("module-shelf", page.title), ("notes", "Notes")]
    assert page.sections[0].paragraphs == ["This module keeps things on a shelf."]
    assert page.sections[1].paragraphs == ["Shelves are not thread safe."]
    put, shelf, clear = page.entries
    assert (put.kind, put.id, put.signature) == ("function", "shelf.put", "shelf.put(item)")
    assert put.paragraphs == ["Put an item on the shelf for later use. The item must be hashable.", "put(1)\nput(2)"]
    assert shelf.paragraphs == ["A wooden shelf that holds many items."], "nested entries are their own passages"
    assert (clear.id, clear.paragraphs) == ("shelf.Shelf.clear", ["Remove every item from the shelf at once."])


def docs_folder(root: Path) -> Path:
    (root / "library").mkdir(parents=True)
    (root / "faq").mkdir()
    (root / "whatsnew").mkdir()
    (root / "index.html").write_text("<html><div role='main'><section id='i'><h1>Index</h1></section></div></html>")
    (root / "library" / "shelf.html").write_text(LIBRARY_PAGE)
    (root / "faq" / "general.html").write_text(FAQ_PAGE)
    (root / "whatsnew" / "3.11.html").write_text(LIBRARY_PAGE.replace("shelf", "newshelf"))
    (root / "genindex.html").write_text(LIBRARY_PAGE.replace("shelf", "indexshelf"))
    return root


def test_build_queries_and_passages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = build_pydoc(tmp_path / "beir", docs_dir=str(docs_folder(tmp_path / "docs")), dev_fraction=0, test_fraction=0)
    assert capsys.readouterr().out.startswith("data: pydoc -> ")
    data = read_beir(out)
    assert not any("newshelf" in pid or "indexshelf" in pid for pid in data.corpus), "release notes and indexes"
    by_text = {q.text: (q.kind, data.qrels["train"][qid]) for qid, q in data.queries.items()}
    assert by_text == {
        "Put an item on the shelf for later use.": ("summary", {"library/shelf#shelf.put": 1}),
        "A wooden shelf that holds many items.": ("summary", {"library/shelf#shelf.Shelf": 1}),
        "Remove every item from the shelf at once.": ("summary", {"library/shelf#shelf.Shelf.clear": 1}),
        "Why is the shelf so slow to fill?": ("faq", {"faq/general#why-is-it-slow:0": 1}),
    }
    put = data.corpus["library/shelf#shelf.put"]
    assert (put.title, put.text) == ("shelf.put", "shelf.put(item)\nThe item must be hashable.\nput(1)\nput(2)")
    answer = data.corpus["faq/general#why-is-it-slow:0"]
    assert answer.text == "Because every item is checked twice before it is stored on it."
    assert answer.title == "General FAQ", "the question (the heading) is not in its answer"
    for qid, query in data.queries.items():
        for pid in data.qrels["train"][qid]:
            assert query.text not in data.corpus[pid].full_text, "a query is never a substring of its passage"


def test_page_records_and_cross_reference_links(tmp_path: Path) -> None:
    out = build_pydoc(tmp_path / "beir", docs_dir=str(docs_folder(tmp_path / "docs")), dev_fraction=0, test_fraction=0)
    pages = {r["page"]: r for r in read_pages(out)}
    assert set(pages) == {"index", "library/shelf", "faq/general"}
    shelf = pages["library/shelf"]
    assert shelf["passages"] == {
        "module-shelf": ["library/shelf#module-shelf:0"],
        "notes": ["library/shelf#notes:0"],
        "API": ["library/shelf#shelf.put", "library/shelf#shelf.Shelf", "library/shelf#shelf.Shelf.clear"],
    }
    recorded = [pid for record in pages.values() for ids in record["passages"].values() for pid in ids]
    assert sorted(recorded) == sorted(read_beir(out).corpus), "every passage belongs to one page, once"
    # the FAQ's link to the shelf page counts; a same-page anchor, an excluded page and the web do not
    assert (out / "links.tsv").read_text() == "source\ttarget\nfaq/general\tlibrary/shelf\n"
    assert shelf["links"] == []
    assert pages["faq/general"]["links"] == ["library/shelf"]


def test_link_target() -> None:
    assert link_target("library/os.path", "os.html#os.stat") == "library/os"
    assert link_target("library/os.path", "../tutorial/index.html") == "tutorial/index"
    assert link_target("library/os.path", "#os.path.join") is None
    assert link_target("library/os.path", "os.path.html#os.path.join") is None, "the same page"
    assert link_target("index", "https://docs.python.org/3/") is None
    assert link_target("index", "../elsewhere.html") is None, "outside the documentation"


def test_linked_page_tasks_read_a_pydoc_folder(tmp_path: Path) -> None:
    docs = docs_folder(tmp_path / "docs")
    # a page of API entries and no prose has no lead: an entry's description is never a BFS/WLP query
    bare = LIBRARY_PAGE.replace("shelf", "bare").replace("<p>This module keeps\nthings on a bare.</p>", "")
    bare = bare.split('<section id="notes">')[0] + "</section></div></body></html>"
    (docs / "library" / "bare.html").write_text(bare)
    out = build_pydoc(tmp_path / "beir", docs_dir=str(docs), dev_fraction=0, test_fraction=0)
    data = read_beir(out)
    graph = PageGraph.read(out)
    entries = ["library/bare#bare.put", "library/bare#bare.Shelf", "library/bare#bare.Shelf.clear"]
    assert graph.passages("library/bare") == entries
    assert graph.first_section("library/bare") == [], "API entries are never a page's first section"
    assert graph.first_section("library/shelf") == ["library/shelf#module-shelf:0"], "the introduction"
    assert graph.first_section("faq/general") == ["faq/general#why-is-it-slow:0"], "the first section with prose"
    assert graph.links == [("faq/general", "library/shelf")]
    bfs = set(BodyFirstSelection(seed=0, pairs_per_page=10, min_words=4)(data))
    assert ("This module keeps things on a shelf.", "library/shelf#notes:0") in bfs
    assert all(pid.startswith("library/shelf#") for query, pid in bfs if query.startswith("This module"))
    assert not any(pid == "library/shelf#module-shelf:0" for _, pid in bfs), "never the passage holding the query"
    # the shelf page is cited by the FAQ page, so its lead is answered by a passage of the FAQ
    wlp = set(WikiLinkPrediction(seed=0, direction="in", pairs_per_link=10)(data))
    assert wlp
    assert {query for query, _ in wlp} == {"This module keeps things on a shelf."}
    assert {pid.split("#")[0] for _, pid in wlp} == {"faq/general"}


def test_a_folder_of_an_older_format_is_built_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = str(docs_folder(tmp_path / "docs"))
    out = build_pydoc(tmp_path / "beir", docs_dir=docs, dev_fraction=0, test_fraction=0)
    corpus = (out / "corpus.jsonl").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))  # before page records
    (out / "pages.jsonl").unlink()
    settings = {"docs_dir": docs, "dev_fraction": 0, "test_fraction": 0}
    ensure_corpus("pydoc", out, settings)
    assert "older pydoc builder; building it again" in capsys.readouterr().out
    assert (out / "pages.jsonl").is_file()
    assert (out / "corpus.jsonl").read_text() == corpus
    assert json.loads((out / "manifest.json").read_text())["format"] == manifest["format"] > 1
    ensure_corpus("pydoc", out, settings)
    assert "building it again" not in capsys.readouterr().out, "a current folder is used as it is"


def test_splits_by_page_and_options(tmp_path: Path) -> None:
    docs = docs_folder(tmp_path / "docs")
    out = build_pydoc(
        tmp_path / "beir", docs_dir=str(docs), query_kinds=("summary",), dev_fraction=0, test_fraction=0.99
    )
    data = read_beir(out)
    assert len(data.qrels["test"]) == 3, "one page: all its queries in one split"
    assert not data.qrels["train"]
    with pytest.raises(ConfigError, match="query kinds"):
        build_pydoc(tmp_path / "x", docs_dir=str(docs), query_kinds=("headings",))
    with pytest.raises(SourceUnavailable, match="python3.11-doc"):
        build_pydoc(tmp_path / "x", docs_dir=str(tmp_path / "missing"))


@pytest.mark.skipif(
    not Path("/usr/share/doc/python3.11/html/library/os.path.html").is_file(), reason="needs python3.11-doc"
)
def test_real_page() -> None:
    page = parse_page(Path("/usr/share/doc/python3.11/html/library/os.path.html").read_text(), "library/os.path")
    entries = {e.id: e for e in page.entries}
    assert entries["os.path.abspath"].signature == "os.path.abspath(path)"
    assert entries["os.path.abspath"].paragraphs[0].startswith("Return a normalized absolutized version")
