"""The shipped deployment files: etc/parsec.env parses into a valid configuration and documents
every variable with its true default; the systemd units (parsec.service, and the
parsec.socket + parsec@.service pair) pass `systemd-analyze verify`, carry the hardening and
the operations settings, and their install notes can be followed as written."""

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
SOCKET_FILE = REPO / "systemd" / "parsec.socket"
INSTANCE_FILE = REPO / "systemd" / "parsec@.service"
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


def _for_this_machine(tmp_path: Path, unit: Path, name: str | None = None) -> Path:
    # `verify` checks that ExecStart's binary exists: point it at this venv's twistd.
    text = unit.read_text(encoding="utf-8")
    assert "ExecStart=/opt/parsec/venv/bin/twistd --nodaemon --pidfile= parsec" in text
    copy = tmp_path / (name or unit.name)
    copy.write_text(text.replace("/opt/parsec/venv/bin/twistd", TWISTD), encoding="utf-8")
    return copy


HARDENING = (
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
)
OPERATIONS = (
    "EnvironmentFile=/etc/parsec/parsec.env",
    "Type=notify",
    "NotifyAccess=main",
    "ExecReload=/bin/kill -HUP $MAINPID",
    "KillSignal=SIGTERM",
    "LimitNOFILE=65536",
)


@pytest.mark.parametrize("unit", [UNIT_FILE, INSTANCE_FILE], ids=lambda unit: unit.name)
def test_unit_file_essentials(unit: Path) -> None:
    text = unit.read_text(encoding="utf-8")
    for line in (*HARDENING, *OPERATIONS):
        assert f"\n{line}\n" in text, line


def test_socket_and_instances_agree() -> None:
    socket_text = SOCKET_FILE.read_text(encoding="utf-8")
    instance = INSTANCE_FILE.read_text(encoding="utf-8")
    assert "\nFileDescriptorName=parsec\n" in socket_text
    assert "\nService=parsec@1.service\n" in socket_text
    assert "\nSockets=parsec.socket\n" in instance and "\nRequires=parsec.socket\n" in instance
    assert "parsec --listen systemd:domain=INET:name=parsec\n" in instance


def test_install_notes_can_be_followed() -> None:
    """Every repository file they install exists; /etc/parsec is created before it is written
    to; no `pip install` of a package that is not published."""
    for unit in (UNIT_FILE, SOCKET_FILE, INSTANCE_FILE):
        notes = "\n".join(line[1:].strip() for line in unit.read_text(encoding="utf-8").splitlines() if line.startswith("#"))
        for path in re.findall(r"(?<![/\w])((?:etc|systemd)/[\w.@-]+)", notes):
            assert (REPO / path).is_file(), (unit.name, path)
        assert "pip install parsec-twisted" not in notes
    notes = UNIT_FILE.read_text(encoding="utf-8")
    create = notes.index("install -d -m 0750 -o root -g parsec /etc/parsec\n")
    assert create < notes.index("etc/parsec.env /etc/parsec/parsec.env")
    assert notes.index("useradd --system") < create  # the group exists by then
    assert "/opt/parsec/venv/bin/pip install . " in notes  # this repository, from its clone


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    units = [
        _for_this_machine(tmp_path, UNIT_FILE),
        _for_this_machine(tmp_path, INSTANCE_FILE, "parsec@1.service"),
    ]
    socket_unit = tmp_path / "parsec.socket"
    socket_unit.write_text(SOCKET_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    for group in ([units[0]], [socket_unit, units[1]]):
        result = subprocess.run(
            ["systemd-analyze", "verify", *map(str, group)],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        # Problems with *our* units are reported as "<path>:<line>: ..." or "parsec...: ...";
        # other lines are about the host's own units (containers have odd ones).
        ours = [line for line in result.stderr.splitlines() if str(tmp_path) in line or line.startswith("parsec")]
        assert ours == [], result.stderr
        assert result.returncode == 0, result.stderr
