"""The ``lightning`` command keel installs, sharing the name with lightning-sdk's.

``lightning run <experiment> ...`` runs a keel experiment exactly as ``keel run`` does. Every
other invocation (``lightning login``, ``lightning run app.py`` ...) is handed to the ``lightning``
console script of the lightning-sdk distribution when it is installed; that entry point is looked
up in the installed package metadata and called in this process, so it works whichever of the two
packages wrote the ``lightning`` file on PATH last. Without lightning-sdk the command says so.

An argument after ``run`` counts as a keel experiment when it names a folder under
``experiments/`` (or is a ``.yaml`` file); anything else, such as a Python script, belongs to
lightning-sdk.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib.metadata import distribution, entry_points
from pathlib import Path

SDK_DISTRIBUTION = "lightning-sdk"


def is_keel_experiment(argument: str) -> bool:
    """Whether ``argument`` names a keel experiment folder or config file."""
    from keel.core.config import experiments_root

    if argument.endswith((".yaml", ".yml")):
        return True
    root = experiments_root()
    return root is not None and (root / argument / "config.yaml").is_file()


def sdk_command() -> Callable[[], object] | None:
    """lightning-sdk's own ``lightning`` entry point, if that distribution is installed."""
    for ep in entry_points(group="console_scripts", name="lightning"):
        owner = getattr(ep, "dist", None)
        name = owner.metadata["Name"] if owner is not None else ""
        if name and name.lower().replace("_", "-") == SDK_DISTRIBUTION:
            return ep.load()
    try:  # metadata without a dist link (old importlib): fall back to the distribution's own list
        dist = distribution(SDK_DISTRIBUTION)
    except Exception:
        return None
    for ep in dist.entry_points:
        if ep.group == "console_scripts" and ep.name == "lightning":
            return ep.load()
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of keel's ``lightning`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "run" and is_keel_experiment(argv[1]):
        from keel.core.cli import main as keel_main

        return keel_main(argv)
    command = sdk_command()
    if command is None:
        shown = " ".join(argv) or "(no arguments)"
        print(
            f"error: 'lightning {shown}' is not a keel command and lightning-sdk is not installed; "
            "keel's form is 'lightning run <experiment>' (see 'keel list'), and "
            "'pip install lightning-sdk' provides the rest",
            file=sys.stderr,
        )
        return 2
    sys.argv = [str(Path(sys.argv[0]).with_name("lightning")), *argv]
    result = command()
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
