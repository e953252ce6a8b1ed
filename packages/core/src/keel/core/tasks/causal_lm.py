"""Causal language modelling: building Hugging Face decoders offline and training them with Lightning.

:func:`build_causal_lm` makes a randomly initialised model from an architecture name and config
overrides (or loads one from a local directory); :class:`CausalLMModule` trains any such model on
batches of ``{"input_ids", "labels"}`` and reports loss and perplexity per stage. Nothing here ever
contacts a model hub.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric

from keel.core.errors import CheckpointError, ConfigError, NonFiniteLossError
from keel.core.tasks.callbacks import DEFAULT_PROMPTS, TextSamplesCallback, sample_continuations

_SPECIAL_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def build_causal_lm(
    model_type: str = "gpt2",
    vocab_size: int | None = None,
    init_from: str | Path | None = None,
    attn_implementation: str | None = None,
    **config_kwargs: Any,
) -> Any:
    """Build a Hugging Face causal LM from a config, without downloading anything.

    Args:
        model_type: A ``transformers`` architecture name (``"gpt2"``, ``"llama"``, ...). Ignored when
            ``init_from`` is given: the directory's ``config.json`` decides the architecture.
        vocab_size: Size of the token vocabulary, normally the tokenizer's. ``None`` keeps the
            architecture's (or the loaded checkpoint's) default. A loaded model whose vocabulary
            differs has its embeddings resized.
        init_from: A local directory holding ``config.json`` and ``*.safetensors`` weights (what
            ``save_pretrained`` writes). ``None`` initialises the weights randomly.
        attn_implementation: ``"eager"``, ``"sdpa"`` ... (``None``: transformers' default). Methods that
            differentiate twice (SophiaH's Hessian-vector products) need ``"eager"``: PyTorch's fused
            CPU attention kernels have no double backward.
        **config_kwargs: Config fields to override, e.g. ``n_layer=2, n_embd=32`` for GPT-2.

    Returns:
        A ``transformers.PreTrainedModel`` with a causal LM head.

    Raises:
        ConfigError: Unknown ``model_type`` or a config field the architecture does not have.
        CheckpointError: ``init_from`` is not a readable directory of safetensors weights.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if init_from is not None:
        return _load_local(Path(init_from).expanduser(), vocab_size, config_kwargs, attn_implementation)

    try:
        defaults = AutoConfig.for_model(model_type)
    except ValueError:
        raise ConfigError(f"unknown model_type {model_type!r} for build_causal_lm") from None
    kwargs = dict(config_kwargs)
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
        # Default special-token ids refer to the architecture's original vocabulary (50256 for GPT-2);
        # in a smaller vocabulary they would index past the embedding table.
        for field in _SPECIAL_ID_FIELDS:
            if field not in kwargs and not _id_in_range(getattr(defaults, field, None), vocab_size):
                kwargs[field] = None
    config = AutoConfig.for_model(model_type, **kwargs)
    _reject_unknown_fields(model_type, defaults, config, config_kwargs)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    _set_causal_loss(model)
    return model


def _load_local(path: Path, vocab_size: int | None, overrides: dict[str, Any], attn_implementation: str | None) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (path / "config.json").is_file():
        raise CheckpointError(f"init_from={str(path)!r} is not a directory with a config.json")
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"init_from={str(path)!r} holds no *.safetensors weights")
    try:
        defaults = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False, **overrides)
        _reject_unknown_fields(defaults.model_type, defaults, config, overrides)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            config=config,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            attn_implementation=attn_implementation,
        )
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot load init_from={str(path)!r}: {first_line}") from None
    if vocab_size is not None and vocab_size != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab_size)
    _set_causal_loss(model)
    return model


def _reject_unknown_fields(model_type: str, defaults: Any, config: Any, requested: dict[str, Any]) -> None:
    # Configs accept any keyword and store it as an attribute, so a typo such as ``n_layers`` would
    # silently build the full-size default model. A requested key that shows up verbatim in the
    # built config but in neither the defaults nor the constructor's signature is such a typo;
    # aliases (``hidden_size``) and keys the config converts (``rope_theta``) never show up verbatim.
    known = set(defaults.to_dict()) | set(getattr(defaults, "attribute_map", {}))
    for klass in type(defaults).__mro__:
        if "__init__" in vars(klass):
            known |= set(inspect.signature(klass.__init__).parameters)
    built = config.to_dict()
    for key in requested:
        if key in built and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{model_type} config has no field {key!r}{hint}")


def _id_in_range(token_id: Any, vocab_size: int) -> bool:
    ids = token_id if isinstance(token_id, list) else [token_id]
    return all(i is None or 0 <= i < vocab_size for i in ids)


def _set_causal_loss(model: Any) -> None:
    # transformers infers the loss from the class name and warns when it cannot (``GPT2LMHeadModel``);
    # a model built for causal LM should use the causal LM loss without that warning.
    from transformers.loss.loss_utils import LOSS_MAPPING

    if getattr(model, "loss_type", None) not in LOSS_MAPPING:
        model.loss_type = "ForCausalLM"


def warmup_cosine_schedule(
    optimizer: Optimizer, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup to the base learning rate, then cosine decay to ``min_lr_ratio`` times it.

    The multiplier at optimizer step ``s`` is ``(s + 1) / warmup_steps`` during warmup (so the first
    step already learns), ``1`` at ``s == warmup_steps``, and ``min_lr_ratio`` from ``max_steps`` on.
    :class:`CausalLMModule` fills in ``max_steps`` from the trainer when a partial leaves it out.

    Args:
        optimizer: The optimizer whose groups' learning rates are scaled.
        warmup_steps: Number of warmup steps (0 for none).
        max_steps: Step at which the decay reaches its floor; usually the run's total steps.
        min_lr_ratio: Final learning rate as a fraction of the base one, in ``[0, 1]``.

    Returns:
        A step-wise :class:`~torch.optim.lr_scheduler.LambdaLR`.
    """
    if warmup_steps < 0 or max_steps <= warmup_steps:
        raise ConfigError(
            f"warmup_cosine_schedule needs 0 <= warmup_steps < max_steps, got {warmup_steps}, {max_steps}"
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"warmup_cosine_schedule needs min_lr_ratio in [0, 1], got {min_lr_ratio}")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (max_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, multiplier)


def split_decay_groups(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split trainable parameters into those that get weight decay and those that do not.

    Biases, normalisation weights and embedding tables are excluded from decay: shrinking them
    towards zero does not regularise and hurts LMs. Tied parameters are listed once.

    Args:
        module: The network to inspect.

    Returns:
        ``(decay, no_decay)`` lists of parameters.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for sub in module.modules():
        exempt_module = isinstance(sub, nn.Embedding) or _is_norm(sub)
        for name, param in sub.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            exempt = exempt_module or name.endswith("bias") or param.ndim < 2
            (no_decay if exempt else decay).append(param)
    return decay, no_decay


def _is_norm(module: nn.Module) -> bool:
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)
    # Custom norms (LlamaRMSNorm, T5LayerNorm) subclass nn.Module directly; their names give them away.
    return isinstance(module, norm_types) or type(module).__name__.endswith("Norm")


def _requires(factory: Callable[..., Any], name: str) -> bool:
    try:
        param = inspect.signature(factory).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is inspect.Parameter.empty


class CausalLMModule(L.LightningModule):
    """Next-token prediction for any Hugging Face causal LM.

    The model computes its own (shifted) loss from ``batch["labels"]``. Each stage logs
    ``{stage}/loss`` and ``{stage}/ppl``; validation and test report them once per epoch from a
    token-weighted mean, so perplexity is ``exp`` of the loss averaged over all target tokens.
    Training logs per-step values, ``train/tokens`` (tokens seen so far, all ranks together) and
    ``train/loss_epoch`` / ``train/ppl_epoch``.

    Args:
        model: A network whose forward takes ``input_ids``, ``labels`` (and optionally
            ``attention_mask``) and returns an object with ``.loss``.
        optimizer: Factory that takes parameters (or parameter groups) and returns an optimizer,
            e.g. ``functools.partial(torch.optim.AdamW, lr=3e-4, weight_decay=0.1)``.
        scheduler: Optional factory that takes the optimizer and returns a learning-rate scheduler,
            stepped after every optimizer step. If it still needs ``max_steps`` (like
            ``partial(warmup_cosine_schedule, warmup_steps=100)``), the trainer's total number of
            steps is passed.
        split_weight_decay: Exempt biases, norms and embeddings from weight decay by handing the
            optimizer two parameter groups. Factories that refuse groups get a flat list.
        sample_every_n_steps: Print and save text samples every this many steps (0: only at the end
            of training, if ``sample_prompts`` is set). Uses :class:`TextSamplesCallback`.
        sample_prompts: Prompts to continue; ``None`` uses the callback's defaults.
        sample_max_new_tokens: Length of each sampled continuation in tokens.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter] | Iterable[dict[str, Any]]], Optimizer],
        scheduler: Callable[[Optimizer], Any] | None = None,
        split_weight_decay: bool = True,
        sample_every_n_steps: int = 0,
        sample_prompts: list[str] | None = None,
        sample_max_new_tokens: int = 48,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # One metric per stage, as plain attributes, so a validation run inside a training epoch
        # never mixes its tokens with the training ones.
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.tokens_seen = 0

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        """Run the wrapped model."""
        return self.model(input_ids=input_ids, **kwargs)

    def step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Compute and log the loss of one batch; shared by training, validation and test.

        Args:
            batch: ``input_ids`` and ``labels`` of shape ``[B, T]`` (labels equal the inputs; the model
                shifts them), optionally ``attention_mask``. Label ``-100`` marks ignored positions.
            stage: ``"train"``, ``"val"`` or ``"test"``.

        Returns:
            The mean loss over the batch's target tokens.

        Raises:
            NonFiniteLossError: The loss is NaN or infinite.
        """
        input_ids = batch["input_ids"]
        labels = batch.get("labels", input_ids)
        mask = batch.get("attention_mask")
        extra = {} if mask is None else {"attention_mask": mask}
        loss = self.model(input_ids=input_ids, labels=labels, **extra).loss
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite {stage} loss ({loss.item()}) at global step {self.global_step}")

        # The model averages over target tokens (labels shifted by one, -100 ignored); weighting
        # each batch by that count makes the epoch mean a true per-token mean.
        n_targets = (labels[..., 1:] != -100).sum()
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=n_targets)
        batch_size = input_ids.size(0)
        if stage == "train":
            # Counted locally and scaled by the world size: ranks see equally shaped batches, and
            # this avoids a collective on every step.
            local = int(mask.sum()) if mask is not None else input_ids.numel()
            world_size = self.trainer.world_size if self._trainer is not None else 1
            self.tokens_seen += local * world_size
            self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
            self.log("train/ppl", loss.detach().exp(), batch_size=batch_size)
            self.log("train/tokens", float(self.tokens_seen), batch_size=batch_size)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss."""
        return self.step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Accumulate validation loss; reported at the end of the epoch."""
        return self.step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Accumulate test loss; reported at the end of the epoch."""
        return self.step(batch, "test")

    def on_train_epoch_end(self) -> None:
        """Log the epoch's token-weighted training loss and perplexity."""
        self._log_epoch("train", suffix="_epoch")

    def on_validation_epoch_end(self) -> None:
        """Log ``val/loss`` and ``val/ppl`` over the whole validation set."""
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        """Log ``test/loss`` and ``test/ppl`` over the whole test set."""
        self._log_epoch("test")

    def _log_epoch(self, stage: str, suffix: str = "") -> None:
        metric: MeanMetric = getattr(self, f"{stage}_loss")
        if metric.update_called:
            mean = metric.compute()  # synchronised across ranks by torchmetrics
            self.log_dict({f"{stage}/loss{suffix}": mean, f"{stage}/ppl{suffix}": mean.exp()}, sync_dist=True)
        metric.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        """Build the optimizer (with decay / no-decay groups) and the step-wise scheduler."""
        optimizer = self._build_optimizer()
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        factory = self.scheduler_factory
        kwargs: dict[str, Any] = {}
        if _requires(factory, "max_steps"):
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ConfigError("the scheduler needs max_steps: set trainer.max_steps or pass max_steps to it")
            kwargs["max_steps"] = int(total)
        scheduler = factory(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def _build_optimizer(self) -> Optimizer:
        if not self.hparams.split_weight_decay:
            return self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        decay, no_decay = split_decay_groups(self.model)
        # The decay group inherits the factory's weight_decay; the other overrides it with zero.
        groups = [g for g in ({"params": decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        try:
            return self.optimizer_factory(groups)
        except ValueError:
            # Some optimizers (LBFGS) reject parameter groups; they get every parameter in one list.
            return self.optimizer_factory(decay + no_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the token count across resumes."""
        checkpoint["keel_tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the token count saved by :meth:`on_save_checkpoint`."""
        self.tokens_seen = int(checkpoint.get("keel_tokens_seen", 0))

    def configure_callbacks(self) -> list[L.Callback]:
        """Attach a :class:`TextSamplesCallback` when sampling was asked for."""
        if not self.hparams.sample_every_n_steps and self.hparams.sample_prompts is None:
            return []
        return [
            TextSamplesCallback(
                prompts=self.hparams.sample_prompts or DEFAULT_PROMPTS,
                every_n_steps=self.hparams.sample_every_n_steps,
                max_new_tokens=self.hparams.sample_max_new_tokens,
            )
        ]

    def generate_text(
        self,
        tokenizer: Any,
        prompts: list[str],
        max_new_tokens: int = 48,
        temperature: float = 0.8,
        top_k: int = 40,
        seed: int = 0,
    ) -> list[str]:
        """Sample a continuation of each prompt without disturbing the global RNG.

        Args:
            tokenizer: A ``tokenizers.Tokenizer`` (e.g. the datamodule's) or a ``transformers`` tokenizer.
            prompts: Texts to continue.
            max_new_tokens: Tokens to sample per prompt.
            temperature: Softmax temperature; ``0`` means greedy decoding.
            top_k: Sample among the ``k`` most likely tokens.
            seed: Seed of the sampling generator; the same seed gives the same text.

        Returns:
            The decoded continuations, without their prompts (see :func:`sample_continuations`).
        """
        return sample_continuations(self.model, tokenizer, prompts, max_new_tokens, temperature, top_k, seed)
