"""`--help` of every front-end lists every option with its environment variable; the twistd
plugin is visible (an import error would hide it silently, README.rst, Installation)."""

from __future__ import annotations

import pytest

from parsec import __version__
from parsec.options import MIGRATE_OPTIONS, RUN_OPTIONS, Option, render_help

from .conftest import PARSEC, TWISTD, run_many


def _assert_lists_every_option(text: str, table: tuple[Option, ...]) -> None:
    for option in table:
        for name in (option.name, *option.aliases, *([option.short] if option.short else [])):
            assert name in text, name
        for env in option.env:
            assert env in text, env
    assert "PARSEC_CMD_ARGS" in text


def test_render_help_lists_everything() -> None:
    _assert_lists_every_option(render_help("run"), RUN_OPTIONS)
    _assert_lists_every_option(render_help("migrate"), MIGRATE_OPTIONS)
    text = render_help("run")
    assert "default: 6777" in text
    assert "default: WARNING" in text
    # Every line fits a terminal except those naming long env vars with their default.
    assert all(len(line) <= 100 for line in text.splitlines())


def test_help_shows_no_secret_default() -> None:
    text = render_help("run")
    assert "s3cr3t" in text  # documented as the --dev value ...
    token_block = text.split("--administration-token TOKEN", 1)[1].split("\n  -", 1)[0]
    assert "default" not in token_block  # ... but never as a default


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    cwd = tmp_path_factory.mktemp("help")
    commands = {
        "twistd": [TWISTD, "--help"],
        "twistd parsec": [TWISTD, "parsec", "--help"],
        "run": [PARSEC, "backend", "run", "--help"],
        "migrate": [PARSEC, "backend", "migrate", "--help"],
        "main": [PARSEC, "--help"],
        "backend": [PARSEC, "backend", "--help"],
        "version": [PARSEC, "--version"],
        "backend --version": [PARSEC, "backend", "--version"],
        "run --version": [PARSEC, "backend", "run", "--version"],
        "migrate --version": [PARSEC, "backend", "migrate", "--version"],
        "twistd parsec --version": [TWISTD, "parsec", "--version"],
        # Even with options that would not start a server: the version is answered first.
        "twistd parsec --dev --version": [TWISTD, "-n", "parsec", "--dev", "--version"],
    }
    results = run_many([(argv, {}) for argv in commands.values()], cwd=cwd)
    return dict(zip(commands, results, strict=True))


def test_twistd_lists_the_plugin(outputs: dict) -> None:
    result = outputs["twistd"]
    assert result.returncode == 0
    assert any(line.split()[:1] == ["parsec"] for line in result.stdout.splitlines()), result.stdout
    assert "Traceback" not in result.stderr and "Unhandled Error" not in result.stderr


@pytest.mark.parametrize("key, prog", [("twistd parsec", "twistd parsec"), ("run", "parsec backend run")])
def test_run_help(outputs: dict, key: str, prog: str) -> None:
    result = outputs[key]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: {prog} [OPTIONS]")
    _assert_lists_every_option(result.stdout, RUN_OPTIONS)
    assert result.stderr == ""


def test_migrate_help(outputs: dict) -> None:
    result = outputs["migrate"]
    assert result.returncode == 0
    _assert_lists_every_option(result.stdout, MIGRATE_OPTIONS)
    assert "--host" not in result.stdout


def test_main_help_and_version(outputs: dict) -> None:
    assert outputs["main"].returncode == 0 and "backend" in outputs["main"].stdout
    assert outputs["backend"].returncode == 0
    assert "run" in outputs["backend"].stdout and "migrate" in outputs["backend"].stdout
    assert outputs["version"].returncode == 0
    assert outputs["version"].stdout == f"parsec, version {__version__}\n"


@pytest.mark.parametrize(
    "key",
    [
        "backend --version",
        "run --version",
        "migrate --version",
        "twistd parsec --version",
        "twistd parsec --dev --version",
    ],
)
def test_version_on_every_front_end(outputs: dict, key: str) -> None:
    result = outputs[key]
    assert (result.returncode, result.stdout, result.stderr) == (0, f"parsec, version {__version__}\n", ""), result
