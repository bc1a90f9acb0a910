"""The one place that crosses attacks, defenses, datasets and backbones.

:func:`plan` turns names and settings into validated :class:`Cell` objects (every typo fails here,
before any training starts). A cell runs in three steps: :func:`prepare` (poisoned data and the dev
split, the same for every defense), :meth:`Evaluator.victim` (the trained victim, from the victim
cache when another cell or run already trained it) and :meth:`Evaluator.evaluate` (calibrate, predict
the shuffled test inputs, metrics), then :func:`build_record`. :func:`run_grid` runs many cells,
skipping those already recorded, with cells that share a victim next to each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import platform
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np

from . import progress, registry
from .attack import Attack, PoisonedData
from .backbones import HubBackbone, resolve_backbone
from .claims import try_claim
from .config import ConfigError, build_config, changed_settings, config_dict
from .data import DataError, TextDataset, load_csv_folder, load_hub, resolve_data_dir, stratified_indices
from .defense import Defense, DefenseContext
from .errors import ContractError
from .metrics import attack_success_rate, clean_accuracy
from .profiles import PROFILES, Profile
from .record import EvaluationInfo, Row, TrainingInfo
from .hub import check_hub_name, looks_like_path
from .results import (
    ResultsError,
    append_run,
    config_key,
    git_state,
    load_records,
    provenance,
    record_path,
    write_json_atomic,
    write_leaderboard,
)
from .seeding import torch_seeded
from .stealth import stealth_scores
from .training import pick_device, train
from .victim import Victim, VictimStore

MIN_ASR_ROWS = 5  # fewer poisoned test rows than this: ASR is refused (one row would move it by > 20 points)
WARN_ASR_ROWS = 50  # fewer than this: a warning (once per dataset and attack in a process)
_WARNED: set = set()

# profile fields that do not change a trained model (left out of victim keys)
EVAL_ONLY_FIELDS = ("name", "description", "eval_batch_size", "datasets", "backbones", "stealth_samples",
                    "stealth_lm", "scorer_lm", "test_size", "min_selection")


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
    from .lm import check_lm_name

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


# --- step 1: the data of a cell -----------------------------------------------------------------

def split_dev(dev: datasets.Dataset, clean_size: int, min_selection: int, seed: int, where: str = ""):
    """(selection rows, defender's clean rows): dev split once per dataset x seed, the same way for
    every defense. The clean rows are in a seeded random order (a defense takes the first n)."""
    n_sel = len(dev) - clean_size
    if n_sel < min_selection:
        raise DataError(
            f"{where}: the dev split has {len(dev)} rows; keeping {clean_size} as the defender's clean rows "
            f"(profile.clean_size) leaves {max(n_sel, 0)} for model selection, below profile.min_selection = "
            f"{min_selection}. Lower --set profile.clean_size or use a dataset with a larger dev split"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EF]))
    perm = rng.permutation(len(dev))
    clean_idx, sel_idx = perm[:clean_size], np.sort(perm[clean_size:])
    return dev.select(sel_idx), dev.select(clean_idx)


@dataclass
class Prepared:
    data: TextDataset
    poisoned: PoisonedData
    selection: datasets.Dataset
    clean_pool: datasets.Dataset


def prepare(cell: Cell, data: TextDataset) -> Prepared:
    """The cell's poisoned data and dev split (no model involved)."""
    prof = cell.profile
    if prof.test_size is not None and prof.test_size < len(data.test):
        idx = stratified_indices(data.test["label"], prof.test_size, 0)  # the same rows for every cell
        data = dataclasses.replace(data, test=data.test.select(idx))
    # a stratified train_size slice of the dataset; an imported attack slices its own file (bench/attack.py)
    train_split = cell.attack.training_rows(data, prof.train_size, cell.seed)
    poisoned = cell.attack.poison(data, cell.seed, train=train_split)
    n_poison = len(poisoned.test_poison)
    if n_poison < MIN_ASR_ROWS:
        target = poisoned.target_label
        n_nontarget = sum(1 for y in data.test["label"] if y != target)
        if n_nontarget == 0:
            cause = (f"every test row has the target label {target}, so there is no row to attack; use a test split "
                     "with other labels or another --target-label")
        elif n_poison == 0 and poisoned.counts.get("test_skipped_no_transform"):
            cause = (f"none of the {n_nontarget} non-target test rows could be transformed by the attack (its "
                     "paraphrase table covers none of them); add them to the table or use another attack")
        else:
            cause = (f"only {n_poison} poisoned test rows (of {n_nontarget} non-target rows), so one row would move "
                     f"ASR by {100 / max(n_poison, 1):.0f} points; use a larger test split (at least {MIN_ASR_ROWS} "
                     "non-target rows the attack can poison)")
        raise DataError(f"{cell.label}: ASR cannot be measured: {cause}")
    if n_poison < WARN_ASR_ROWS and (cell.dataset, cell.attack.name) not in _WARNED:
        _WARNED.add((cell.dataset, cell.attack.name))
        progress.warn(f"{cell.label}: ASR rests on {n_poison} poisoned test rows (one row = "
                      f"{100 / n_poison:.1f} points)")
    selection, clean_pool = split_dev(poisoned.dev_clean, prof.clean_size, prof.min_selection, cell.seed, cell.label)
    return Prepared(data, poisoned, selection, clean_pool)


def _digest(*columns) -> str:
    h = hashlib.sha256()
    for row in zip(*columns):
        h.update(("\t".join(map(str, row)) + "\n").encode())
    return h.hexdigest()[:16]


def training_profile(profile: Profile) -> dict:
    return {k: v for k, v in config_dict(profile).items() if k not in EVAL_ONLY_FIELDS}


def victim_identity(cell: Cell, prep: Prepared, spec: DefenseSpec | None) -> dict:
    """What a trained victim depends on: training rows (content), the dev split, the training-side
    identity of the defense (None: plain fine-tuning), backbone, training settings, seed."""
    t = prep.poisoned.train
    return {
        "train": _digest(t["text"], t["label"], t["poisoned"]),
        "selection": _digest(prep.selection["text"], prep.selection["label"]),
        "clean": _digest(prep.clean_pool["text"], prep.clean_pool["label"]),
        "num_labels": prep.data.num_labels,
        "defense": _defense_identity(spec) if spec is not None else None,
        "backbone": resolve_backbone(cell.backbone).identity(),
        "profile": training_profile(cell.profile), "seed": cell.seed,
    }


# --- steps 2 and 3: the victim and the evaluation ------------------------------------------------

def _filter_stats(keep: np.ndarray, flags: np.ndarray) -> dict:
    removed = ~keep
    if (flags < 0).any():  # imported rows whose poison flags are unknown: no precision or recall to state
        return {"n_removed": int(removed.sum()), "filter_precision": None, "filter_recall": None}
    n_removed, n_poison = int(removed.sum()), int(flags.sum())
    hit = int((removed & (flags == 1)).sum())
    return {
        "n_removed": n_removed,
        "filter_precision": hit / n_removed if n_removed else None,
        "filter_recall": hit / n_poison if n_poison else None,
    }


def _take_stats(ctx: DefenseContext) -> dict:
    """What the defense logged while the victim was made (kept with the cached victim)."""
    stats = dict(ctx.stats)
    ctx.stats.clear()
    return stats


class Evaluator:
    """Runs cells; holds what is expensive and shared: datasets, the victim store, the scorers."""

    def __init__(self, data: DataCache | None = None, store: VictimStore | None = None, git: dict | None = None):
        self.data = data or DataCache()
        self.store = store or VictimStore()
        self.git = git

    # --- the victim ------------------------------------------------------------------------
    def context(self, cell: Cell, prep: Prepared) -> DefenseContext:
        from .lm import get_scorer

        prof = cell.profile
        ctx = DefenseContext(
            seed=cell.seed, num_labels=prep.data.num_labels, profile=prof, device=pick_device(prof.device),
            selection=prep.selection, clean_pool=prep.clean_pool, backbone_name=cell.backbone,
            _backbone=lambda: resolve_backbone(cell.backbone).load(prep.data.num_labels, cell.seed),
            _scorer=lambda name=None: get_scorer(name or prof.scorer_lm),
        )
        ctx._fit = lambda texts, labels, purpose: self.fit(cell, prep, texts, labels, purpose)
        ctx._plain_victim = lambda: self.victim(cell, prep, None, ctx)[0]
        return ctx

    def victim(self, cell: Cell, prep: Prepared, defense: Defense | None, ctx: DefenseContext,
               on_step: Callable[[int, int], None] | None = None, on_model: Callable | None = None,
               ) -> tuple[Victim, bool]:
        """(victim, trained_now) for ``defense`` (None or a post-training defense: the plain victim)."""
        trains = defense is not None and defense.acts_in_training()
        spec = DefenseSpec(type(defense), defense.config) if trains else None
        trainer = defense if trains else Defense()
        identity = victim_identity(cell, prep, spec)
        key = config_key(identity)
        identity["label"] = f"{cell.dataset_name}/{cell.backbone_name}/{cell.attack.name}/" \
                            f"{spec.name if spec else 'plain'}/seed{cell.seed}"
        prof = cell.profile
        built: dict = {}

        def build():
            loaded = resolve_backbone(cell.backbone).load(prep.data.num_labels, cell.seed)
            with torch_seeded(cell.seed):  # defenses may draw from torch's global generator (PEFT's init)
                model = trainer.prepare_model(loaded, ctx)
            built["loaded"] = loaded
            return model, loaded.tokenizer

        def do_train(model, tokenizer) -> dict:
            t = prep.poisoned.train
            rows = datasets.Dataset.from_dict({"text": t["text"], "label": t["label"],
                                               "row_id": list(range(len(t)))})
            keep = trainer.select_train(rows, ctx)
            keep = np.ones(len(t), dtype=bool) if keep is None else np.asarray(keep)
            if keep.dtype != bool or keep.shape != (len(t),):
                raise ContractError(f"{trainer.name}.select_train must return a boolean mask of {len(t)} rows, "
                                    f"got dtype {keep.dtype} shape {keep.shape}")
            idx = np.flatnonzero(keep)
            all_texts, all_labels = list(t["text"]), list(t["label"])  # one column read each, not one per row
            texts, labels = [all_texts[i] for i in idx], [all_labels[i] for i in idx]
            added = trainer.add_train(ctx)
            if added is not None:
                texts, labels = texts + list(added["text"]), labels + [int(x) for x in added["label"]]
            if not texts:
                raise ContractError(f"{trainer.name}.select_train removed every training row and add_train "
                                    "added none: nothing to train on")
            n_ref = trainer.reference_size(built["loaded"])
            reference = ctx.clean(n_ref) if n_ref else None
            device = pick_device(prof.device)
            if on_model is not None:
                on_model(model.to(device), tokenizer, ctx)
            result = train(model, tokenizer, texts, labels, prep.selection["text"], prep.selection["label"],
                           prof, trainer, cell.seed, device,
                           reference=(reference["text"], reference["label"]) if reference is not None else None,
                           on_step=on_step)
            return {
                "trained_by": cell.label, "n_train_after_defense": len(texts),
                "n_train_added": 0 if added is None else len(added),
                **_filter_stats(keep, np.asarray(t["poisoned"])), "n_reference": n_ref, "clean_used": ctx.clean_used,
                "best_epoch": result.best_epoch, "dev_acc": result.best_dev_acc,
                "dev_acc_per_epoch": result.dev_acc_per_epoch, "loss_per_epoch": result.loss_per_epoch,
                "steps": result.steps, "train_seconds": round(result.train_seconds, 1),
                "sec_per_step": round(result.seconds_per_step, 4), "trainable_params": result.trainable_params,
                "total_params": result.total_params, "device": str(device), "defense_stats": result.defense_stats,
                "kept_epoch_defense_stats": result.kept_epoch_stats, "training_stats": _take_stats(ctx),
            }

        if on_model is not None:  # an analysis that watches training: always train, never cache
            model, tok = build()
            info = do_train(model, tok)
            return Victim(model, tok, prof, pick_device(prof.device), key, info), True
        return self.store.get(key, build, do_train, prof, pick_device(prof.device), identity)

    def fit(self, cell: Cell, prep: Prepared, texts: list[str], labels: list[int], purpose: str) -> Victim:
        """An auxiliary classifier (plain fine-tuning of the cell's backbone) on texts/labels; cached."""
        prof = cell.profile
        identity = {"aux": purpose, "rows": _digest(texts, labels),
                    "selection": _digest(prep.selection["text"], prep.selection["label"]),
                    "num_labels": prep.data.num_labels, "backbone": resolve_backbone(cell.backbone).identity(),
                    "profile": training_profile(prof), "seed": cell.seed}
        key = config_key(identity)
        identity["label"] = f"aux:{purpose}:{cell.label}"
        plain = Defense()

        def build():
            loaded = resolve_backbone(cell.backbone).load(prep.data.num_labels, cell.seed)
            return loaded.model, loaded.tokenizer

        def do_train(model, tokenizer) -> dict:
            device = pick_device(prof.device)
            r = train(model, tokenizer, texts, labels, prep.selection["text"], prep.selection["label"], prof, plain,
                      cell.seed, device)
            return {"trained_by": identity["label"], "dev_acc": r.best_dev_acc, "steps": r.steps,
                    "train_seconds": round(r.train_seconds, 1)}

        return self.store.get(key, build, do_train, prof, pick_device(prof.device), identity)[0]

    # --- evaluation ------------------------------------------------------------------------
    def evaluate(self, cell: Cell, prep: Prepared, defense: Defense, victim: Victim, ctx: DefenseContext) -> dict:
        p = prep.poisoned
        clean_texts, poison_texts = list(p.test_clean["text"]), list(p.test_poison["text"])
        t0 = time.perf_counter()
        if type(defense).calibrate is not Defense.calibrate:
            with progress.stage(f"calibrating ({defense.name})"):
                defense.calibrate(victim, ctx)
        t_cal = time.perf_counter() - t0
        texts = clean_texts + poison_texts
        perm = np.random.default_rng(np.random.SeedSequence([cell.seed, 0xE7A1])).permutation(len(texts))
        t0 = time.perf_counter()
        with progress.stage(f"predicting ({defense.name})", len(texts), "input") as bar:
            shuffled = np.asarray(defense.predict([texts[i] for i in perm], victim, ctx))
            bar.advance_to(len(texts))
        t_pred = time.perf_counter() - t0
        if shuffled.shape != (len(texts),) or not np.issubdtype(shuffled.dtype, np.integer):
            raise ContractError(f"{defense.name}.predict must return {len(texts)} integer labels, got shape "
                                f"{shuffled.shape} dtype {shuffled.dtype}")
        bad = (shuffled < -1) | (shuffled >= prep.data.num_labels)
        if bad.any():
            raise ContractError(f"{defense.name}.predict returned label {int(shuffled[bad][0])}; labels are "
                                f"0..{prep.data.num_labels - 1}, or -1 to reject")
        preds = np.empty_like(shuffled)
        preds[perm] = shuffled
        clean_pred, poison_pred = preds[: len(clean_texts)], preds[len(clean_texts):]
        nontarget = np.asarray(p.test_clean["label"]) != p.target_label
        return {
            "cacc": clean_accuracy(clean_pred, p.test_clean["label"]),
            "asr": attack_success_rate(poison_pred, p.target_label),
            "clean_to_target": attack_success_rate(clean_pred[nontarget], p.target_label),
            "frr": float((clean_pred == -1).mean()),
            "poison_rejected": float((poison_pred == -1).mean()),
            "calibrate_seconds": round(t_cal, 2), "predict_seconds": round(t_pred, 2),
            "predict_sec_per_input": round(t_pred / len(texts), 5),
        }

    def run_cell(self, cell: Cell, on_step: Callable[[int, int], None] | None = None,
                 on_model: Callable | None = None, data: TextDataset | None = None) -> dict:
        t0 = time.perf_counter()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        data = data if data is not None else self.data.get(cell.dataset)
        prep = prepare(cell, data)
        stealth = {"ppl_increase": None, "ppl_increase_median": None, "similarity": None, "n_stealth": 0}
        if cell.profile.stealth_samples > 0 and "orig_text" in prep.poisoned.test_poison.column_names:
            # (an imported poisoned test set without originals has nothing to compare: no stealthiness)
            stealth = stealth_scores(prep.poisoned.test_poison["orig_text"], prep.poisoned.test_poison["text"],
                                     cell.seed, cell.profile.stealth_samples, cell.profile.stealth_lm)
        defense = cell.defense.build()  # a fresh instance: nothing learnt in one cell reaches another
        ctx = self.context(cell, prep)
        victim, trained_now = self.victim(cell, prep, defense, ctx, on_step=on_step, on_model=on_model)
        trains = defense.acts_in_training()
        clean_training = int(victim.info.get("clean_used", 0)) if trains else 0
        ctx.clean_used = 0
        metrics = self.evaluate(cell, prep, defense, victim, ctx)
        n_clean_used = max(clean_training, ctx.clean_used)
        rec = build_record(cell, data, prep, victim, trained_now, metrics, stealth, n_clean_used, ctx.stats,
                           time.perf_counter() - t0, started, self.git)
        self.store.mark_used(victim.key, rec["key"])
        return rec


def run_cell(cell: Cell, data: TextDataset | None = None, on_step: Callable[[int, int], None] | None = None,
             git: dict | None = None, on_model: Callable | None = None, store: VictimStore | None = None) -> dict:
    """Run one cell and return its record (a convenience around :class:`Evaluator`).

    Two public hooks let an analysis watch training (``bench fourier``, defenses/musclelora/fourier.py):
    ``on_model(model, tokenizer, ctx)`` is called once with the model about to be trained (on its device)
    and the cell's :class:`DefenseContext`; ``on_step(step, total)`` after every optimiser step. A cell
    run with ``on_model`` always trains its victim and never reads or writes the victim cache."""
    return Evaluator(store=store, git=git).run_cell(cell, on_step=on_step, on_model=on_model, data=data)


def build_record(cell: Cell, data: TextDataset, prep: Prepared, victim: Victim, trained_now: bool, metrics: dict,
                 stealth: dict, n_clean_used: int, defense_stats: dict, wall: float, started: str,
                 git: dict | None) -> dict:
    p, prof, info = prep.poisoned, cell.profile, victim.info
    config = cell_config(cell, data)
    key = config_key(config)
    counts = {
        **p.counts,
        "n_train_after_defense": info.get("n_train_after_defense"),
        "n_removed": info.get("n_removed", 0),
        "n_dev_selection": len(prep.selection),
        "n_clean_pool": len(prep.clean_pool),
        "n_clean_used": n_clean_used,
        "n_reference": info.get("n_reference", 0) if cell.defense.cls.acts_in_training() else 0,
        "n_test_clean": len(p.test_clean),
        "n_test_poison": len(p.test_poison),
        "n_dev_poison": len(p.dev_poison),
        "n_stealth": stealth["n_stealth"],
    }
    # the row through its one typed definition: a missing or an unknown field is a TypeError here
    row = Row(
        dataset=cell.dataset_name, backbone=cell.backbone_name, attack=cell.attack.name,
        defense=cell.defense.name, seed=cell.seed,
        **{k: metrics[k] for k in ("cacc", "asr", "clean_to_target", "frr", "poison_rejected")},
        **cell.attack.stated(p),  # poison_rate, label_regime, trigger_count (imported data: derived, None unknown)
        target_label=p.target_label,
        n_poisoned=counts["n_poisoned"], n_train=counts["n_train"],
        n_train_after_defense=counts["n_train_after_defense"], n_train_added=info.get("n_train_added", 0),
        filter_precision=info.get("filter_precision"), filter_recall=info.get("filter_recall"),
        train_skipped_no_transform=counts["train_skipped_no_transform"],
        test_skipped_no_transform=counts["test_skipped_no_transform"],
        n_test_clean=counts["n_test_clean"], n_test_poison=counts["n_test_poison"],
        ppl_increase=stealth["ppl_increase"], ppl_increase_median=stealth["ppl_increase_median"],
        similarity=stealth["similarity"],
        n_dev_selection=counts["n_dev_selection"], n_clean_pool=counts["n_clean_pool"],
        n_clean_used=n_clean_used, uses_clean=n_clean_used > 0, n_reference=counts["n_reference"],
        best_epoch=info.get("best_epoch"), dev_acc=info.get("dev_acc"),
        train_seconds=info.get("train_seconds"), sec_per_step=info.get("sec_per_step"),
        predict_sec_per_input=metrics["predict_sec_per_input"],
        victim=victim.key, victim_trained_here=trained_now,
        profile=prof.name, settings=cell.settings(), preset=cell.preset, key=key,
    )
    return {
        "key": key,
        "row": row.as_dict(),
        "config": config,
        "counts": counts,
        "training": TrainingInfo.from_info(info).as_dict(),
        "evaluation": EvaluationInfo.from_metrics(metrics).as_dict(),
        "defense_stats": defense_stats,
        "victim": {"key": victim.key, "trained_here": trained_now, "trained_by": info.get("trained_by")},
        "provenance": provenance(
            command="", wall_seconds=wall, git=git,
            extra={"started": started, "train_seconds": info.get("train_seconds"), "victim_key": victim.key},
        ),
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


def run_grid(
    cells: list[Cell], out_dir: str | Path, data_dir: str | Path | None = None, command: str = "",
    progress: str | bool = "auto", force: bool = False, reuse: list[str | Path] | None = None,
    store: VictimStore | None = None, executor: Any = None, keep_going: bool = False,
) -> dict:
    """Run every cell not yet recorded in ``out_dir``; rebuild the leaderboard after each one.

    A cell recorded with the same key in one of the ``reuse`` folders is copied, not recomputed
    (its record says where it came from). ``force`` recomputes recorded cells. Each cell is claimed
    before it runs (``OUT/claims``), so several processes on one folder split the work. The run
    writes a "started" line to ``runs.jsonl`` and an end line (finished, interrupted, failed).
    ``progress``: "auto" or True (bars on a terminal, else plain lines), "lines", "bar", "off" or False.
    ``executor``: None runs the cells here, one after the other; else an object from
    :mod:`bench.executors` (e.g. Ray) whose ``run`` runs them elsewhere through :func:`run_claimed_cell`.
    ``keep_going`` (local executor): a cell that raises is written to ``runs.jsonl`` ("cell_failed", with
    its error), its claim released, and the grid goes on; the summary's ``failed`` lists those cells.
    """
    from .progress import Reporter, use

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ResultsError(f"--out {out_dir} is a file; give a folder for the results (it is created if missing)")
    for d in reuse or []:
        if not (Path(d) / "records").is_dir():
            raise ResultsError(f"--reuse {d}: {'no such folder' if not Path(d).exists() else 'no records/ folder in it'}"
                               "; give a results folder that a previous `bench run --out` wrote")
    mode = {True: "auto", False: "off"}.get(progress, progress) if isinstance(progress, bool) else progress
    reporter = Reporter.auto(True) if mode == "auto" else Reporter(mode)
    previous = use(reporter)
    try:
        if keep_going and executor is not None:
            raise ConfigError("--keep-going works with the local executor only; leave it out with --executor ray "
                              "(a failed Ray task stops the run; rerun it to resume)")
        return _run_grid(cells, out_dir, data_dir, command, reporter, force, reuse, store, executor, keep_going)
    finally:
        use(previous)


def run_claimed_cell(ev: Evaluator, cell: Cell, key: str, out_dir: str | Path, *, force: bool = False,
                     command: str = "", run_id: str = "", replaces: str | None = None,
                     on_start: Callable[[], None] | None = None,
                     on_step: Callable[[int, int], None] | None = None) -> tuple[str, dict | None]:
    """One cell of a grid, as every executor runs it (the local loop, a Ray task): skip it if recorded,
    claim it, run it, write its record, release the claim.

    Returns ("recorded", None) when ``OUT/records/<key>.json`` exists (unless ``force``), ("claimed",
    None) when a live run holds the cell's claim, else ("ran", record). ``replaces``: the key the cell
    was recorded under before (a ``--force`` rerun of an older key; removed once the new record is
    written). ``on_start`` is called once the claim is held; ``on_step`` at each training step."""
    out_dir = Path(out_dir)
    if not force and record_path(out_dir, key).is_file():
        return "recorded", None
    claim = try_claim(out_dir, key, cell.label)
    if claim is None:
        return "claimed", None
    try:
        if on_start is not None:
            on_start()

        def step(done: int, total: int) -> None:
            claim.heartbeat()
            if on_step is not None:
                on_step(done, total)

        rec = ev.run_cell(cell, on_step=step)
        rec["provenance"]["command"] = command
        rec["provenance"]["run_id"] = run_id
        if replaces and replaces != rec["key"]:
            record_path(out_dir, replaces).unlink(missing_ok=True)
        write_json_atomic(record_path(out_dir, rec["key"]), rec)
    finally:
        claim.release()
    return "ran", rec


def _run_grid(cells, out_dir, data_dir, command, reporter, force, reuse, store, executor=None,
              keep_going=False) -> dict:
    from .hardware import configure_threads
    from .progress import fmt_seconds

    threads = configure_threads()
    git = git_state()  # the code this process runs is the code as it was when it started
    ev = Evaluator(DataCache(data_dir), store, git)
    t0 = time.perf_counter()
    # keys recomputed from each record's stored configuration (robust to how keys were once hashed)
    existing = load_records(out_dir)
    done = {config_key(r["config"]): r["key"] for r in existing}
    elsewhere = {config_key(r["config"]): (Path(d), r) for d in (reuse or []) for r in load_records(Path(d))}
    todo, skipped, copied, keys, unique = [], 0, 0, {}, []
    for cell in cells:  # resolve data and keys first: bad data fails before any training
        key = config_key(cell_config(cell, ev.data.get(cell.dataset)))
        if key in keys.values():
            continue  # planned twice (a --sweep over a setting that this cell's plugins do not have): run once
        keys[id(cell)] = key
        unique.append(cell)
        if key in done and not force:
            skipped += 1
        elif key in elsewhere and not force:
            src, rec = elsewhere[key]
            origin = str(src / "records" / f"{rec['key']}.json")
            rec = {**rec, "key": key, "row": {**rec["row"], "key": key},
                   "provenance": {**rec["provenance"], "copied_from": origin}}
            write_json_atomic(record_path(out_dir, key), rec)
            done[key] = key
            copied += 1
        else:
            todo.append(cell)
    todo.sort(key=_grid_order)
    expected, seen_groups = {}, set()
    for cell in todo:
        group = _grid_order(cell)[:5]  # cells of one group share the plain victim
        trains = cell.defense.cls.acts_in_training() or group not in seen_groups
        if not cell.defense.cls.acts_in_training():
            seen_groups.add(group)
        expected[id(cell)] = _expected_steps(cell, ev.data.get(cell.dataset)) if trains else 0
    inputs = {id(cell): _expected_inputs(cell, ev.data.get(cell.dataset)) for cell in todo}
    clock = GridClock(todo, expected, known=existing + [r for _, r in elsewhere.values()], inputs=inputs)
    cells = unique
    run_id = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(2).hex()}"
    status = {"ran": 0, "claimed_elsewhere": 0, "victims_trained_elsewhere": 0}
    failed: list[dict] = []
    if todo:
        append_run(out_dir, {"event": "started", "run_id": run_id, "command": command, "pid": os.getpid(),
                             "host": platform.node(), "cells_planned": len(cells), "cells_to_run": len(todo),
                             "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "git": git, **threads})
    reporter.line(f"{len(cells)} cells planned: {len(todo)} to run, {skipped} already recorded in {out_dir}, "
                  f"{copied} copied; torch uses {threads['threads']} threads ({threads['threads_from']}"
                  f"{'' if threads['threads_from'].startswith('$') else '; re-checked before each cell'}; "
                  "BENCH_THREADS=N fixes the count)")
    trainings0 = ev.store.trainings
    end = {"event": "finished"}
    bar = None
    if reporter.mode == "bar" and executor is None:  # an executor reports its cells as lines
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="cells", unit="cell", position=0, dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def eta_text() -> str:
        left = clock.remaining()
        return "ETA after the first training steps" if left is None else f"~{fmt_seconds(left)} left"

    try:
        if executor is not None:  # the cells run elsewhere (bench.executors); this process keeps the books
            with contextlib.closing(executor.run(todo, keys, out_dir, force=force, command=command, run_id=run_id,
                                                 replaces=done, git=git, data_dir=data_dir,
                                                 victims=ev.store.root)) as finished:
                for cell, outcome, rec in finished:
                    skipped += outcome == "recorded"
                    status["claimed_elsewhere"] += outcome == "claimed"
                    if outcome == "ran":
                        status["ran"] += 1
                        status["victims_trained_elsewhere"] += bool(rec["row"]["victim_trained_here"])
                        write_leaderboard(out_dir)
        for i, cell in enumerate(todo if executor is None else [], 1):
            key = keys[id(cell)]
            now = configure_threads(recheck=True)  # another job may have started or ended meanwhile
            if now["threads"] != threads["threads"]:
                reporter.line(f"torch threads {threads['threads']} -> {now['threads']} ({now['threads_from']}; "
                              "BENCH_THREADS=N fixes the count)")
            threads = now
            c0 = time.perf_counter()
            steps_t0: list[float] = []

            def on_start(i=i, cell=cell) -> None:
                if bar is not None:
                    bar.set_postfix_str(f"{eta_text()} | {cell.label}")
                else:
                    reporter.line(f"[{i}/{len(todo)}] {cell.label}: started ({eta_text()} for the grid)")

            def on_step(step: int, total: int, cell=cell) -> None:
                if not steps_t0:
                    steps_t0.append(time.perf_counter())
                clock.current = (id(cell), step)
                if step == total or step % 20 == 0:
                    if step > 1:
                        clock.live[clock.trainer(cell)] = [time.perf_counter() - steps_t0[0], step - 1]
                    if bar is not None:
                        bar.set_postfix_str(f"{eta_text()} | {cell.label}")

            try:
                outcome, rec = run_claimed_cell(ev, cell, key, out_dir, force=force, command=command, run_id=run_id,
                                                replaces=done.get(key), on_start=on_start, on_step=on_step)
            except Exception as e:
                if not keep_going:
                    raise
                error = f"{type(e).__name__}: {str(e)[:300]}"
                failed.append({"cell": cell.label, "key": key, "error": error})
                append_run(out_dir, {"event": "cell_failed", "run_id": run_id, "cell": cell.label, "key": key,
                                     "error": error, "traceback": traceback.format_exc()[-4000:]})
                reporter.line(f"[{i}/{len(todo)}] {cell.label}: FAILED ({error}); --keep-going: on to the next cell "
                              f"(traceback in {out_dir / 'runs.jsonl'})")
                clock.observe_cell(cell)
                continue
            if outcome == "recorded":  # a concurrent run finished it meanwhile
                skipped += 1
                clock.observe_cell(cell)
                continue
            if outcome == "claimed":
                status["claimed_elsewhere"] += 1
                reporter.line(f"[{i}/{len(todo)}] {cell.label}: another run is computing it (claims/{key}.json)")
                clock.observe_cell(cell)
                continue
            write_leaderboard(out_dir)
            status["ran"] += 1
            clock.live.pop(clock.trainer(cell), None)
            clock.observe_record(rec)
            clock.observe_cell(cell)
            r = rec["row"]
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(eta_text())
            reporter.line(f"[{i}/{len(todo)}] {cell.label}: CACC {100 * r['cacc']:.2f} ASR {100 * r['asr']:.2f}, "
                          f"{fmt_seconds(time.perf_counter() - c0)}"
                          f"{'' if r['victim_trained_here'] else ' (victim from the cache)'}; {eta_text()}")
    except KeyboardInterrupt:
        end = {"event": "interrupted", "error": "interrupted (Ctrl-C or SIGTERM)"}
        raise
    except BaseException as e:
        end = {"event": "failed", "error": f"{type(e).__name__}: {str(e)[:300]}"}
        raise
    finally:
        if bar is not None:
            bar.close()
        wall = time.perf_counter() - t0
        trained = ev.store.trainings - trainings0 + status["victims_trained_elsewhere"]  # here and on workers
        if todo:
            append_run(out_dir, {
                **end, "run_id": run_id, "command": command, "cells_run": status["ran"], "cells_skipped": skipped,
                "cells_copied": copied, "cells_claimed_elsewhere": status["claimed_elsewhere"],
                "cells_planned": len(cells), "victims_trained": trained, "cells_failed": len(failed),
                "wall_seconds": round(wall, 1), "git": git, **threads,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
        if load_records(out_dir) or (out_dir / "leaderboard.csv").is_file():
            write_leaderboard(out_dir)
    return {"ran": status["ran"], "skipped": skipped, "copied": copied, "wall_seconds": wall,
            "claimed_elsewhere": status["claimed_elsewhere"], "victims_trained": trained, "failed": failed}
