"""Building objects from ``_target_`` nodes, after checking them.

Objects are built by hydra's :func:`hydra.utils.instantiate` (``_target_``, ``_partial_``,
``_args_``), but only after :func:`validate` has walked the whole tree and checked that every
target

* starts with an allowed prefix (:data:`ALLOWED_PREFIXES`), so a config cannot run arbitrary code,
* imports, and
* accepts the keys given to it: unknown keyword arguments and missing required ones are reported
  with the key path and a "did you mean" hint, and plain scalar values are checked against the
  parameter's annotation (``int``, ``float``, ``bool``, ``str``, optionally ``| None``).

All of this happens before any data is read or any model is built.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from keel.core.errors import ConfigError

ALLOWED_PREFIXES: tuple[str, ...] = (
    "keel.",
    "torch.",
    "lightning.",
    "torchmetrics.",
    "transformers.",
    "diffusers.",
    "timm.",
)

_RESERVED = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}


def is_allowed(target: str) -> bool:
    """Whether ``target`` lies under one of the allowed module prefixes."""
    return any(target.startswith(prefix) for prefix in ALLOWED_PREFIXES)


def locate(target: str, path: str = "") -> Callable[..., Any]:
    """Import the object a dotted ``_target_`` names, after checking the allow-list.

    Raises:
        ConfigError: If the target is outside the allow-list or cannot be imported.
    """
    where = f" at '{path}'" if path else ""
    if not isinstance(target, str) or not target:
        raise ConfigError(f"_target_{where} must be a dotted import path, got {target!r}")
    if not is_allowed(target):
        allowed = ", ".join(p.rstrip(".") for p in ALLOWED_PREFIXES)
        raise ConfigError(f"_target_ '{target}'{where} is not allowed; targets must come from: {allowed}")
    parts = target.split(".")
    # Walk from the longest importable module prefix, so nested attributes (Class.method) work.
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            missing = err.name or ""
            if split == 1 and missing == module_name:
                raise ConfigError(
                    f"_target_ '{target}'{where} needs the package '{missing}', which is not installed"
                ) from err
            if module_name == missing or module_name.startswith(missing + "."):
                continue  # this prefix is not a module: try a shorter one
            raise ConfigError(
                f"_target_ '{target}'{where} needs the module '{missing}', which is not installed"
            ) from err
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ConfigError(f"_target_ '{target}'{where} cannot be imported{_hint_for(target)}")


def _hint_for(target: str) -> str:
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return ""
    close = difflib.get_close_matches(attr, [n for n in dir(module) if not n.startswith("_")], n=1)
    return f"; did you mean '{module_name}.{close[0]}'?" if close else ""


def iter_targets(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(key path, node)`` for every mapping with a ``_target_`` inside ``node``, outermost first."""
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            if key not in _RESERVED:
                yield from iter_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from iter_targets(value, f"{path}[{index}]")


def _signature(obj: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have no signature; nothing to check
        return None


def _scalar_types(annotation: Any) -> tuple[type, ...] | None:
    """The plain scalar types an annotation allows, or None when it is not a simple scalar annotation."""
    if annotation in (int, float, bool, str):
        return (annotation,)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        scalars = [a for a in args if a in (int, float, bool, str, type(None))]
        if len(scalars) == len(args):
            return tuple(scalars)
    return None


def _value_fits(value: Any, allowed: tuple[type, ...]) -> bool:
    if value is None:
        return type(None) in allowed
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    return any(isinstance(value, t) for t in allowed if t is not type(None))


def _resolve_annotations(obj: Callable[..., Any]) -> dict[str, Any]:
    target = obj.__init__ if inspect.isclass(obj) else obj  # type: ignore[misc]
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: skip the type check, keep the key check
        return {}


def check_node(path: str, node: dict[str, Any]) -> None:
    """Check one ``_target_`` node: allow-list, import, keyword names, required arguments, scalar types.

    Raises:
        ConfigError: On the first problem found, naming the key path.
    """
    where = path or "<root>"
    target = locate(node["_target_"], where)
    signature = _signature(target)
    if signature is None:
        return
    params = signature.parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"]
    given = [k for k in node if k not in _RESERVED]
    if not accepts_any:
        for key in given:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; it accepts: {', '.join(names)}"
                raise ConfigError(f"'{where}.{key}' is not an argument of {node['_target_']}{hint}")
    if not node.get("_partial_", False):
        n_positional = len(node.get("_args_", []) or [])
        for index, name in enumerate(names):
            param = params[name]
            required = param.default is inspect.Parameter.empty
            if required and name not in node and index >= n_positional:
                raise ConfigError(f"'{where}' is missing the required argument '{name}' of {node['_target_']}")
    hints = _resolve_annotations(target)
    for key in given:
        allowed = _scalar_types(hints.get(key))
        value = node[key]
        if allowed and not isinstance(value, dict | list) and not _value_fits(value, allowed):
            names_of = " | ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"'{where}.{key}' must be {names_of}, got {value!r}")


def validate(cfg: DictConfig | dict[str, Any], sections: tuple[str, ...] = ("model", "data", "callbacks")) -> None:
    """Check every ``_target_`` node of the given config sections before anything is built.

    Raises:
        ConfigError: On the first invalid node.
    """
    for section in sections:
        value = cfg.get(section)
        if value is None:
            continue
        for path, node in iter_targets(value, section):
            check_node(path, node)


def instantiate(node: Any, **kwargs: Any) -> Any:
    """Validate then build a ``_target_`` node (and the nodes inside it) with hydra.

    Args:
        node: A ``DictConfig`` or dict with a ``_target_``.
        **kwargs: Extra keyword arguments for the outermost target.

    Raises:
        ConfigError: If the node is invalid.
    """
    from hydra.utils import instantiate as hydra_instantiate

    for path, inner in iter_targets(node):
        check_node(path, inner)
    if isinstance(node, dict):
        node = OmegaConf.create(node)
    return hydra_instantiate(node, _convert_="partial", **kwargs)
