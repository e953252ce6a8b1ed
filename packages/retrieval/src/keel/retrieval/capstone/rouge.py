"""ROUGE-L between two short texts: the F-measure of their longest common subsequence of words.

Lin (2004): with ``LCS(c, r)`` the length of the longest common subsequence of the word sequences of a
candidate ``c`` and a reference ``r``, ``P = LCS / |c|``, ``R = LCS / |r|`` and, with beta = 1,
``F = 2 P R / (P + R) = 2 LCS / (|c| + |r|)``. CAPSTONE ranks a passage's pseudo queries by this score
against the real training query, computed by the official code with Google's ``rouge_score``
(``RougeScorer(["rougeL"], use_stemmer=True)``). Its words are reproduced here: the text is
lower-cased, every run of characters other than ``a-z`` and ``0-9`` separates words (so ``get_item``
is two words and punctuation never counts), and a word longer than three letters is Porter-stemmed.
The stemmer is the original Porter (1980) algorithm as Snowball implements it (PyStemmer's
``porter``); ``rouge_score`` uses NLTK's Porter, whose few extensions change rare words only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import Stemmer

_NOT_WORD = re.compile(r"[^a-z0-9]+")
_STEMMER = Stemmer.Stemmer("porter")


@lru_cache(maxsize=1 << 16)
def _stem(word: str) -> str:
    return _STEMMER.stemWord(word) if len(word) > 3 else word


def words(text: str) -> list[str]:
    """The words of ``text`` as ROUGE compares them: lower-cased, split on non-alphanumerics, stemmed."""
    return [_stem(w) for w in _NOT_WORD.sub(" ", text.lower()).split()]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (dynamic programming, one row at a time)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of ``candidate`` against ``reference`` (0 when either has no word)."""
    c, r = words(candidate), words(reference)
    if not c or not r:
        return 0.0
    return 2 * lcs_length(c, r) / (len(c) + len(r))
