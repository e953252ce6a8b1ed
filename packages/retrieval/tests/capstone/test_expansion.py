"""Pseudo queries from a local sequence-to-sequence generator: sampled, reproducible and cached."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from keel.retrieval.capstone import Seq2SeqQueries
from keel.retrieval.data.beir import Passage

PASSAGES = [Passage("a", "The open function opens a file.", "open"), Passage("b", "Sockets are endpoints.", "socket")]


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A randomly initialised one-layer T5 that speaks MiniLM's WordPiece vocabulary."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("tiny-t5")
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=30522, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
        pad_token_id=0, eos_token_id=102, decoder_start_token_id=101,
    )  # fmt: skip
    T5ForConditionalGeneration(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    return folder


def test_generated_queries_are_reproducible_and_cached(
    tiny_t5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "queries.jsonl"
    expander = Seq2SeqQueries(str(tiny_t5), num_queries=3, max_query_length=6, cache_file=str(cache))
    first = expander(PASSAGES)
    assert len(first) == 2
    assert all(1 <= len(queries) <= 3 for queries in first)
    assert cache.is_file()
    assert Seq2SeqQueries(str(tiny_t5), num_queries=3, max_query_length=6)(PASSAGES) == first  # same seed
    monkeypatch.setattr(Seq2SeqQueries, "generate", lambda self, passages: pytest.fail("generated again"))
    assert expander(PASSAGES) == first  # read from the cache
    changed = [Passage("a", "A different text now.", "open"), PASSAGES[1]]
    with pytest.raises(pytest.fail.Exception, match="generated again"):
        expander(changed)  # a changed passage is generated anew
    for other in (
        Seq2SeqQueries(str(tiny_t5), num_queries=2, max_query_length=6, cache_file=str(cache)),
        Seq2SeqQueries(str(tiny_t5), num_queries=3, max_query_length=6, seed=1, cache_file=str(cache)),
    ):
        with pytest.raises(pytest.fail.Exception, match="generated again"):
            other(PASSAGES)  # other settings never reuse these queries
