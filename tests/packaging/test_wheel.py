"""Packaging: the wheel ships the twistd plugin the way Twisted finds it, and `twistd --help`
lists `parsec` after each of the three ways to install: a regular install, an editable install
in `editable_mode=compat` (the mode README.rst and tox.ini give for development), and the
built wheel.

Each install goes into a fresh virtualenv that sees this test environment's dependencies
(Twisted, Autobahn, ...) through symbolic links, but not its copy of this project: so the
`parsec` that twistd lists can only come from the install under test, and no download is
needed. The builds run on a copy of the repository, never in the checkout itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300
# Top-level entries of a checkout that are not part of the source tree.
_NOT_SOURCE = {".git", ".tox", ".venv", ".client-venv", ".tools-venv", "build", "dist"}

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("source") / "parsec-twisted"

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith(".egg-info") or n == "dropin.cache"}
        if Path(directory) == REPO:
            skipped |= {n for n in names if n in _NOT_SOURCE}
        return skipped

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def wheel(source_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, source_copy)
    (built,) = out.glob("parsec_twisted-*.whl")
    return built


def _is_ours(name: str) -> bool:
    lowered = name.lower()
    return (
        lowered == "parsec"
        or lowered.startswith(("parsec_twisted", "__editable__.parsec_twisted", "parsec-twisted"))
    )


def _link_dependencies(site: Path) -> None:
    """Make `site` see every package of this environment except this project (and its plugin
    file inside the shared twisted/plugins/ folder)."""
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        if _is_ours(entry.name) or entry.name == "twisted":
            continue
        if entry.suffix == ".pth" and "parsec" in entry.read_text(errors="replace"):
            continue
        target = site / entry.name
        if not target.exists():
            target.symlink_to(entry)
    twisted = site / "twisted"
    twisted.mkdir()
    for entry in (ours / "twisted").iterdir():
        if entry.name != "plugins":
            (twisted / entry.name).symlink_to(entry)
    plugins = twisted / "plugins"
    plugins.mkdir()
    for entry in (ours / "twisted" / "plugins").iterdir():
        if entry.name not in ("parsec_plugin.py", "dropin.cache", "__pycache__"):
            (plugins / entry.name).symlink_to(entry)


def _venv(root: Path) -> tuple[Path, Path]:
    _run(sys.executable, "-m", "venv", "--without-pip", root)
    python = root / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    _link_dependencies(site)
    return python, site


def _pip_install(python: Path, *args: str | Path) -> None:
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-build-isolation", *args)


def _twistd_help(python: Path) -> str:
    script = "import sys; sys.argv = ['twistd', '--help']; from twisted.scripts.twistd import run; run()"
    return _run(python, "-c", script, cwd=python.parent)


def _origins(python: Path) -> tuple[Path, Path]:
    script = (
        "import parsec, twisted.plugins.parsec_plugin as p; "
        "print(parsec.__file__); print(p.__file__)"
    )
    package, plugin = _run(python, "-c", script, cwd=python.parent).split()
    return Path(package).resolve(), Path(plugin).resolve()


def test_wheel_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/parsec_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.startswith("twisted/") and n != "twisted/plugins/parsec_plugin.py"]
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    assert not [n for n in names if n.endswith(("dropin.cache", ".pyc"))]
    assert "parsec/__init__.py" in names
    # Data the server reads at run time.
    assert any(n.startswith("parsec/storage/postgresql/migrations/") and n.endswith(".sql") for n in names)
    assert any(n.startswith("parsec/templates/") for n in names)


def test_twistd_lists_parsec_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    python, site = _venv(tmp_path / "venv")
    _pip_install(python, wheel)
    assert "parsec" in _twistd_help(python).split()
    package, plugin = _origins(python)
    assert package.is_relative_to(site.resolve())
    assert plugin == (site / "twisted" / "plugins" / "parsec_plugin.py").resolve()


def test_twistd_lists_parsec_after_a_regular_install(source_copy: Path, tmp_path: Path) -> None:
    python, site = _venv(tmp_path / "venv")
    _pip_install(python, source_copy)
    assert "parsec" in _twistd_help(python).split()
    package, _ = _origins(python)
    assert package.is_relative_to(site.resolve())


def test_twistd_lists_parsec_after_an_editable_compat_install(source_copy: Path, tmp_path: Path) -> None:
    python, _ = _venv(tmp_path / "venv")
    _pip_install(python, "-e", source_copy, "--config-settings", "editable_mode=compat")
    assert "parsec" in _twistd_help(python).split()
    package, plugin = _origins(python)
    assert package.is_relative_to(source_copy.resolve())
    assert plugin == (source_copy / "twisted" / "plugins" / "parsec_plugin.py").resolve()


def test_lower_bounds_are_the_oldest_constraints(wheel: Path) -> None:
    # `tox -e oldest` runs the suite on tests/oldest-constraints.txt: each lower bound the
    # wheel declares (its own requirements and the sentry extra) must be what is pinned there.
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    constraints_file = Path(__file__).parents[1] / "oldest-constraints.txt"
    pinned = {}
    for line in constraints_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pinned[canonicalize_name(name)] = Version(version)
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    checked = set()
    for line in lines:
        if not line.startswith("Requires-Dist: "):
            continue
        requirement = Requirement(line.removeprefix("Requires-Dist: "))
        marker = str(requirement.marker or "")
        if marker and 'extra == "sentry"' not in marker:
            continue  # the test and lint extras are tools, not what the server runs on
        name = canonicalize_name(requirement.name)
        (lower,) = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
        assert name in pinned, f"{name} has no pin in {constraints_file.name}"
        version = pinned[name]
        assert version in requirement.specifier, (name, str(version), str(requirement.specifier))
        assert version.release[: len(lower.release)] == lower.release, (name, str(version), str(lower))
        checked.add(name)
    assert {"twisted", "autobahn", "pyopenssl", "psycopg", "sentry-sdk"} <= checked
