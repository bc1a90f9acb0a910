"""The one place that crosses attacks, defenses, datasets and backbones.

:func:`plan` turns names and settings into validated :class:`Cell` objects (every typo fails here,
before any training starts); :func:`run_cell` runs one cell and returns its record;
:func:`run_grid` runs many, skipping cells already recorded with the same configuration.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import registry
from .attack import Attack
from .backbones import resolve_backbone
from .config import ConfigError, build_config, changed_settings, config_dict, parse_assignments
from .data import DataError, TextDataset, load_csv_folder, load_hub, resolve_data_dir, stratified_indices
from .defense import Defense, DefenseContext
from .metrics import attack_success_rate, clean_accuracy
from .profiles import PROFILES, Profile
from .results import (
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
from .training import make_classifier, pick_device, train


@dataclass
class Cell:
    dataset: str
    backbone: str
    attack: Attack
    defense: Defense
    seed: int
    profile: Profile

    def settings(self) -> str:
        """The settings that differ from the defaults, e.g. ``lora.r=16; profile.epochs=1``."""
        parts = changed_settings(self.attack.name, self.attack.config, type(self.attack)().config)
        parts += changed_settings(self.defense.name, self.defense.config, type(self.defense)().config)
        parts += changed_settings("profile", self.profile, PROFILES[self.profile.name])
        return "; ".join(parts)

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.backbone}/{self.attack.name}/{self.defense.name}/seed{self.seed}"


def _plugin(kind: str, name: str, settings: dict[str, dict[str, Any]]) -> Any:
    cls = registry.get(kind, name)
    cfg = build_config(cls.Config, settings.get(name, {}), owner=f"{kind} {name}")
    return cls(cfg)


def plan(
    datasets: list[str], backbones: list[str], attacks: list[str], defenses: list[str], seeds: list[int],
    profile: Profile, settings: dict[str, dict[str, Any]] | None = None,
) -> list[Cell]:
    """Every combination, validated. ``settings`` maps a plugin name to its Config values; they
    override the profile's ``plugin_settings``."""
    user = dict(settings or {})
    known = set(attacks) | set(defenses)
    stray = [k for k in user if k not in known and k != "profile"]
    if stray:
        raise ConfigError(
            f"--set names {stray[0]!r}, which is not among the selected attacks or defenses "
            f"({', '.join(sorted(known))}).{registry.suggest(stray[0], sorted(known))}"
        )
    settings = {k: dict(v) for k, v in parse_assignments(list(profile.plugin_settings)).items() if k in known}
    for plugin, values in user.items():
        settings.setdefault(plugin, {}).update(values)
    for name in datasets:
        if not registry.has("dataset", name) and not Path(name).is_dir() and "/" not in name:
            registry.get("dataset", name)  # raises with "did you mean"
    attack_objs = {a: _plugin("attack", a, settings) for a in attacks}
    defense_objs = {d: _plugin("defense", d, settings) for d in defenses}
    return [
        Cell(ds, bb, attack_objs[a], defense_objs[d], seed, profile)
        for ds, bb, a, d, seed in itertools.product(datasets, backbones, attacks, defenses, seeds)
    ]


class DataCache:
    """Datasets loaded once per process, keyed by name and data folder."""

    def __init__(self, data_dir: str | Path | None = None):
        self.data_dir = data_dir
        self._cache: dict[str, TextDataset] = {}

    def get(self, name: str) -> TextDataset:
        if name not in self._cache:
            if registry.has("dataset", name):
                self._cache[name] = registry.get("dataset", name)().load(resolve_data_dir(self.data_dir))
            elif Path(name).is_dir():
                self._cache[name] = load_csv_folder(name)
            elif "/" in name:
                self._cache[name] = load_hub(name)
            else:
                registry.get("dataset", name)
        return self._cache[name]


def _defense_identity(defense: Defense) -> dict:
    """Name, resolved config and (when not 1) version: version 1 leaves keys made before versions existed as they were."""
    ident = {"name": defense.name, "config": config_dict(defense.config)}
    if defense.version != 1:
        ident["version"] = defense.version
    return ident


def cell_config(cell: Cell, data: TextDataset) -> dict:
    """The content that identifies a cell's result (its record key is a hash of this)."""
    return {
        "dataset": {"name": cell.dataset, "fingerprint": data.fingerprint, "num_labels": data.num_labels},
        "backbone": resolve_backbone(cell.backbone).identity(),
        "attack": {"name": cell.attack.name, "config": config_dict(cell.attack.config),
                   **cell.attack.source_identity(data)},
        "defense": _defense_identity(cell.defense),
        "profile": config_dict(cell.profile),
        "seed": cell.seed,
    }


def _reference_split(dev, n: int, seed: int):
    """(reference set of n clean dev rows drawn with ``seed``, the dev rows left for model selection)."""
    if n <= 0:
        return None, dev
    if n >= len(dev):
        raise DataError(f"the defense asks for {n} clean reference samples but the dev split has only {len(dev)}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EF]))
    perm = rng.permutation(len(dev))
    ref_idx, rest_idx = np.sort(perm[:n]), np.sort(perm[n:])
    return dev.select(ref_idx), dev.select(rest_idx)


def _rows_digest(ds) -> str:
    h = hashlib.sha256()
    for text, label in zip(ds["text"], ds["label"]):
        h.update(f"{label}\t{text}\n".encode())
    return h.hexdigest()[:16]


def training_key(cell: Cell, data: TextDataset, train_rows, dev_rows) -> str:
    """What a trained model depends on: the training and dev rows (content), defense, backbone, profile, seed.

    Two cells with the same training key train the same model (for example every attack at poison
    rate 0), so a grid trains it once.
    """
    blob = {
        "train": _rows_digest(train_rows), "dev": _rows_digest(dev_rows), "num_labels": data.num_labels,
        "defense": _defense_identity(cell.defense),
        "backbone": resolve_backbone(cell.backbone).identity(),
        "profile": config_dict(cell.profile), "seed": cell.seed,
    }
    return config_key(blob)


class TrainedModels:
    """The last few trained models of a grid, keyed by :func:`training_key` (content, never names)."""

    def __init__(self, size: int = 2):
        self.size = size
        self._items: dict[str, dict] = {}

    def get(self, key: str) -> dict | None:
        return self._items.get(key)

    def put(self, key: str, item: dict) -> None:
        self._items.pop(key, None)
        self._items[key] = item
        while len(self._items) > self.size:
            self._items.pop(next(iter(self._items)))


def run_cell(
    cell: Cell, data: TextDataset, on_step: Callable[[int, int], None] | None = None, git: dict | None = None,
    on_model: Callable[[Any, Any, DefenseContext], None] | None = None, trained: TrainedModels | None = None,
) -> dict:
    """Run one cell; return its record (metrics, counts, config and provenance).

    ``on_model(model, tokenizer, ctx)`` sees the model just before training (analyses that watch it).
    ``trained``: models trained by earlier cells; one with the same :func:`training_key` is evaluated
    instead of training again (the record names the cell that trained it).
    """
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    prof = cell.profile
    train_split = data.train
    if prof.train_size is not None:
        train_split = train_split.select(stratified_indices(train_split["label"], prof.train_size, cell.seed))
    poisoned = cell.attack.poison(data, cell.seed, train=train_split)
    if len(poisoned.test_poison) == 0:
        raise DataError(
            f"{cell.label}: the attack produced no poisoned test rows (no non-target test row has a trigger), "
            "so ASR is undefined"
        )

    stealth = {"ppl_increase": None, "ppl_increase_median": None, "similarity": None, "n_stealth": 0}
    if prof.stealth_samples > 0:
        stealth = stealth_scores(
            poisoned.test_poison["orig_text"], poisoned.test_poison["text"], cell.seed, prof.stealth_samples,
            prof.stealth_lm,
        )
    tkey = training_key(cell, data, poisoned.train, poisoned.dev_clean)
    hit = trained.get(tkey) if (trained is not None and on_model is None) else None
    if hit is None:
        backbone = resolve_backbone(cell.backbone)
        loaded = backbone.load(data.num_labels, cell.seed)
        n_ref = cell.defense.reference_size(loaded)
        reference, dev_sel = _reference_split(poisoned.dev_clean, n_ref, cell.seed)
        ctx = DefenseContext(cell.seed, data.num_labels, dev_sel, reference, prof)
        with torch_seeded(cell.seed):  # defenses may draw from torch's global generator (e.g. PEFT's init)
            train_ds = cell.defense.filter_train(poisoned.train, ctx)
            model = cell.defense.prepare_model(loaded, ctx)
        device = pick_device(prof.device)
        if on_model is not None:
            on_model(model.to(device), loaded.tokenizer, ctx)
        result = train(
            model, loaded.tokenizer, train_ds["text"], train_ds["label"], dev_sel["text"], dev_sel["label"],
            prof, cell.defense, cell.seed, device,
            reference=(reference["text"], reference["label"]) if reference is not None else None, on_step=on_step,
        )
        classify = make_classifier(model, loaded.tokenizer, prof, device)
        hit = {"defense": cell.defense, "ctx": ctx, "classify": classify, "result": result, "device": device,
               "n_train_after_defense": len(train_ds), "n_ref": n_ref, "trained_by": cell.label}
        if trained is not None:
            trained.put(tkey, hit)
        shared_from = None
    else:
        shared_from = hit["trained_by"]
    # the defense instance that prepared the model also predicts (it may hold state from training)
    defense, ctx, classify, result, device = hit["defense"], hit["ctx"], hit["classify"], hit["result"], hit["device"]
    n_ref, dev_sel = hit["n_ref"], ctx.dev_clean
    clean_pred = defense.predict(list(poisoned.test_clean["text"]), classify, ctx)
    poison_pred = defense.predict(list(poisoned.test_poison["text"]), classify, ctx)
    cacc = clean_accuracy(clean_pred, poisoned.test_clean["label"])
    asr = attack_success_rate(poison_pred, poisoned.target_label)
    # the same rate without the trigger: non-target clean test rows predicted as the target
    nontarget = np.asarray(poisoned.test_clean["label"]) != poisoned.target_label
    clean_to_target = attack_success_rate(np.asarray(clean_pred)[nontarget], poisoned.target_label)
    wall = time.perf_counter() - t0

    config = cell_config(cell, data)
    key = config_key(config)
    counts = {
        **poisoned.counts,
        "n_train_after_defense": hit["n_train_after_defense"],
        "n_dev_selection": len(dev_sel),
        "n_reference": n_ref,
        "n_test_clean": len(poisoned.test_clean),
        "n_test_poison": len(poisoned.test_poison),
        "n_dev_poison": len(poisoned.dev_poison),
        "n_stealth": stealth["n_stealth"],
    }
    row = {
        "dataset": cell.dataset, "backbone": cell.backbone, "attack": cell.attack.name,
        "defense": cell.defense.name, "seed": cell.seed, "cacc": cacc, "asr": asr,
        "clean_to_target": clean_to_target,
        "poison_rate": cell.attack.config.poison_rate, "label_regime": cell.attack.config.label_regime,
        "target_label": poisoned.target_label, "trigger_count": cell.attack.trigger_count,
        "n_poisoned": counts["n_poisoned"], "n_train": counts["n_train"],
        "train_skipped_no_transform": counts["train_skipped_no_transform"],
        "test_skipped_no_transform": counts["test_skipped_no_transform"],
        "n_test_clean": counts["n_test_clean"], "n_test_poison": counts["n_test_poison"],
        "ppl_increase": stealth["ppl_increase"], "ppl_increase_median": stealth["ppl_increase_median"],
        "similarity": stealth["similarity"],
        "uses_clean_reference": n_ref > 0, "n_reference": n_ref, "best_epoch": result.best_epoch,
        "dev_acc": result.best_dev_acc, "train_seconds": round(result.train_seconds, 1),
        "sec_per_step": round(result.seconds_per_step, 4), "profile": prof.name,
        "settings": cell.settings(), "key": key,
    }
    return {
        "key": key,
        "row": row,
        "config": config,
        "counts": counts,
        "training": {
            "dev_acc_per_epoch": result.dev_acc_per_epoch, "loss_per_epoch": result.loss_per_epoch,
            "steps": result.steps, "trainable_params": result.trainable_params,
            "total_params": result.total_params, "device": str(device),
            "defense_stats": result.defense_stats,
        },
        "provenance": provenance(
            command="", wall_seconds=wall, git=git,
            extra={"started": started, "train_seconds": result.train_seconds, "training_key": tkey,
                   **({"model_trained_by": shared_from} if shared_from else {})},
        ),
    }


def run_grid(
    cells: list[Cell], out_dir: str | Path, data_dir: str | Path | None = None, command: str = "",
    progress: bool = True, force: bool = False, reuse: list[str | Path] | None = None,
) -> dict:
    """Run every cell not yet recorded in ``out_dir``; rebuild the leaderboard after each one.

    A cell recorded with the same key in one of the ``reuse`` folders is copied, not recomputed
    (its record says where it came from).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    git = git_state()  # the code this process runs is the code as it was when it started
    cache = DataCache(data_dir)
    trained = TrainedModels()
    t0 = time.perf_counter()
    # keys recomputed from each record's stored configuration (robust to how keys were once hashed)
    done = {config_key(r["config"]): r["key"] for r in load_records(out_dir)}
    elsewhere = {config_key(r["config"]): (Path(d), r) for d in (reuse or []) for r in load_records(Path(d))}
    todo, skipped, copied = [], 0, 0
    for cell in cells:  # resolve data and keys first: bad data fails before any training
        key = config_key(cell_config(cell, cache.get(cell.dataset)))
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
    bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=not progress, position=0)
    ran = 0
    try:
        for cell in todo:
            bar.set_postfix_str(cell.label)
            steps = tqdm(desc="  steps", unit="step", leave=False, disable=not progress, position=1)

            def on_step(step: int, total: int) -> None:
                steps.total = total
                steps.update(step - steps.n)

            rec = run_cell(cell, cache.get(cell.dataset), on_step=on_step, git=git, trained=trained)
            steps.close()
            rec["provenance"]["command"] = command
            old = done.get(rec["key"])
            if old and old != rec["key"]:  # a --force rerun of a record stored under an older key
                record_path(out_dir, old).unlink(missing_ok=True)
            write_json_atomic(record_path(out_dir, rec["key"]), rec)
            write_leaderboard(out_dir)
            ran += 1
            bar.update(1)
    finally:
        bar.close()
        wall = time.perf_counter() - t0
        if ran or copied or not cells:
            append_run(out_dir, {
                "command": command, "cells_run": ran, "cells_skipped": skipped, "cells_copied": copied,
                "cells_planned": len(cells),
                "wall_seconds": round(wall, 1), "git": git,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
        write_leaderboard(out_dir)
    return {"ran": ran, "skipped": skipped, "copied": copied, "wall_seconds": wall}
