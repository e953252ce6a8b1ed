"""ROUGE-L between two short texts: the F-measure of their longest common subsequence of words.

Lin (2004): with ``LCS(c, r)`` the length of the longest common subsequence of the word sequences of a
candidate ``c`` and a reference ``r``, ``P = LCS / |c|``, ``R = LCS / |r|`` and, with beta = 1,
``F = 2 P R / (P + R) = 2 LCS / (|c| + |r|)``. CAPSTONE ranks a passage's pseudo queries by this score
against the real training query. Words are runs of letters and digits, lower-cased, so
punctuation and case do not count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``."""
    return _WORD.findall(text.lower())


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
