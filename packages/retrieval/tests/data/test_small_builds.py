"""Small corpora for smoke tests: a seeded sample of pydoc pages, and builder settings a DataModule checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.core.errors import ConfigError, DataError
from keel.retrieval.data import RetrievalDataModule, build_pydoc, read_beir

PAGE = """<html><body><div role="main"><section id="module-{name}"><h1>{name} - tools</h1>
<p>The {name} module has tools.</p>
<dl class="py function"><dt class="sig sig-object py" id="{name}.run">{name}.run()</dt>
<dd><p>Run the {name} tool on every input file. It returns nothing.</p></dd></dl>
</section></div></body></html>"""
NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]


def docs(root: Path) -> Path:
    (root / "library").mkdir(parents=True)
    index = "<html><div role='main'><section id='i'><h1>Tools</h1><p>Welcome to the tools.</p></section></div></html>"
    (root / "index.html").write_text(index)
    for name in NAMES:
        (root / "library" / f"{name}.html").write_text(PAGE.format(name=name))
    return root


def pages(folder: Path) -> set[str]:
    return {pid.split("#")[0] for pid in read_beir(folder).corpus}


def test_max_pages_keeps_a_seeded_sample(tmp_path: Path) -> None:
    source = str(docs(tmp_path / "docs"))
    everything = build_pydoc(tmp_path / "all", docs_dir=source)
    two = build_pydoc(tmp_path / "two", docs_dir=source, max_pages=2)
    again = build_pydoc(tmp_path / "again", docs_dir=source, max_pages=2)
    assert len(pages(everything)) == len(NAMES) + 1  # and the index page
    assert len(pages(two)) == 2
    assert pages(two) == pages(again)
    assert pages(two) <= pages(everything)
    other = {frozenset(pages(build_pydoc(tmp_path / f"s{s}", docs_dir=source, max_pages=2, seed=s))) for s in range(6)}
    assert len(other) > 1, "the sample depends on the seed"
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["settings"]["max_pages"] == 2
    assert manifest["counts"]["pages"] == 2
    with pytest.raises(ConfigError, match="max_pages"):
        build_pydoc(tmp_path / "none", docs_dir=source, max_pages=0)


def test_datamodule_builds_with_settings_and_refuses_other_settings(tmp_path: Path) -> None:
    source = str(docs(tmp_path / "docs"))
    settings = {"docs_dir": source, "max_pages": 3, "dev_fraction": 0.0, "test_fraction": 0.0}
    data = RetrievalDataModule(str(tmp_path / "beir"), "unused", build="pydoc", build_settings=settings)
    data.prepare_data()
    assert len(pages(tmp_path / "beir")) == 3
    data.prepare_data()  # built with the same settings: reused
    other = RetrievalDataModule(
        str(tmp_path / "beir"), "unused", build="pydoc", build_settings={**settings, "max_pages": 4}
    )
    with pytest.raises(DataError, match="other settings"):
        other.prepare_data()
    with pytest.raises(ConfigError, match="no setting"):
        RetrievalDataModule(
            str(tmp_path / "new"), "unused", build="pydoc", build_settings={"max_page": 3}
        ).prepare_data()
