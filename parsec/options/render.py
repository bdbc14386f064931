"""What the options produce for a human: the start-up line and the `--help` text."""

from __future__ import annotations

import textwrap

from parsec import __version__
from parsec.config import ServerConfig
from parsec.options.table import CMD_ARGS_ENV, MIGRATE_OPTIONS, RUN_OPTIONS, Option

__all__ = ["render_help", "startup_line", "version_line"]

_DESCRIPTIONS = {
    "run": "Run the Parsec server.",
    "migrate": "Create or upgrade the PostgreSQL database schema (run it before the server).",
}


def version_line() -> str:
    """What `--version` prints, on every front end."""
    return f"parsec, version {__version__}\n"


def startup_line(config: ServerConfig) -> str:
    backend = config.backend
    addr = backend.backend_addr.to_url() if backend.backend_addr is not None else "none"
    return (
        f"Starting Parsec Backend on {config.listen.describe()} "
        f"(db={backend.db_type} "
        f"blockstore={backend.blockstore.type} "
        f"email={'MOCKED' if backend.email.is_mocked else 'SMTP'} "
        f"telemetry={'on' if config.log.sentry_dsn else 'off'} "
        f"backend_addr={addr})"
    )


def _format_default(option: Option) -> str | None:
    if option.required:
        return None
    if option.default_help is not None:
        return option.default_help
    if option.secret or option.default is None:
        return None
    if option.flag or isinstance(option.default, bool):
        return "on" if option.default else "off"
    return str(option.default)


def render_help(command: str = "run", prog: str | None = None, width: int = 79) -> str:
    """Help text of `parsec backend <command>` (also used by `twistd parsec --help`)."""
    table = RUN_OPTIONS if command == "run" else MIGRATE_OPTIONS
    prog = prog or f"parsec backend {command}"
    lines = [f"Usage: {prog} [OPTIONS]", ""]
    for paragraph in (
        _DESCRIPTIONS[command],
        "Every option can also be set through the environment variable shown with it "
        "(precedence: command line, then environment, then default). Boolean variables accept "
        "1/0, true/false, yes/no, on/off.",
        f"{CMD_ARGS_ENV}: extra options, split on whitespace, with $VAR / ${{VAR}} expanded, "
        "appended after the command line (so they win over it; --blockstore values accumulate).",
    ):
        lines.extend(
            textwrap.wrap(
                paragraph, width, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False
            )
        )
        lines.append("")
    lines.append("Options:")
    body_indent = " " * 8
    for option in table:
        names = ", ".join(filter(None, (option.short, option.name, *option.aliases)))
        head = f"  {names}" if option.flag else f"  {names} {option.metavar}"
        lines.append(head)
        lines.extend(
            textwrap.wrap(
                option.help,
                width,
                initial_indent=body_indent,
                subsequent_indent=body_indent,
                break_on_hyphens=False,
            )
        )
        facts = []
        if option.env:
            label = "env var" if len(option.env) == 1 else "env vars"
            facts.append(f"{label}: {', '.join(option.env)}")
        default = _format_default(option)
        if default is not None:
            facts.append(f"default: {default}")
        if option.required:
            facts.append("required")
        if option.multiple:
            facts.append("repeatable")
        if facts:
            lines.append(f"{body_indent}[{'; '.join(facts)}]")
    lines.append("  --version")
    lines.append(f"{body_indent}Show the version and exit.")
    lines.append("  --help")
    lines.append(f"{body_indent}Show this message and exit.")
    return "\n".join(lines) + "\n"
