"""The layers (README.rst, Architecture) as the imports of parsec/ show them:

    parsec.api (wire codec and validation, no I/O)
      -> parsec.backend (business rules, storage-agnostic; commands and their reply statuses)
        -> parsec.storage.{memory,postgresql}, parsec.blockstore (behind typed interfaces)
    parsec.web on top.

A storage imports from parsec.backend only the contract it implements: the interfaces and
errors (storage), the records (models), the events (bus), and the rules and state machine the
interfaces tell it to apply (realm_rules, conduit). Only the command layer knows reply statuses.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PARSEC = Path(__file__).resolve().parents[1] / "parsec"

STORAGE_CONTRACT = {
    "parsec.backend.storage",
    "parsec.backend.models",
    "parsec.backend.bus",
    "parsec.backend.realm_rules",
    "parsec.backend.conduit",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PARSEC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every parsec module `path` imports (anywhere in the file), `from parsec.x import y`
    counted as parsec.x.y when that is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("parsec"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("parsec"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PARSEC.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    PARSEC.parent / candidate.replace(".", "/") / "__init__.py"
                ).exists()
                found.add(candidate if is_module else node.module)
    return found


def _modules(package: str) -> list[tuple[str, set[str]]]:
    root = PARSEC.parent / package.replace(".", "/")
    return [(_module_name(path), _imports(path)) for path in sorted(root.rglob("*.py"))]


def _under(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_the_modules_are_found() -> None:
    names = [name for name, _ in _modules("parsec.storage")]
    assert "parsec.storage.postgresql.vlob" in names and "parsec.storage.memory.realm" in names


@pytest.mark.parametrize(("module", "imports"), _modules("parsec.api"))
def test_api_imports_nothing_above_it(module: str, imports: set[str]) -> None:
    assert {name for name in imports if not _under(name, "parsec.api", "parsec.limits")} == set()


@pytest.mark.parametrize(("module", "imports"), _modules("parsec.backend"))
def test_backend_imports_no_storage_and_no_web(module: str, imports: set[str]) -> None:
    forbidden = {
        name
        for name in imports
        if _under(name, "parsec.storage", "parsec.web", "parsec.service", "parsec.cli", "parsec.tap")
        or (_under(name, "parsec.blockstore") and name != "parsec.blockstore.base")
    }
    assert forbidden == set()


@pytest.mark.parametrize(("module", "imports"), _modules("parsec.storage") + _modules("parsec.blockstore"))
def test_storages_import_only_the_contract_of_the_backend(module: str, imports: set[str]) -> None:
    backend = {name for name in imports if _under(name, "parsec.backend")}
    assert backend - STORAGE_CONTRACT == set()
    assert {name for name in imports if _under(name, "parsec.web", "parsec.service")} == set()


def test_reply_statuses_live_in_the_command_layer() -> None:
    """`error_reply` and the certificate statuses: in parsec.backend.command, nowhere else."""
    for path in sorted(PARSEC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        if _module_name(path) != "parsec.backend.command":
            assert not defined & {"error_reply", "certificate_error_reply"}, path
    source = (PARSEC / "api" / "certificates.py").read_text(encoding="utf-8")
    for status in ("invalid_certification", "invalid_data", "bad_timestamp", "bad_user_id", "not_allowed"):
        assert f'"{status}"' not in source, status


def test_one_ballpark() -> None:
    """The ballpark constants and check are defined once (parsec.api.ballpark)."""
    for path in sorted(PARSEC.rglob("*.py")):
        if _module_name(path) == "parsec.api.ballpark":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assigned = {
            target.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert not assigned & {"BALLPARK_CLIENT_EARLY_OFFSET", "BALLPARK_CLIENT_LATE_OFFSET"}, path
        assert not {name for name in functions if "ballpark" in name}, path
