"""Assembling a Lightning ``Trainer`` from a config.

The ``trainer``, ``deepspeed``, ``checkpoint``, ``logging`` and ``callbacks`` sections decide it.

Strategies are named as Lightning registers them (``auto``, ``ddp``, ``deepspeed_stage_1/2/3``,
``deepspeed_stage_2_offload``, ``deepspeed_stage_3_offload``). A ``deepspeed:`` dict (or a path to
a DeepSpeed JSON file) refines the preset, for example to add ``zero_optimization.overlap_comm``;
the keys Lightning derives from the trainer (micro-batch size, accumulation, clipping, precision)
must not appear there, and the error says which trainer key to set instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from keel.core.callbacks import FiniteLossGuard, PlainProgressBar, RNGStateCallback, ThroughputCallback
from keel.core.checkpoint import CHECKPOINT_DIR, AtomicCheckpointIO
from keel.core.errors import ConfigError, EnvironmentProblem, missing_extra

DEEPSPEED_PRESETS = (
    "deepspeed_stage_1",
    "deepspeed_stage_2",
    "deepspeed_stage_2_offload",
    "deepspeed_stage_3",
    "deepspeed_stage_3_offload",
)

# DeepSpeed config keys that Lightning fills in from the Trainer, and the trainer key that sets each.
LIGHTNING_OWNED_DEEPSPEED_KEYS = {
    "train_micro_batch_size_per_gpu": "the data module's batch size",
    "train_batch_size": "the data module's batch size and trainer.devices",
    "gradient_accumulation_steps": "trainer.accumulate_grad_batches",
    "gradient_clipping": "trainer.gradient_clip_val",
    "fp16": "trainer.precision",
    "bf16": "trainer.precision",
}


def is_deepspeed(strategy: Any) -> bool:
    """Whether a strategy setting asks for DeepSpeed."""
    return isinstance(strategy, str) and strategy.startswith("deepspeed")


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_deepspeed_config(custom: Any) -> dict[str, Any] | None:
    """Read the ``deepspeed:`` section: a mapping, a JSON file path, or nothing.

    Raises:
        ConfigError: If the file is unreadable or the config sets a key Lightning owns.
    """
    if custom is None:
        return None
    if isinstance(custom, DictConfig):
        custom = OmegaConf.to_container(custom, resolve=True)
    if isinstance(custom, str):
        try:
            custom = json.loads(Path(custom).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"deepspeed: cannot read the DeepSpeed JSON {custom}: {err}") from err
    if not isinstance(custom, dict):
        raise ConfigError("deepspeed: must be a mapping or the path of a DeepSpeed JSON file")
    owned = [key for key in custom if key in LIGHTNING_OWNED_DEEPSPEED_KEYS]
    if owned:
        fixes = "; ".join(f"'{key}' comes from {LIGHTNING_OWNED_DEEPSPEED_KEYS[key]}" for key in owned)
        raise ConfigError(f"deepspeed: remove the keys Lightning sets itself ({fixes})")
    autos = [key for key, value in _flatten(custom) if value == "auto"]
    if autos:
        raise ConfigError(f"deepspeed: 'auto' values are a Hugging Face convention Lightning does not resolve: {autos}")
    return custom


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        items.extend(_flatten(value, f"{path}.") if isinstance(value, dict) else [(path, value)])
    return items


def deepspeed_strategy(preset: str, custom: dict[str, Any] | None = None) -> Any:
    """Build Lightning's ``DeepSpeedStrategy`` for a registered preset, refined by a custom config.

    Args:
        preset: One of :data:`DEEPSPEED_PRESETS` (or ``deepspeed``, which is stage 2).
        custom: DeepSpeed config entries merged over the preset's (see :func:`load_deepspeed_config`).

    Raises:
        ConfigError: On an unknown preset.
        EnvironmentProblem: If deepspeed is not installed.
    """
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        raise missing_extra("deepspeed", "deepspeed") from err
    from lightning.pytorch.strategies import DeepSpeedStrategy, StrategyRegistry

    if preset not in StrategyRegistry:
        raise ConfigError(f"unknown DeepSpeed preset '{preset}'; choose one of: {', '.join(DEEPSPEED_PRESETS)}")
    init_params = dict(StrategyRegistry[preset]["init_params"])
    strategy = DeepSpeedStrategy(**init_params)
    if custom:
        strategy.config = _deep_merge(strategy.config, custom)
    return strategy


def build_strategy(cfg: DictConfig) -> Any:
    """The Trainer's ``strategy`` argument for this config.

    Raises:
        ConfigError: On an unknown strategy name.
        EnvironmentProblem: On DeepSpeed without a CUDA device.
    """
    from lightning.pytorch.strategies import StrategyRegistry

    name = cfg.trainer.strategy
    if not isinstance(name, str):
        raise ConfigError("trainer.strategy must be a strategy name; put DeepSpeed settings under deepspeed:")
    if is_deepspeed(name):
        import torch

        if cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available():
            raise EnvironmentProblem(
                f"trainer.strategy={name} needs a CUDA device and this machine has none; "
                "add --tiny (the CPU-sized run) or set trainer.strategy=auto"
            )
        return deepspeed_strategy(name, load_deepspeed_config(cfg.get("deepspeed")))
    if cfg.get("deepspeed") is not None:
        raise ConfigError(f"a deepspeed: section is set but trainer.strategy={name}; pick a deepspeed_stage_* preset")
    known = ["auto", *StrategyRegistry.available_strategies()]
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = (
            f"; did you mean '{close[0]}'?" if close else f"; choose one of: auto, ddp, {', '.join(DEEPSPEED_PRESETS)}"
        )
        raise ConfigError(f"unknown trainer.strategy '{name}'{hint}")
    return name


def _progress_bar(mode: str) -> Callback | None:
    if mode == "none":
        return None
    on_tty = sys.stdout.isatty() and os.environ.get("CI") is None
    if mode == "rich" or (mode == "auto" and on_tty):
        return RichProgressBar(leave=True)
    if mode in ("plain", "auto"):
        return PlainProgressBar()
    raise ConfigError(f"logging.progress_bar must be auto, rich, plain or none, got '{mode}'")


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """The standard callbacks (checkpoints, LR monitor, progress, throughput, RNG, loss guard) plus the config's."""
    from keel.core.instantiate import instantiate

    callbacks: list[Callback] = [RNGStateCallback(), FiniteLossGuard()]
    ckpt = cfg.checkpoint
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if ckpt.every_n_train_steps:
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="step={step:06d}",
                every_n_train_steps=int(ckpt.every_n_train_steps),
                save_top_k=-1,
                save_last=bool(ckpt.save_last),
                auto_insert_metric_name=False,
                save_on_train_epoch_end=False,
            )
        )
    if ckpt.monitor and ckpt.save_top_k:
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best-step={step:06d}",
                monitor=ckpt.monitor,
                mode=ckpt.mode,
                save_top_k=int(ckpt.save_top_k),
                auto_insert_metric_name=False,
            )
        )
    if cfg.logging.csv or cfg.logging.tensorboard:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.logging.csv:
        from keel.core.plotting import LossCurveCallback

        callbacks.append(LossCurveCallback())
    if bar := _progress_bar(cfg.logging.progress_bar):
        callbacks.append(bar)
    if cfg.logging.throughput:
        callbacks.append(ThroughputCallback())
    for index, node in enumerate(cfg.get("callbacks") or []):
        callback = instantiate(node)
        if not isinstance(callback, Callback):
            raise ConfigError(f"callbacks[{index}] ({node.get('_target_')}) is not a Lightning Callback")
        callbacks.append(callback)
    model = cfg.get("model")
    plain_model = OmegaConf.to_container(model, resolve=False) if isinstance(model, DictConfig) else model
    if _uses_sophia(plain_model) and not any(type(c).__name__ == "SophiaHessianCallback" for c in callbacks):
        from keel.core.optim import SophiaHessianCallback

        # Sophia needs its periodic Hessian refresh; adding it here keeps switching an experiment to
        # Sophia a one-line change (model.optimizer._target_). A configured callback takes precedence.
        callbacks.append(SophiaHessianCallback())
    return callbacks


SOPHIA_TARGETS = {f"keel.core.optim{module}.Sophia{kind}" for module in ("", ".sophia") for kind in "GH"}


def _uses_sophia(node: Any) -> bool:
    """Whether a plain config tree instantiates a Sophia optimizer anywhere (``_target_`` of any node)."""
    if isinstance(node, dict):
        if node.get("_target_") in SOPHIA_TARGETS:
            return True
        return any(_uses_sophia(value) for key, value in node.items() if key != "_target_")
    if isinstance(node, list):
        return any(_uses_sophia(value) for value in node)
    return False


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """CSV (``metrics.csv`` in the run dir) and TensorBoard (``tensorboard/``) loggers, as enabled."""
    loggers: list[Logger] = []
    if cfg.logging.csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="", version="", flush_logs_every_n_steps=50))
    if cfg.logging.tensorboard:
        loggers.append(
            TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
        )
    return loggers


def build_trainer(cfg: DictConfig, run_dir: Path, **overrides: Any) -> L.Trainer:
    """Build the Trainer for ``cfg``, writing everything under ``run_dir``.

    Args:
        cfg: The resolved experiment config.
        run_dir: The run directory (checkpoints, logs, plots).
        **overrides: Extra ``Trainer`` arguments (tests use them).
    """
    t = cfg.trainer
    strategy = build_strategy(cfg)
    callbacks = build_callbacks(cfg, run_dir)
    has_bar = any(isinstance(c, ProgressBarTypes) for c in callbacks)
    plugins = [] if is_deepspeed(t.strategy) else [AtomicCheckpointIO()]
    kwargs: dict[str, Any] = {
        "accelerator": t.accelerator,
        "devices": t.devices,
        "num_nodes": t.num_nodes,
        "strategy": strategy,
        "precision": t.precision,
        "max_steps": t.max_steps,
        "max_epochs": t.max_epochs,
        "max_time": t.max_time,
        "accumulate_grad_batches": t.accumulate_grad_batches,
        "gradient_clip_val": t.gradient_clip_val,
        "val_check_interval": t.val_check_interval,
        "check_val_every_n_epoch": t.check_val_every_n_epoch,
        "limit_train_batches": t.limit_train_batches,
        "limit_val_batches": t.limit_val_batches,
        "num_sanity_val_steps": t.num_sanity_val_steps,
        "log_every_n_steps": t.log_every_n_steps,
        "deterministic": t.deterministic,
        "benchmark": t.benchmark,
        "default_root_dir": str(run_dir),
        "callbacks": callbacks,
        "logger": build_loggers(cfg, run_dir) or False,
        "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks),
        "enable_progress_bar": has_bar,
        "enable_model_summary": True,
        "plugins": plugins,
    }
    kwargs.update(overrides)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(**kwargs)
    except (ValueError, TypeError, MisconfigurationException) as err:  # Lightning's checks of devices, precision ...
        raise ConfigError(f"trainer: {' '.join(str(err).split())}") from err


ProgressBarTypes = (RichProgressBar, PlainProgressBar)
