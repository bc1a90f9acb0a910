"""Typed plugin settings: dataclasses that reject unknown keys and check types.

Every attack, defense and backbone declares ``Config``, a dataclass. Settings coming from the
command line (strings) or from JSON are turned into it with :func:`build_config`, which names any
unknown key with a "did you mean" instead of silently swallowing it.
"""

from __future__ import annotations

from .errors import BenchError

import dataclasses
import itertools
import json
import typing
from typing import Any, Mapping

from .registry import suggest


class ConfigError(BenchError, ValueError):
    """A setting that does not fit a plugin's Config."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be None")
    if origin in (list, tuple):
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip().startswith("[") else [
                    v for v in value.split(",") if v.strip()
                ]
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: {value!r} is not a list ({e})") from None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, where) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def build_config(cls: type, values: Mapping[str, Any] | None = None, owner: str = "") -> Any:
    """``cls(**values)`` with unknown keys rejected and strings converted to the field types."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    label = owner or cls.__qualname__
    unknown = [k for k in values if k not in fields]
    if unknown:
        k = unknown[0]
        raise ConfigError(
            f"{label}: unknown setting {k!r}.{suggest(k, list(fields))} "
            f"Valid settings: {', '.join(fields) or '(none)'}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{label}.{k}") for k, v in values.items()}
    cfg = cls(**kwargs)
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
    return cfg


def added(default: Any, since: str) -> Any:
    """A config field added after records were made: ``x: str = added("a", "issue 24")``. At its default
    it is left out of :func:`config_dict`, so the keys of cells that do not set it stay as they were."""
    return dataclasses.field(default=default, metadata={"added": since})


def config_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists); a field marked :func:`added` is
    left out while at its default."""
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if dataclasses.is_dataclass(cfg):
        for f in dataclasses.fields(cfg):
            if f.metadata.get("added") and f.name in d and getattr(cfg, f.name) == f.default:
                del d[f.name]
    return d


def changed_settings(prefix: str, cfg: Any, default: Any) -> list[str]:
    """``["lora.r=16", ...]``: the fields of ``cfg`` that differ from ``default``."""
    now, base = config_dict(cfg), config_dict(default)
    return [f"{prefix}.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in now.items() if base.get(k) != v]


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """For plugins with no settings."""


def parse_assignments(items: list[str]) -> dict[str, dict[str, str]]:
    """``["badnets.poison_rate=0.2", "lora.r=16"]`` -> ``{"badnets": {"poison_rate": "0.2"}, ...}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(
                f"--set {item!r}: write PLUGIN.KEY=VALUE, for example --set badnets.poison_rate=0.2"
            )
        lhs, value = item.split("=", 1)
        plugin, key = lhs.split(".", 1)
        if not plugin.strip() or not key.strip():
            raise ConfigError(
                f"--set {item!r}: the plugin name and the key must not be empty; write PLUGIN.KEY=VALUE, for "
                "example --set lora.r=16 or --set profile.epochs=1"
            )
        out.setdefault(plugin.strip(), {})[key.strip()] = value.strip()
    return out


def _split_values(text: str) -> list[str]:
    """``"0.01,0.05"`` -> two values; commas inside brackets stay (``[cf,mn],[tq]`` is two lists)."""
    values, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{(" and 1 or (-1 if ch in "]})" else 0)
        if ch == "," and depth == 0:
            values.append(cur.strip())
            cur = ""
        else:
            cur += ch
    values.append(cur.strip())
    return values


def parse_sweeps(items: list[str], fixed: dict[str, dict[str, str]] | None = None) -> list[dict[str, dict[str, str]]]:
    """``["badnets.poison_rate=0.01,0.1", "profile.train_size=1500,6920"]`` -> every combination of the
    values, each as the assignments ``parse_assignments`` gives (``[{}]`` for no sweep). A key swept twice,
    or also fixed by --set (``fixed``), an empty value and a repeated value are errors."""
    axes, seen = [], set()
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--sweep {item!r}: write PLUGIN.KEY=V1,V2,..., for example "
                              "--sweep badnets.poison_rate=0.01,0.05,0.1")
        lhs, rhs = item.split("=", 1)
        plugin, key = (part.strip() for part in lhs.split(".", 1))
        values = _split_values(rhs)
        if not plugin or not key or any(v == "" for v in values):
            raise ConfigError(f"--sweep {item!r}: the plugin, the key and every value must be non-empty "
                              "(PLUGIN.KEY=V1,V2,...)")
        if (plugin, key) in seen or key in (fixed or {}).get(plugin, {}):
            raise ConfigError(f"--sweep {item!r}: {plugin}.{key} is already {'swept' if (plugin, key) in seen else 'set by --set'}"
                              "; give each setting one --set or one --sweep")
        if len(set(values)) < len(values):
            raise ConfigError(f"--sweep {item!r}: a value is repeated; each value is one cell")
        seen.add((plugin, key))
        axes.append([(plugin, key, v) for v in values])
    combos = []
    for combo in itertools.product(*axes):
        assignment: dict[str, dict[str, str]] = {}
        for plugin, key, value in combo:
            assignment.setdefault(plugin, {})[key] = value
        combos.append(assignment)
    return combos
