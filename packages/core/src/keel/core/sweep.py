"""``keel sweep``: run an experiment's comparison grid (arms x hyperparameters x seeds) and analyse it.

An experiment that compares methods keeps a ``sweep.yaml`` beside its ``config.yaml``::

    description: AdamW vs SophiaG, three learning rates each, three seeds
    seeds: [0, 1, 2]
    arms:
      adamw:
        overrides: [model.optimizer._target_=torch.optim.AdamW]
        grid: {model.optimizer.lr: [3.0e-4, 6.0e-4, 1.2e-3]}
      sophiag: ...
    profiles:                # named variants (--profile cpu); --tiny means --profile tiny
      cpu: {tiny: true, overrides: [trainer.max_steps=1500]}    # tiny.yaml's model, a longer run
      tiny: {tiny: true, seeds: [0], grid_points: 1}            # the CI smoke test
    analysis:
      _target_: keel.core.optim.analysis.steps_to_target
      reference_arm: adamw

A profile may also hold ``analysis:`` arguments that replace the sweep's for its runs, e.g.
``cpu_large: {..., analysis: {block: cpu_large}}`` for an analysis that writes each profile's
results to its own README block, and ``arms:`` of its own that it runs instead of the sweep's
(a control that only one setting needs, e.g. a baseline given the compute another arm took there).

Without a ``tiny`` profile, ``--tiny`` applies ``tiny.yaml`` to the first seed and first grid point.
Every run is an ordinary keel run (its own folder with ``resolved.yaml``, ``metrics.csv``,
``summary.json``) under ``runs/<experiment>/sweep-<timestamp>/``; ``sweep.json`` there lists them.
A sweep started again with ``--resume <sweep dir>`` skips the runs that finished. Then the
``analysis`` target is called with the sweep's records and writes the experiment README's results
block (and plots), so the table always comes from the runs.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from keel.core.config import Experiment, find_experiment, load_config
from keel.core.errors import ConfigError


@dataclass
class RunSpec:
    """One run of a sweep.

    Attributes:
        arm: The arm's name (``adamw``).
        params: The grid values of this run (``{"model.optimizer.lr": 6e-4}``).
        seed: The seed.
        overrides: Every override the run gets (arm, grid, seed, command line).
    """

    arm: str
    params: dict[str, Any]
    seed: int
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """A folder name that says what the run is: ``adamw_lr=0.0006_seed=1``."""
        parts = [self.arm, *(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.params.items()), f"seed={self.seed}"]
        return "_".join(parts).replace("/", "-")


@dataclass
class RunRecord:
    """A finished run of a sweep, as handed to the analysis."""

    arm: str
    params: dict[str, Any]
    seed: int
    run_dir: str
    summary: dict[str, Any]

    def metrics_csv(self) -> Path:
        """The run's ``metrics.csv``."""
        return Path(self.run_dir) / "metrics.csv"


def load_sweep(experiment: Experiment) -> dict[str, Any]:
    """Read and check an experiment's ``sweep.yaml``.

    Raises:
        ConfigError: If there is none or it is malformed.
    """
    path = experiment.config_path.parent / "sweep.yaml"
    if not path.is_file():
        raise ConfigError(f"experiment '{experiment.name}' has no sweep.yaml; run it with keel run instead")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - {"description", "seeds", "arms", "profiles", "analysis"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    if not spec.get("arms"):
        raise ConfigError(f"{path}: needs at least one arm under arms:")
    _check_arms(path, spec["arms"], where="")
    for name, profile in (spec.get("profiles") or {}).items():
        extra = set(profile or {}) - {"tiny", "seeds", "grid_points", "overrides", "analysis", "arms"}
        if extra:
            raise ConfigError(f"{path}: profile '{name}' has unknown keys {sorted(extra)}")
        if not isinstance((profile or {}).get("analysis", {}), dict):
            raise ConfigError(f"{path}: profile '{name}': analysis must map argument names to values")
        if "arms" in (profile or {}):
            if not isinstance(profile["arms"], dict) or not profile["arms"]:
                raise ConfigError(f"{path}: profile '{name}': arms must name at least one arm")
            _check_arms(path, profile["arms"], where=f"profile '{name}': ")
    return spec


def _check_arms(path: Path, arms: dict[str, Any], where: str) -> None:
    for arm, body in arms.items():
        extra = set(body or {}) - {"overrides", "grid"}
        if extra:
            raise ConfigError(f"{path}: {where}arm '{arm}' has unknown keys {sorted(extra)}")


DEFAULT_TINY_PROFILE = {"tiny": True, "grid_points": 1}


def profile_of(spec: dict[str, Any], name: str | None) -> dict[str, Any]:
    """The settings of profile ``name`` (``None``: the full sweep on ``config.yaml``).

    Raises:
        ConfigError: On an unknown profile.
    """
    if name is None:
        return {"tiny": False}
    profiles = spec.get("profiles") or {}
    if name in profiles:
        return dict(profiles[name] or {})
    if name == "tiny":
        return {**DEFAULT_TINY_PROFILE, "seeds": list(spec.get("seeds", [0]))[:1]}
    raise ConfigError(f"unknown sweep profile '{name}'; profiles: {', '.join(['tiny', *profiles])}")


def expand(
    spec: dict[str, Any], profile: dict[str, Any], overrides: list[str], only: list[str] | None = None
) -> list[RunSpec]:
    """The runs of a sweep, in order: arm by arm, grid point by grid point, seed by seed.

    A profile with ``arms:`` of its own runs those instead of the sweep's.

    Args:
        spec: The sweep (see :func:`load_sweep`).
        profile: The profile's settings (see :func:`profile_of`).
        overrides: Command-line overrides, applied last to every run.
        only: Restrict to these arms.
    """
    seeds = list(spec.get("seeds", [0]))
    if "seeds" in profile:
        seeds = list(profile["seeds"])
    limit = profile.get("grid_points")
    shared = list(profile.get("overrides", []))
    arms = profile.get("arms") or spec["arms"]
    runs = []
    for arm, body in arms.items():
        if only and arm not in only:
            continue
        body = body or {}
        grid = body.get("grid", {}) or {}
        keys = list(grid)
        values = [list(grid[k])[:limit] if limit else list(grid[k]) for k in keys]
        for combo in itertools.product(*values) if keys else [()]:
            params = dict(zip(keys, combo, strict=True))
            for seed in seeds:
                run_overrides = [*body.get("overrides", []), *(f"{k}={v}" for k, v in params.items()), f"seed={seed}"]
                runs.append(RunSpec(arm, params, int(seed), [*shared, *run_overrides, *overrides]))
    if only and not runs:
        raise ConfigError(f"no arm named {only}; arms: {', '.join(arms)}")
    return runs


def run_sweep(
    spec_name: str,
    overrides: list[str] | None = None,
    profile_name: str | None = None,
    resume: str | None = None,
    only: list[str] | None = None,
) -> tuple[Path, list[RunRecord]]:
    """Run (or finish) a sweep and return its folder and records.

    Args:
        spec_name: The experiment.
        overrides: ``key=value`` overrides for every run.
        profile_name: A profile of the sweep (``tiny``, ``cpu`` ...); ``None`` runs the full sweep.
        resume: A sweep folder to finish instead of starting a new one.
        only: Run only these arms; the records returned (and analysed) are then every finished run
            of the folder, so runs of an arm added to a finished sweep join its analysis.
    """
    from keel.core.instantiate import validate
    from keel.core.runner import fit, prepare, runs_root

    experiment = find_experiment(spec_name)
    spec = load_sweep(experiment)
    profile = profile_of(spec, profile_name)
    tiny = bool(profile.get("tiny"))
    runs = expand(spec, profile, overrides or [], only)
    configs = []
    for run in runs:  # check every run's config before the first one starts
        cfg = load_config(experiment, [*run.overrides, f"run.name={run.name}"], tiny=tiny)
        validate(cfg)
        configs.append(cfg)
    root = runs_root(configs[0])
    if resume:
        sweep_dir = Path(resume)
        if not sweep_dir.is_dir():
            raise ConfigError(f"--resume: no sweep folder {resume}")
    else:
        label = f"-{profile_name}" if profile_name else ""
        sweep_dir = root / experiment.name / f"sweep{label}-{time.strftime('%Y%m%d-%H%M%S')}"
        sweep_dir.mkdir(parents=True, exist_ok=False)
    print(f"sweep_dir: {sweep_dir}  ({len(runs)} runs)", flush=True)
    records: list[RunRecord] = []
    for index, (run, cfg) in enumerate(zip(runs, configs, strict=True), start=1):
        run_dir = sweep_dir / run.name
        if not (run_dir / "summary.json").is_file():
            if run_dir.exists():  # an unfinished run from an interrupted sweep: start it again
                _move_aside(run_dir)
            print(f"[{index}/{len(runs)}] {run.name}", flush=True)
            os.environ.pop("KEEL_RUN_DIR", None)
            run_dir, cfg = prepare(experiment, cfg, parent=sweep_dir)
            fit(cfg, run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        records.append(RunRecord(run.arm, run.params, run.seed, str(run_dir), summary))
    if only:  # the analysis covers every finished run of the folder, not only the arms just run
        records = _finished_records(sweep_dir, expand(spec, profile, overrides or []))
    (sweep_dir / "sweep.json").write_text(
        json.dumps(
            {
                "experiment": experiment.name,
                "profile": profile_name,
                "tiny": profile_name == "tiny",
                "runs": [asdict(r) for r in records],
            },
            indent=2,
        )
    )
    return sweep_dir, records


def _finished_records(sweep_dir: Path, runs: list[RunSpec]) -> list[RunRecord]:
    """The records of those ``runs`` that finished in ``sweep_dir``, in sweep order."""
    records = []
    for run in runs:
        summary_path = sweep_dir / run.name / "summary.json"
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            records.append(RunRecord(run.arm, run.params, run.seed, str(summary_path.parent), summary))
    return records


def _move_aside(run_dir: Path) -> None:
    target = run_dir.with_name(f"{run_dir.name}.interrupted-{time.strftime('%H%M%S')}")
    run_dir.rename(target)


def analyse(spec_name: str, sweep_dir: Path, command: str) -> None:
    """Call the sweep's ``analysis`` target on a finished sweep folder."""
    from keel.core.instantiate import instantiate

    experiment = find_experiment(spec_name)
    spec = load_sweep(experiment)
    data = json.loads((sweep_dir / "sweep.json").read_text())
    records = [RunRecord(**r) for r in data["runs"]]
    if not spec.get("analysis"):
        print(f"{len(records)} runs finished; sweep.yaml names no analysis")
        return
    # a profile's own analysis arguments (e.g. the README block its results go to) win
    arguments = profile_of(spec, data.get("profile")).get("analysis") or {}
    analysis = instantiate({**spec["analysis"], **arguments, "_partial_": True})
    analysis(
        records=records,
        experiment_dir=experiment.config_path.parent,
        sweep_dir=sweep_dir,
        command=command,
        tiny=bool(data.get("tiny")),
    )
    print(f"wrote the analysis into {experiment.config_path.parent / 'README.md'}")
    from keel.core.config import experiments_root
    from keel.core.report import update_index

    root = experiments_root()
    if not data.get("tiny") and root is not None and (root.parent / "README.md").is_file():
        update_index(root.parent / "README.md", root)  # a smoke sweep is not a result worth indexing
