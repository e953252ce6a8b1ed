"""CAPSTONE's ROUGE-L by hand, the curriculum's ranking, parts and schedule, and the offline pseudo queries."""

from __future__ import annotations

import random

import pytest

from keel.core.errors import ConfigError
from keel.retrieval.capstone import (
    PassageQueries,
    curriculum_part,
    curriculum_views,
    lcs_length,
    part_members,
    rank_by_similarity,
    rouge_l,
)
from keel.retrieval.capstone.curriculum import check_curriculum
from keel.retrieval.capstone.rouge import words
from keel.retrieval.data.beir import Passage


def test_lcs_by_hand() -> None:
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # BCBA (the textbook example)
    assert lcs_length([], ["a"]) == 0
    assert lcs_length(["a", "b", "c"], ["c", "b", "a"]) == 1
    assert lcs_length(["x", "a", "y", "b"], ["a", "b"]) == 2


def test_rouge_l_by_hand() -> None:
    # LCS(the cat sat on the mat, the cat lay on a mat) = "the cat on mat" = 4; F1 = 2 * 4 / (6 + 6)
    assert rouge_l("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(2 / 3)
    # P = 2/2, R = 2/5: F1 = 2 * 2 / (2 + 5)
    assert rouge_l("open file", "Open a new file, quickly.") == pytest.approx(4 / 7)
    assert rouge_l("Return the SIZE!", "return the size") == 1.0  # case and punctuation do not count
    assert rouge_l("socket options", "open a file") == 0.0
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("b a", "a b") == pytest.approx(2 * 1 / 4)  # order matters: a subsequence, not a bag


def test_rouge_words_are_split_on_non_alphanumerics_and_stemmed_as_rouge_score_does() -> None:
    # rouge_score: lower-case, split on [^a-z0-9], Porter-stem words longer than three letters
    assert words("Is it running_fast? Opens 2 files.") == ["is", "it", "run", "fast", "open", "2", "file"]
    assert rouge_l("get_item", "get item") == 1.0  # an underscore separates words
    assert rouge_l("opens the files", "open the file") == 1.0  # inflections match after stemming
    assert rouge_l("was", "wa") == 0.0  # words of three letters or fewer are not stemmed


def test_ranking_is_by_rouge_l_most_similar_first_without_the_real_query() -> None:
    query = "open a file for reading"
    candidates = ["socket options", "Open a file for reading.", "read a file", "open a file for reading now", "x y"]
    ranked = rank_by_similarity(candidates, query)
    assert "Open a file for reading." not in ranked  # the real query itself (same words) is dropped
    assert ranked == ["open a file for reading now", "read a file", "socket options", "x y"]  # ties keep order
    scores = [rouge_l(c, query) for c in ranked]
    assert scores == sorted(scores, reverse=True)


def test_ranking_breaks_ties_at_random_with_an_rng() -> None:
    query = "open a file for reading"
    candidates = ["open a file for reading now", "socket options", "x y", "close it"]  # the last three tie at 0
    orders = set()
    for seed in range(30):
        ranked = rank_by_similarity(candidates, query, random.Random(seed))
        assert ranked[0] == "open a file for reading now"  # a strictly better candidate stays first
        orders.add(tuple(ranked[1:]))
    assert len(orders) == 6  # every order of the three tied candidates occurs


def test_parts_cut_the_ranking_into_equal_slices() -> None:
    ranked = [f"q{i}" for i in range(9)]
    assert [part_members(ranked, k, 3) for k in (1, 2, 3)] == [ranked[0:3], ranked[3:6], ranked[6:9]]
    seven = [f"q{i}" for i in range(7)]
    assert [part_members(seven, k, 3) for k in (1, 2, 3)] == [seven[0:2], seven[2:4], seven[4:7]]
    # fewer candidates than parts: an empty part takes the candidate right below it (the authors' rule)
    two = ["best", "worst"]
    assert [part_members(two, k, 3) for k in (1, 2, 3)] == [["best"], ["best"], ["worst"]]
    assert part_members([], 1, 3) == []


def test_schedule_runs_from_the_least_to_the_most_similar_part() -> None:
    assert [curriculum_part(t, 9, 3) for t in range(9)] == [3, 3, 3, 2, 2, 2, 1, 1, 1]
    # T = 10, N = 3: three steps per part, the remainder stays in part 1
    assert [curriculum_part(t, 10, 3) for t in range(12)] == [3, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert [curriculum_part(t, 2, 3) for t in range(3)] == [3, 2, 1]  # fewer steps than parts
    assert all(curriculum_part(t, 100, 1) == 1 for t in range(100))


def test_curriculum_views_draw_one_candidate_per_part() -> None:
    ranked = [f"q{i}" for i in range(9)]
    rng = random.Random(0)
    seen = [set(), set(), set()]
    for _ in range(200):
        views = curriculum_views(ranked, 3, rng)
        for part, view in enumerate(views):
            assert view in ranked[3 * part : 3 * part + 3]
            seen[part].add(view)
    assert all(len(s) == 3 for s in seen)  # uniform within a part: every member drawn
    assert curriculum_views([], 3, rng) == [None, None, None]


def test_unknown_curriculum_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="curriculum"):
        check_curriculum("reverse", 3)
    with pytest.raises(ConfigError, match="parts"):
        check_curriculum("gradual", 0)


def test_passage_queries_are_the_title_and_sentences() -> None:
    passage = Passage(
        "p", "Return the absolute path. Note: see also\nnormpath() for details on symbolic links! ok", "os.path.abspath"
    )
    found = PassageQueries(max_queries=10, min_words=3, max_words=5)([passage])[0]
    assert found == ["os.path.abspath", "Return the absolute path.", "normpath() for details on symbolic"]
    assert PassageQueries(max_queries=2, min_words=3)([passage])[0] == ["os.path.abspath", "Return the absolute path."]
    assert PassageQueries(include_title=False, min_words=3)([passage])[0][0] == "Return the absolute path."
