"""Pseudo queries that expand passages: any local generator, and an offline stand-in made of the passage's own text.

CAPSTONE (He et al., 2023) expands each passage with queries a doc2query model (docTTTTTquery, up to
80 per passage) generated for it. An *expander* is anything that maps passages to their pseudo
queries (:class:`QueryExpander`):

* :class:`PassageQueries` (the offline default): the passage's own sentences, and its title, as
  pseudo queries. **It stands in for a doc2query generator** where none is available offline: its
  queries are real text about the passage, with query-like variety in how close they come to any
  real query (which the curriculum needs), but unlike generated queries they add no words the
  passage does not already contain.
* :class:`Seq2SeqQueries`: sampled queries of any sequence-to-sequence model in a local Hugging
  Face folder (e.g. a doc2query T5), with an optional cache file so a corpus is generated once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from keel.core.errors import ConfigError
from keel.retrieval.data.beir import Passage

_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+|\n+")


class QueryExpander(Protocol):
    """Maps passages to their pseudo queries."""

    def __call__(self, passages: Sequence[Passage]) -> list[list[str]]:
        """The pseudo queries of each passage, in the expander's order (the first are the inference views)."""
        ...


class PassageQueries:
    """Pseudo queries taken from the passage itself: its title, then its sentences in reading order.

    Args:
        max_queries: Keep at most this many per passage.
        min_words: Drop shorter sentences (fragments such as a lone signature).
        max_words: Cut longer sentences to their first ``max_words`` words (queries are short).
        include_title: Add the title (an API name, a page title) as the first candidate.
    """

    def __init__(
        self, max_queries: int = 10, min_words: int = 3, max_words: int = 24, include_title: bool = True
    ) -> None:
        if max_queries < 1 or min_words < 1 or max_words < min_words:
            raise ConfigError("need max_queries >= 1 and 1 <= min_words <= max_words")
        self.max_queries = max_queries
        self.min_words = min_words
        self.max_words = max_words
        self.include_title = include_title

    def queries(self, passage: Passage) -> list[str]:
        """The pseudo queries of one passage, de-duplicated."""
        found = [passage.title.strip()] if self.include_title and passage.title.strip() else []
        for sentence in _SENTENCE_END.split(passage.text):
            tokens = sentence.split()
            if len(tokens) >= self.min_words:
                found.append(" ".join(tokens[: self.max_words]))
        return list(dict.fromkeys(found))[: self.max_queries]

    def __call__(self, passages: Sequence[Passage]) -> list[list[str]]:
        """The pseudo queries of every passage."""
        return [self.queries(p) for p in passages]


class Seq2SeqQueries:
    """Queries sampled from a local sequence-to-sequence model (``local_files_only``, no remote code).

    Args:
        path: A folder with the model and its tokenizer (e.g. a doc2query T5).
        num_queries: Queries sampled per passage.
        max_input_length: Longest passage in tokens.
        max_query_length: Longest query in tokens.
        top_k: Sample from the ``top_k`` most likely tokens (docTTTTTquery's decoding).
        batch_size: Passages per generation batch.
        seed: Seed of the sampling.
        cache_file: A jsonl file of generated queries, read instead of generating when it holds a
            passage (keyed by a hash of the generator's settings, the passage id and a hash of its
            text, so another model or setting never reuses them) and extended with new ones.
        device: Where the model runs.
    """

    def __init__(
        self,
        path: str,
        num_queries: int = 10,
        max_input_length: int = 256,
        max_query_length: int = 32,
        top_k: int = 10,
        batch_size: int = 16,
        seed: int = 0,
        cache_file: str | None = None,
        device: str = "cpu",
    ) -> None:
        if num_queries < 1:
            raise ConfigError(f"num_queries must be >= 1, got {num_queries}")
        self.path = path
        self.num_queries = num_queries
        self.max_input_length = max_input_length
        self.max_query_length = max_query_length
        self.top_k = top_k
        self.batch_size = batch_size
        self.seed = seed
        self.cache_file = Path(cache_file) if cache_file else None
        self.device = device

    def _key(self, passage: Passage) -> str:
        settings = [
            str(Path(self.path).resolve()), self.num_queries, self.max_input_length, self.max_query_length,
            self.top_k, self.seed,
        ]  # fmt: skip
        generator = hashlib.blake2b(json.dumps(settings).encode(), digest_size=8).hexdigest()
        text = hashlib.blake2b(passage.full_text.encode(), digest_size=8).hexdigest()
        return f"{generator}:{passage.id}:{text}"

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from keel.core.errors import CheckpointError

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True, trust_remote_code=False)
            model = AutoModelForSeq2SeqLM.from_pretrained(self.path, local_files_only=True, trust_remote_code=False)
        except OSError as err:
            raise CheckpointError(f"cannot load a seq2seq model from {self.path}: {str(err)[:200]}") from err
        return tokenizer, model.to(self.device).eval()

    def generate(self, passages: Sequence[Passage]) -> list[list[str]]:
        """Sample ``num_queries`` queries for each passage (no cache)."""
        import torch

        tokenizer, model = self._load()
        out: list[list[str]] = []
        for start in range(0, len(passages), self.batch_size):
            chunk = [p.full_text for p in passages[start : start + self.batch_size]]
            inputs = tokenizer(
                chunk, truncation=True, max_length=self.max_input_length, padding=True, return_tensors="pt"
            )
            # generate() samples from the global RNG: seed a forked copy, so training's RNG is untouched
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(self.seed + start)
                generated = model.generate(
                    # only ids and mask: a BERT-style tokenizer's token_type_ids mean nothing to a seq2seq model
                    input_ids=inputs["input_ids"].to(self.device),
                    attention_mask=inputs["attention_mask"].to(self.device),
                    max_length=self.max_query_length,
                    do_sample=True,
                    top_k=self.top_k,
                    num_return_sequences=self.num_queries,
                )
            texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
            for i in range(len(chunk)):
                queries = [t.strip() for t in texts[i * self.num_queries : (i + 1) * self.num_queries]]
                out.append(list(dict.fromkeys(q for q in queries if q)))
        return out

    def __call__(self, passages: Sequence[Passage]) -> list[list[str]]:
        """The queries of every passage, from the cache where it has them."""
        cached: dict[str, list[str]] = {}
        if self.cache_file is not None and self.cache_file.is_file():
            with self.cache_file.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        record = json.loads(line)
                        cached[record["key"]] = record["queries"]
        missing = [p for p in passages if self._key(p) not in cached]
        if missing:
            for passage, queries in zip(missing, self.generate(missing), strict=True):
                cached[self._key(passage)] = queries
            if self.cache_file is not None:
                self.cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}.tmp")
                lines = (json.dumps({"key": k, "queries": v}, ensure_ascii=False) + "\n" for k, v in cached.items())
                tmp.write_text("".join(lines), encoding="utf-8")
                os.replace(tmp, self.cache_file)
        return [cached[self._key(p)] for p in passages]
