"""RetrievalDataModule(build=...): a missing corpus is built in prepare_data, a complete one is reused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import keel.retrieval.data.build as build
from keel.core.errors import ConfigError, DataError
from keel.retrieval.data import RetrievalDataModule


def test_missing_folder_is_built_once(tmp_path: Path, tiny_beir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_build(name: str, out: str) -> Path:  # writes the tiny folder under the builder's name
        calls.append(name)
        shutil.copytree(tiny_beir, out)
        (Path(out) / "manifest.json").write_text('{"builder": "manpages"}')
        return Path(out)

    monkeypatch.setattr(build, "build_corpus", fake_build)
    target = tmp_path / "built"
    data = RetrievalDataModule(str(target), "unused", build="manpages")
    data.prepare_data()
    data.prepare_data()
    assert calls == ["manpages"]
    with pytest.raises(DataError, match="holds the manpages corpus, not pydoc"):
        RetrievalDataModule(str(target), "unused", build="pydoc").prepare_data()
    with pytest.raises(ConfigError, match="build must be one of"):
        RetrievalDataModule(str(target), "unused", build="wikipedia")
