"""Every developer and CI command of the keel monorepo runs through a session here.

``nox -l`` lists the sessions. The CI suite is ``nox -s lint tests integration`` (also what a bare ``nox``
runs). Packages are discovered from ``packages/*/pyproject.toml``, so a new package joins every session
without an edit here. Environment variables:

- ``PACKAGES=core,diffusion`` narrows ``tests`` to those package folders.
- ``FIX=1`` makes ``lint`` apply ruff's fixes and formatting instead of only reporting.
- ``KEEL_NO_APT=1`` stops ``tests`` and ``integration`` from apt-installing the Debian data packages.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "virtualenv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "tests", "integration"]

ROOT = Path(__file__).resolve().parent
PYTHON = "3.11"
CONSTRAINTS = ("-c", "constraints.txt")
KEEL_PREFIX = "keel-"
# Debian packages whose files some tests read as real offline corpora; those tests skip without them.
DEBIAN_DATA_PACKAGES = ("dict-gcide", "wordnet-base", "python3.11-doc", "manpages", "manpages-dev")
BENCH_RESULTS = "benchmarks-results"
# Baselines the current benchmarks compare against. A benchmark may instead declare its own
# requirements in a PEP 723 block (``# /// script`` ... ``dependencies = [...]``), which bench installs.
BENCH_REQUIREMENTS = ("pytorch-optimizer",)
DEEPSPEED_STRATEGIES = ("deepspeed_stage_2", "deepspeed_stage_3")


@dataclass(frozen=True)
class Package:
    """One installable distribution, i.e. one folder ``packages/<folder>`` with a ``pyproject.toml``.

    Attributes:
        folder: Folder name under ``packages/`` (``code-models``); also the ``tests(...)`` session id.
        name: Normalized distribution name (``keel-code-models``).
        import_name: Module under the ``keel`` namespace (``code_models`` for ``import keel.code_models``).
        extras: Optional-dependency groups the package declares (``test``, ``deepspeed``, ...).
        keel_requires: Normalized names of the ``keel-*`` distributions it depends on, extras included.
    """

    folder: str
    name: str
    import_name: str
    extras: tuple[str, ...]
    keel_requires: tuple[str, ...]

    @property
    def path(self) -> str:
        """Path relative to the repository root, as pip and pytest are given it (``packages/core``)."""
        return f"packages/{self.folder}"

    def requirement(self, extras: tuple[str, ...] | list[str] = ()) -> str:
        """A pip argument installing this package from its folder, e.g. ``./packages/core[test]``."""
        suffix = f"[{','.join(extras)}]" if extras else ""
        return f"./{self.path}{suffix}"


def normalize(name: str) -> str:
    """Normalize a distribution name as PEP 503 does (``Keel_Core`` -> ``keel-core``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The normalized distribution name of a PEP 508 requirement (``keel-core[deepspeed]>=0.1`` -> ``keel-core``)."""
    match = re.match(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalize(match.group(1))


def discover_packages(root: Path = ROOT) -> list[Package]:
    """Read every ``packages/*/pyproject.toml`` under ``root``, sorted by folder.

    Raises:
        ValueError: A pyproject has no ``[project] name``, the folder does not hold exactly one
            ``src/keel/<import_name>/__init__.py``, or two folders declare the same distribution.
    """
    packages: list[Package] = []
    for pyproject in sorted((root / "packages").glob("*/pyproject.toml")):
        where = pyproject.relative_to(root).as_posix()
        with pyproject.open("rb") as file:
            project = tomllib.load(file).get("project", {})
        if "name" not in project:
            raise ValueError(f"{where}: no [project] name")
        inits = sorted(pyproject.parent.glob("src/keel/*/__init__.py"))
        if len(inits) != 1:
            raise ValueError(f"{where}: expected exactly one src/keel/<import_name>/__init__.py, found {len(inits)}")
        optional = project.get("optional-dependencies", {})
        requirements = [*project.get("dependencies", []), *(r for group in optional.values() for r in group)]
        name = normalize(project["name"])
        keel_requires = {requirement_name(r) for r in requirements} - {name}
        packages.append(
            Package(
                folder=pyproject.parent.name,
                name=name,
                import_name=inits[0].parent.name,
                extras=tuple(optional),
                keel_requires=tuple(sorted(n for n in keel_requires if n.startswith(KEEL_PREFIX))),
            )
        )
    names = [p.name for p in packages]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"more than one folder under packages/ declares {', '.join(duplicates)}")
    return packages


def keel_dependencies(package: Package, packages: list[Package]) -> list[Package]:
    """The local packages ``package`` needs, transitively, dependencies before their dependents.

    Raises:
        ValueError: A ``keel-*`` requirement names no folder under ``packages/``, or the requirements
            form a cycle.
    """
    by_name = {p.name: p for p in packages}
    ordered: list[Package] = []
    visiting: list[str] = []

    def visit(current: Package) -> None:
        if current.name in visiting:
            raise ValueError(f"dependency cycle: {' -> '.join([*visiting, current.name])}")
        if current in ordered:
            return
        visiting.append(current.name)
        for name in current.keel_requires:
            if name not in by_name:
                raise ValueError(f"{current.name} requires {name}, which is no folder under packages/")
            visit(by_name[name])
        visiting.pop()
        ordered.append(current)

    visit(package)
    return ordered[:-1]


def select_packages(packages: list[Package], spec: str | None) -> list[Package]:
    """The packages named in ``spec`` (``"core,diffusion"``, folder or distribution names); all if empty.

    Raises:
        ValueError: ``spec`` names a package that does not exist.
    """
    wanted = [s.strip() for s in (spec or "").split(",") if s.strip()]
    if not wanted:
        return packages
    known = {p.folder: p for p in packages} | {p.name: p for p in packages}
    unknown = [w for w in wanted if w not in known and normalize(w) not in known]
    if unknown:
        raise ValueError(f"PACKAGES names {', '.join(unknown)}; known: {', '.join(p.folder for p in packages)}")
    chosen = {known.get(w) or known[normalize(w)] for w in wanted}
    return [p for p in packages if p in chosen]


def experiments(root: Path = ROOT) -> list[str]:
    """Every experiment (a folder under ``experiments/`` holding a ``config.yaml``), as ``keel run`` names it."""
    base = root / "experiments"
    return sorted(p.parent.relative_to(base).as_posix() for p in base.rglob("config.yaml"))


def benchmark_scripts(root: Path = ROOT, filters: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """The benchmark scripts ``packages/*/benchmarks/*.py`` that match ``filters``.

    A script matches when a filter is part of its file name or equals its package folder (its group);
    no filters match every script. Files starting with ``_`` are helpers, not benchmarks.
    """
    scripts = sorted(p for p in root.glob("packages/*/benchmarks/*.py") if not p.name.startswith("_"))
    if not filters:
        return scripts
    return [p for p in scripts if any(f in p.stem or f == p.parents[1].name for f in filters)]


def script_requirements(script: Path) -> list[str]:
    """The ``dependencies`` of a script's PEP 723 block, or nothing when it has none."""
    if "# /// script" not in script.read_text(encoding="utf-8"):
        return []
    return list(nox.project.load_toml(script).get("dependencies", []))


PACKAGES = discover_packages()
BY_FOLDER = {p.folder: p for p in PACKAGES}
SELECTED = select_packages(PACKAGES, os.environ.get("PACKAGES"))


def install_torch(session: nox.Session, *, vision: bool = True) -> None:
    """Install the pinned torch (and torchvision) first, so pip takes them from the local wheel cache."""
    session.install(*CONSTRAINTS, "torch", *(["torchvision"] if vision else []))


def install_all(session: nox.Session, *extra_requirements: str) -> None:
    """Install every package editable, each with all of its extras, into one environment."""
    editable = [arg for p in PACKAGES for arg in ("-e", p.requirement(p.extras))]
    session.install(*CONSTRAINTS, *editable, *extra_requirements)


def cuda_available(session: nox.Session) -> bool:
    """Whether the session's environment (torch must be installed) sees a CUDA device."""
    if shutil.which("nvidia-smi") is None:
        return False
    output = session.run("python", "-c", "import torch; print(torch.cuda.is_available())", silent=True)
    return isinstance(output, str) and output.strip().endswith("True")


def _dpkg_installed(name: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False)
    # "install ok installed"; a removed package reads "deinstall ok config-files" or "unknown ok not-installed".
    return result.returncode == 0 and result.stdout.split()[-1:] == ["installed"]


def install_system_packages(session: nox.Session) -> None:
    """Apt-install the Debian data packages the tests read, when this process may do so.

    It installs as root, or through passwordless sudo on CI machines (``CI`` is set, as on GitHub's
    runners). Elsewhere it logs which tests will skip. A failed apt-get fails the session on CI and
    only logs a warning on a developer machine.
    """
    if os.environ.get("KEEL_NO_APT") or shutil.which("dpkg-query") is None:
        session.log("Debian data packages not checked; tests that read them skip when they are missing")
        return
    missing = [name for name in DEBIAN_DATA_PACKAGES if not _dpkg_installed(name)]
    if not missing:
        return
    if os.geteuid() == 0:
        sudo: list[str] = []
    elif os.environ.get("CI") and shutil.which("sudo") and _run_quietly("sudo", "-n", "true"):
        sudo = ["sudo", "-n"]  # GitHub's runners: passwordless sudo
    else:
        session.log(f"not root: {', '.join(missing)} not installed; tests that read them will skip")
        return
    if shutil.which("apt-get") is None:
        session.log(f"no apt-get: {', '.join(missing)} not installed; tests that read them will skip")
        return
    # Through env rather than session.run(env=...), which sudo would drop.
    apt_get = [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    try:
        session.run(*apt_get, "update", "-qq", external=True)
        available = [name for name in missing if _apt_candidate(name)]
        if len(available) < len(missing):
            unavailable = sorted(set(missing) - set(available))
            session.log(f"apt has no {', '.join(unavailable)}; tests that read them will skip")
        if available:
            session.run(*apt_get, "install", "-y", "-qq", "--no-install-recommends", *available, external=True)
    except CommandFailed:
        if os.environ.get("CI"):
            raise
        session.warn(f"apt-get failed; tests that read {', '.join(missing)} will skip")


def _run_quietly(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def _apt_candidate(name: str) -> bool:
    result = subprocess.run(["apt-cache", "policy", name], capture_output=True, text=True, check=False)
    return "Candidate:" in result.stdout and "Candidate: (none)" not in result.stdout


def _drop_venv_on_ci(session: nox.Session) -> None:
    # Each per-package venv holds its own torch (about 5 GB with the CUDA libraries). A CI machine uses
    # each venv once, so delete it when done and keep the disk to one or two of them at a time.
    if os.environ.get("CI") and isinstance(session.virtualenv.location, str):
        shutil.rmtree(session.virtualenv.location, ignore_errors=True)


SMOKE_IMPORT = """
import importlib, sys
module = importlib.import_module(sys.argv[1])
print(f"{module.__name__} imported from {module.__file__}")
if "site-packages" not in module.__file__:
    sys.exit(f"{module.__name__} was imported from the source tree, not from the installed package")
"""


@nox.session(python=PYTHON, reuse_venv=True)
def lint(session: nox.Session) -> None:
    """Ruff lint and format checks over the repository (FIX=1 applies the fixes)."""
    session.install(*CONSTRAINTS, "ruff")
    if os.environ.get("FIX"):
        session.run("ruff", "check", "--fix", ".")
        session.run("ruff", "format", ".")
    else:
        session.run("ruff", "check", ".")
        session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON, reuse_venv=True)
@nox.parametrize("folder", [p.folder for p in SELECTED], ids=[p.folder for p in SELECTED])
def tests(session: nox.Session, folder: str) -> None:
    """One package's unit tests, in a venv holding only it (installed, all extras) and its keel deps."""
    package = BY_FOLDER[folder]
    install_system_packages(session)
    install_torch(session, vision=False)
    local = [p.requirement() for p in keel_dependencies(package, PACKAGES)]
    # Not editable: the tests run against what a user's `pip install` gets. pip rebuilds a local folder
    # on every install, so a reused venv still holds the working tree's code.
    session.install(*CONSTRAINTS, *local, package.requirement(package.extras))
    session.run("python", "-c", SMOKE_IMPORT, f"keel.{package.import_name}")
    try:
        session.run("pytest", f"{package.path}/tests", *session.posargs)
    finally:
        _drop_venv_on_ci(session)


@nox.session(python=PYTHON, reuse_venv=True)
def integration(session: nox.Session) -> None:
    """Cross-package tests in tests/, with every package installed (editable) in one venv."""
    install_system_packages(session)
    install_torch(session)
    install_all(session, "nox")
    session.run("pytest", "tests", *session.posargs)


@nox.session(python=PYTHON, reuse_venv=True)
def quickstart(session: nox.Session) -> None:
    """The README's first run: keel-core alone, `keel run quickstart` (`--tiny` without a GPU)."""
    core = BY_FOLDER["core"]
    install_torch(session, vision=False)
    gpu = cuda_available(session)
    wanted = ("corpora", "deepspeed") if gpu else ("corpora",)
    session.install(*CONSTRAINTS, core.requirement([e for e in wanted if e in core.extras]))
    session.run("keel", "run", "quickstart", *([] if gpu else ["--tiny"]), *session.posargs)


@nox.session(python=PYTHON, reuse_venv=True)
def bench(session: nox.Session) -> None:
    """Benchmarks packages/*/benchmarks/*.py; `-- overhead` runs those whose name has `overhead`."""
    scripts = benchmark_scripts(ROOT, session.posargs)
    if not scripts:
        if session.posargs:
            session.error(f"no benchmark matches {' '.join(session.posargs)}")
        session.skip("no benchmarks under packages/*/benchmarks/")
    requirements = sorted({*BENCH_REQUIREMENTS, *(r for s in scripts for r in script_requirements(s))})
    install_system_packages(session)  # the retrieval benchmark indexes GCIDE's definitions
    install_torch(session)
    install_all(session, *requirements)
    out = ROOT / BENCH_RESULTS
    out.mkdir(exist_ok=True)
    failed = []
    for script in scripts:
        try:
            session.run("python", script.relative_to(ROOT).as_posix(), env={"KEEL_BENCH_DIR": str(out)})
        except CommandFailed:
            failed.append(script.relative_to(ROOT).as_posix())
    if failed:
        session.error(f"benchmarks failed: {', '.join(failed)}")
    session.log(f"results in {out.relative_to(ROOT)}/")


@nox.session(python=PYTHON, reuse_venv=True)
def gpu(session: nox.Session) -> None:
    """GPU tests and every experiment's tiny run under DeepSpeed stages 2 and 3 (skips without CUDA)."""
    if shutil.which("nvidia-smi") is None:
        session.skip("no CUDA device: nvidia-smi not found")
    install_torch(session)
    if not cuda_available(session):
        session.skip("no CUDA device: torch.cuda.is_available() is False in this venv")
    install_all(session)
    test_dirs = ["tests", *(f"{p.path}/tests" for p in PACKAGES if (ROOT / p.path / "tests").is_dir())]
    failed = []
    try:
        # 5: no test carries the gpu marker yet, which is not a failure.
        session.run("pytest", "-m", "gpu", *test_dirs, success_codes=[0, 5])
    except CommandFailed:
        failed.append("pytest -m gpu")
    names = [e for e in experiments(ROOT) if not session.posargs or any(f in e for f in session.posargs)]
    for name in names:
        for strategy in DEEPSPEED_STRATEGIES:
            overrides = ["trainer.accelerator=gpu", "trainer.devices=1", f"trainer.strategy={strategy}"]
            try:
                session.run("keel", "run", name, "--tiny", *overrides)
            except CommandFailed:
                failed.append(f"{name} ({strategy})")
    if failed:
        session.error(f"failed on GPU: {', '.join(failed)}")


@nox.session(python=PYTHON, reuse_venv=True)
def typecheck(session: nox.Session) -> None:
    """Mypy over every package's src/ (not part of CI yet)."""
    install_torch(session)
    install_all(session, "mypy")
    sources = [f"{p.path}/src" for p in PACKAGES]
    session.run("mypy", *sources, *session.posargs, env={"MYPYPATH": os.pathsep.join(sources)})
