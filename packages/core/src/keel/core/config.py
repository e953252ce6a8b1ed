"""Loading, merging and checking experiment configs.

A config is OmegaConf YAML. The merge order is fixed: package defaults (keel-core's
``defaults.yaml``, then the defaults of the package that owns the experiment's area), the
experiment's ``config.yaml``, its ``tiny.yaml`` when ``--tiny`` is given, and the command line's
``key=value`` overrides. Every layer is checked against the layers below it as it is merged: the
closed sections of the schema reject unknown keys (naming the key path, the file, and the closest
known key) and values of the wrong type. The open sections (``model``, ``data``, ``deepspeed``,
``callbacks``) are free-form here and checked later against the constructors they build
(:func:`keel.core.instantiate.validate`).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from keel.core.errors import ConfigError

# Sections whose content is decided by the experiment, not by the schema.
OPEN_SECTIONS = frozenset({"model", "data", "deepspeed", "callbacks"})

# Keys whose values legitimately take several types; the schema checks the others by their default's type.
FLEXIBLE_KEYS = frozenset(
    {
        "trainer.devices",
        "trainer.precision",
        "trainer.strategy",
        "trainer.val_check_interval",
        "trainer.limit_train_batches",
        "trainer.limit_val_batches",
        "trainer.gradient_clip_val",
        "trainer.max_time",
        "trainer.max_epochs",
        "trainer.benchmark",
        "checkpoint.every_n_train_steps",
        "checkpoint.monitor",
        "logging.progress_bar",
        "run.name",
        "run.runs_dir",
        "resume",
    }
)


@dataclass(frozen=True)
class Experiment:
    """Where an experiment lives.

    Attributes:
        name: The experiment's path under ``experiments/`` (``diffusion/nuwa_xl``), or a YAML file's stem.
        config_path: Its ``config.yaml`` (or the YAML file given on the command line).
        tiny_path: Its ``tiny.yaml``, when it has one.
    """

    name: str
    config_path: Path
    tiny_path: Path | None

    @property
    def area(self) -> str:
        """The first path component of the name (``diffusion`` for ``diffusion/nuwa_xl``)."""
        return self.name.split("/")[0]


def experiments_root(start: Path | None = None) -> Path | None:
    """Find the ``experiments/`` folder: ``$KEEL_EXPERIMENTS_DIR``, else the nearest one above ``start``."""
    if env := os.environ.get("KEEL_EXPERIMENTS_DIR"):
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "experiments").is_dir():
            return folder / "experiments"
    return None


def list_experiments(root: Path | None = None) -> list[tuple[str, str]]:
    """Every experiment under ``root`` as ``(name, one-line description)``, sorted by name."""
    root = root or experiments_root()
    if root is None:
        return []
    found = []
    for config in sorted(root.rglob("config.yaml")):
        name = config.parent.relative_to(root).as_posix()
        try:
            description = (yaml.safe_load(config.read_text()) or {}).get("description", "")
        except (yaml.YAMLError, OSError) as err:
            description = f"(unreadable config: {err.__class__.__name__})"
        found.append((name, " ".join(str(description).split())))
    return found


def find_experiment(spec: str, root: Path | None = None) -> Experiment:
    """Resolve an experiment name or a YAML file path.

    Raises:
        ConfigError: If neither an experiment folder nor a YAML file matches ``spec``.
    """
    as_file = Path(spec)
    if as_file.suffix in {".yaml", ".yml"}:
        if not as_file.is_file():
            raise ConfigError(f"config file not found: {spec}")
        tiny = as_file.with_name(f"{as_file.stem}.tiny{as_file.suffix}")
        return Experiment(as_file.stem, as_file.resolve(), tiny if tiny.is_file() else None)
    root = root or experiments_root()
    if root is not None:
        folder = root / spec
        if (folder / "config.yaml").is_file():
            tiny = folder / "tiny.yaml"
            return Experiment(spec.strip("/"), folder / "config.yaml", tiny if tiny.is_file() else None)
    known = [name for name, _ in list_experiments(root)]
    hint = _did_you_mean(spec, known)
    where = f" under {root}" if root else " (no experiments/ folder found; set KEEL_EXPERIMENTS_DIR)"
    raise ConfigError(f"unknown experiment '{spec}'{where}{hint}; `keel list` shows them all")


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = OmegaConf.load(path)
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as err:
        raise ConfigError(f"cannot read {path}: {' '.join(str(err).split())}") from err
    data = OmegaConf.to_container(loaded, resolve=False)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def package_defaults(area: str | None = None) -> list[tuple[dict[str, Any], str]]:
    """keel-core's defaults, then those of the package registered for ``area`` (entry point ``keel.defaults``)."""
    layers = [
        (yaml.safe_load(resources.files("keel.core").joinpath("defaults.yaml").read_text()), "keel-core defaults")
    ]
    if area:
        for ep in entry_points(group="keel.defaults"):
            if ep.name == area:
                text = resources.files(ep.value).joinpath("defaults.yaml").read_text()
                layers.append((yaml.safe_load(text) or {}, f"{ep.value} defaults"))
    return layers


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_type(path: str, default: Any, value: Any, source: str) -> None:
    if default is None or value is None or path in FLEXIBLE_KEYS or isinstance(value, str) and "${" in value:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{source}: '{path}' must be {_type_name(default)} (like the default {default!r}), got {value!r}"
        )


def merge_layer(base: dict[str, Any], layer: dict[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """Merge ``layer`` into ``base`` (a new dict), checking keys and types of the closed sections.

    Args:
        base: The config merged so far.
        layer: The next layer.
        source: Where the layer came from, for error messages (a file or "command line").
        prefix: The key path of ``base`` inside the whole config.

    Raises:
        ConfigError: On an unknown key in a closed section or a value of the wrong type.
    """
    merged = dict(base)
    for key, value in layer.items():
        path = f"{prefix}{key}"
        top = path.split(".")[0]
        is_open = top in OPEN_SECTIONS
        if key not in merged and not is_open:
            hint = _did_you_mean(key, [str(k) for k in merged])
            raise ConfigError(f"{source}: unknown key '{path}'{hint}")
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict) and not _replaces_target(current, value):
            merged[key] = merge_layer(current, value, source, f"{path}.")
        else:
            if not is_open:
                if isinstance(current, dict) and not isinstance(value, dict) and value is not None:
                    raise ConfigError(f"{source}: '{path}' is a section; set its keys ({path}.<key>=...)")
                _check_type(path, current, value, source)
            merged[key] = value
    return merged


def _replaces_target(current: dict[str, Any], value: dict[str, Any]) -> bool:
    """A layer that names a different ``_target_`` replaces the node instead of merging into it."""
    return "_target_" in value and value.get("_target_") != current.get("_target_")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``key.path=value`` strings into a nested dict; values are parsed as YAML.

    Raises:
        ConfigError: On an item without ``=`` or with an empty key.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("+")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value (for example trainer.max_steps=100)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):
            value = _as_number(value)
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' sets a key inside a value that is not a section")
        node[parts[-1]] = value
    return nested


def _as_number(text: str) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; a researcher typing it means a float."""
    try:
        return float(text) if any(c in text for c in ".eE") and not text.startswith("${") else int(text)
    except ValueError:
        return text


def load_config(experiment: Experiment, overrides: list[str] | None = None, tiny: bool = False) -> DictConfig:
    """Merge defaults, the experiment, its tiny overrides and the command line into one resolved config.

    Args:
        experiment: The experiment to load.
        overrides: ``key=value`` strings from the command line.
        tiny: Apply the experiment's ``tiny.yaml``.

    Returns:
        The resolved config, in struct mode.

    Raises:
        ConfigError: On any unknown key, wrong type, unreadable file or failed interpolation.
    """
    merged: dict[str, Any] = {}
    for layer, source in package_defaults(experiment.area):
        merged = merge_layer(merged, layer, source) if merged else dict(layer)
    merged = merge_layer(merged, _read_yaml(experiment.config_path), str(experiment.config_path))
    if tiny:
        if experiment.tiny_path is None:
            raise ConfigError(f"experiment '{experiment.name}' has no tiny.yaml, so --tiny cannot apply")
        merged = merge_layer(merged, _read_yaml(experiment.tiny_path), str(experiment.tiny_path))
    if overrides:
        merged = merge_layer(merged, parse_overrides(overrides), "command line")
    cfg = OmegaConf.create(merged)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve the config: {' '.join(str(err).split())}") from err
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    """The config as YAML text, the form saved as ``resolved.yaml``."""
    return OmegaConf.to_yaml(cfg, resolve=True)
