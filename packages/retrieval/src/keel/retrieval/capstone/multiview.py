"""Multi-view scoring at inference: a passage is scored through several expansions of itself.

At inference the real query is unknown, so CAPSTONE indexes each passage ``k`` times, once with each
of its first ``k`` pseudo queries appended (the *views* ``p + e_1, ..., p + e_k``; ``k = 10`` in the
paper), and merges the views' results by score, keeping each passage once (the authors'
``get_question_topk``). That merge is the maximum over views:

    s(q, p) = max_v  s(q, p + e_v)                                    (``aggregation: max``)

The authors also report an averaged-embedding variant, one vector per passage:

    s(q, p) = s(q, mean_v f(p + e_v))                                 (``aggregation: mean``)

(the mean is L2-normalised again when the bi-encoder normalises). A passage without pseudo queries
has one view, itself. :func:`multi_view_run` ranks a whole BEIR corpus exactly (a dense matrix
product; meant for the judged pools and the small corpora keel trains on), and
:func:`multi_view_pool_ranking` scores the split's judged pool as :mod:`keel.retrieval.eval.pool` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from keel.core.distill.data import encode, pad
from keel.core.errors import ConfigError
from keel.retrieval.capstone.data import join_expansion
from keel.retrieval.data.beir import BeirData
from keel.retrieval.eval.encoders import _tokenizer_from_json
from keel.retrieval.eval.evaluate import DEPTH
from keel.retrieval.eval.metrics import Run, evaluate_run, run_from_search
from keel.retrieval.eval.pool import POOL_METRICS, judged_pool
from keel.retrieval.nn.biencoder import BiEncoder

AGGREGATIONS = ("max", "mean")


def max_over_views(scores: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Passage scores ``[queries, passages]``: the best of each passage's view scores ``[queries, views]``.

    Args:
        scores: Each query's score for each view; a passage's views are consecutive columns.
        counts: Views per passage (each >= 1), in column order.
    """
    if any(c < 1 for c in counts):
        raise ValueError("every passage needs at least one view")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return np.maximum.reduceat(scores, starts, axis=1)


def mean_view_vectors(vectors: np.ndarray, counts: Sequence[int], normalize: bool) -> np.ndarray:
    """One vector per passage, the mean of its views' vectors (L2-normalised again when ``normalize``)."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    means = np.add.reduceat(vectors, starts, axis=0) / np.asarray(counts, dtype=vectors.dtype)[:, None]
    if normalize:
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return means


@torch.inference_mode()
def embed(model: BiEncoder, rows: Sequence[Sequence[int]], tower: str, batch_size: int = 128) -> np.ndarray:
    """Embeddings ``[len(rows), width]`` of token-id rows, batched by length."""
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        ids, mask = pad([rows[i] for i in chosen])
        vectors = model.encode(ids.to(device), mask.to(device), tower).float().cpu().numpy()
        if out is None:
            out = np.zeros((len(rows), vectors.shape[1]), dtype=np.float32)
        out[chosen] = vectors
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def multi_view_run(
    model: BiEncoder,
    data: BeirData,
    split: str,
    expansions: Mapping[str, Sequence[str]],
    views: int = 10,
    aggregation: str = "max",
    query_max_length: int = 64,
    passage_max_length: int = 256,
    expansion_max_length: int = 32,
    depth: int = DEPTH,
) -> Run:
    """Rank ``data``'s whole corpus for the split's queries, each passage scored through its views.

    Args:
        model: The bi-encoder; it must carry its tokenizer. It is run in eval mode and left as it was.
        data: The corpus and queries.
        split: The qrels split whose queries are ranked for.
        expansions: Passage id -> pseudo queries (the first ``views`` are used; missing: none).
        views: Views per passage (``k``); 0 scores the passage alone.
        aggregation: ``max`` or ``mean`` (see the module docstring).
        query_max_length: Longest query in tokens.
        passage_max_length: Longest passage in tokens, before its expansion.
        expansion_max_length: Longest expansion in tokens.
        depth: Passages kept per query.

    Raises:
        ConfigError: On an unknown aggregation or a model without tokenizer.
    """
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got '{aggregation}'")
    if model.tokenizer_json is None:
        raise ConfigError("the bi-encoder carries no tokenizer; build it from a folder with tokenizer.json")
    tokenizer = _tokenizer_from_json(model.tokenizer_json)
    passage_ids = list(data.corpus)
    passages = encode(tokenizer, [data.corpus[p].full_text for p in passage_ids], passage_max_length)
    chosen = [list(expansions.get(p, ()))[:views] for p in passage_ids]
    texts = sorted({q for qs in chosen for q in qs})
    query_tokens = dict(zip(texts, encode(tokenizer, texts, expansion_max_length), strict=True))
    rows, counts = [], []
    for tokens, extra in zip(passages, chosen, strict=True):
        options = [query_tokens[q] for q in extra] or [None]
        rows += [join_expansion(tokens, q) for q in options]
        counts.append(len(options))
    queries = data.split_queries(split)
    was_training = model.training
    model.eval()
    try:
        view_vectors = embed(model, rows, "passage")
        query_vectors = embed(model, encode(tokenizer, [q.text for q in queries.values()], query_max_length), "query")
    finally:
        model.train(was_training)
    if aggregation == "max":
        scores = max_over_views(query_vectors @ view_vectors.T, counts)
    else:
        scores = query_vectors @ mean_view_vectors(view_vectors, counts, model.normalize).T
    keep = min(depth, len(passage_ids))
    best = np.argsort(-scores, axis=1, kind="stable")[:, :keep]
    return run_from_search(list(queries), passage_ids, np.take_along_axis(scores, best, axis=1), best)


def multi_view_pool_ranking(
    model: BiEncoder, data: BeirData, split: str, expansions: Mapping[str, Sequence[str]], **settings: Any
) -> dict[str, float]:
    """``pool_mrr@10``, ``pool_ndcg@10`` and ``pool_recall@100`` of the split's judged pool, ranked multi-view.

    Args:
        model: The bi-encoder.
        data: The BEIR folder in memory.
        split: The qrels split.
        expansions: Passage id -> pseudo queries.
        **settings: :func:`multi_view_run`'s views, aggregation and lengths.
    """
    pool = judged_pool(data, split)
    run = multi_view_run(model, pool, split, expansions, **settings)
    return {POOL_METRICS[name]: value for name, value in evaluate_run(pool.qrels[split], run).items()}
