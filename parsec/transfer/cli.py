"""`parsec backend import` and `parsec backend export`: options, help, exit status.

Same conventions as the other subcommands (parsec.options): GNU-style options, `--help`,
`Error: <message>` on standard error and exit status 1 for a bad option, a refusal, a
failure or a verification difference; 0 once the target is committed. DSNs are never
echoed (they may hold a password). Unlike `run` and `migrate`, these one-shot commands do
not read PARSEC_CMD_ARGS (meant for the server's options); `--db` reads PARSEC_DB, the
server's own database.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from parsec.config import ConfigError
from parsec.options import HelpRequested, Option, debug_requested, parse_bool, report_error

# The tokenizer and the resolution order of the other subcommands (same error messages).
from parsec.options.parser import _resolve, _tokenize

__all__ = ["COMMANDS", "main", "render_help"]


def _dsn(raw: str) -> str:
    if raw.startswith(("postgresql://", "postgres://")):
        return raw
    raise ValueError("Must start with `postgresql://` or `postgres://`")


_URL = "`postgresql://<user>:<password>@<host>:<port>/<db>`"
_OVERWRITE = (
    "Replace the content of a target database that already holds rows (they are deleted in the same "
    "transaction, so a failed run leaves them in place); without it such a target is refused"
)
_DEBUG = "Show the traceback of an error"

IMPORT_OPTIONS: tuple[Option, ...] = (
    Option("--from", "source", f"Database of the upstream server (parsec-cloud 2.10.x) to read, {_URL}; it is "
           "only read", _dsn, required=True, metavar="URL", secret=True),
    Option("--db", "target", f"This server's database to fill, {_URL}; an empty database first gets the "
           "schema `parsec backend migrate` would create", _dsn, env=("PARSEC_DB",), required=True,
           metavar="URL", secret=True),
    Option("--overwrite", "overwrite", _OVERWRITE, flag=True, default=False),
    Option("--debug", "debug", _DEBUG, parse_bool, env=("PARSEC_DEBUG",), default=False, flag=True),
)

EXPORT_OPTIONS: tuple[Option, ...] = (
    Option("--db", "source", f"This server's database to read, {_URL}; it is only read", _dsn,
           env=("PARSEC_DB",), required=True, metavar="URL", secret=True),
    Option("--to", "target", f"Database of the upstream server (parsec-cloud 2.10.x) to fill, {_URL}; create "
           "its schema first with the upstream server's own `parsec backend migrate`", _dsn, required=True,
           metavar="URL", secret=True),
    Option("--overwrite", "overwrite", _OVERWRITE, flag=True, default=False),
    Option("--debug", "debug", _DEBUG, parse_bool, env=("PARSEC_DEBUG",), default=False, flag=True),
)

_DESCRIPTIONS = {
    "import": (
        "Copy a database of the upstream Parsec server (parsec-cloud 2.10.x) into this server's database: "
        "organizations, users, devices, certificates, realms, roles, every vlob version, blocks metadata "
        "(and block data stored by the upstream POSTGRESQL blockstore), messages, invitations and PKI "
        "enrollments. Blocks stored in S3, Swift or a RAID of them stay where they are: give this server "
        "the same --blockstore configuration.",
        "Stop the upstream server first. Everything is written in one transaction, verified against the "
        "source (row counts and checksums), and committed only if the verification agrees.",
    ),
    "export": (
        "Copy this server's database into an empty database of the upstream Parsec server "
        "(parsec-cloud 2.10.x), to go back to it.",
        "Stop this server first. Everything is written in one transaction, verified against the source "
        "(row counts and checksums), and committed only if the verification agrees.",
    ),
}

COMMANDS = {"import": IMPORT_OPTIONS, "export": EXPORT_OPTIONS}
SUMMARIES = {
    "import": "Import a database of the upstream server (parsec-cloud 2.10).",
    "export": "Export to a database of the upstream server (parsec-cloud 2.10).",
}


def render_help(command: str, width: int = 79) -> str:
    lines = [f"Usage: parsec backend {command} [OPTIONS]", ""]
    for paragraph in _DESCRIPTIONS[command]:
        lines.extend(textwrap.wrap(paragraph, width, initial_indent="  ", subsequent_indent="  ",
                                   break_on_hyphens=False))
        lines.append("")
    lines.append("Options:")
    indent = " " * 8
    for option in COMMANDS[command]:
        lines.append(f"  {option.name}" if option.flag else f"  {option.name} {option.metavar}")
        lines.extend(textwrap.wrap(option.help, width, initial_indent=indent, subsequent_indent=indent,
                                   break_on_hyphens=False))
        facts = []
        if option.env:
            facts.append(f"env var: {', '.join(option.env)}")
        if option.required:
            facts.append("required")
        if facts:
            lines.append(f"{indent}[{'; '.join(facts)}]")
    lines.append("  --help")
    lines.append(f"{indent}Show this message and exit.")
    return "\n".join(lines) + "\n"


def parse_args(command: str, argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, Any]:
    """Typed option values. Raises ConfigError (naming the option) or HelpRequested."""
    table = COMMANDS[command]
    return _resolve(table, _tokenize(table, list(argv)), environ)


def main(command: str, argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """`parsec backend import|export ARGS`; returns the exit status."""
    debug = debug_requested(argv, {key: value for key, value in environ.items() if key != "PARSEC_CMD_ARGS"})
    try:
        values = parse_args(command, argv, environ)
    except HelpRequested:
        sys.stdout.write(render_help(command))
        return 0
    except ConfigError as exc:
        report_error(exc, debug=debug)
        return 1
    debug = debug or bool(values["debug"])
    # Imported once the options are valid (psycopg2, the storage layer).
    from parsec.transfer.pgcopy import TransferError
    from parsec.transfer.run import run_export, run_import

    run = run_import if command == "import" else run_export
    try:
        result = run(values["source"], values["target"], overwrite=bool(values["overwrite"]), out=sys.stdout)
    except TransferError as exc:
        sys.stdout.flush()
        report_error(exc, debug=debug)
        return 1
    except KeyboardInterrupt:
        sys.stdout.flush()
        sys.stderr.write("Error: interrupted; the target database was left as it was\n")
        return 1
    if not result.ok:
        sys.stderr.write(f"Error: verification failed; the {command} was cancelled\n")
        return 1
    return 0
