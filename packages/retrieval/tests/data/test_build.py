"""Shared builder parts: the hashed split assignment and paragraph chunking."""

from __future__ import annotations

import pytest

from keel.core.errors import ConfigError
from keel.retrieval.data import assign_split, chunk_paragraphs
from keel.retrieval.data.build import check_fractions


def test_split_assignment_is_stable_and_follows_the_fractions() -> None:
    groups = [f"page-{i}" for i in range(4000)]
    splits = [assign_split(g, 0, 0.1, 0.2) for g in groups]
    assert splits == [assign_split(g, 0, 0.1, 0.2) for g in groups]
    assert abs(splits.count("test") / 4000 - 0.2) < 0.03
    assert abs(splits.count("dev") / 4000 - 0.1) < 0.03
    assert splits != [assign_split(g, 1, 0.1, 0.2) for g in groups], "the seed moves groups"
    # a group's split does not depend on the other groups
    assert assign_split("page-7", 0, 0.1, 0.2) == splits[7]
    assert {assign_split(g, 0, 0.0, 0.0) for g in groups} == {"train"}


def test_chunks_respect_paragraphs_and_the_word_limit() -> None:
    paragraphs = ["one two three", "four five", "six seven eight nine ten eleven twelve", "", "end"]
    assert list(chunk_paragraphs(paragraphs, 5)) == [
        "one two three\nfour five",
        "six seven eight nine ten",  # a long paragraph is cut into pieces of 5 words
        "eleven twelve\nend",
    ]
    assert list(chunk_paragraphs(["a\nb c"], 2)) == ["a\nb", "c"], "line breaks inside a piece are kept"


def test_bad_fractions() -> None:
    with pytest.raises(ConfigError):
        check_fractions(0.5, 0.5)
    with pytest.raises(ConfigError):
        check_fractions(-0.1, 0.1)
