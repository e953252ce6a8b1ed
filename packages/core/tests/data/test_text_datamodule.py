"""Tests of the token cache, the block dataset and TextDataModule's loaders."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from keel.core.data.corpora import build_english_corpus
from keel.core.data.text import TextDataModule, TokenBlockDataset, cached_tokens, token_dtype
from keel.core.data.tokenizer import DOC_SEPARATOR, EOT, read_documents, tokenizer_fingerprint
from keel.core.errors import ConfigError, DataError

BLOCK, BATCH, VOCAB = 32, 4, 512


def _module(data_dir: Path, **kwargs) -> TextDataModule:
    options = {"vocab_size": VOCAB, "block_size": BLOCK, "batch_size": BATCH, "progress": False} | kwargs
    return TextDataModule(str(data_dir), **options)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pydoc_topics corpus with its tokenizer and token caches, prepared once."""
    folder = build_english_corpus(tmp_path_factory.mktemp("corpus"), ["pydoc_topics"])
    _module(folder).prepare_data()
    return folder


@pytest.fixture
def data_dir(corpus: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared corpus; copy2 keeps modification times, so the caches stay valid."""
    for path in corpus.iterdir():
        shutil.copy2(path, tmp_path / path.name)
    return tmp_path


@pytest.fixture
def prepared(data_dir: Path) -> TextDataModule:
    module = _module(data_dir)
    module.prepare_data()
    module.setup("fit")
    return module


def test_token_cache_holds_every_document_followed_by_eot(prepared: TextDataModule, data_dir: Path) -> None:
    tokens = np.load(cached_tokens(prepared.tokenizer, data_dir / "val.txt"))
    assert tokens.dtype == np.uint16
    assert token_dtype(70000) == np.int32
    eot = prepared.eot_token_id
    assert tokens[-1] == eot
    pieces = np.split(tokens, np.flatnonzero(tokens == eot) + 1)[:-1]
    docs = list(read_documents(data_dir / "val.txt"))
    assert [prepared.tokenizer.decode(p[:-1].tolist()) for p in pieces] == docs


def test_vocab_size_is_the_trained_size(prepared: TextDataModule) -> None:
    assert prepared.vocab_size == prepared.tokenizer.get_vocab_size() == VOCAB
    assert prepared.tokenizer.token_to_id(EOT) == prepared.eot_token_id


def test_blocks_tile_the_token_stream_and_labels_equal_inputs(prepared: TextDataModule) -> None:
    dataset = prepared.train_set
    tokens = np.asarray(dataset.tokens, dtype=np.int64)
    assert len(dataset) == len(tokens) // BLOCK
    for i in (0, 1, len(dataset) - 1):
        item = dataset[i]
        assert item["input_ids"].dtype == torch.long
        assert item["input_ids"].shape == (BLOCK,)
        assert torch.equal(item["input_ids"], torch.from_numpy(tokens[i * BLOCK : (i + 1) * BLOCK]))
        assert torch.equal(item["labels"], item["input_ids"])
    item["labels"][0] = -100  # labels are a copy: masking them leaves the inputs alone
    assert item["input_ids"][0] != -100
    # Workers started with spawn get the path, not a pickled copy of the tokens.
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 2048 + 8 * len(dataset)
    assert torch.equal(clone[5]["input_ids"], dataset[5]["input_ids"])


def test_strided_and_capped_blocks(prepared: TextDataModule) -> None:
    strided = TokenBlockDataset(prepared.train_set.path, BLOCK, stride=BLOCK // 2)
    assert len(strided) == (len(strided.tokens) - BLOCK) // (BLOCK // 2) + 1
    assert torch.equal(strided[1]["input_ids"][: BLOCK // 2], strided[0]["input_ids"][BLOCK // 2 :])
    capped = TokenBlockDataset(prepared.train_set.path, BLOCK, max_blocks=5)
    full = prepared.train_set
    assert len(capped) == 5
    assert torch.equal(capped[0]["input_ids"], full[0]["input_ids"])
    assert torch.equal(capped[4]["input_ids"], full[len(full) - 1]["input_ids"])


def test_loaders_yield_batches_of_blocks(prepared: TextDataModule) -> None:
    batch = next(iter(prepared.train_dataloader()))
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == (BATCH, BLOCK)
    assert len(prepared.train_dataloader()) == len(prepared.train_set) // BATCH
    val = list(prepared.val_dataloader())
    assert torch.equal(val[0]["input_ids"][0], prepared.val_set[0]["input_ids"])  # in order
    assert sum(len(b["input_ids"]) for b in val) == len(prepared.val_set)
    prepared.setup("test")
    assert next(iter(prepared.test_dataloader()))["input_ids"].shape[1] == BLOCK


def test_train_loader_resumes_mid_epoch(prepared: TextDataModule, data_dir: Path) -> None:
    loader = prepared.train_dataloader()
    it = iter(loader)
    seen = [next(it)["input_ids"] for _ in range(3)]
    state = loader.state_dict()
    rest = [b["input_ids"] for b in it]
    assert state["batches_yielded"] == 3
    assert len(rest) == len(loader) - 3

    fresh = _module(data_dir)  # a new process after a restart: same data, same seed
    fresh.setup("fit")
    resumed = fresh.train_dataloader()
    resumed.load_state_dict(state)
    again = [b["input_ids"] for b in resumed]
    assert len(again) == len(rest)
    assert all(torch.equal(a, b) for a, b in zip(again, rest, strict=True))
    order = torch.cat([b[:, 0] for b in seen + rest])
    assert not torch.equal(order, torch.stack([prepared.train_set[i]["input_ids"][0] for i in range(len(order))]))


def test_cache_is_reused_and_invalidated(data_dir: Path) -> None:
    module = _module(data_dir)
    cache = next(data_dir.glob("tokens-train-*.npy"))
    stamp = cache.stat().st_mtime_ns
    module.prepare_data()
    assert cached_tokens(module.tokenizer, data_dir / "train.txt") == cache
    again = _module(data_dir)
    again.prepare_data()
    again.setup("fit")
    assert again.train_set.path == cache
    assert cache.stat().st_mtime_ns == stamp

    smaller = _module(data_dir, vocab_size=300)  # a new tokenizer means a new cache
    smaller.prepare_data()
    assert tokenizer_fingerprint(smaller.tokenizer) != tokenizer_fingerprint(module.tokenizer)
    new_cache = cached_tokens(smaller.tokenizer, data_dir / "train.txt")
    assert new_cache != cache
    assert np.load(new_cache).max() < 300

    val = data_dir / "val.txt"  # an edited split is re-tokenized with the same tokenizer
    val_cache = cached_tokens(module.tokenizer, val)
    before = np.load(val_cache).size
    val.write_text(val.read_text() + f"extra words at the end\n{DOC_SEPARATOR}\n")
    assert cached_tokens(module.tokenizer, val) == val_cache
    assert np.load(val_cache).size > before


def test_tokenizer_sees_only_the_training_split(corpus: Path, tmp_path: Path) -> None:
    shutil.copy(corpus / "test.txt", tmp_path / "train.txt")
    (tmp_path / "val.txt").write_text(" zyzzyvaquokka" * 2000 + f"\n{DOC_SEPARATOR}\n", encoding="utf-8")
    module = _module(tmp_path, vocab_size=300, block_size=8)
    module.prepare_data()
    assert len(module.tokenizer.encode(" zyzzyvaquokka").ids) > 3


def test_corpus_is_built_when_asked_for(tmp_path: Path) -> None:
    module = _module(tmp_path / "new", corpus=["pydoc_topics"], vocab_size=300, block_size=16)
    module.prepare_data()
    module.setup()
    assert (tmp_path / "new" / "corpus.json").is_file()
    assert (tmp_path / "new" / "tokenizer-bpe-300.json").is_file()
    assert module.test_set is not None
    assert len(module.val_set) > 0


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda d: shutil.rmtree(d), "no such folder"),
        (lambda d: (d / "train.txt").unlink(), "train.txt: no such file"),
        (lambda d: (d / "val.txt").write_text(""), "val.txt: file is empty"),
        (lambda d: (d / "val.txt").unlink(), "val.txt: no such file"),
        (lambda d: (d / "train.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "train.txt: looks like"),
        (lambda d: (d / "train.txt").write_bytes("résumé".encode("latin-1") * 50), "train.txt: not UTF-8"),
        (lambda d: (d / "val.txt").write_text("too short\n"), "val.txt: only .* tokens, fewer than one block"),
    ],
)
def test_bad_data_raises_one_data_error(data_dir: Path, prepare, message: str) -> None:
    prepare(data_dir)
    module = _module(data_dir)
    with pytest.raises(DataError, match=message) as info:
        module.setup("fit")  # prepares what is missing, as prepare_data would
    assert "\n" not in str(info.value)


def test_missing_test_split_and_bad_arguments(data_dir: Path) -> None:
    (data_dir / "test.txt").unlink()
    module = _module(data_dir)
    module.prepare_data()
    with pytest.raises(DataError, match="test.txt: no such file"):
        module.test_dataloader()
    with pytest.raises(ConfigError, match="block_size=0"):
        _module(data_dir, block_size=0)


class _TinyLM(L.LightningModule):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab_size, 16), nn.Linear(16, vocab_size)

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.head(self.embed(batch["input_ids"]))[:, :-1]  # labels == inputs: shift here
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.step(batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.step(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fits_under_a_lightning_trainer(data_dir: Path) -> None:
    module = _module(data_dir, max_eval_blocks=8)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_TinyLM(module.vocab_size), datamodule=module)
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["val_loss"])
    assert len(module.val_set) == 8
