"""Config layers: merge order, struct checks with "did you mean", types, interpolation, discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.core.config import Experiment, find_experiment, list_experiments, load_config, merge_layer, parse_overrides
from keel.core.errors import ConfigError


@pytest.fixture
def experiments(tmp_path: Path) -> Path:
    root = tmp_path / "experiments"
    folder = root / "area" / "method"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        "description: a method\nseed: 1\ntrainer:\n  max_steps: 100\n  devices: 4\n"
        "model:\n  _target_: keel.core.testing.BoringModule\n  hidden: 64\n  vocab_size: ${data.vocab_size}\n"
        "data:\n  _target_: keel.core.testing.BoringDataModule\n  vocab_size: 50\n"
    )
    (folder / "tiny.yaml").write_text("trainer:\n  max_steps: 5\n  devices: 1\nmodel:\n  hidden: 8\n")
    (root / "other").mkdir()
    (root / "other" / "config.yaml").write_text("description: >\n  two\n  lines\n")
    return root


def test_merge_order_defaults_config_tiny_cli(experiments: Path) -> None:
    exp = find_experiment("area/method", experiments)
    cfg = load_config(exp)
    assert (cfg.trainer.max_steps, cfg.model.hidden, cfg.trainer.log_every_n_steps) == (100, 64, 10)
    cfg = load_config(exp, tiny=True)
    assert (cfg.trainer.max_steps, cfg.model.hidden, cfg.trainer.devices) == (5, 8, 1)
    cfg = load_config(exp, ["trainer.max_steps=7", "model.hidden=3", "data.vocab_size=99"], tiny=True)
    assert (cfg.trainer.max_steps, cfg.model.hidden) == (7, 3)
    assert cfg.model.vocab_size == 99, "interpolations resolve after every layer is merged"


def test_unknown_key_names_path_file_and_suggestion(experiments: Path) -> None:
    exp = find_experiment("area/method", experiments)
    with pytest.raises(ConfigError, match=r"command line: unknown key 'trainer.max_step'; did you mean 'max_steps'"):
        load_config(exp, ["trainer.max_step=3"])
    (experiments / "area" / "method" / "tiny.yaml").write_text("trainr:\n  max_steps: 5\n")
    with pytest.raises(ConfigError, match=r"tiny.yaml: unknown key 'trainr'; did you mean 'trainer'"):
        load_config(exp, tiny=True)


def test_wrong_type_is_rejected(experiments: Path) -> None:
    exp = find_experiment("area/method", experiments)
    with pytest.raises(ConfigError, match=r"'trainer.max_steps' must be int"):
        load_config(exp, ["trainer.max_steps=many"])
    with pytest.raises(ConfigError, match=r"'trainer.deterministic' must be bool"):
        load_config(exp, ["trainer.deterministic=3"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(exp, ["trainer=5"])
    assert load_config(exp, ["trainer.devices=[0,1]"]).trainer.devices == [0, 1]  # flexible keys take several types


def test_open_sections_accept_new_keys_and_target_swap_replaces(experiments: Path) -> None:
    base = {"model": {"_target_": "a.A", "x": 1}}
    merged = merge_layer(base, {"model": {"_target_": "b.B", "y": 2}}, "f")
    assert merged["model"] == {"_target_": "b.B", "y": 2}
    merged = merge_layer(base, {"model": {"z": 3}}, "f")
    assert merged["model"] == {"_target_": "a.A", "x": 1, "z": 3}


def test_overrides_parse_yaml_values() -> None:
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=null", "e=text", "f=1e-3"]) == {
        "a": {"b": 1, "c": [1, 2]},
        "d": None,
        "e": "text",
        "f": 1e-3,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_unknown_experiment_suggests_close_name(experiments: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown experiment 'area/methd'.*did you mean 'area/method'"):
        find_experiment("area/methd", experiments)


def test_list_experiments_reads_descriptions(experiments: Path) -> None:
    assert list_experiments(experiments) == [("area/method", "a method"), ("other", "two lines")]


def test_yaml_file_experiment_and_missing_tiny(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("seed: 3\n")
    exp = find_experiment(str(path))
    assert exp == Experiment("mine", path.resolve(), None)
    assert load_config(exp).seed == 3
    with pytest.raises(ConfigError, match="has no tiny.yaml"):
        load_config(exp, tiny=True)


def test_broken_interpolation_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("description: ${nowhere.to.be.found}\n")
    with pytest.raises(ConfigError, match="cannot resolve"):
        load_config(find_experiment(str(path)))


def test_malformed_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("trainer: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(find_experiment(str(path)))
