"""One registry for every kind of plugin: attacks, defenses, datasets and backbones, and CLI commands.

A plugin registers itself in its own file with ``@register("defense", "name")``. A plugin that brings
its own ``bench`` command registers the typer command function with ``@register("command", "name")``
(its docstring is the help); bench/cli.py adds every registered command at startup. Nothing is
imported at ``import bench`` time: the built-in plugin packages (``attacks``, ``defenses`` and the
built-in datasets and backbones) are imported the first time the registry is queried, and a
user's own file is added with :func:`load_plugin_file` (the CLI's ``--plugins``).
"""

from __future__ import annotations

from .errors import BenchError

import difflib
import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# the kinds `bench list` shows; "command" is a CLI command a plugin brings (added to `bench` at startup)
PLUGIN_KINDS = ("attack", "defense", "dataset", "backbone")
KINDS = (*PLUGIN_KINDS, "command")

# Packages whose modules are imported on first use of the registry.
BUILTIN_PACKAGES = {
    "attack": ["attacks"],
    "defense": ["defenses"],
    "dataset": ["bench.data.datasets_builtin"],
    "backbone": ["bench.models.backbones"],
}


class PluginError(BenchError):
    """A plugin that cannot be loaded or registered (a missing optional dependency, a clash)."""


class UnknownNameError(BenchError, KeyError):
    """A name that no plugin of that kind registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    description: str
    source: str  # module that registered it


_ENTRIES: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
# built-in plugin modules that failed to import: kind -> {name guessed from the module: message}
_BROKEN: dict[str, dict[str, str]] = {k: {} for k in KINDS}
_builtins_loaded = False


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}")


def _first_line(doc: str | None) -> str:
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def register(kind: str, name: str, description: str | None = None) -> Callable[[Any], Any]:
    """Class (or function) decorator: ``@register("attack", "badnets")``."""
    _check_kind(kind)

    def deco(obj: Any) -> Any:
        existing = _ENTRIES[kind].get(name)
        source = getattr(obj, "__module__", "?")
        if existing is not None and existing.obj is not obj and existing.source != source:
            raise PluginError(
                f"{kind} {name!r} is registered twice: by {existing.source} and by {source}; "
                "rename one of them"
            )
        desc = description or _first_line(getattr(obj, "__doc__", None)) or "(no description)"
        _ENTRIES[kind][name] = Entry(kind, name, obj, desc, source)
        try:
            obj.registered_name = name
        except (AttributeError, TypeError):
            pass
        return obj

    return deco


def load_builtins() -> None:
    """Import every module of the built-in plugin packages (once).

    A module that fails to import (an optional dependency missing) fails alone: its plugin is listed
    as unavailable with the reason, and asking for it raises :class:`PluginError`; every other
    plugin keeps working.
    """
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for kind, packages in BUILTIN_PACKAGES.items():
        for pkg_name in packages:
            load_package(kind, pkg_name)


def load_package(kind: str, pkg_name: str) -> None:
    """Import every public module of a plugin package; a module that fails to import is recorded
    as unavailable (with the reason) instead of breaking the others."""
    pkg = importlib.import_module(pkg_name)
    if not hasattr(pkg, "__path__"):
        return
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{pkg_name}.{info.name}")
        except ImportError as e:
            missing = getattr(e, "name", None) or str(e)
            _BROKEN[kind][info.name.replace("_", "-")] = (
                f"unavailable: {pkg_name}/{info.name} needs {missing!r}, which is not installed "
                f"({e}); install it (python3 -m pip install {missing}) to use it"
            )


def load_plugin_file(path: str | Path) -> list[Entry]:
    """Import a user's plugin file; return the entries it registered."""
    load_builtins()
    path = Path(path)
    if not path.is_file():
        raise PluginError(f"plugin file {str(path)!r} does not exist; pass the path of a .py file")
    before = {k: dict(v) for k, v in _ENTRIES.items()}
    mod_name = f"bench_user_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
    if mod_name in sys.modules:
        return []
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import plugin file {str(path)!r}: not a Python module (give a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(mod_name, None)
        raise PluginError(f"plugin file {str(path)!r} has a syntax error at line {e.lineno}: {e.msg}; fix the file") from None
    except ImportError as e:
        sys.modules.pop(mod_name, None)
        raise PluginError(f"plugin file {str(path)!r} cannot import {getattr(e, 'name', None) or e}: {e}; "
                          "install the missing package or fix the import") from None
    added = [e for k in KINDS for n, e in _ENTRIES[k].items() if before[k].get(n) is not e]
    if not added:
        raise PluginError(
            f"plugin file {str(path)!r} registered nothing; decorate its class with "
            "@bench.register('defense', 'my-name') (or 'attack', 'dataset', 'backbone')"
        )
    return added


def entries(kind: str) -> list[Entry]:
    _check_kind(kind)
    load_builtins()
    return [_ENTRIES[kind][n] for n in sorted(_ENTRIES[kind])]


def unavailable(kind: str) -> dict[str, str]:
    """Built-in plugins of ``kind`` whose module failed to import: name -> reason."""
    _check_kind(kind)
    load_builtins()
    return dict(_BROKEN[kind])


def names(kind: str) -> list[str]:
    return [e.name for e in entries(kind)]


def has(kind: str, name: str) -> bool:
    _check_kind(kind)
    load_builtins()
    return name in _ENTRIES[kind]


def suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def get(kind: str, name: str) -> Any:
    """The registered object, or an error listing valid names with a 'did you mean'."""
    _check_kind(kind)
    load_builtins()
    try:
        return _ENTRIES[kind][name].obj
    except KeyError:
        if name in _BROKEN[kind]:
            raise PluginError(f"{kind} {name!r} is {_BROKEN[kind][name]}") from None
        valid = names(kind)
        own = (f". To use your own {kind}, register it in a .py file and pass --plugins my_{kind}.py"
               if kind in ("attack", "defense") else "")
        raise UnknownNameError(
            f"unknown {kind} {name!r}.{suggest(name, valid)} Registered {kind}s: {', '.join(valid)}{own}"
        ) from None
