"""Sampling text from a language model, on demand and as a training callback."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

EOS_TOKEN = "<|endoftext|>"
DEFAULT_PROMPTS = ("The", "In the beginning", "Once upon a time")


class TextSamplesCallback(L.Callback):
    """Sample continuations of a few prompts during and after training, to read what the model learned.

    Samples go to ``samples.txt`` in the run's log directory (``trainer.log_dir``, which is
    ``default_root_dir`` without a logger), appended under a header naming the step, and are
    printed as a table. The tokenizer is the datamodule's ``tokenizer`` unless one is given. The
    module must provide ``generate_text(tokenizer, prompts, max_new_tokens, temperature, top_k, seed)``
    (as :class:`~keel.core.tasks.CausalLMModule` does).

    Sampling runs on global rank 0 only, except under strategies that shard parameters (DeepSpeed
    ZeRO-3, FSDP), where every rank must take part in the forward passes.

    Args:
        prompts: Texts to continue.
        every_n_steps: Also sample every this many optimizer steps (0: only at the end).
        max_new_tokens: Tokens to sample per prompt.
        temperature: Softmax temperature (0 for greedy decoding).
        top_k: Sample among the ``k`` most likely tokens.
        seed: Sampling seed, the same at every step so that samples are comparable across steps.
        tokenizer: Tokenizer to use instead of ``trainer.datamodule.tokenizer``.
        filename: Name of the samples file in the log directory.
    """

    def __init__(
        self,
        prompts: Sequence[str] = DEFAULT_PROMPTS,
        every_n_steps: int = 0,
        max_new_tokens: int = 48,
        temperature: float = 0.8,
        top_k: int = 40,
        seed: int = 0,
        tokenizer: Any = None,
        filename: str = "samples.txt",
    ) -> None:
        self.prompts = list(prompts)
        self.every_n_steps = every_n_steps
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed
        self.tokenizer = tokenizer
        self.filename = filename
        self._last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Sample every ``every_n_steps`` optimizer steps."""
        step = trainer.global_step
        # With gradient accumulation this hook runs several times per optimizer step; sample once.
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sample once more with the final weights."""
        if trainer.global_step != self._last_step:
            self._last_step = trainer.global_step
            self.sample(trainer, pl_module)

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[str] | None:
        """Generate, print and save one round of samples; must be called on every rank.

        Returns:
            The continuations on the ranks that generated them, else ``None``.
        """
        tokenizer = self.tokenizer if self.tokenizer is not None else getattr(trainer.datamodule, "tokenizer", None)
        generate = getattr(pl_module, "generate_text", None)
        if tokenizer is None or generate is None:
            rank_zero_warn(
                "TextSamplesCallback needs a datamodule with a `tokenizer` and a module with `generate_text`"
            )
            return None
        # log_dir broadcasts from rank 0, so every rank has to ask for it before any rank returns early.
        out_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if not (trainer.is_global_zero or _shards_parameters(trainer)):
            return None
        texts = generate(
            tokenizer,
            self.prompts,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            seed=self.seed,
        )
        if trainer.is_global_zero:
            self._write(out_dir / self.filename, trainer.global_step, texts)
            self._print(trainer.global_step, texts)
        return texts

    def _write(self, path: Path, step: int, texts: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"=== step {step} ==="]
        for prompt, text in zip(self.prompts, texts, strict=True):
            lines += [f"> {prompt}", f"{prompt}{text}", ""]
        with path.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def _print(self, step: int, texts: list[str]) -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"samples at step {step}", show_lines=True)
        table.add_column("prompt", style="bold")
        table.add_column("continuation")
        for prompt, text in zip(self.prompts, texts, strict=True):
            # Text objects keep brackets in generated text from being read as rich markup.
            table.add_row(Text(prompt), Text(text))
        Console().print(table)


def _shards_parameters(trainer: L.Trainer) -> bool:
    strategy = trainer.strategy
    return bool(getattr(strategy, "zero_stage_3", False)) or "FSDP" in type(strategy).__name__


@torch.no_grad()
def sample_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
    temperature: float = 0.8,
    top_k: int = 40,
    seed: int = 0,
) -> list[str]:
    """Continue each prompt with the model's own ``generate``, leaving torch's RNG state as it was.

    Each prompt is sampled on its own, from a generator freshly seeded with ``seed``, so its
    continuation depends only on the prompt, the weights and the seed (not on the other prompts or
    on how far training has advanced the global RNG). The model's train/eval mode is restored.

    Args:
        model: A ``transformers`` model with ``generate``.
        tokenizer: A ``tokenizers.Tokenizer`` or a ``transformers`` tokenizer.
        prompts: Texts to continue.
        max_new_tokens: Tokens to sample per prompt (fewer if the model's context is shorter).
        temperature: Softmax temperature; ``0`` means greedy decoding.
        top_k: Sample among the ``k`` most likely tokens.
        seed: Seed of the sampling generator.

    Returns:
        The decoded continuations (without their prompts), one per prompt.
    """
    device = next(model.parameters()).device
    eos = _eos_id(tokenizer, model)
    context = getattr(model.config, "max_position_embeddings", None)
    n_new = min(max_new_tokens, context - 1) if context else max_new_tokens
    options: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        options = {"do_sample": True, "temperature": temperature, "top_k": top_k}
    was_training = model.training
    model.eval()
    texts = []
    try:
        with _forked_rng(device):
            for prompt in prompts:
                _seed_device(device, seed)
                ids = _encode(tokenizer, prompt) or [eos if eos is not None else 0]
                if context:
                    ids = ids[-(context - n_new) :]  # keep the end of an over-long prompt
                input_ids = torch.tensor([ids], device=device)
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=n_new,
                    pad_token_id=eos,
                    eos_token_id=eos,
                    **options,
                )
                texts.append(tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True))
    finally:
        model.train(was_training)
    return texts


def _encode(tokenizer: Any, text: str) -> list[int]:
    encoded = tokenizer.encode(text)
    return list(getattr(encoded, "ids", encoded))  # tokenizers.Encoding or a list of ids


def _eos_id(tokenizer: Any, model: Any) -> int | None:
    token_id = getattr(tokenizer, "eos_token_id", None)
    if token_id is None and hasattr(tokenizer, "token_to_id"):
        token_id = tokenizer.token_to_id(EOS_TOKEN)
    if token_id is None:
        token_id = getattr(model.config, "eos_token_id", None)
        token_id = token_id[0] if isinstance(token_id, list) and token_id else token_id
    return token_id


def _forked_rng(device: torch.device) -> Any:
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index], device_type="cuda")
    return torch.random.fork_rng(device_type=device.type)


def _seed_device(device: torch.device, seed: int) -> None:
    # Seed only the generators that fork_rng saved: torch.manual_seed would also reseed every other GPU.
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)
    elif device.type != "cpu":
        getattr(torch, device.type).manual_seed(seed)
