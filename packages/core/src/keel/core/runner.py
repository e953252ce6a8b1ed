"""``keel run``: from an experiment name to a finished run directory.

The order matters for reproducibility and for multi-process runs: the config is derived,
checked against every constructor, and written as ``resolved.yaml`` once, on rank 0, before any
data is read or any other process starts (see :mod:`keel.core.distributed`). Only then are the
data module, the model and the trainer built, and ``fit`` runs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from keel.core.config import Experiment, find_experiment, load_config, to_yaml
from keel.core.distributed import RUN_DIR_ENV, LaunchContext, launch_context, share_from_rank_zero
from keel.core.errors import ConfigError, KeelError

RESOLVED = "resolved.yaml"


@dataclass
class RunResult:
    """What a finished run produced.

    Attributes:
        run_dir: The run directory.
        metrics: The final logged metrics (validation loss, perplexity ...), as floats.
        global_step: Optimizer steps taken.
        throughput: Samples/s, tokens/s and peak memory measured during training.
    """

    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    global_step: int = 0
    throughput: dict[str, float] = field(default_factory=dict)


def runs_root(cfg: DictConfig) -> Path:
    """Where runs go: ``run.runs_dir``, else ``$KEEL_RUNS_DIR``, else ``./runs``."""
    return Path(cfg.run.runs_dir or os.environ.get("KEEL_RUNS_DIR") or "runs").resolve()


def _new_run_dir(root: Path, experiment: str, name: str | None) -> Path:
    parent = root / experiment
    parent.mkdir(parents=True, exist_ok=True)
    base = name or time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = parent / (base if attempt == 0 else f"{base}-{attempt}")
        try:
            candidate.mkdir()  # fails if it exists: two runs never share a folder
        except FileExistsError:
            if name:
                raise ConfigError(f"run.name={name}: {candidate} already exists; pick another name") from None
            continue
        return candidate
    raise ConfigError(f"cannot create a new run folder under {parent}")


def prepare(experiment: Experiment, cfg: DictConfig, parent: Path | None = None) -> tuple[Path, DictConfig]:
    """Create the run directory and write ``resolved.yaml`` (rank 0 only).

    The resume target is resolved here too, so every rank resumes from the same file even when
    ``resume=last`` would find a different run later.

    Args:
        experiment: The experiment being run.
        cfg: Its merged config (updated in place with the run's name and resume path).
        parent: Create the run directory here instead of ``<runs>/<experiment>/`` (sweeps use it).
    """
    from keel.core.checkpoint import resolve_resume

    root = runs_root(cfg)
    if cfg.resume:
        resume_path = resolve_resume(str(cfg.resume), root, experiment.name)
        with open_dict(cfg):
            cfg.resume = str(resume_path)
    if parent is not None:
        run_dir = parent / str(cfg.run.name)
        run_dir.mkdir(parents=True, exist_ok=False)
    else:
        run_dir = _new_run_dir(root, experiment.name, cfg.run.name)
    with open_dict(cfg):
        cfg.run.runs_dir = str(root)
        cfg.run.name = run_dir.name
    text = f"# experiment: {experiment.name}\n" + to_yaml(cfg)
    temp = run_dir / f".{RESOLVED}.tmp"
    temp.write_text(text)
    os.replace(temp, run_dir / RESOLVED)
    return run_dir, cfg


def resolve_run(
    spec: str, overrides: list[str], tiny: bool, context: LaunchContext | None = None
) -> tuple[Path, DictConfig]:
    """Decide the run directory and config for this process, once per run (see :mod:`keel.core.distributed`).

    Returns:
        The run directory and the resolved config, identical on every rank.
    """
    from keel.core.instantiate import validate

    context = context or launch_context()
    if context.inherited_run_dir:
        run_dir = Path(context.inherited_run_dir)
        return run_dir, _read_resolved(run_dir)
    experiment = find_experiment(spec)
    cfg = load_config(experiment, overrides, tiny=tiny)
    validate(cfg)
    if context.external:

        def make() -> tuple[str, str]:
            run_dir, resolved = prepare(experiment, cfg)
            return str(run_dir), (run_dir / RESOLVED).read_text()

        run_dir_text, _ = share_from_rank_zero(context, make)
        run_dir = Path(run_dir_text)
        return run_dir, _read_resolved(run_dir)
    run_dir, cfg = prepare(experiment, cfg)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # the ranks Lightning launches read the run from here
    return run_dir, cfg


def _read_resolved(run_dir: Path) -> DictConfig:
    path = run_dir / RESOLVED
    if not path.is_file():
        raise ConfigError(f"{RUN_DIR_ENV}={run_dir} holds no {RESOLVED}")
    cfg = OmegaConf.load(path)
    OmegaConf.set_struct(cfg, True)
    return cfg  # type: ignore[return-value]


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _float_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def quiet_known_warnings() -> None:
    """Silence library warnings that say nothing useful about a keel run."""
    import warnings

    # The run directory always holds resolved.yaml before the CSV logger starts; nothing is deleted.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # keel's data modules set num_workers deliberately (0 is fastest for token blocks in memory).
    warnings.filterwarnings("ignore", message=r".*does not have many workers which may be a bottleneck")
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")


def fit(cfg: DictConfig, run_dir: Path, **trainer_overrides: Any) -> RunResult:
    """Build data, model and trainer from a resolved config and train.

    Args:
        cfg: The resolved config (as written to ``resolved.yaml``).
        run_dir: The run directory.
        **trainer_overrides: Extra Trainer arguments (tests use them).
    """
    import lightning as L

    from keel.core.callbacks import ThroughputCallback
    from keel.core.instantiate import instantiate
    from keel.core.trainer import build_trainer

    quiet_known_warnings()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.data is None or cfg.model is None:
        raise ConfigError("the config needs both a model: and a data: section with a _target_")
    trainer = build_trainer(cfg, run_dir, **trainer_overrides)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    if not isinstance(model, L.LightningModule):
        raise ConfigError(f"model: {cfg.model._target_} built a {type(model).__name__}, not a LightningModule")
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.resume or None, weights_only=True)
    if trainer.interrupted:
        raise KeelError("training was interrupted")
    if cfg.checkpoint.save_last and trainer.global_step > 0:
        # the periodic checkpoint may be some steps behind the end of training
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    metrics = _float_metrics(trainer.callback_metrics)
    if cfg.test_after_fit:
        trainer.test(model, datamodule=datamodule)
        metrics.update(_float_metrics(trainer.callback_metrics))
    throughput = next((c.summary for c in trainer.callbacks if isinstance(c, ThroughputCallback)), {})
    result = RunResult(run_dir, metrics, trainer.global_step, dict(throughput))
    if _is_rank_zero():
        summary = {
            "global_step": result.global_step,
            "metrics": result.metrics,
            "throughput": result.throughput,
            "seconds": time.perf_counter() - started,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _leave_process_group()
    return result


def _leave_process_group() -> None:
    """Let every rank finish before any leaves, then close the process group.

    A rank that exits while gloo still holds its peer's connection aborts that peer ("terminate
    called without an active exception"), which fails a torchrun job that trained correctly: rank 1
    is done as soon as fit returns, while rank 0 still writes the summary.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run(spec: str, overrides: list[str] | None = None, tiny: bool = False, **trainer_overrides: Any) -> RunResult:
    """Run an experiment end to end, as ``keel run`` does.

    Args:
        spec: The experiment's name under ``experiments/`` or a YAML file path.
        overrides: ``key=value`` overrides.
        tiny: Apply the experiment's ``tiny.yaml``.
        **trainer_overrides: Extra Trainer arguments (tests use them).
    """
    run_dir, cfg = resolve_run(spec, overrides or [], tiny)
    return fit(cfg, run_dir, **trainer_overrides)


def load_trained(run_dir: str | Path, checkpoint: str = "last") -> Any:
    """Rebuild a finished run's LightningModule from its ``resolved.yaml`` and load its weights.

    Analyses use it to evaluate trained models (sampling, retrieval) after a sweep. Only the model is
    built; the data and the trainer are not.

    Args:
        run_dir: The run directory (``runs/<area>/<method>/<timestamp>``).
        checkpoint: ``last`` or a file name under ``checkpoints/`` (``best`` picks the monitored best).

    Raises:
        ConfigError: The folder holds no ``resolved.yaml``.
        CheckpointError: The checkpoint is missing or unreadable.
    """
    from keel.core.checkpoint import load_checkpoint
    from keel.core.instantiate import instantiate

    run_dir = Path(run_dir)
    cfg = _read_resolved(run_dir)
    folder = run_dir / "checkpoints"
    if checkpoint == "best":
        candidates = sorted(p for p in folder.glob("*.ckpt") if p.name != "last.ckpt")
        path = candidates[-1] if candidates else folder / "last.ckpt"
    else:
        path = folder / (checkpoint if checkpoint.endswith(".ckpt") else f"{checkpoint}.ckpt")
    state = load_checkpoint(path)
    module = instantiate(cfg.model)
    module.load_state_dict(state["state_dict"])
    return module.eval()
