"""The noxfile finds every package and resolves local keel dependencies to their folders."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def noxfile() -> ModuleType:
    pytest.importorskip("nox", reason="the noxfile imports nox (the integration session installs it)")
    spec = importlib.util.spec_from_file_location("keel_noxfile", ROOT / "noxfile.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PACKAGES", raising=False)  # the noxfile narrows its package list by it on import
        patch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return module


def write_package(root: Path, folder: str, name: str, import_name: str, *, requires=(), extras=None) -> None:
    package = root / "packages" / folder
    (package / "src" / "keel" / import_name).mkdir(parents=True)
    (package / "src" / "keel" / import_name / "__init__.py").write_text("")
    optional = "".join(f"{group} = {list(reqs)!r}\n" for group, reqs in (extras or {}).items())
    (package / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [project]
            name = "{name}"
            version = "0.1.0"
            dependencies = {list(requires)!r}
            """
        )
        + (f"[project.optional-dependencies]\n{optional}" if optional else "")
    )


def test_discovers_core_in_this_repository(noxfile):
    packages = {p.folder: p for p in noxfile.discover_packages(ROOT)}

    core = packages["core"]
    assert core.name == "keel-core"
    assert core.import_name == "core"
    assert core.path == "packages/core"
    assert "test" in core.extras
    assert core.keel_requires == ()


def test_every_package_folder_is_discovered(noxfile):
    folders = {p.parent.name for p in (ROOT / "packages").glob("*/pyproject.toml")}

    assert {p.folder for p in noxfile.discover_packages(ROOT)} == folders


def test_every_keel_requirement_of_this_repository_resolves_to_a_folder(noxfile):
    packages = noxfile.discover_packages(ROOT)
    by_name = {p.name: p for p in packages}

    for package in packages:
        for name in package.keel_requires:
            assert name in by_name, f"{package.name} requires {name}, which is no folder under packages/"
        if package.folder != "core":
            assert by_name["keel-core"] in noxfile.keel_dependencies(package, packages)


def test_keel_core_requirement_maps_to_packages_core(noxfile, tmp_path):
    write_package(tmp_path, "core", "keel-core", "core", requires=["torch>=2.4"], extras={"test": ["pytest"]})
    write_package(tmp_path, "3d-vision", "keel-3d-vision", "vision3d", requires=["keel-core>=0.1", "numpy"])

    packages = {p.folder: p for p in noxfile.discover_packages(tmp_path)}
    vision = packages["3d-vision"]

    assert vision.import_name == "vision3d"
    assert vision.keel_requires == ("keel-core",)
    assert [p.path for p in noxfile.keel_dependencies(vision, list(packages.values()))] == ["packages/core"]
    assert noxfile.keel_dependencies(packages["core"], list(packages.values())) == []


def test_dependencies_are_transitive_ordered_and_read_from_extras(noxfile, tmp_path):
    write_package(tmp_path, "core", "keel_Core", "core")
    write_package(tmp_path, "language", "keel-language", "language", requires=["keel-core"])
    write_package(
        tmp_path, "multimodal", "keel-multimodal", "multimodal", extras={"text": ["keel-language[test]>=0.1"]}
    )

    packages = noxfile.discover_packages(tmp_path)
    multimodal = next(p for p in packages if p.folder == "multimodal")

    assert multimodal.extras == ("text",)
    assert [p.name for p in noxfile.keel_dependencies(multimodal, packages)] == ["keel-core", "keel-language"]


def test_unknown_keel_requirement_is_named(noxfile, tmp_path):
    write_package(tmp_path, "diffusion", "keel-diffusion", "diffusion", requires=["keel-core"])
    packages = noxfile.discover_packages(tmp_path)

    with pytest.raises(ValueError, match="keel-diffusion requires keel-core, which is no folder"):
        noxfile.keel_dependencies(packages[0], packages)


def test_package_without_a_module_under_the_namespace_is_rejected(noxfile, tmp_path):
    (tmp_path / "packages" / "broken").mkdir(parents=True)
    (tmp_path / "packages" / "broken" / "pyproject.toml").write_text('[project]\nname = "keel-broken"\n')

    with pytest.raises(ValueError, match=r"packages/broken/pyproject.toml: expected exactly one src/keel/"):
        noxfile.discover_packages(tmp_path)


def test_packages_env_var_narrows_by_folder_or_distribution_name(noxfile, tmp_path):
    write_package(tmp_path, "core", "keel-core", "core")
    write_package(tmp_path, "code-models", "keel-code-models", "code_models", requires=["keel-core"])
    write_package(tmp_path, "diffusion", "keel-diffusion", "diffusion", requires=["keel-core"])
    packages = noxfile.discover_packages(tmp_path)

    assert noxfile.select_packages(packages, None) == packages
    assert [p.folder for p in noxfile.select_packages(packages, "diffusion, keel-code-models")] == [
        "code-models",
        "diffusion",
    ]
    with pytest.raises(ValueError, match="PACKAGES names robotics; known: code-models, core, diffusion"):
        noxfile.select_packages(packages, "core,robotics")


def test_benchmarks_match_by_name_or_package(noxfile, tmp_path):
    for relative in ["core/benchmarks/overhead.py", "core/benchmarks/_common.py", "diffusion/benchmarks/sampler.py"]:
        (tmp_path / "packages" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "packages" / relative).write_text("")

    def names(*filters):
        return [p.name for p in noxfile.benchmark_scripts(tmp_path, filters)]

    assert names() == ["overhead.py", "sampler.py"]
    assert names("overhead") == ["overhead.py"]
    assert names("diffusion") == ["sampler.py"]
    assert names("nothing") == []


def test_experiments_are_folders_with_a_config_at_any_depth(noxfile, tmp_path):
    for folder in ["quickstart", "diffusion/nuwa_xl", "diffusion"]:
        (tmp_path / "experiments" / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / "experiments" / "quickstart" / "config.yaml").write_text("")
    (tmp_path / "experiments" / "diffusion" / "nuwa_xl" / "config.yaml").write_text("")

    assert noxfile.experiments(tmp_path) == ["diffusion/nuwa_xl", "quickstart"]
