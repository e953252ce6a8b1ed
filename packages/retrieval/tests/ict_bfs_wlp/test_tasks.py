"""ICT, BFS and WLP against their definitions on a hand-made man-page folder; mixing; labelled fractions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from keel.core.errors import ConfigError, DataError
from keel.retrieval.data import BeirData, Passage, Query, RetrievalDataModule, read_beir, write_beir
from keel.retrieval.data.beir import group_pairs
from keel.retrieval.ict_bfs_wlp import (
    BodyFirstSelection,
    InverseCloze,
    LabelledFraction,
    PageGraph,
    TaskMixture,
    WikiLinkPrediction,
    is_query_sentence,
    mixture_counts,
    split_sentences,
)

# page -> section -> passage texts; every sentence names its page and section, so a pair's origin
# can be checked from its text alone
PAGES = {
    "alpha.7": {
        "SYNOPSIS": ["int alpha(int fd);"],
        "DESCRIPTION": [
            "Alpha one describes the first thing. Alpha two tells more about it.\nAlpha three ends the chunk.",
            "Alpha four opens the second chunk. Alpha five closes the description here.",
        ],
        "NOTES": ["Alpha notes say something else entirely. Alpha notes end now."],
    },
    "beta.2": {
        "DESCRIPTION": ["Beta one is the beta page lead. Beta two follows the lead."],
        "ERRORS": ["Beta errors list what can fail. Beta errors end now."],
    },
    "gamma.3": {
        "DESCRIPTION": ["Gamma one is the gamma page lead. Gamma two follows the lead."],
        "EXAMPLES": ["Gamma examples show the use. Gamma examples end now."],
    },
    "delta.1": {"DESCRIPTION": ["Delta one is the only delta passage. Delta two ends it."]},
}
SPLITS = {"alpha.7": "train", "beta.2": "train", "gamma.3": "test", "delta.1": "train"}
# beta and gamma cite alpha in SEE ALSO; alpha cites delta
LINKS = [("beta.2", "alpha.7"), ("gamma.3", "alpha.7"), ("alpha.7", "delta.1")]


def passage_id(page: str, heading: str, index: int) -> str:
    return f"{page}/{heading.lower()}/{index}"


@pytest.fixture
def man_folder(tmp_path: Path) -> Path:
    """A BEIR folder with pages.jsonl and links.tsv in the layout of keel's man-page builder."""
    corpus, records = [], []
    for page, sections in PAGES.items():
        name, section = page.split(".")
        ids = {}
        for heading, texts in sections.items():
            ids[heading] = [passage_id(page, heading, k) for k in range(len(texts))]
            corpus += [Passage(pid, text, f"{name}({section})") for pid, text in zip(ids[heading], texts, strict=True)]
        see_also = [target for source, target in LINKS if source == page]
        records.append({"page": page, "split": SPLITS[page], "passages": ids, "see_also": see_also})
    query = Query("q0", "what alpha is")
    qrels = {"train": {"q0": {passage_id("alpha.7", "DESCRIPTION", 0): 1}}}
    folder = write_beir(tmp_path / "man", corpus, [query], qrels)
    (folder / "pages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "links.tsv").write_text("source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in LINKS))
    return folder


def page_and_section(text: str) -> tuple[str, str]:
    """``("alpha.7", "DESCRIPTION")`` for a sentence of the fixture."""
    word = text.split()[0].lower()
    page = next(p for p in PAGES if p.startswith(word))
    section = next(h for h, texts in PAGES[page].items() if any(text in t for t in texts))
    return page, section


def test_split_sentences_by_hand() -> None:
    text = 'First one ends here. "Quoted" starts the second, e.g. Linux has it. Third (3) ends!\nA new line.'
    assert split_sentences(text) == [
        "First one ends here.",
        '"Quoted" starts the second, e.g. Linux has it.',
        "Third (3) ends!",
        "A new line.",
    ]
    assert split_sentences("Call open(2). then lower case goes on") == ["Call open(2). then lower case goes on"]
    assert split_sentences("It returns 0 (success.) Then more.") == ["It returns 0 (success.)", "Then more."]


def test_query_sentences_are_prose_not_code() -> None:
    assert is_query_sentence("Remove CPU cpu from set.", 4)
    assert not is_query_sentence("int  CPU_COUNT_S(size_t setsize, cpu_set_t *set);", 4)
    assert not is_query_sentence("Too short here.", 4)


def test_ict_removes_the_query_from_its_positive(man_folder: Path) -> None:
    data = read_beir(man_folder)
    pairs = list(InverseCloze(seed=3)(data))
    by_source = {positive.id.removeprefix("ict:"): (query, positive) for query, positive in pairs}
    assert "alpha.7/synopsis/0" not in by_source, "a code line is never a query"
    assert len(by_source) == len(pairs) == len(data.corpus) - 1
    for pid, (query, positive) in by_source.items():
        source = data.corpus[pid]
        sentences = split_sentences(source.text)
        assert query in sentences
        assert query not in positive.text
        assert positive.text == " ".join(s for s in sentences if s != query)
        assert positive.title == source.title


def test_ict_removes_every_copy_and_is_deterministic_per_seed() -> None:
    text = "The same sentence is here twice. Another sentence sits between them. The same sentence is here twice."
    data = BeirData({"p": Passage("p", text, "t")}, {})
    data_pairs = [list(InverseCloze(seed=seed)(data)) for seed in range(12)]
    assert data_pairs[0] == list(InverseCloze(seed=0)(data))
    for [(query, positive)] in data_pairs:
        assert query not in positive.text
    assert len({pairs[0][0] for pairs in data_pairs}) == 2, "the seed moves the chosen sentence"


def test_boilerplate_is_never_a_query() -> None:
    shared = "See the shared notes page for the terms used."
    corpus = {
        f"p{i}": Passage(f"p{i}", f"{shared} Page {word} has its own sentence here.", "t")
        for i, word in enumerate(["one", "two", "three"])
    }
    data = BeirData(corpus, {})
    queries = {query for seed in range(20) for query, _ in InverseCloze(seed=seed)(data)}
    assert shared not in queries, "a sentence found in 3 passages is boilerplate"
    loose = {query for seed in range(20) for query, _ in InverseCloze(seed=seed, max_copies=None)(data)}
    assert shared in loose


def test_first_section_skips_the_synopsis(man_folder: Path) -> None:
    graph = PageGraph.read(man_folder)
    assert graph.first_section("alpha.7") == [passage_id("alpha.7", "DESCRIPTION", k) for k in range(2)]
    assert graph.links == LINKS


def test_bfs_query_from_the_first_section_positive_from_the_same_page(man_folder: Path) -> None:
    data = read_beir(man_folder)
    pairs = list(BodyFirstSelection(seed=1, pairs_per_page=20)(data))
    # delta has a single passage, so no other passage of its page can answer its lead
    assert {page_and_section(query)[0] for query, _ in pairs} == set(PAGES) - {"delta.1"}
    for query, pid in pairs:
        page, section = page_and_section(query)
        assert section == "DESCRIPTION", query
        assert pid.startswith(page + "/"), (query, pid)
        assert query not in data.corpus[pid].text, "never the passage that holds the query"
    positives = {pid for query, pid in pairs if query.startswith("Alpha")}
    assert passage_id("alpha.7", "SYNOPSIS", 0) in positives
    assert passage_id("alpha.7", "NOTES", 0) in positives
    assert pairs == list(BodyFirstSelection(seed=1, pairs_per_page=20)(data))
    assert pairs != list(BodyFirstSelection(seed=2, pairs_per_page=20)(data))


@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        ("in", {("alpha.7", "beta.2"), ("alpha.7", "gamma.3"), ("delta.1", "alpha.7")}),
        ("out", {("beta.2", "alpha.7"), ("gamma.3", "alpha.7"), ("alpha.7", "delta.1")}),
    ],
)
def test_wlp_positives_come_from_linked_pages(man_folder: Path, direction: str, expected: set) -> None:
    data = read_beir(man_folder)
    pairs = list(WikiLinkPrediction(seed=0, direction=direction, pairs_per_link=10)(data))
    seen = set()
    for query, pid in pairs:
        page, section = page_and_section(query)
        assert section == "DESCRIPTION"
        seen.add((page, pid.split("/")[0]))
    assert seen == expected  # (query page, positive page): only linked pairs, in the asked direction
    both = list(WikiLinkPrediction(seed=0, direction="both", pairs_per_link=10)(data))
    assert {(page_and_section(q)[0], p.split("/")[0]) for q, p in both} == expected | {(b, a) for a, b in expected}


def test_splits_keep_tasks_inside_their_pages(man_folder: Path) -> None:
    data = read_beir(man_folder)
    train = ("train",)
    assert all(not q.startswith("Gamma") for q, _ in BodyFirstSelection(splits=train, pairs_per_page=5)(data))
    assert all(not p.startswith("gamma") for _, p in WikiLinkPrediction(splits=train)(data))
    assert all(not p.id.startswith("ict:gamma") for _, p in InverseCloze(splits=train)(data))
    with pytest.raises(ConfigError, match="direction"):
        WikiLinkPrediction(direction="sideways")


def test_mixture_counts_follow_the_weights() -> None:
    assert mixture_counts({"a": 100, "b": 100, "c": 100}, {"a": 2, "b": 1, "c": 1}, 40) == {"a": 20, "b": 10, "c": 10}
    # largest mixture without repeating a pair: c (weight 1/4) runs out first at 4 * 30 = 120
    largest = mixture_counts({"a": 1000, "b": 1000, "c": 30}, {"a": 2, "b": 1, "c": 1}, None)
    assert largest == {"a": 60, "b": 30, "c": 30}
    counts = mixture_counts({"a": 50, "b": 50, "c": 50}, {"a": 1, "b": 1, "c": 1}, 10)
    assert sum(counts.values()) == 10
    assert sorted(counts.values()) == [3, 3, 4]
    with pytest.raises(ConfigError, match="fewer than its share"):
        mixture_counts({"a": 5, "b": 100}, {"a": 1, "b": 1}, 40)


class Fixed:
    """A pair builder with fixed pairs (and one that must never run)."""

    def __init__(self, prefix: str, count: int) -> None:
        self.pairs = [(f"{prefix} query {i}", f"{prefix}-{i}") for i in range(count)]

    def __call__(self, data: object) -> list[tuple[str, str]]:
        if not self.pairs:
            raise AssertionError("a task with weight 0 was built")
        return self.pairs


def test_task_mixture_proportions_determinism_and_skipped_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    tasks = {"ict": Fixed("ict", 300), "bfs": Fixed("bfs", 100), "wlp": Fixed("wlp", 100), "off": Fixed("off", 0)}
    weights = {"ict": 2.0, "bfs": 1.0, "wlp": 1.0, "off": 0.0}
    mixed = TaskMixture(tasks, weights, seed=5)(None)
    assert Counter(query.split()[0] for query, _ in mixed) == {"ict": 200, "bfs": 100, "wlp": 100}
    assert "data: pre-training pairs 400: ict 200 of 300, bfs 100 of 100, wlp 100 of 100" in capsys.readouterr().out
    assert mixed == TaskMixture(tasks, weights, seed=5)(None)
    assert mixed != TaskMixture(tasks, weights, seed=6)(None)
    assert len(TaskMixture(tasks, weights, size=40, seed=5)(None)) == 40
    with pytest.raises(ConfigError, match="unknown tasks"):
        TaskMixture(tasks, {"mlm": 1.0})


def test_labelled_fraction_is_fixed_nested_and_keeps_every_positive(tiny_beir: Path) -> None:
    data = read_beir(tiny_beir)
    small, large = LabelledFraction(0.25, seed=1), LabelledFraction(0.75, seed=1)
    assert len(small.query_ids(data)) == 1
    assert len(large.query_ids(data)) == 3
    assert set(small.query_ids(data)) <= set(large.query_ids(data))
    everything = list(LabelledFraction(1.0)(data))
    assert sorted(everything) == sorted(
        (data.queries[qid].text, pid) for qid, judged in data.qrels["train"].items() for pid in judged
    )
    with pytest.raises(ConfigError):
        LabelledFraction(0.0)


def test_ict_passages_join_the_training_corpus(man_folder: Path, tiny_model_dir: Path) -> None:
    module = RetrievalDataModule(str(man_folder), str(tiny_model_dir), train_pairs=InverseCloze(), val_split="train")
    module.setup()
    assert module.data is not None
    assert module.collate is not None
    made = [pid for pid in module.data.corpus if pid.startswith("ict:")]
    assert len(made) == sum(len(texts) for page in PAGES.values() for texts in page.values()) - 1  # not SYNOPSIS
    group = module.dataset("train")[0]
    assert group.query not in module.collate.texts[group.passages[0]]
    with pytest.raises(DataError, match="already uses"):
        group_pairs([("q", Passage("alpha.7/notes/0", "another text"))], module.data.corpus)
