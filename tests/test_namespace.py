"""The `keel` namespace: PEP 420, no `keel/__init__.py` in any package, every package importable."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))


def test_no_keel_init_anywhere() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "packages").glob("*/src/keel/__init__.py")]
    assert not offenders, f"keel is a PEP 420 namespace; remove {offenders}"


def test_keel_is_a_namespace_package() -> None:
    import keel

    assert getattr(keel, "__file__", None) is None, "keel must not have an __init__.py"
    assert type(keel.__path__).__name__ == "_NamespacePath"


@pytest.mark.parametrize("package", PACKAGES, ids=[p.name for p in PACKAGES])
def test_package_layout_and_import(package: Path) -> None:
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    assert project["name"].startswith("keel-")
    assert project["requires-python"].startswith(">=3.11")
    modules = [p for p in (package / "src" / "keel").iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    assert len(modules) == 1, f"{package.name} must hold exactly one keel.<name> module, found {modules}"
    importlib.import_module(f"keel.{modules[0].name}")
    for dependency in project.get("dependencies", []):
        assert "==" not in dependency, f"{project['name']}: pin exact versions in constraints.txt, not {dependency}"
