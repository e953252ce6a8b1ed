"""The ``keel`` command (also ``python -m keel.core``).

Verbs::

    keel run <experiment> [key=value ...] [--tiny] [--print-config] [--debug]
    keel list
    keel export <run dir | checkpoint> [--format safetensors] [--checkpoint last|best] [--out FILE]
    keel report <experiment> [--run RUN_DIR]
    keel sweep <experiment> [key=value ...] [--tiny | --profile NAME] [--resume SWEEP_DIR] [--only ARM]
    keel <area> <verb> ...        commands that installed domain packages add (entry points "keel.commands")

A problem the user can fix (a :class:`~keel.core.errors.KeelError`) is printed as one line on
stderr with a non-zero exit status, 2 for usage and config errors; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from keel.core.errors import ConfigError, KeelError

USAGE = """usage: keel run <experiment> [key=value ...] [--tiny] [--print-config] [--debug]
       keel list
       keel export <run dir | checkpoint> [--format safetensors] [--checkpoint last|best] [--out FILE]
       keel report <experiment> [--run RUN_DIR]
       keel sweep <experiment> [key=value ...] [--tiny | --profile NAME] [--resume SWEEP_DIR] [--only ARM]
       keel <area> <verb> ...   (commands added by installed keel packages: {areas})"""

RUN_FLAGS = {"--tiny", "--print-config", "--debug"}


def _plugin_commands() -> dict[str, Callable[[list[str]], int]]:
    """Commands domain packages register under the entry point group ``keel.commands``."""
    found = {}
    for ep in entry_points(group="keel.commands"):
        found[ep.name] = ep
    return found  # loaded lazily: importing a domain package can be slow


def _usage() -> str:
    areas = ", ".join(sorted(_plugin_commands())) or "none installed"
    return USAGE.format(areas=areas)


def _print_run_dir(run_dir: Path) -> None:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        print(f"run_dir: {run_dir}", flush=True)


def cmd_run(argv: list[str]) -> int:
    """``keel run``: parse flags and overrides by hand so ``key=value`` items and flags can interleave."""
    if not argv or argv[0].startswith("-"):
        raise ConfigError("keel run needs an experiment: keel run <experiment> [key=value ...] [--tiny]")
    spec, rest = argv[0], argv[1:]
    flags = {item for item in rest if item.startswith("--")}
    unknown = flags - RUN_FLAGS
    if unknown:
        raise ConfigError(f"unknown option {sorted(unknown)[0]} for keel run; options: {', '.join(sorted(RUN_FLAGS))}")
    overrides = [item for item in rest if not item.startswith("--")]
    tiny = "--tiny" in flags
    if "--print-config" in flags:
        from keel.core.config import find_experiment, load_config, to_yaml
        from keel.core.instantiate import validate

        cfg = load_config(find_experiment(spec), overrides, tiny=tiny)
        validate(cfg)
        print(to_yaml(cfg), end="")
        return 0
    from keel.core.runner import fit, resolve_run

    run_dir, cfg = resolve_run(spec, overrides, tiny)
    _print_run_dir(run_dir)
    result = fit(cfg, run_dir)
    _report(result)
    _print_run_dir(run_dir)
    return 0


def _report(result) -> None:  # type: ignore[no-untyped-def]
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"finished at step {result.global_step}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(result.metrics):
        if key.startswith(("val", "test")):
            table.add_row(key, f"{result.metrics[key]:.4f}")
    for key, value in result.throughput.items():
        table.add_row(key, f"{value:,.2f}")
    Console(force_terminal=False, soft_wrap=True).print(table)


def cmd_list(argv: list[str]) -> int:
    """``keel list``: every experiment with its one-line description."""
    from rich.console import Console
    from rich.table import Table

    from keel.core.config import experiments_root, list_experiments

    if argv:
        raise ConfigError("keel list takes no arguments")
    root = experiments_root()
    found = list_experiments(root)
    if not found:
        raise ConfigError("no experiments found: run keel from the repository or set KEEL_EXPERIMENTS_DIR")
    table = Table(title=f"experiments in {root}")
    table.add_column("experiment", style="bold")
    table.add_column("description")
    for name, description in found:
        table.add_row(name, description)
    Console(soft_wrap=True).print(table)
    return 0


def cmd_export(argv: list[str]) -> int:
    """``keel export``: write a run's weights as safetensors."""
    from keel.core.checkpoint import CHECKPOINT_DIR, LAST, export_safetensors, resolve_resume
    from keel.core.errors import CheckpointError

    parser = _Parser(prog="keel export", description="Export a run's weights.")
    parser.add_argument("run", help="a run directory or a checkpoint file")
    parser.add_argument("--format", default="safetensors", choices=["safetensors"])
    parser.add_argument("--checkpoint", default="last", help="last, best, or a file inside the run")
    parser.add_argument("--out", default=None, help="output file (default: <run>/export/model.safetensors)")
    args = parser.parse_args(argv)
    source = Path(args.run)
    if source.is_dir() and args.checkpoint == "best":
        best = sorted((source / CHECKPOINT_DIR).glob("best-*.ckpt"))
        if not best:
            raise CheckpointError(f"{source} has no best-*.ckpt")
        checkpoint = best[-1]
    elif source.is_dir() and args.checkpoint not in ("last", LAST):
        checkpoint = source / CHECKPOINT_DIR / args.checkpoint
    else:
        checkpoint = resolve_resume(str(source), source.parent, "")
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else checkpoint.parent
    out = Path(args.out) if args.out else run_dir / "export" / "model.safetensors"
    written = export_safetensors(checkpoint, out)
    print(f"exported {checkpoint} -> {written}")
    return 0


def cmd_report(argv: list[str]) -> int:
    """``keel report``: write a finished run's results into its experiment README."""
    from keel.core.config import find_experiment
    from keel.core.report import latest_finished_run, report

    parser = _Parser(prog="keel report", description="Fill an experiment README's results block from a run.")
    parser.add_argument("experiment")
    parser.add_argument("--run", default=None, help="the run directory (default: the latest finished run)")
    parser.add_argument("--command", default=None, help="the command that produced the run (shown in the README)")
    args = parser.parse_args(argv)
    experiment = find_experiment(args.experiment)
    runs_dir = Path(os.environ.get("KEEL_RUNS_DIR") or "runs").resolve()
    run_dir = Path(args.run) if args.run else latest_finished_run(runs_dir, experiment.name)
    command = args.command or f"keel run {experiment.name}" + (
        " --tiny" if "cpu" in (run_dir / "resolved.yaml").read_text() else ""
    )
    report(experiment.config_path.parent, run_dir, command)
    print(f"wrote the results of {run_dir} into {experiment.config_path.parent / 'README.md'}")
    from keel.core.config import experiments_root
    from keel.core.report import update_index

    root = experiments_root()
    if root is not None and (root.parent / "README.md").is_file():
        update_index(root.parent / "README.md", root)
        print(f"updated the results table of {root.parent / 'README.md'}")
    return 0


def cmd_sweep(argv: list[str]) -> int:
    """``keel sweep``: run an experiment's comparison grid, then its analysis."""
    from keel.core.sweep import analyse, run_sweep

    parser = _Parser(prog="keel sweep", description="Run an experiment's sweep.yaml and write its results.")
    parser.add_argument("experiment")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    parser.add_argument("--tiny", action="store_true", help="the sweep's tiny profile (the CI smoke test)")
    parser.add_argument("--profile", default=None, help="a profile of sweep.yaml (e.g. cpu)")
    parser.add_argument("--resume", default=None, help="finish this sweep folder")
    parser.add_argument("--only", action="append", default=None, help="run only this arm (repeatable)")
    parser.add_argument("--analyse-only", default=None, metavar="SWEEP_DIR", help="re-run the analysis")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    if args.tiny and args.profile not in (None, "tiny"):
        raise ConfigError("keel sweep: --tiny and --profile are exclusive")
    profile = "tiny" if args.tiny else args.profile
    flag = " --tiny" if args.tiny else (f" --profile {profile}" if profile else "")
    command = f"keel sweep {args.experiment}{flag}" + "".join(f" {o}" for o in args.overrides)
    if args.analyse_only:
        if profile is None:  # name the profile the sweep was run with, not this command's
            recorded = json.loads((Path(args.analyse_only) / "sweep.json").read_text()).get("profile")
            command += " --tiny" if recorded == "tiny" else (f" --profile {recorded}" if recorded else "")
        analyse(args.experiment, Path(args.analyse_only), command)
        return 0
    sweep_dir, _ = run_sweep(args.experiment, args.overrides, profile, args.resume, args.only)
    analyse(args.experiment, sweep_dir, command)
    print(f"sweep_dir: {sweep_dir}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def dispatch(argv: Sequence[str]) -> int:
    """Run one ``keel`` command line and return its exit status (raising KeelError on user errors)."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb == "run":
        return cmd_run(rest)
    if verb == "list":
        return cmd_list(rest)
    if verb == "export":
        return cmd_export(rest)
    if verb == "report":
        return cmd_report(rest)
    if verb == "sweep":
        return cmd_sweep(rest)
    if verb == "--version":
        from keel.core import __version__

        print(f"keel-core {__version__}")
        return 0
    plugins = _plugin_commands()
    if verb in plugins:
        return int(plugins[verb].load()(rest) or 0)
    import difflib

    close = difflib.get_close_matches(verb, ["run", "list", "export", "report", "sweep", *plugins], n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown command '{verb}'{hint}; `keel --help` lists the commands")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keel`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("KEEL_DEBUG") == "1"
    try:
        return dispatch(argv)
    except KeelError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        # An exception from a library during a run: keep it to one line unless --debug.
        keel_cause = _keel_cause(err)
        if keel_cause is not None:
            if debug:
                traceback.print_exc()
            print(f"error: {keel_cause}", file=sys.stderr, flush=True)
            return keel_cause.exit_code
        if debug:
            raise
        print(
            f"error: {type(err).__name__}: {' '.join(str(err).split())[:500]} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _keel_cause(err: BaseException) -> KeelError | None:
    """A KeelError wrapped by a library (Lightning re-raises callback errors), if any."""
    seen = 0
    current: BaseException | None = err
    while current is not None and seen < 10:
        if isinstance(current, KeelError):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


if __name__ == "__main__":
    sys.exit(main())
