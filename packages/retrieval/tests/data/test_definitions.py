"""Definition -> headword corpora: Webster entries parsed by hand, and the BEIR folder from a small WordNet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.core.data.corpora import SourceUnavailable
from keel.core.errors import ConfigError
from keel.retrieval.data import build_definitions, gcide_definition_pairs, read_beir, webster_senses

ANNEXATION = (
    "Annexation, n. [Cf. F. annexation. See Annex, v. t.] 1. The act of annexing; process of attaching; "
    "as, the annexation of Texas to the United States.\n2. (a) (Law) The union of property with a freehold "
    "so as to become a fixture. Bouvier."
)


def test_webster_senses_by_hand() -> None:
    assert webster_senses(ANNEXATION) == (
        "annexation",
        [
            "The act of annexing; process of attaching",
            "The union of property with a freehold so as to become a fixture",
        ],
    )
    assert webster_senses("Annex, v. i. To join; to be united. --Tooke.") == ("annex", ["To join; to be united"])
    assert webster_senses("Setewale, n. See Cetewale. [Obs.]") == ("setewale", [])
    assert webster_senses("annihilated adj. 1. 1 destroyed completely.") is None, "GCIDE's copies of WordNet"
    assert webster_senses("Embolismatic, Embolismatical, a. Pertaining to intercalation.") == (
        "embolismatic",
        ["Pertaining to intercalation"],
    )


def test_gcide_pairs_apply_the_wordnet_filters() -> None:
    entries = [
        ANNEXATION,
        "Annexer, n. One who annexes.",  # 3 words: kept
        "Annexion, n. Annexation. [R.] --Shak.",  # 1 word: dropped
        "Runner, n. One who runs; a racer.",  # fine
        "Run, v. i. To make a run.",  # names the headword: dropped
        "London, n. The capital of England and the United Kingdom.",  # capitalised like every Webster head
    ]
    pairs = gcide_definition_pairs(entries)
    assert [(p.headword, p.definition) for p in pairs] == [
        ("annexation", "The act of annexing; process of attaching"),
        ("annexation", "The union of property with a freehold so as to become a fixture"),
        ("annexer", "One who annexes"),
        ("runner", "One who runs; a racer"),
        ("london", "The capital of England and the United Kingdom"),
    ]


def test_build_from_a_small_wordnet(tmp_path: Path, small_wordnet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wordnet = small_wordnet
    out = build_definitions(tmp_path / "beir", ["wordnet"], seed=1, dev_words=2, test_words=3, wordnet_dir=str(wordnet))
    data = read_beir(out)
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1
    assert summary[0].startswith("data: wordnet -> ")
    assert len(data.corpus) == 13
    assert data.corpus["w:pome"].text == "pome"
    headwords = {split: {pid for j in data.qrels[split].values() for pid in j} for split in ("train", "dev", "test")}
    assert len(headwords["dev"]) == 2
    assert len(headwords["test"]) == 3
    assert headwords["train"] | headwords["dev"] | headwords["test"] == set(data.corpus)
    assert not headwords["test"] & headwords["train"]
    assert not headwords["dev"] & headwords["train"]
    # "apple" and "pome" share a definition: one query relevant to both when they share a split
    split_of = {pid: split for split, pids in headwords.items() for pid in pids}
    shared = [j for split in data.qrels.values() for j in split.values() if len(j) == 2]
    if split_of["w:apple"] == split_of["w:pome"]:
        assert shared == [{"w:apple": 1, "w:pome": 1}]
    else:
        assert shared == []
    for split in data.qrels.values():
        for qid, judged in split.items():
            assert all(data.corpus[pid].text not in data.queries[qid].text.split() for pid in judged)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["passages"] == 13
    assert manifest["settings"]["seed"] == 1
    again = build_definitions(tmp_path / "again", ["wordnet"], 1, 2, 3, wordnet_dir=str(wordnet))
    assert (again / "qrels" / "test.tsv").read_text() == (out / "qrels" / "test.tsv").read_text()


def test_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="definition sources"):
        build_definitions(tmp_path, ["webster"])
    with pytest.raises(SourceUnavailable, match="apt-get install wordnet-base"):
        build_definitions(tmp_path, ["wordnet"], wordnet_dir=str(tmp_path / "none"))
