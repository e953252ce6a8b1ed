"""Generators for MASTER's generator-output tasks: any local model that proposes tokens at masked positions.

MASTER's third task family recovers what an external pre-trained model produced. Offline, keel
supports the token-level form: a *generator* fills masked positions of a passage (ELECTRA's
generator), and two decoders read the generator's output through the [CLS] bottleneck:

* ``corrupted``: predict the original token at every position the generator filled;
* ``replaced``: tell, for every token, whether the generator changed it (replaced-token detection).

Both are off unless a generator is given (:class:`~keel.retrieval.master.MasterModule`'s
``generator``). A generator is anything that satisfies :class:`TokenGenerator`;
:class:`MaskedLMGenerator` wraps any masked language model in a local Hugging Face folder
(``local_files_only``, never remote code). It is frozen: only the encoder and decoders learn.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from keel.core.errors import ConfigError


class TokenGenerator(Protocol):
    """Proposes a token at each masked position of a batch of token sequences."""

    vocab_size: int

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token ids ``[batch, length]``; only the entries at ``positions`` (a bool mask) are read."""
        ...


class MaskedLMGenerator(nn.Module):
    """Samples replacement tokens from a masked language model's predictions at the masked positions.

    Args:
        model: A masked LM (``logits`` output), e.g. loaded by :meth:`from_pretrained`.
        temperature: Sampling temperature; 0 takes the most likely token.
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature < 0:
            raise ConfigError(f"generator temperature must be >= 0, got {temperature}")
        self.model = model.eval().requires_grad_(False)
        self.temperature = temperature
        self.vocab_size = int(model.config.vocab_size)

    @classmethod
    def from_pretrained(cls, path: str, temperature: float = 1.0) -> MaskedLMGenerator:
        """A generator from a local masked-LM folder.

        Raises:
            CheckpointError: If the folder holds no loadable model.
        """
        from keel.core.distill.module import pretrained

        return cls(pretrained(path, kind="masked-lm"), temperature)

    def train(self, mode: bool = True) -> MaskedLMGenerator:
        """The generator stays in eval mode (no dropout), whatever its parent does."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Sampled token ids ``[batch, length]`` (the inputs elsewhere)."""
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[positions].float()
        if self.temperature == 0:
            sampled = logits.argmax(-1)
        else:
            sampled = torch.multinomial(torch.softmax(logits / self.temperature, -1), 1).squeeze(-1)
        out = input_ids.clone()
        out[positions] = sampled
        return out


def masked_lm_generator(path: str, temperature: float = 1.0) -> MaskedLMGenerator:
    """A :class:`MaskedLMGenerator` from a local folder (the config-friendly spelling of ``from_pretrained``)."""
    return MaskedLMGenerator.from_pretrained(path, temperature)
