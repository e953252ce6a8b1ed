"""MASTER's network: a deep encoder whose [CLS] vector alone feeds several shallow decoders.

The encoder is any Hugging Face encoder with an ``embeddings`` module (BERT, RoBERTa, ELECTRA ...)
built from a config or a local folder. Its last-layer [CLS] state ``h`` is the *bottleneck*: each
decoder reads ``[h; E(y)_{1:}]`` (Zhou et al., 2023, Section 3.2, after Condenser), where ``E(y)``
embeds the decoder's own corrupted input ``y`` with the encoder's embedding layer (word, position
and type embeddings, LayerNorm) and its first position is replaced by ``h``. No other encoder
state reaches a decoder, so whatever the decoder needs about the passage must pass through ``h``,
the vector later used for retrieval. Decoders are 1-2 post-LayerNorm Transformer layers (BERT's
layer shape) with full bidirectional attention over their input.

Every token prediction, the encoder's own MLM included, goes through one masked-LM head tied to
the encoder's word embeddings (MASTER shares BERT's ``cls`` head across decoders); the loss is the
cross-entropy at the labelled positions only, and the logits are computed only there (projecting
every position onto a 30k vocabulary would dominate the cost of a small model).

Tasks (each but ``mlm`` one decoder; see :mod:`keel.retrieval.master.data` for the inputs and masks):

==================  ====================================================================
``mlm``             the encoder's own masked LM over the whole passage (30%), no decoder;
                    part of every pre-training, as the authors' loss always adds it
``keywords``        masked keyword prediction: the passage, keyword-masked at 50%
``neighbour``       neighbouring passage recovery: the second half (or the next passage)
``complementary``   complementary mask: the passage masked where the encoder was *not*
``corrupted``       corrupted-token recovery: tokens a generator replaced (optional)
``replaced``        replaced-token detection over a generator's output (optional)
==================  ====================================================================

After pre-training only the encoder is kept (the decoders are discarded, as in MASTER):
:meth:`BottleneckedAutoencoder.as_biencoder` wraps it for contrastive fine-tuning, and
:func:`biencoder_from_checkpoint` / :func:`export_encoder` load or export it from a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from keel.core.errors import ConfigError
from keel.retrieval.master.masking import IGNORE
from keel.retrieval.nn.biencoder import BiEncoder

TASKS = ("mlm", "keywords", "neighbour", "complementary", "corrupted", "replaced")
#: Tasks with a shallow decoder of their own (``mlm`` is the encoder's).
DECODER_TASKS = TASKS[1:]
#: Tasks whose decoder input comes from a generator's output (off unless a generator is given).
GENERATOR_TASKS = ("corrupted", "replaced")
#: The encoder pass whose [CLS] feeds each task's decoder. ``main`` encodes the passage with a
#: uniform 30% mask; ``neighbour`` the first passage of a pair; ``complementary`` the passage with
#: the complementary task's own 50% mask.
ENCODER_PASS = {
    "mlm": "main",
    "keywords": "main",
    "corrupted": "main",
    "replaced": "main",
    "neighbour": "neighbour",
    "complementary": "complementary",
}


def check_tasks(tasks: Sequence[str]) -> list[str]:
    """The tasks in canonical order, without repeats; ``mlm`` joins any non-empty list.

    The authors' pre-training loss always includes the encoder's MLM over the whole passage
    (``lm_out.loss`` in every ``final_loss``), so a decoder task never runs without it: ``[neighbour]``
    is ``[mlm, neighbour]``, and ``[mlm]`` alone is plain masked-LM pre-training of the encoder.

    Raises:
        ConfigError: On an unknown task.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"unknown MASTER task(s) {unknown}; tasks are {', '.join(TASKS)}")
    chosen = set(tasks) | ({"mlm"} if tasks else set())
    return [t for t in TASKS if t in chosen]


def encoder_passes(tasks: Sequence[str]) -> list[str]:
    """The encoder passes the tasks need, in a fixed order."""
    needed = {ENCODER_PASS[t] for t in tasks}
    return [p for p in ("main", "neighbour", "complementary") if p in needed]


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``[n, vocab]`` against ``labels`` ``[n]``; 0 (with a graph) when ``n = 0``."""
    if labels.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels)


def mean_pairwise_cosine(vectors: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over the distinct pairs of rows of ``vectors`` ``[n, width]`` (n >= 2).

    Logged for the [CLS] bottleneck: near 1, every input gets nearly the same vector and a
    contrastive loss over them starts at chance, whatever the temperature.
    """
    if vectors.shape[0] < 2:
        raise ValueError("mean_pairwise_cosine needs at least 2 vectors")
    unit = F.normalize(vectors.float(), dim=-1)
    n = unit.shape[0]
    total = unit.sum(0).square().sum() - n  # sum over i != j of <u_i, u_j>: |sum u|^2 minus the n diagonal terms
    return total / (n * (n - 1))


class ShallowDecoder(nn.Module):
    """``layers`` post-LayerNorm Transformer layers (BERT's layer shape) with bidirectional attention.

    Args:
        width: Hidden size.
        heads: Attention heads.
        ffn: Feed-forward size.
        layers: Number of layers (MASTER uses 2).
        dropout: Dropout of attention and feed-forward outputs.
        eps: LayerNorm epsilon.
    """

    def __init__(self, width: int, heads: int, ffn: int, layers: int, dropout: float, eps: float) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            width, heads, ffn, dropout, activation="gelu", layer_norm_eps=eps, batch_first=True, norm_first=False
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Decoder states ``[batch, length, width]`` of inputs ``hidden`` (``attention_mask`` 1 on real tokens)."""
        return self.layers(hidden, src_key_padding_mask=attention_mask == 0)


class BottleneckedAutoencoder(nn.Module):
    """A deep encoder, a tied masked-LM head, and one shallow decoder per pre-training task.

    Args:
        encoder: A Hugging Face encoder (``last_hidden_state`` output, an ``embeddings`` module).
        tasks: The decoders to build (see :data:`TASKS`); empty for an encoder that is only fine-tuned.
        decoder_layers: Transformer layers per decoder.
        tokenizer: The encoder's folder (or ``package:...``) whose ``tokenizer.json`` travels with
            checkpoints, so an exported bi-encoder can tokenize without the folder.

    Raises:
        ConfigError: On an unknown task, a bad layer count or an encoder without ``embeddings``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: Sequence[str] = ("keywords", "neighbour", "complementary"),
        decoder_layers: int = 2,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        self.tasks = check_tasks(tasks)
        if decoder_layers < 1:
            raise ConfigError(f"decoder_layers must be >= 1, got {decoder_layers}")
        if not isinstance(getattr(encoder, "embeddings", None), nn.Module):
            raise ConfigError(f"{type(encoder).__name__} has no 'embeddings' module to embed decoder inputs with")
        if isinstance(getattr(encoder, "pooler", None), nn.Module):
            encoder.pooler = None  # unused; a parameter without gradient stalls DDP
        self.encoder = encoder
        config = encoder.config
        width, eps = config.hidden_size, getattr(config, "layer_norm_eps", 1e-12)
        self.vocab_size = config.vocab_size
        # BERT's prediction head transform; the output projection is the tied word-embedding matrix.
        # Without tasks (the no-pre-training baseline) there is nothing to predict: no head at all.
        self.mlm_transform = (
            nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=eps)) if self.tasks else None
        )
        self.mlm_bias = nn.Parameter(torch.zeros(self.vocab_size)) if self.tasks else None
        dropout = getattr(config, "hidden_dropout_prob", 0.1)
        ffn = getattr(config, "intermediate_size", 4 * width)
        heads = config.num_attention_heads
        self.decoders = nn.ModuleDict(
            {
                task: ShallowDecoder(width, heads, ffn, decoder_layers, dropout, eps)
                for task in self.tasks
                if task in DECODER_TASKS
            }
        )
        self.replaced_head = nn.Linear(width, 1) if "replaced" in self.tasks else None
        self.tokenizer_json = _read_tokenizer_json(tokenizer) if tokenizer else None

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden states ``[batch, length, width]``."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def decode(
        self, task: str, bottleneck: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Decoder states of ``[h; E(y)_{1:}]``: the bottleneck ``h`` ``[batch, width]`` then ``y``'s embeddings.

        Args:
            task: Which decoder.
            bottleneck: The encoder's [CLS] vectors, the decoder's only view of the encoder.
            input_ids: The decoder's own (corrupted) input ``y``; its first token's place goes to ``h``.
            attention_mask: 1 on real tokens of ``y``.
        """
        embedded = self.encoder.embeddings(input_ids=input_ids)
        hidden = torch.cat([bottleneck[:, None, :].to(embedded.dtype), embedded[:, 1:]], dim=1)
        return self.decoders[task](hidden, attention_mask)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits ``[..., vocab]`` of hidden states through the tied masked-LM head.

        Raises:
            ConfigError: If the model was built without tasks (it has no head).
        """
        if self.mlm_transform is None:
            raise ConfigError("this model was built without pre-training tasks, so without a masked-LM head")
        weight = self.encoder.get_input_embeddings().weight
        return F.linear(self.mlm_transform(hidden), weight, self.mlm_bias)

    def mlm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy at the positions whose label is not -100 (logits computed only there)."""
        where = labels != IGNORE
        return masked_lm_loss(self.mlm_logits(hidden[where]), labels[where])

    def replaced_loss(self, hidden: torch.Tensor, replaced: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of "was this token replaced?" over ``positions`` (ELECTRA's detection task).

        Args:
            hidden: Decoder states ``[batch, length, width]``.
            replaced: ``[batch, length]`` 1 where the generator's token differs from the original.
            positions: ``[batch, length]`` True at the tokens that are judged (the passage's words).

        Raises:
            ConfigError: If the model has no ``replaced`` decoder.
        """
        if self.replaced_head is None:
            raise ConfigError("this model was built without the 'replaced' task")
        logits = self.replaced_head(hidden[positions]).squeeze(-1)
        if logits.numel() == 0:
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits.float(), replaced[positions].float())

    def as_biencoder(
        self,
        pooling: str = "cls",
        normalize: bool = True,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        min_temperature: float = 0.01,
    ) -> BiEncoder:
        """A bi-encoder (one shared tower) over this encoder, sharing its parameters.

        MASTER retrieves with the [CLS] vector it pre-trained as the bottleneck, hence ``cls`` pooling.
        """
        return BiEncoder(
            self.encoder,
            pooling=pooling,
            normalize=normalize,
            temperature=temperature,
            learn_temperature=learn_temperature,
            min_temperature=min_temperature,
            tokenizer_json=self.tokenizer_json,
        )


def _read_tokenizer_json(path: str) -> str | None:
    from keel.core.distill.module import resolve_model_path

    file = Path(resolve_model_path(path)) / "tokenizer.json"
    return file.read_text(encoding="utf-8") if file.is_file() else None


def biencoder_from_checkpoint(
    path: str,
    pooling: str | None = None,
    normalize: bool | None = None,
    temperature: float | None = None,
    learn_temperature: bool = False,
) -> BiEncoder:
    """The encoder of a MASTER (or any bi-encoder) checkpoint as a fresh bi-encoder to fine-tune.

    For a ``model:`` node of :class:`~keel.retrieval.biencoder.BiEncoderModule` after a pre-training
    run (``steps.finetune: 0``); the decoders are not loaded. Settings left ``None`` keep the checkpoint's.

    Args:
        path: A ``.ckpt`` of :class:`~keel.retrieval.master.MasterModule` or ``BiEncoderModule``.
        pooling: ``cls`` or ``mean``.
        normalize: L2-normalise the embeddings.
        temperature: The (initial) softmax temperature.
        learn_temperature: Learn the temperature.

    Raises:
        CheckpointError: If the file is not such a checkpoint.
    """
    from keel.retrieval.biencoder import load_biencoder

    trained = load_biencoder(path)
    return BiEncoder(
        trained.query_encoder,
        trained.passage_encoder,
        pooling=pooling or trained.pooling,
        normalize=trained.normalize if normalize is None else normalize,
        temperature=float(trained.temperature) if temperature is None else temperature,
        learn_temperature=learn_temperature,
        min_temperature=trained.min_temperature,
        tokenizer_json=trained.tokenizer_json,
    )


def export_encoder(checkpoint: str, out: str | os.PathLike[str]) -> Path:
    """Write a checkpoint's encoder as a Hugging Face folder (safetensors weights, config, ``tokenizer.json``).

    The folder loads with ``transformers.AutoModel`` and with :func:`keel.retrieval.eval.load_encoder`
    (pass ``pooling="cls"`` there for a MASTER encoder; a plain folder defaults to mean pooling).

    Raises:
        CheckpointError: If the file is not a bi-encoder checkpoint.
    """
    from keel.retrieval.biencoder import load_biencoder

    model = load_biencoder(checkpoint)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    model.query_encoder.save_pretrained(folder, safe_serialization=True)
    if model.tokenizer_json is not None:
        (folder / "tokenizer.json").write_text(model.tokenizer_json, encoding="utf-8")
    return folder
