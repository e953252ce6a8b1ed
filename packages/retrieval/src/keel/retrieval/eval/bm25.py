"""The BM25 baseline with bm25s and PyStemmer's Snowball English stemmer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keel.retrieval._optional import require


def _stemmer() -> Any:
    import Stemmer  # a dependency of keel-retrieval

    return Stemmer.Stemmer("english").stemWords


class BM25:
    """A BM25 index over passages (bm25s defaults: k1 = 1.5, b = 0.75, Lucene's idf).

    Args:
        ids: Passage ids, in the order of ``texts``.
        texts: Passage texts (title and text joined, as BEIR indexes them).
        stopwords: bm25s' stop-word list name (``en``) or ``None``.
    """

    def __init__(self, ids: Sequence[str], texts: Sequence[str], stopwords: str | None = "en") -> None:
        bm25s = require("bm25s")
        self.ids = list(ids)
        self.stopwords = stopwords
        self.stemmer = _stemmer()
        self.retriever = bm25s.BM25()
        self.retriever.index(self._tokenize(texts), show_progress=False)

    def _tokenize(self, texts: Sequence[str]) -> Any:
        bm25s = require("bm25s")
        return bm25s.tokenize(list(texts), stopwords=self.stopwords, stemmer=self.stemmer, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> tuple[Any, Any]:
        """``(scores, row indices)``, both ``[queries, k]``, best first."""
        k = min(k, len(self.ids))
        tokens = self._tokenize(queries)
        results, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return scores, results

    def search_ids(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """The ``k`` best passage ids per query, best first (passages with a score of 0 left out)."""
        scores, rows = self.search(queries, k)
        return [
            [self.ids[r] for r, s in zip(row, score, strict=True) if s > 0]
            for row, score in zip(rows, scores, strict=True)
        ]
