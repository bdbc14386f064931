"""The shipped deployment files: etc/parsec.env parses into a valid configuration and documents
every variable with its true default; systemd/parsec.service passes `systemd-analyze verify`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from parsec.config import BackendAddr
from parsec.options import MIGRATE_OPTIONS, RUN_OPTIONS, parse_migrate_args, parse_run_args

from .conftest import REPO, SUBPROCESS_TIMEOUT, TWISTD

ENV_FILE = REPO / "etc" / "parsec.env"
UNIT_FILE = REPO / "systemd" / "parsec.service"
_ASSIGNMENT = re.compile(r"^(#)?([A-Z][A-Z0-9_]*)=(.*)$")


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def read_env_file(path: Path, *, uncomment: bool = False) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile reads them (`#` lines are comments);
    with `uncomment`, the `#PARSEC_X=...` lines (documented defaults) count too."""
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if match is None:
            continue
        commented, name, value = match.groups()
        if commented and not uncomment:
            continue
        if commented and name in env:
            continue  # an active line wins over the documented default
        env[name] = _unquote(value)
    return env


def test_env_file_gives_a_valid_config() -> None:
    env = read_env_file(ENV_FILE)
    assert set(env) == {
        "PARSEC_DB",
        "PARSEC_BLOCKSTORE",
        "PARSEC_ADMINISTRATION_TOKEN",
        "PARSEC_BACKEND_ADDR",
        "PARSEC_EMAIL_HOST",
        "PARSEC_EMAIL_SENDER",
    }
    config = parse_run_args([], env)
    assert config.backend.db_type == "POSTGRESQL"
    assert config.backend.blockstore.type == "POSTGRESQL"
    assert config.backend.backend_addr == BackendAddr("parsec.example.com")
    assert config.backend.email.host == "smtp.example.com"
    assert config.log.level == "WARNING"
    # `parsec backend migrate` works from the same file.
    assert parse_migrate_args([], env).db_url == env["PARSEC_DB"]


def test_env_file_documents_every_variable() -> None:
    documented = set(read_env_file(ENV_FILE, uncomment=True))
    expected = {env for option in (*RUN_OPTIONS, *MIGRATE_OPTIONS) for env in option.env} | {
        "PARSEC_CMD_ARGS"
    }
    assert documented == expected


def test_env_file_defaults_are_the_real_defaults() -> None:
    """Uncommenting every documented default must not change the configuration."""
    active = parse_run_args([], read_env_file(ENV_FILE))
    with_defaults = parse_run_args([], read_env_file(ENV_FILE, uncomment=True))
    assert with_defaults == active


def _unit_for_this_machine(tmp_path: Path) -> Path:
    # `verify` checks that ExecStart's binary exists: point it at this venv's twistd.
    text = UNIT_FILE.read_text(encoding="utf-8")
    assert "ExecStart=/opt/parsec/venv/bin/twistd --nodaemon --pidfile= parsec\n" in text
    unit = tmp_path / "parsec.service"
    unit.write_text(text.replace("/opt/parsec/venv/bin/twistd", TWISTD), encoding="utf-8")
    return unit


def test_unit_file_essentials() -> None:
    text = UNIT_FILE.read_text(encoding="utf-8")
    for line in (
        "EnvironmentFile=/etc/parsec/parsec.env",
        "User=parsec",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        "PrivateDevices=true",
        "NoNewPrivileges=true",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
        "MemoryDenyWriteExecute=false",
        "LockPersonality=true",
        "ProtectKernelTunables=true",
        "ProtectKernelModules=true",
    ):
        assert f"\n{line}\n" in text, line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _unit_for_this_machine(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    # Problems with *our* unit are reported as "<path>:<line>: ..." or "parsec.service: ...";
    # other lines are about the host's own units (containers have odd ones).
    ours = [
        line for line in result.stderr.splitlines() if str(unit) in line or line.startswith("parsec.service")
    ]
    assert ours == [], result.stderr
    assert result.returncode == 0, result.stderr
