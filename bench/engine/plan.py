"""Planning a grid: names and settings become validated :class:`Cell` objects, each with the content
that identifies its result (:func:`cell_config`, hashed into its record key); :func:`scan` sorts a
grid's cells into recorded, copied from ``--reuse`` folders, and to run (in victim order), and
:class:`GridClock` estimates the time the rest takes. No model is trained here.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import registry
from ..attack import Attack
from ..config import ConfigError, build_config, changed_settings, config_dict
from ..data import DataError, TextDataset, load_csv_folder, load_hub, resolve_data_dir
from ..defense import Defense
from ..models.backbones import HubBackbone, resolve_backbone
from ..models.hub import check_hub_name, looks_like_path
from ..models.training import pick_device
from ..reporting.results import config_key, load_records, record_path, write_json_atomic
from .profiles import PROFILES, Profile


@dataclass(frozen=True)
class DefenseSpec:
    """A defense class and its resolved config: the runner builds a fresh instance per cell from it."""

    cls: type
    config: Any

    @property
    def name(self) -> str:
        return getattr(self.cls, "registered_name", self.cls.__name__)

    @property
    def version(self) -> int:
        return self.cls.version

    def build(self) -> Defense:
        return self.cls(self.config)


@dataclass
class Cell:
    dataset: str
    backbone: str
    attack: Attack
    defense: DefenseSpec
    seed: int
    profile: Profile
    preset: str = ""  # the --preset that gave the settings ("" none); recorded in the row, not in the key

    def settings(self) -> str:
        """The settings that differ from the defaults, e.g. ``lora.r=16; profile.epochs=1``."""
        prefix = getattr(self.attack, "registered_name", self.attack.name)  # what --set names (file, not file:LABEL)
        parts = changed_settings(prefix, self.attack.config, type(self.attack)().config)
        parts += changed_settings(self.defense.name, self.defense.config, _default_config(self.defense.cls,
                                                                                          self.profile.name))
        parts += changed_settings("profile", self.profile, PROFILES[self.profile.name])
        return "; ".join(parts)

    @property
    def dataset_name(self) -> str:
        """How rows and keys name the dataset: a registered name, a folder's own name (never the path
        as typed), or a hub id."""
        return dataset_name(self.dataset)

    @property
    def backbone_name(self) -> str:
        bb = resolve_backbone(self.backbone)
        return bb.display_name if isinstance(bb, HubBackbone) else self.backbone

    @property
    def label(self) -> str:
        return f"{self.dataset_name}/{self.backbone_name}/{self.attack.name}/{self.defense.name}/seed{self.seed}"


def dataset_name(spec: str) -> str:
    if registry.has("dataset", spec):
        return spec
    path = Path(spec).expanduser()
    return path.resolve().name if path.is_dir() else spec


def resolve_dataset(name: str) -> str:
    """A registered name, the absolute path of a dataset folder, or a hub id; anything else fails now
    (a path that does not exist says so; a typo gets a "did you mean")."""
    if registry.has("dataset", name):
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    registered = registry.names("dataset")
    hint = registry.suggest(name, registered)
    if path.exists():
        raise DataError(f"dataset {name!r} is a file; a dataset is a registered name ({', '.join(registered)}) "
                        "or a folder holding train.csv, dev.csv and test.csv")
    if looks_like_path(name):
        raise DataError(f"dataset folder {name!r} does not exist; give a folder holding train.csv, dev.csv and "
                        f"test.csv, or a registered dataset ({', '.join(registered)}).{hint}")
    if "/" not in name:
        registry.get("dataset", name)  # raises: unknown name, with "did you mean"
    check_hub_name(name, "dataset", f"dataset {name!r}",
                   f"give a folder of train/dev/test CSV files or a registered dataset ({', '.join(registered)})"
                   f".{hint}", DataError)
    return name


def _default_config(cls: type, profile_name: str) -> Any:
    """A plugin's config under a profile (its ``profile_defaults`` applied), with no user setting."""
    return build_config(cls.Config, getattr(cls, "profile_defaults", {}).get(profile_name, {}))


def plan(
    datasets_: list[str], backbones: list[str], attacks: list[str], defenses: list[str], seeds: list[int],
    profile: Profile, settings: dict[str, dict[str, Any]] | None = None, preset: str = "",
) -> list[Cell]:
    """Every combination, validated. ``settings`` maps a plugin name to its Config values; they
    override a plugin's ``profile_defaults`` for the profile. ``preset``: the name of the paper preset
    the settings came from (only recorded in the rows)."""
    user = dict(settings or {})
    known = set(attacks) | set(defenses)
    stray = [k for k in user if k not in known and k != "profile"]
    if stray:
        raise ConfigError(
            f"--set names {stray[0]!r}, which is not among the selected attacks or defenses "
            f"({', '.join(sorted(known))}).{registry.suggest(stray[0], sorted(known))}"
        )
    datasets_ = list(dict.fromkeys(resolve_dataset(name) for name in datasets_))
    for b in backbones:
        resolve_backbone(b).check()  # a missing package, folder or network fails here, not after training
    pick_device(profile.device)  # a device this machine does not have fails here
    attack_objs = {}
    for a in attacks:
        cls = registry.get("attack", a)
        attack_objs[a] = cls(build_config(cls.Config, user.get(a, {}), owner=f"attack {a}"))
    defense_specs = {}
    for d in defenses:
        cls = registry.get("defense", d)
        values = {**getattr(cls, "profile_defaults", {}).get(profile.name, {}), **user.get(d, {})}
        defense_specs[d] = DefenseSpec(cls, build_config(cls.Config, values, owner=f"defense {d}"))
    _check_models(profile, attack_objs.values(), defense_specs.values())
    for seed in seeds:
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"--seed {seed}: seeds are integers >= 0 (e.g. --seed 1 --seed 2 --seed 3)")
    return [
        Cell(ds, bb, attack_objs[a], defense_specs[d], seed, profile, preset)
        for ds, bb, a, d, seed in itertools.product(datasets_, backbones, attacks, defenses, seeds)
    ]


def _check_models(profile: Profile, attacks, specs) -> None:
    """Every model a run will load besides the backbone (stealth LM, scorers, generators), checked now."""
    from ..models.lm import check_lm_name

    if profile.stealth_samples > 0:
        check_lm_name(profile.stealth_lm, "profile.stealth_lm")
    for spec in specs:
        if hasattr(spec.config, "scorer"):  # a Config field `scorer` names a causal LM (None: the profile's)
            named = spec.config.scorer
            check_lm_name(named or profile.scorer_lm, f"{spec.name}.scorer" if named else "profile.scorer_lm")
    for attack in attacks:
        generator = getattr(attack.config, "generator", None)
        if generator:
            HubBackbone(generator, f"{attack.name}.generator").check()


class DataCache:
    """Datasets loaded once per process, keyed by name and data folder."""

    def __init__(self, data_dir: str | Path | None = None):
        self.data_dir = data_dir
        self._cache: dict[str, TextDataset] = {}

    def get(self, name: str) -> TextDataset:
        name = resolve_dataset(name)
        if name not in self._cache:
            if registry.has("dataset", name):
                cls = registry.get("dataset", name)
                root = resolve_data_dir(self.data_dir, need=getattr(cls, "folder", None) or None)
                self._cache[name] = cls().load(root)
            elif Path(name).is_dir():
                self._cache[name] = load_csv_folder(name)
            else:
                self._cache[name] = load_hub(name)
        return self._cache[name]


def _defense_identity(spec: DefenseSpec) -> dict:
    """Name, resolved config and (when not 1) version: version 1 leaves keys made before versions existed as they were."""
    ident = {"name": spec.name, "config": config_dict(spec.config)}
    if spec.version != 1:
        ident["version"] = spec.version
    resolved = spec.build().resolved_identity()
    if resolved:
        ident["resolved"] = resolved
    return ident


def cell_config(cell: Cell, data: TextDataset) -> dict:
    """The content that identifies a cell's result (its record key is a hash of this)."""
    return {
        "dataset": {"name": cell.dataset_name, "fingerprint": data.fingerprint, "num_labels": data.num_labels},
        "backbone": resolve_backbone(cell.backbone).identity(),
        "attack": {"name": cell.attack.name, "config": config_dict(cell.attack.config),
                   **cell.attack.source_identity(data)},
        "defense": _defense_identity(cell.defense),
        "profile": config_dict(cell.profile),
        "seed": cell.seed,
    }


def _grid_order(cell: Cell) -> tuple:
    """Cells that share a victim run next to each other (post-training defenses after their attack)."""
    return (cell.dataset, str(cell.backbone), cell.seed, cell.attack.name,
            json.dumps(config_dict(cell.attack.config), sort_keys=True),
            cell.defense.cls.acts_in_training(), cell.defense.name)


def _expected_inputs(cell: Cell, data: TextDataset) -> int:
    """Test inputs a cell predicts (clean test rows plus their non-target rows with the trigger), for
    the grid's time estimate: an inference-time defense's cost grows with them."""
    n = len(data.test) if cell.profile.test_size is None else min(cell.profile.test_size, len(data.test))
    target = getattr(cell.attack.config, "target_label", None)
    target = data.default_target if target is None else target
    labels = np.asarray(data.test["label"])
    return n + round(n * float(np.mean(labels != target))) if len(labels) else n


def _expected_steps(cell: Cell, data: TextDataset) -> int:
    """Training steps a cell's victim takes (for the grid's time estimate)."""
    prof = cell.profile
    n = len(data.train) if prof.train_size is None else min(prof.train_size, len(data.train))
    _, epochs = cell.defense.build().schedule(prof)
    return -(-n // prof.batch_size) * epochs


class GridClock:
    """The grid's time estimate, from measured costs: seconds per training step (per defense where
    measured) times the steps still to train, plus each remaining cell's evaluation time (per defense
    where measured). Cells whose victim another cell trains count no steps."""

    PLAIN = "(plain fine-tuning)"  # the trainer of every post-training defense's victim

    def __init__(self, cells: list[Cell], steps: dict[int, int], known: list[dict] | None = None,
                 inputs: dict[int, int] | None = None):
        self.cells, self.steps = cells, steps  # steps: id(cell) -> expected training steps (0: shares a victim)
        self.inputs = inputs or {}  # id(cell) -> test inputs it predicts (absent: counted as 1)
        self.step_rate: dict[str, list[float]] = {}  # trainer -> [seconds, steps]
        self.eval_cost: dict[str, list[float]] = {}  # defense -> [seconds besides training, test inputs]
        for rec in known or []:  # records already made (this folder, --reuse) give priors for the rates
            self.observe_record(rec)
        self.done: set[int] = set()
        self.current: tuple[int, int] | None = None  # (id of the running cell, steps it has done)
        self.live: dict[str, list[float]] = {}  # trainer -> [seconds, steps] of the training running now

    @classmethod
    def trainer(cls, cell: Cell) -> str:
        return cell.defense.name if cell.defense.cls.acts_in_training() else cls.PLAIN

    def observe_record(self, rec: dict) -> None:
        """A record's victim training (its seconds per step), whether trained in this run or cached."""
        row = rec.get("row", {})
        steps, sps = (rec.get("training") or {}).get("steps"), row.get("sec_per_step")
        if steps and sps:
            name = row.get("defense", "")
            trains = registry.has("defense", name) and registry.get("defense", name).acts_in_training()
            acc = self.step_rate.setdefault(name if trains else self.PLAIN, [0.0, 0])
            acc[0] += float(sps) * int(steps)
            acc[1] += int(steps)
        wall = (rec.get("provenance") or {}).get("wall_seconds")
        if wall is not None and "defense" in row:
            trained = float(row.get("train_seconds") or 0.0) if row.get("victim_trained_here") else 0.0
            acc = self.eval_cost.setdefault(row["defense"], [0.0, 0])
            acc[0] += max(0.0, float(wall) - trained)
            acc[1] += int(row.get("n_test_clean") or 0) + int(row.get("n_test_poison") or 0) or 1

    def observe_cell(self, cell: Cell) -> None:
        """``cell`` needs no more time (finished, recorded meanwhile, or left to another run)."""
        self.done.add(id(cell))
        self.current = None

    def _rate(self, table: dict[str, list[float]], name: str) -> float | None:
        """``name``'s measured rate, else the mean over what was measured (a prior), else None."""
        merged = {k: list(v) for k, v in table.items()}
        if table is self.step_rate:
            for k, v in self.live.items():  # the training under way counts with what is done so far
                acc = merged.setdefault(k, [0.0, 0])
                acc[0] += v[0]
                acc[1] += v[1]
        if name in merged and merged[name][1]:
            return merged[name][0] / merged[name][1]
        total = [sum(v[0] for v in merged.values()), sum(v[1] for v in merged.values())]
        return total[0] / total[1] if total[1] else None

    def remaining(self) -> float | None:
        """Seconds left, or None before anything was measured."""
        left = 0.0
        for cell in self.cells:
            if id(cell) in self.done:
                continue
            steps = self.steps.get(id(cell), 0)
            if self.current and self.current[0] == id(cell):
                steps = max(0, steps - self.current[1])
            if steps:
                rate = self._rate(self.step_rate, self.trainer(cell))
                if rate is None:
                    return None
                left += steps * rate
            left += (self._eval_estimate(cell.defense.name) or 0.0) * self.inputs.get(id(cell), 1)
        return left

    def _eval_estimate(self, name: str) -> float | None:
        """Seconds per test input a cell of defense ``name`` needs besides training (a cell costs this
        times its inputs: ONION on 2,733 inputs is not ONION on 450): its own measured rate, else the
        median over measured defenses of the same kind (training-time or post-training). Not the mean
        over all: one slow inference-time defense (ONION scores every word) would otherwise be charged
        to every defense not yet measured, and the estimate ran at twice the real time."""
        own = self.eval_cost.get(name)
        if own and own[1]:
            return own[0] / own[1]

        def kind(n: str) -> bool | None:
            return registry.get("defense", n).acts_in_training() if registry.has("defense", n) else None

        measured = {k: v[0] / v[1] for k, v in self.eval_cost.items() if v[1]}
        same = [v for k, v in measured.items() if kind(k) == kind(name)]
        pool = same or list(measured.values())
        return float(np.median(pool)) if pool else None


# --- a grid against its results folder: what is recorded, what is copied, what runs and in what order

@dataclass
class Scan:
    """A grid's cells sorted against ``out_dir`` (and the ``--reuse`` folders)."""

    cells: list[Cell]  # the cells planned, each key once (a --sweep may plan one cell twice)
    todo: list[Cell]  # the cells to run, in victim order (:func:`_grid_order`)
    keys: dict[int, str]  # id(cell) -> record key
    done: dict[str, str]  # key -> the key it is recorded under in out_dir (a --force rerun replaces it)
    known: list[dict]  # the records found (here and in --reuse folders): priors for the time estimate
    skipped: int = 0  # recorded already
    copied: int = 0  # copied from a --reuse folder


def scan(cells: list[Cell], data: DataCache, out_dir: Path, reuse: list | None = None, force: bool = False) -> Scan:
    """Resolve data and keys first (bad data fails before any training), skip recorded cells, copy
    cells recorded in a ``reuse`` folder, order the rest. Keys are recomputed from each record's
    stored configuration (robust to how keys were once hashed)."""
    existing = load_records(out_dir)
    done = {config_key(r["config"]): r["key"] for r in existing}
    elsewhere = {config_key(r["config"]): (Path(d), r) for d in (reuse or []) for r in load_records(Path(d))}
    found = Scan([], [], {}, done, existing + [r for _, r in elsewhere.values()])
    for cell in cells:
        key = config_key(cell_config(cell, data.get(cell.dataset)))
        if key in found.keys.values():
            continue  # planned twice (a --sweep over a setting that this cell's plugins do not have): run once
        found.keys[id(cell)] = key
        found.cells.append(cell)
        if key in done and not force:
            found.skipped += 1
        elif key in elsewhere and not force:
            _copy_record(out_dir, key, *elsewhere[key])
            done[key] = key
            found.copied += 1
        else:
            found.todo.append(cell)
    found.todo.sort(key=_grid_order)
    return found


def _copy_record(out_dir: Path, key: str, src: Path, rec: dict) -> None:
    """A record of another results folder, under this cell's key, saying where it came from."""
    origin = str(src / "records" / f"{rec['key']}.json")
    rec = {**rec, "key": key, "row": {**rec["row"], "key": key},
           "provenance": {**rec["provenance"], "copied_from": origin}}
    write_json_atomic(record_path(out_dir, key), rec)


def estimate(todo: list[Cell], data: DataCache, known: list[dict]) -> GridClock:
    """The clock of the cells to run (in order): the first post-training cell of a victim group trains
    its plain victim, the group's others load it; a training-time defense trains its own, once per dataset x
    seed for one that keeps no training row (its victim serves every attack)."""
    expected, seen_groups = {}, set()
    for cell in todo:
        group = _grid_order(cell)[:5]  # cells of one group share the plain victim
        cls = cell.defense.cls
        if cls.acts_in_training() and not cls.reads_training_rows:  # one victim for every attack (clean-only)
            group = (cell.dataset, str(cell.backbone), cell.seed, cell.defense.name,
                     json.dumps(config_dict(cell.defense.config), sort_keys=True, default=str))
            trains = group not in seen_groups
            seen_groups.add(group)
        else:
            trains = cls.acts_in_training() or group not in seen_groups
            if not cls.acts_in_training():
                seen_groups.add(group)
        expected[id(cell)] = _expected_steps(cell, data.get(cell.dataset)) if trains else 0
    inputs = {id(cell): _expected_inputs(cell, data.get(cell.dataset)) for cell in todo}
    return GridClock(todo, expected, known=known, inputs=inputs)
