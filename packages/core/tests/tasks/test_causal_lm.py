"""Tests of the causal LM builder, the Lightning module, its schedule and text sampling."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.data import DataLoader

from keel.core.errors import CheckpointError, ConfigError, KeelError
from keel.core.tasks import (
    CausalLMModule,
    NonFiniteLossError,
    TextSamplesCallback,
    build_causal_lm,
    split_decay_groups,
    warmup_cosine_schedule,
)

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a small language model learns to continue text",
    "lightning runs the training loop and the callbacks",
    "the dog sleeps while the fox runs over the hill",
] * 8
TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    return tok


def tiny_gpt2(vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_causal_lm("gpt2", vocab_size=vocab_size, **TINY)


def fixed_batch(tokenizer: Tokenizer, batch_size: int = 4, length: int = 16) -> dict[str, torch.Tensor]:
    rows = [tokenizer.encode(s).ids[:length] for s in SENTENCES[:batch_size]]
    rows = [(r * length)[:length] for r in rows]  # repeat short sentences to a common length
    ids = torch.tensor(rows)
    return {"input_ids": ids, "labels": ids.clone()}


def loader(batches: list[dict[str, torch.Tensor]]) -> DataLoader:
    """A loader that yields the given, already collated batches in order."""
    return DataLoader(batches, batch_size=None)


def make_module(model, lr: float = 1e-3, weight_decay: float = 0.1, **kwargs) -> CausalLMModule:
    return CausalLMModule(model, optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=weight_decay), **kwargs)


def test_build_has_requested_vocab_and_shape(tokenizer):
    vocab = tokenizer.get_vocab_size()
    model = tiny_gpt2(vocab)
    assert model.config.vocab_size == vocab
    assert model.get_input_embeddings().num_embeddings == vocab
    assert len(model.transformer.h) == 2
    assert model.config.n_embd == 32
    logits = model(input_ids=torch.zeros(1, 5, dtype=torch.long)).logits
    assert logits.shape == (1, 5, vocab)
    # GPT-2's default special ids (50256) do not exist in a 320-token vocabulary.
    assert model.config.eos_token_id is None
    assert model.config.bos_token_id is None


def test_build_rejects_typos_and_unknown_architectures():
    with pytest.raises(ConfigError, match="did you mean 'n_layer'"):
        build_causal_lm("gpt2", vocab_size=64, n_layers=2)
    with pytest.raises(ConfigError, match="unknown model_type"):
        build_causal_lm("not-a-model")


def test_build_loads_local_weights(tmp_path):
    model = tiny_gpt2(64)
    model.save_pretrained(tmp_path)
    loaded = build_causal_lm(init_from=tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    resized = build_causal_lm(init_from=tmp_path, vocab_size=80)
    assert resized.get_input_embeddings().num_embeddings == 80
    with pytest.raises(CheckpointError, match="config.json"):
        build_causal_lm(init_from=tmp_path / "missing")


def test_loss_is_shifted_cross_entropy(tokenizer):
    model = tiny_gpt2(tokenizer.get_vocab_size())
    module = make_module(model).eval()
    batch = fixed_batch(tokenizer)
    batch["labels"][0, :5] = -100  # ignored positions must drop out of the mean
    with torch.no_grad():
        loss = module.step(batch, "val")
        logits = model(input_ids=batch["input_ids"]).logits
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(loss, expected)


def test_weight_decay_groups(tokenizer):
    model = tiny_gpt2(tokenizer.get_vocab_size())
    optimizer = make_module(model, weight_decay=0.1).configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in model.named_parameters()}
    decay_group, no_decay_group = optimizer.param_groups
    assert decay_group["weight_decay"] == 0.1
    assert no_decay_group["weight_decay"] == 0.0
    decay = {names[id(p)] for p in decay_group["params"]}
    no_decay = {names[id(p)] for p in no_decay_group["params"]}
    # Only the 2-D projection weights of attention and MLP decay; lm_head is tied to wte.
    projections = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert decay == {f"transformer.h.{i}.{m}.weight" for i in range(2) for m in projections}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= no_decay
    assert all(n.endswith("bias") or ".ln_" in n or "wte" in n or "wpe" in n for n in no_decay)
    assert decay | no_decay == set(names.values())
    assert not decay & no_decay
    assert [names[id(p)] for p in split_decay_groups(model)[0]] == [names[id(p)] for p in decay_group["params"]]


def test_optimizer_without_param_groups_gets_a_flat_list(tokenizer):
    module = CausalLMModule(tiny_gpt2(64), optimizer=partial(torch.optim.LBFGS, lr=0.1))
    optimizer = module.configure_optimizers()["optimizer"]
    assert len(optimizer.param_groups) == 1
    assert len(optimizer.param_groups[0]["params"]) == len(list(module.model.parameters()))


def test_warmup_cosine_values():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = warmup_cosine_schedule(optimizer, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    factor = schedule.lr_lambdas[0]
    assert factor(0) == pytest.approx(0.1)  # (0 + 1) / 10: the first step already learns
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)  # halfway through the cosine
    assert factor(110) == pytest.approx(0.1)
    assert factor(500) == pytest.approx(0.1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2)  # LambdaLR applies factor(0) at once
    with pytest.raises(ConfigError):
        warmup_cosine_schedule(optimizer, warmup_steps=10, max_steps=10)


def test_val_ppl_is_exp_of_token_mean_loss(tokenizer):
    model = tiny_gpt2(tokenizer.get_vocab_size())
    module = make_module(model)
    full = fixed_batch(tokenizer, batch_size=4)
    masked = fixed_batch(tokenizer, batch_size=2)
    masked["labels"][:, :10] = -100  # few target tokens: weighs less than the full batch
    small = {k: v[:1] for k, v in full.items()}
    batches = [full, masked, small]
    losses, counts = [], []
    model.eval()  # validation runs without dropout
    with torch.no_grad():
        # Sharper logits (the head is tied to the embeddings) make the three batches' losses far apart.
        model.transformer.wte.weight.mul_(30.0)
    with torch.no_grad():
        for b in batches:
            losses.append(model(input_ids=b["input_ids"], labels=b["labels"]).loss.item())
            counts.append(int((b["labels"][:, 1:] != -100).sum()))
    assert len(set(round(x, 4) for x in losses)) == 3
    assert len(set(counts)) == 3
    token_mean = sum(x * n for x, n in zip(losses, counts, strict=True)) / sum(counts)

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (result,) = trainer.validate(module, dataloaders=loader(batches), verbose=False)
    assert result["val/loss"] == pytest.approx(token_mean, rel=1e-5)
    assert result["val/ppl"] == pytest.approx(math.exp(token_mean), rel=1e-5)
    assert abs(token_mean - sum(losses) / 3) > 0.05  # the check can tell a token mean from a batch mean


def test_training_reduces_loss(tokenizer, tmp_path):
    model = tiny_gpt2(tokenizer.get_vocab_size())
    batch = fixed_batch(tokenizer)
    scheduler = partial(warmup_cosine_schedule, warmup_steps=2, min_lr_ratio=0.1)  # max_steps from the trainer
    module = make_module(model, lr=1e-2, scheduler=scheduler)
    with torch.no_grad():
        before = model.eval()(**batch).loss.item()
    model.train()
    trainer = L.Trainer(
        max_steps=20,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=loader([batch] * 20))
    with torch.no_grad():
        after = model.eval()(**batch).loss.item()
    assert after < 0.7 * before
    assert trainer.callback_metrics["train/tokens"].item() == 20 * batch["input_ids"].numel()
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.1)  # decayed to the floor at step 20

    # Checkpoints hold only plain types (they load with weights_only=True) and keep the token count.
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=True)["keel_tokens_seen"] == 20 * batch["input_ids"].numel()
    restored = CausalLMModule.load_from_checkpoint(
        ckpt, model=tiny_gpt2(tokenizer.get_vocab_size(), seed=1), optimizer=partial(torch.optim.AdamW, lr=1e-2)
    )
    assert restored.tokens_seen == module.tokens_seen
    torch.testing.assert_close(restored.model.state_dict(), model.state_dict())


def test_generate_text_leaves_rng_untouched(tokenizer):
    module = make_module(tiny_gpt2(tokenizer.get_vocab_size())).train()
    prompts = ["the quick", "a small", ""]
    state = torch.get_rng_state()
    texts = module.generate_text(tokenizer, prompts, max_new_tokens=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(texts) == 3
    assert all(isinstance(t, str) for t in texts)
    assert module.model.training  # mode restored
    assert module.generate_text(tokenizer, prompts, max_new_tokens=8) == texts  # seeded: reproducible
    greedy = module.generate_text(tokenizer, ["the quick"], max_new_tokens=4, temperature=0)
    assert len(greedy) == 1


def test_nan_loss_raises(tokenizer):
    model = tiny_gpt2(tokenizer.get_vocab_size())
    with torch.no_grad():
        model.transformer.wte.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="non-finite train loss .* at global step 0") as info:
        make_module(model).step(fixed_batch(tokenizer), "train")
    assert isinstance(info.value, KeelError)
    assert "\n" not in str(info.value)


class _TokenizedData(L.LightningDataModule):
    def __init__(self, tokenizer: Tokenizer, batch: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.batch = batch

    def train_dataloader(self):
        return loader([self.batch] * 4)


def test_samples_are_written(tokenizer, tmp_path):
    module = make_module(tiny_gpt2(tokenizer.get_vocab_size()), sample_every_n_steps=2, sample_prompts=["the fox"])
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=_TokenizedData(tokenizer, fixed_batch(tokenizer)))
    assert any(isinstance(cb, TextSamplesCallback) for cb in trainer.callbacks)
    text = (tmp_path / "samples.txt").read_text()
    assert text.count("=== step") == 2  # steps 2 and 4; the end of training does not repeat step 4
    assert "> the fox" in text
