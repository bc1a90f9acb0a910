"""What every `bench` command shares, the built-in ones (bench/cli.py) and those a plugin registers.

A plugin adds a command with ``@register("command", "name")`` on a typer command function (its
docstring is the help); bench/cli.py adds every registered command to the app at startup. A plugin
imports these helpers from here, never from ``bench.cli`` (which runs as ``__main__`` under
``python3 -m bench.cli``).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer

from . import registry
from .data import ENV_VAR
from .errors import BenchError

# only the project's own error types are user errors (one line, exit 2); a bug keeps its traceback
USER_ERRORS = (BenchError,)

PluginsOpt = typer.Option(None, "--plugins", metavar="FILE.py",
                          help="A .py file that registers plugins (repeatable); the file is executed.")
DataDirOpt = typer.Option(
    None, "--data-dir", envvar=ENV_VAR, metavar="FOLDER", help=f"Benchmark data folder (also ${ENV_VAR}; default: the data cache, then ../shared/data, then a fetch)."
)


def command_line(ctx: typer.Context) -> str:
    """The invocation, rebuilt from the parsed options (what a record names as its command)."""
    parts = ["bench", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or value == [] or value is False:
            continue
        flag = max(param.opts, key=len)
        if value is True:
            parts.append(flag)
        else:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                parts += [flag, str(v)]
    return shlex.join(parts)


def fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2)


def load_plugins(files: Optional[List[Path]]) -> None:
    for f in files or []:
        registry.load_plugin_file(f)


def add_registered_commands(app: typer.Typer) -> None:
    """Add every command a built-in plugin registered (``@register("command", name)``) to ``app``."""
    for entry in registry.entries("command"):
        app.command(entry.name)(entry.obj)
