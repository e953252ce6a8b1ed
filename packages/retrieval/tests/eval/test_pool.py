"""Pool ranking: only the judged passages compete, and its metrics equal the faiss path on that pool."""

from __future__ import annotations

from pathlib import Path

from keel.retrieval.data import read_beir
from keel.retrieval.eval import DenseEncoder, dense_run, evaluate_run
from keel.retrieval.eval.encoders import _tokenizer_from_json
from keel.retrieval.eval.pool import judged_pool, pool_ranking
from keel.retrieval.nn import biencoder_from_pretrained


def test_pool_holds_the_judged_passages_of_the_split(tiny_beir: Path) -> None:
    pool = judged_pool(read_beir(tiny_beir), "test")
    assert sorted(pool.corpus) == ["p-sort", "p-tea", "p-zip"]
    assert sorted(pool.queries) == ["q7", "q8", "q9"]


def test_pool_metrics_equal_the_faiss_search_of_the_pool(tiny_model_dir: Path, tiny_beir: Path) -> None:
    data = read_beir(tiny_beir)
    model = biencoder_from_pretrained(str(tiny_model_dir))
    model.train()
    metrics = pool_ranking(model, data, "train")
    assert model.training, "the model is handed back in the mode it came in"
    pool = judged_pool(data, "train")
    encoder = DenseEncoder(model, _tokenizer_from_json(model.tokenizer_json))
    expected = evaluate_run(pool.qrels["train"], dense_run(encoder, pool, "train"))
    assert metrics == {
        "pool_mrr@10": expected["MRR@10"],
        "pool_ndcg@10": expected["nDCG@10"],
        "pool_recall@100": expected["R@100"],
    }
