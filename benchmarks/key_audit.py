"""Which stored records would the current code plan again under the same key?

For every record under a results folder, the cell the current code plans for the record's settings is
rebuilt with the project's own planning functions: the same dataset, backbone and seed, the attack and
the defense by name with the record's config values as settings (``--set``), and the record's profile
by name with the record's profile fields as overrides (``--set profile.FIELD=...``). Its configuration
(:func:`bench.runner.cell_config`) and key (:func:`bench.reporting.results.config_key`, as ``bench run`` compares
keys) are compared with the stored configuration. A record differs when the key differs; the first
differing configuration path says why (``defense.version: absent -> 2``: the defense is at version 2
now; ``defense.config.epochs: absent -> null``: a setting the record does not have).

Records that cannot be rebuilt here (a dataset folder or a plugin that is not available, an imported
``file`` attack whose files are missing) are "not checkable", with the reason. No model is loaded:
backbone identities hash files (the minilm folder is hashed once, then its hash is cached).

    python3 benchmarks/key_audit.py [results] [--json] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench import registry
from bench.data import DataError, resolve_data_dir
from bench.engine.profiles import PROFILES, Profile, get_profile
from bench.errors import BenchError
from bench.models.backbones import BackboneError
from bench.registry import PluginError
from bench.reporting.results import config_key
from bench.runner import DataCache, cell_config, plan

# the paths of an imported `file` attack's config that name files or folders
FILE_FIELDS = ("folder", "train", "test_poison", "clean_train", "dev_poison")
IGNORED = {("profile", "plugin_settings")}  # config_key leaves it out: not a difference


class NotCheckable(Exception):
    """A record this machine cannot rebuild (missing data, plugin or files): not a difference."""


def _short(value: Any, width: int = 48) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def differences(stored: Any, current: Any, path: tuple = ()) -> list[str]:
    """Every differing path, in the current configuration's order (then the record's extra fields):
    ``PATH: OLD -> NEW``, with ``absent`` for a field one side lacks."""
    if path in IGNORED:
        return []
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for k in [*current, *(k for k in stored if k not in current)]:
            sub = (*path, k)
            if sub in IGNORED:
                continue
            if k not in stored:
                out.append(f"{'.'.join(sub)}: absent -> {_short(current[k])}")
            elif k not in current:
                out.append(f"{'.'.join(sub)}: {_short(stored[k])} -> absent")
            else:
                out += differences(stored[k], current[k], sub)
        return out
    if json.dumps(stored, sort_keys=True, default=str) != json.dumps(current, sort_keys=True, default=str):
        return [f"{'.'.join(path)}: {_short(stored)} -> {_short(current)}"]
    return []


def _known_fields(cls: type, values: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in (values or {}).items() if k in names}


class Rebuilder:
    """Plans the current code's cell for a record's settings (datasets loaded once per process)."""

    def __init__(self, data_dir: str | Path | None = None, dataset_folders: dict[str, str | Path] | None = None):
        self.data_dir = data_dir
        self.dataset_folders = {k: str(Path(v).resolve()) for k, v in (dataset_folders or {}).items()}
        self.caches: dict[str, DataCache] = {}

    def _data(self, name: str):
        """(dataset spec for plan, its loaded data); NotCheckable when it is not here."""
        if name in self.dataset_folders:
            spec, root = self.dataset_folders[name], None
        elif registry.has("dataset", name):
            folder = getattr(registry.get("dataset", name), "folder", None) or None
            try:  # never fetch: a dataset missing here is not checkable
                root = str(resolve_data_dir(self.data_dir, need=folder, fetch=False))
            except DataError as e:
                raise NotCheckable(f"dataset {name} is not here ({str(e)[:120]})") from None
            spec = name
        else:
            raise NotCheckable(f"dataset {name!r} is a folder dataset (not registered); its folder is unknown here")
        cache = self.caches.setdefault(root or "", DataCache(root))
        try:
            return spec, cache.get(spec)
        except (BenchError, OSError) as e:
            raise NotCheckable(f"dataset {name} cannot be loaded here ({type(e).__name__}: {str(e)[:120]})") from None

    def config(self, stored: dict) -> dict:
        """The configuration the current code plans for a record's stored configuration."""
        try:
            ds_name = stored["dataset"]["name"]
            bb_name = stored["backbone"]["name"]
            att_name = stored["attack"]["name"]
            def_name = stored["defense"]["name"]
            prof = stored["profile"]
            seed = stored["seed"]
        except (KeyError, TypeError) as e:
            raise NotCheckable(f"record config lacks {e}") from None
        att_reg = att_name if registry.has("attack", att_name) else att_name.partition(":")[0]
        for kind, name in (("attack", att_reg), ("defense", def_name)):
            if not registry.has(kind, name):
                why = registry.unavailable(kind).get(name, "not registered here (a --plugins file?)")
                raise NotCheckable(f"{kind} {name!r}: {why}")
        if not registry.has("backbone", bb_name):
            raise NotCheckable(f"backbone {bb_name!r} is not a registered backbone (a folder or hub id)")
        att_cls, def_cls = registry.get("attack", att_reg), registry.get("defense", def_name)
        att_values = _known_fields(att_cls.Config, stored["attack"].get("config"))
        if getattr(att_cls, "imported", False):
            for field in FILE_FIELDS:
                value = att_values.get(field)
                if value and value != "dataset" and not Path(value).exists():
                    raise NotCheckable(f"imported attack files missing here (file.{field} under {Path(value).parent}/)")
        def_values = _known_fields(def_cls.Config, stored["defense"].get("config"))
        if prof.get("name") not in PROFILES:
            raise NotCheckable(f"profile {prof.get('name')!r} does not exist now")
        overrides = {k: v for k, v in _known_fields(Profile, prof).items() if k != "name"}
        spec, data = self._data(ds_name)
        try:
            profile = get_profile(prof["name"], overrides)
            cells = plan([spec], [bb_name], [att_reg], [def_name], [seed], profile,
                         {att_reg: att_values, def_name: def_values})
        except (BackboneError, PluginError, DataError) as e:  # a model, package or file missing here
            raise NotCheckable(f"{type(e).__name__}: {str(e)[:160]}") from None
        except BenchError as e:
            raise PlanError(f"{type(e).__name__}: {str(e)[:160]}") from None
        return cell_config(cells[0], data)


class PlanError(Exception):
    """The record's settings no longer plan (a value the current code rejects): a difference."""


def audit_record(rec: dict, rebuilder: Rebuilder) -> dict:
    """{"status": "same" | "differs" | "not_checkable", "diffs": [...], "reason": str}."""
    stored = rec.get("config")
    if not isinstance(stored, dict):
        return {"status": "not_checkable", "reason": "not a bench record (no config)", "diffs": []}
    try:
        current = rebuilder.config(stored)
    except NotCheckable as e:
        return {"status": "not_checkable", "reason": str(e), "diffs": []}
    except PlanError as e:
        return {"status": "differs", "reason": f"the settings no longer plan: {e}", "diffs": [f"(plan) {e}"],
                "defense": stored["defense"]["name"]}
    new_key = config_key(current)
    out = {"new_key": new_key, "key_is_hash_of_config": rec.get("key") == config_key(stored)}
    if new_key == config_key(stored):
        return {**out, "status": "same", "reason": "", "diffs": []}
    diffs = differences(stored, current) or ["(no field differs; the hash does)"]
    return {**out, "status": "differs", "reason": diffs[0], "diffs": diffs, "defense": stored["defense"]["name"]}


def folder_reason(files: dict[str, dict]) -> str:
    """One sentence for a folder's differing records (``files``: record file -> {"defense", "diffs"}):
    which defenses changed version or gained settings, which profile fields the records lack."""
    versions: dict[str, tuple[set, str]] = {}
    settings: dict[str, set] = {}
    profile: set = set()
    other: set = set()
    for res in files.values():
        for d in res["diffs"]:
            path, _, change = d.partition(": ")
            old, _, new = change.partition(" -> ")
            if path == "defense.version":
                versions.setdefault(res["defense"], (set(), new))[0].add(old if old != "absent" else "1")
            elif path.startswith("defense.config.") and old == "absent":
                settings.setdefault(res["defense"], set()).add(path.rsplit(".", 1)[1])
            elif path.startswith("profile.") and old == "absent":
                profile.add(path.split(".", 1)[1])
            else:
                other.add(path)
    parts = [f"defense {n} is at version {new} now (records: version {', '.join(sorted(old))})"
             for n, (old, new) in sorted(versions.items())]
    parts += [f"defense {n} has new settings ({', '.join(sorted(f))})" for n, f in sorted(settings.items())
              if n not in versions]
    if profile:
        parts.append(f"the profile has fields these records lack ({', '.join(sorted(profile))})")
    if other:
        parts.append(f"other differences: {', '.join(sorted(other))}")
    return "; ".join(parts)


def results_folders(root: Path) -> list[Path]:
    root = Path(root)
    return sorted({p.parent for p in root.rglob("records") if p.is_dir()})


def audit(root: str | Path, data_dir: str | Path | None = None,
          dataset_folders: dict[str, str | Path] | None = None) -> list[dict]:
    """One entry per results folder under ``root`` (``root`` included when it has records/)."""
    rebuilder = Rebuilder(data_dir, dataset_folders)
    report = []
    for folder in results_folders(Path(root)):
        entry = {"folder": str(folder), "records": 0, "same": 0, "differs": 0, "not_checkable": 0,
                 "differences": Counter(), "not_checkable_reasons": Counter(), "key_not_hash": 0, "files": {}}
        for path in sorted((folder / "records").glob("*.json")):
            entry["records"] += 1
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                res = {"status": "not_checkable", "reason": f"unreadable ({e})", "diffs": []}
            else:
                res = audit_record(rec if isinstance(rec, dict) else {}, rebuilder)
            entry[res["status"]] += 1
            if res["status"] == "differs":
                entry["differences"][res["reason"]] += 1
                entry["files"][path.name] = {"defense": res["defense"], "diffs": res["diffs"]}
            elif res["status"] == "not_checkable":
                entry["not_checkable_reasons"][res["reason"]] += 1
            if res.get("key_is_hash_of_config") is False:
                entry["key_not_hash"] += 1
        checkable = entry["same"] + entry["differs"]
        entry["verdict"] = ("all differ" if checkable and not entry["same"] else
                            "some differ" if entry["differs"] else
                            "not checkable" if not checkable else "reproduced")
        entry["reason"] = folder_reason(entry["files"])
        entry["differences"] = dict(entry["differences"].most_common())
        entry["not_checkable_reasons"] = dict(entry["not_checkable_reasons"].most_common())
        report.append(entry)
    return report


def markdown(report: list[dict], root: str | Path = "") -> str:
    lines = ["| folder | records | same | differ | not checkable | verdict | first difference (records) |",
             "|---|---:|---:|---:|---:|---|---|"]
    for e in report:
        name = str(Path(e["folder"]).relative_to(root)) if root and Path(e["folder"]) != Path(root) else e["folder"]
        why = "; ".join(f"`{k}` ({v})" for k, v in e["differences"].items())
        if e["not_checkable_reasons"]:
            why += ("; " if why else "") + "not checkable: " + "; ".join(
                f"{k} ({v})" for k, v in e["not_checkable_reasons"].items())
        lines.append(f"| {name or '.'} | {e['records']} | {e['same']} | {e['differs']} | {e['not_checkable']} | "
                     f"{e['verdict']} | {why} |")
    why = [e for e in report if e["differs"]]
    if why:
        lines += ["", "Why they differ (every differing record of the folder):", ""]
        lines += [f"- {e['folder']} ({e['verdict']}): {e['reason']}" for e in why]
    odd = [e for e in report if e["key_not_hash"]]
    if odd:
        lines.append("")
        lines.append("Records whose file key is not the hash of their stored config (the runner matches them by "
                     "the recomputed hash): " + ", ".join(f"{e['folder']} ({e['key_not_hash']})" for e in odd))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", default="results")
    ap.add_argument("--json", action="store_true", help="print the report as JSON (with every record's differences)")
    ap.add_argument("--data-dir", default=None, help="the benchmark data folder (default: as bench run finds it)")
    args = ap.parse_args(argv)
    report = audit(args.results, args.data_dir)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(markdown(report, args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
