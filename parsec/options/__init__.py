"""Command line and environment parsing, shared by `parsec backend ...` and `twistd parsec`.

Both front-ends hand their raw argument list to :func:`parse_run_args` (or
:func:`parse_migrate_args`), so the two accept exactly the same options, read the same
environment variables and report the same errors. The options are described once, as data,
in :data:`RUN_OPTIONS` / :data:`MIGRATE_OPTIONS`; the help text is rendered from that table.

The package: :mod:`parsec.options.table` (the options, as data, with their value parsers),
:mod:`parsec.options.parser` (tokenizer, resolution order, building the configuration) and
:mod:`parsec.options.render` (help text, start-up line). Callers import from here.
"""

from __future__ import annotations

from parsec.config import ConfigError, MigrateConfig
from parsec.options.parser import (
    HelpRequested,
    VersionRequested,
    debug_requested,
    expand_cmd_args,
    parse_migrate_args,
    parse_run_args,
    report_error,
)
from parsec.options.render import render_help, startup_line, version_line
from parsec.options.table import CMD_ARGS_ENV, MIGRATE_OPTIONS, RUN_OPTIONS, Option, parse_bool

__all__ = [
    "CMD_ARGS_ENV",
    "MIGRATE_OPTIONS",
    "RUN_OPTIONS",
    "ConfigError",
    "HelpRequested",
    "VersionRequested",
    "MigrateConfig",
    "Option",
    "debug_requested",
    "expand_cmd_args",
    "parse_bool",
    "parse_migrate_args",
    "parse_run_args",
    "render_help",
    "report_error",
    "startup_line",
    "version_line",
]
