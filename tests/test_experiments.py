"""Every experiment folder honours its contract: composes, checks, builds its strategy, and its tiny run finishes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from keel.core.cli import main
from keel.core.config import find_experiment, list_experiments, load_config
from keel.core.instantiate import check_node, validate
from keel.core.sweep import expand, load_sweep, profile_of
from keel.core.trainer import DEEPSPEED_PRESETS, deepspeed_strategy, load_deepspeed_config

ROOT = Path(__file__).resolve().parents[1] / "experiments"
EXPERIMENTS = [name for name, _ in list_experiments(ROOT)]
# Experiments whose full size runs under DDP on purpose, each with the reason (also in its config.yaml).
DDP_BY_DESIGN = {
    "core/soap": "ZeRO hands the optimizer flat 1-D partitions, on which SOAP cannot precondition",
}


def test_experiments_exist() -> None:
    assert "quickstart" in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_folder_contract(name: str) -> None:
    folder = ROOT / name
    for required in ("config.yaml", "tiny.yaml", "README.md"):
        assert (folder / required).is_file(), f"{name} lacks {required}"
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    assert raw.get("description"), f"{name}/config.yaml needs a one-line description for `keel list`"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_full_config_composes_and_builds_its_deepspeed_strategy(name: str) -> None:
    cfg = load_config(find_experiment(name, ROOT))
    validate(cfg)
    if name in DDP_BY_DESIGN:
        assert cfg.trainer.strategy == "ddp", f"{name}: {DDP_BY_DESIGN[name]}"
        return
    assert cfg.trainer.strategy in DEEPSPEED_PRESETS, (
        f"{name}/config.yaml must name the DeepSpeed preset it is meant for"
    )
    pytest.importorskip("deepspeed")
    strategy = deepspeed_strategy(cfg.trainer.strategy, load_deepspeed_config(cfg.get("deepspeed")))
    assert strategy.config["zero_optimization"]["stage"] == int(cfg.trainer.strategy.split("_")[2])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_tiny_config_runs_on_cpu(name: str, tmp_path: Path) -> None:
    cfg = load_config(find_experiment(name, ROOT), tiny=True)
    validate(cfg)
    assert cfg.trainer.accelerator == "cpu"
    assert not str(cfg.trainer.strategy).startswith("deepspeed")


SWEEPS = [name for name in EXPERIMENTS if (ROOT / name / "sweep.yaml").is_file()]


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_profile_and_arm_composes(name: str) -> None:
    # a profile is only run by hand (for hours), so a key it misspells must fail here, not there
    experiment = find_experiment(name, ROOT)
    spec = load_sweep(experiment)
    for profile_name in [None, "tiny", *(spec.get("profiles") or {})]:
        profile = profile_of(spec, profile_name)
        for run in expand(spec, profile, []):
            where = f"{name} profile {profile_name} arm {run.arm}"
            try:
                validate(load_config(experiment, run.overrides, tiny=bool(profile.get("tiny"))))
            except Exception as err:
                raise AssertionError(f"{where}: {err}") from err
        if spec.get("analysis"):
            check_node(f"{name} analysis", {**spec["analysis"], **(profile.get("analysis") or {}), "_partial_": True})


@pytest.mark.timeout(900)  # the quickstart's tiny run trains for about two minutes by design
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_tiny_run_end_to_end(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEEL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("KEEL_RUN_DIR", raising=False)
    monkeypatch.chdir(ROOT.parent)
    assert main(["run", name, "--tiny"]) == 0
    out = capsys.readouterr().out
    run_dirs = [line.split("run_dir: ", 1)[1] for line in out.splitlines() if line.startswith("run_dir: ")]
    assert len(run_dirs) == 2, "run_dir is printed at start and end"
    assert run_dirs[0] == run_dirs[1]
    run_dir = Path(run_dirs[0])
    assert run_dir.parent == tmp_path / "runs" / name
    for produced in ("resolved.yaml", "summary.json", "metrics.csv", "checkpoints/last.ckpt", "loss_curve.png"):
        assert (run_dir / produced).exists(), f"{name}: the tiny run did not write {produced}"
    with open(run_dir / "metrics.csv") as handle:
        assert any(row.get("val/loss") for row in csv.DictReader(handle)), "no validation loss was logged"
    if name == "quickstart":  # the default experiment's promises
        assert "val/ppl" in out, "validation perplexity is printed at the end"
        samples = (run_dir / "samples.txt").read_text()
        assert "And God said" in samples, samples[:500]
        assert len(samples.split()) > 30, samples[:500]
