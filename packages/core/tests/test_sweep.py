"""keel sweep: grid expansion, runs, resume, and the analyses that write README results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.core.cli import main
from keel.core.errors import ConfigError
from keel.core.sweep import expand, load_sweep
from keel.core.testing.plugin import BORING_YAML

SWEEP = """\
description: two learning rates of SGD with and without momentum
seeds: [0, 1]
arms:
  plain:
    overrides: [model.lr=0.05]
    grid: {model.hidden: [8, 16]}
  wide:
    grid: {model.hidden: [32]}
profiles:
  tiny: {tiny: true, seeds: [0], grid_points: 1}
  short: {tiny: true, overrides: [trainer.max_steps=2], analysis: {claim_ratio: 0.9, paper: "the short profile"}}
analysis:
  _target_: keel.core.analysis.steps_to_target
  reference_arm: plain
  claim_ratio: 0.5
  paper: "a made-up claim for the test"
"""

README = "# toy\n\n## Results\n\n<!-- results:start -->\n<!-- results:end -->\n"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "experiments" / "toy"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(BORING_YAML.replace("max_steps: 8", "max_steps: 6"))
    (folder / "tiny.yaml").write_text("trainer:\n  max_steps: 4\n")
    (folder / "sweep.yaml").write_text(SWEEP)
    (folder / "README.md").write_text(README)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEEL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("KEEL_RUN_DIR", raising=False)
    monkeypatch.delenv("KEEL_EXPERIMENTS_DIR", raising=False)
    return tmp_path


def test_expand_full_and_tiny(project: Path) -> None:
    from keel.core.config import find_experiment
    from keel.core.sweep import profile_of

    spec = load_sweep(find_experiment("toy"))
    full = expand(spec, profile_of(spec, None), overrides=["trainer.max_steps=3"])
    assert [r.name for r in full] == [
        "plain_hidden=8_seed=0",
        "plain_hidden=8_seed=1",
        "plain_hidden=16_seed=0",
        "plain_hidden=16_seed=1",
        "wide_hidden=32_seed=0",
        "wide_hidden=32_seed=1",
    ]
    assert full[0].overrides == ["model.lr=0.05", "model.hidden=8", "seed=0", "trainer.max_steps=3"]
    tiny = expand(spec, profile_of(spec, "tiny"), overrides=[])
    assert [r.name for r in tiny] == ["plain_hidden=8_seed=0", "wide_hidden=32_seed=0"]
    short = expand(spec, profile_of(spec, "short"), overrides=[])
    assert len(short) == 6
    assert short[0].overrides[0] == "trainer.max_steps=2"
    with pytest.raises(ConfigError, match="no arm named"):
        expand(spec, profile_of(spec, None), overrides=[], only=["nope"])
    with pytest.raises(ConfigError, match="unknown sweep profile"):
        profile_of(spec, "gpu")


def test_a_profile_with_its_own_arms_runs_only_those(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from keel.core.config import find_experiment
    from keel.core.sweep import profile_of

    sweep = project / "experiments" / "toy" / "sweep.yaml"
    own_arms = "  longer:\n    tiny: true\n    overrides: [trainer.max_steps=2]\n    arms:\n      plain: {}\n"
    own_arms += "      plain_long: {overrides: [trainer.max_steps=5]}\n"
    sweep.write_text(SWEEP.replace("analysis:\n  _target_", own_arms + "analysis:\n  _target_"))
    spec = load_sweep(find_experiment("toy"))
    longer = expand(spec, profile_of(spec, "longer"), overrides=[])
    assert [r.name for r in longer] == ["plain_seed=0", "plain_seed=1", "plain_long_seed=0", "plain_long_seed=1"]
    # the profile's overrides come first, so its arm's own step count wins
    assert longer[2].overrides == ["trainer.max_steps=2", "trainer.max_steps=5", "seed=0"]
    assert [r.name for r in expand(spec, profile_of(spec, "longer"), [], only=["plain_long"])] == [
        "plain_long_seed=0",
        "plain_long_seed=1",
    ]
    with pytest.raises(ConfigError, match="no arm named"):
        expand(spec, profile_of(spec, "longer"), [], only=["wide"])  # the sweep's arm, not this profile's
    assert len(expand(spec, profile_of(spec, "short"), [])) == 6  # other profiles keep the sweep's arms
    # run in two parts: the analysis of the second sees the profile's arms, not the sweep's
    assert main(["sweep", "toy", "--profile", "longer", "--only", "plain"]) == 0
    sweep_dir = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sweep_dir:")).split()[1]
    assert main(["sweep", "toy", "--profile", "longer", "--resume", sweep_dir, "--only", "plain_long"]) == 0
    runs = json.loads((Path(sweep_dir) / "sweep.json").read_text())["runs"]
    assert [(r["arm"], r["seed"]) for r in runs] == [("plain", 0), ("plain", 1), ("plain_long", 0), ("plain_long", 1)]
    assert [r["summary"]["global_step"] for r in runs] == [2, 2, 5, 5]
    sweep.write_text(
        SWEEP.replace("analysis:\n  _target_", own_arms.replace("{}", "{steps: 3}") + "analysis:\n  _target_")
    )
    with pytest.raises(ConfigError, match="profile 'longer': arm 'plain' has unknown keys"):
        load_sweep(find_experiment("toy"))


def test_sweep_runs_analyses_and_resumes(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "toy"]) == 0
    out = capsys.readouterr().out
    sweep_dir = Path(next(line for line in out.splitlines() if line.startswith("sweep_dir:")).split()[1])
    runs = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
    assert len(runs) == 6
    assert all((Path(r["run_dir"]) / "metrics.csv").is_file() for r in runs)
    readme = (project / "experiments" / "toy" / "README.md").read_text()
    assert "Produced by `keel sweep toy`" in readme
    assert "| plain |" in readme
    assert "| wide |" in readme
    assert "Verdict:" in readme
    assert (project / "experiments" / "toy" / "results.png").stat().st_size > 1000
    results = json.loads((project / "experiments" / "toy" / "results.json").read_text())
    assert results["arms"]["plain"]["ratio"] == 1.0 or results["arms"]["plain"]["ratio"] is None
    stamps = {r["run_dir"]: (Path(r["run_dir"]) / "summary.json").stat().st_mtime for r in runs}
    assert main(["sweep", "toy", "--resume", str(sweep_dir)]) == 0
    assert stamps == {d: (Path(d) / "summary.json").stat().st_mtime for d in stamps}, "finished runs were redone"


def test_an_arm_added_later_joins_the_analysis(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # run one arm, then the other into the same folder: the second analysis sees both
    assert main(["sweep", "toy", "--tiny", "--only", "plain"]) == 0
    out = capsys.readouterr().out
    sweep_dir = next(line for line in out.splitlines() if line.startswith("sweep_dir:")).split()[1]
    assert main(["sweep", "toy", "--tiny", "--resume", sweep_dir, "--only", "wide"]) == 0
    runs = json.loads((Path(sweep_dir) / "sweep.json").read_text())["runs"]
    assert [(r["arm"], r["seed"]) for r in runs] == [("plain", 0), ("wide", 0)], "in sweep order"
    readme = (project / "experiments" / "toy" / "README.md").read_text()
    assert "| plain |" in readme
    assert "| wide |" in readme


def test_final_metric_table_from_a_tiny_sweep(project: Path) -> None:
    sweep = project / "experiments" / "toy" / "sweep.yaml"
    sweep.write_text(SWEEP.split("\nanalysis:")[0] + "\nanalysis:\n  _target_: keel.core.analysis.final_metric_table\n")
    assert main(["sweep", "toy", "--tiny"]) == 0
    readme = (project / "experiments" / "toy" / "README.md").read_text()
    assert "tiny (CI) scale" in readme
    assert "| plain | hidden=8 |" in readme


def _fake_run(folder: Path, arm: str, seed: int, losses: dict[int, float], seconds_per_step: float) -> object:
    from keel.core.sweep import RunRecord

    run = folder / f"{arm}-{seed}"
    run.mkdir(parents=True)
    lines = ["step,val/loss,perf/elapsed_s"]
    for step in range(0, max(losses) + 1):
        val = losses.get(step, "")
        lines.append(f"{step},{val},{step * seconds_per_step}")
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    final = losses[max(losses)]
    return RunRecord(arm, {"lr": 1}, seed, str(run), {"metrics": {"val/loss": final}})


def test_steps_to_target_numbers_and_verdicts(tmp_path: Path) -> None:
    from keel.core.analysis import steps_to_target

    (tmp_path / "README.md").write_text(README)
    curve = {100: 3.0, 200: 2.5, 300: 2.0}
    records = [
        # finals 1.7 and 1.9: target 1.8, which seed 1 alone never reaches, but the mean curve does at 400
        _fake_run(tmp_path, "adamw", 0, {**curve, 400: 1.7}, 0.1),
        _fake_run(tmp_path, "adamw", 1, {**curve, 400: 1.9}, 0.1),
        # reaches 1.8 at step 200 in both seeds but each step costs 1.5x: steps ratio 0.5, time ratio 0.75
        _fake_run(tmp_path, "fast", 0, {100: 2.0, 200: 1.7, 300: 1.6, 400: 1.5}, 0.15),
        _fake_run(tmp_path, "fast", 1, {100: 2.1, 200: 1.79, 300: 1.6, 400: 1.5}, 0.15),
        _fake_run(tmp_path, "slow", 0, {100: 3.0, 200: 2.9, 300: 2.5, 400: 2.2}, 0.1),
        _fake_run(tmp_path, "slow", 1, {100: 3.0, 200: 2.9, 300: 2.5, 400: 2.2}, 0.1),
    ]
    text = steps_to_target(
        records, tmp_path, tmp_path, "keel sweep x", reference_arm="adamw", claim_ratio=0.5, extra_metrics=["val/loss"]
    )
    assert "| adamw | 1.8000 |" in text  # the grid table: mean of the finals 1.7 and 1.9
    assert "| fast | 1.5000 |" in text
    assert "| slow | 2.2000 |" in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["target"] == pytest.approx(1.8)
    assert results["arms"]["adamw"]["steps"] == 400
    assert results["arms"]["adamw"]["per_seed"] == [400, None]
    assert results["arms"]["fast"]["steps"] == 200
    assert results["arms"]["fast"]["per_seed"] == [200, 200]
    assert results["arms"]["fast"]["ratio"] == pytest.approx(0.5)
    assert results["arms"]["fast"]["time_ratio"] == pytest.approx(0.75)
    assert results["arms"]["slow"]["ratio"] is None
    assert "**fast: reproduced**" in text
    assert "**slow: not reproduced**" in text


def test_a_profile_replaces_analysis_arguments(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keel.core.analysis as analysis

    seen: list[dict[str, object]] = []

    def record(**kwargs: object) -> None:
        seen.append({k: kwargs.get(k) for k in ("reference_arm", "claim_ratio", "paper")})

    monkeypatch.setattr(analysis, "steps_to_target", record)
    assert main(["sweep", "toy", "--profile", "short", "--only", "wide"]) == 0
    assert main(["sweep", "toy", "--tiny", "--only", "wide"]) == 0
    assert seen == [
        {"reference_arm": "plain", "claim_ratio": 0.9, "paper": "the short profile"},
        {"reference_arm": "plain", "claim_ratio": 0.5, "paper": "a made-up claim for the test"},
    ]
    sweep = project / "experiments" / "toy" / "sweep.yaml"
    sweep.write_text(
        SWEEP.replace("analysis: {claim_ratio: 0.9", "analysis: [{claim_ratio: 0.9").replace(
            'profile"}}', 'profile"}]}'
        )
    )
    from keel.core.config import find_experiment

    with pytest.raises(ConfigError, match="analysis must map"):
        load_sweep(find_experiment("toy"))
