"""The project's own error types. The CLI shows these as one-line user errors (exit 2); anything
else, a bug inside a plugin included, keeps its traceback."""

from __future__ import annotations


class BenchError(Exception):
    """Base of every error a user can fix (bad input, missing data, a setting that cannot work)."""


class ContractError(RuntimeError):
    """A plugin broke the defense or attack contract (a bug in the plugin, not the user's input)."""
