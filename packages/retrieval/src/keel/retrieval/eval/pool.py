"""Ranking a split's judged pool with the model being trained: the retrieval metrics a run logs itself.

Encoding a whole corpus after every run of a sweep is slow on a CPU (minutes for the man pages), so
a run ranks the split's *pool* instead: every passage judged relevant to some query of the split
(the DESCRIPTION chunks of the held-out man pages, the held-out WordNet headwords). Each query
competes against every other held-out query's answers, the protocol of keel-core's definition ->
headword task. ``keel retrieval evaluate`` on the run's checkpoint gives the full-corpus numbers.

:class:`PoolRanking` is a Lightning callback: it logs ``test/pool_mrr@10``, ``test/pool_ndcg@10``
and ``test/pool_recall@100`` (ir_measures' RR@10, nDCG@10 and R@100 over the pool) at the end of
testing, and the same metrics of the untrained model as ``zeroshot/pool_...`` when training starts.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np

from keel.retrieval.data.beir import BeirData, read_beir
from keel.retrieval.eval.encoders import DenseEncoder, _tokenizer_from_json
from keel.retrieval.eval.evaluate import DEPTH
from keel.retrieval.eval.metrics import evaluate_run, run_from_search
from keel.retrieval.nn.biencoder import BiEncoder

#: ir_measures' report names -> the names a run logs (lower case, as the module's other metrics).
POOL_METRICS = {"MRR@10": "pool_mrr@10", "nDCG@10": "pool_ndcg@10", "R@100": "pool_recall@100"}


def judged_pool(data: BeirData, split: str) -> BeirData:
    """The split's queries and qrels with a corpus of only the passages judged for them.

    Raises:
        DataError: If the folder has no qrels for ``split``.
    """
    queries = data.split_queries(split)
    judged = {pid for qid in queries for pid in data.qrels[split][qid]}
    corpus = {pid: passage for pid, passage in data.corpus.items() if pid in judged}
    return BeirData(corpus, queries, {split: data.qrels[split]}, data.root)


def pool_ranking(
    model: BiEncoder,
    data: BeirData,
    split: str = "test",
    query_max_length: int = 64,
    passage_max_length: int = 256,
    batch_size: int = 128,
) -> dict[str, float]:
    """Rank the judged pool of ``split`` for each of its queries (exact search) and score the ranking.

    The model is evaluated in eval mode on its own device and left in the mode it was in.

    Args:
        model: The bi-encoder; it must carry its tokenizer (``tokenizer_json``).
        data: The BEIR folder in memory.
        split: The qrels split.
        query_max_length: Longest query in tokens.
        passage_max_length: Longest passage in tokens.
        batch_size: Texts per forward pass.

    Returns:
        ``{"pool_mrr@10": ..., "pool_ndcg@10": ..., "pool_recall@100": ...}``.

    Raises:
        ValueError: If the model carries no tokenizer.
    """
    if model.tokenizer_json is None:
        raise ValueError("the bi-encoder carries no tokenizer; build it from a folder with tokenizer.json")
    pool = judged_pool(data, split)
    was_training = model.training
    device = str(next(model.parameters()).device)
    try:
        encoder = DenseEncoder(
            model, _tokenizer_from_json(model.tokenizer_json), query_max_length, passage_max_length, batch_size, device
        )
        passage_ids = list(pool.corpus)
        passages = encoder.encode_passages([pool.corpus[p].full_text for p in passage_ids])
        queries = pool.queries
        vectors = encoder.encode_queries([q.text for q in queries.values()])
    finally:
        model.train(was_training)
    scores = vectors @ passages.T
    depth = min(DEPTH, len(passage_ids))
    # the best `depth` columns of each row, then sorted best first (ties broken by column, as faiss)
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    run = run_from_search(list(queries), passage_ids, np.take_along_axis(scores, rows, axis=1), rows)
    return {POOL_METRICS[name]: value for name, value in evaluate_run(pool.qrels[split], run).items()}


class PoolRanking(L.Callback):
    """Log pool-ranking metrics of the module's ``model`` (see the module docstring).

    Args:
        data_dir: The BEIR folder (read when first needed).
        split: The split ranked at the end of testing (and before training).
        zero_shot: Also rank it when training starts, logged as ``zeroshot/pool_...``.
        query_max_length: Longest query in tokens.
        passage_max_length: Longest passage in tokens.
        batch_size: Texts per forward pass.
    """

    def __init__(
        self,
        data_dir: str,
        split: str = "test",
        zero_shot: bool = True,
        query_max_length: int = 64,
        passage_max_length: int = 256,
        batch_size: int = 128,
    ) -> None:
        self.data_dir = data_dir
        self.split = split
        self.zero_shot = zero_shot
        self.lengths = {"query_max_length": query_max_length, "passage_max_length": passage_max_length}
        self.batch_size = batch_size
        self._data: BeirData | None = None

    def metrics(self, model: BiEncoder) -> dict[str, float]:
        """The pool metrics of ``model`` on the split."""
        if self._data is None:
            self._data = read_beir(self.data_dir, [self.split])
        return pool_ranking(model, self._data, self.split, batch_size=self.batch_size, **self.lengths)

    def _log(self, pl_module: Any, prefix: str) -> None:
        for name, value in self.metrics(pl_module.model).items():
            pl_module.log(f"{prefix}/{name}", value, on_step=False, on_epoch=True, batch_size=1)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Rank the pool with the model as training finds it (not again when a run resumes)."""
        if self.zero_shot and trainer.global_step == 0:
            self._log(pl_module, "zeroshot")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Rank the pool with the trained model."""
        self._log(pl_module, "test")
