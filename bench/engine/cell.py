"""One cell, in three steps: :func:`prepare` (poisoned data and the dev split, the same for every
defense), :meth:`Evaluator.victim` (the trained victim, from the victim cache when another cell or run
already trained it) and :meth:`Evaluator.evaluate` (calibrate, predict the shuffled test inputs,
metrics); :func:`build_record` makes the cell's record of them. :func:`run_cell` runs one cell.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import datasets
import numpy as np

from ..attack import PoisonedData
from ..config import config_dict
from ..data import DataError, TextDataset, stratified_indices
from ..data.stealth import stealth_scores
from ..defense import Defense, DefenseContext
from ..errors import ContractError
from ..models.backbones import resolve_backbone
from ..models.seeding import torch_seeded
from ..models.training import pick_device, train
from ..models.victim import Victim, VictimStore
from ..reporting.metrics import attack_success_rate, clean_accuracy
from ..reporting.record import EvaluationInfo, Row, TrainingInfo
from ..reporting.results import config_key, provenance
from . import progress
from .plan import Cell, DataCache, DefenseSpec, _defense_identity, cell_config
from .profiles import Profile

MIN_ASR_ROWS = 5  # fewer poisoned test rows than this: ASR is refused (one row would move it by > 20 points)
WARN_ASR_ROWS = 50  # fewer than this: a warning (once per dataset and attack in a process)
_WARNED: set = set()

# profile fields that do not change a trained model (left out of victim keys)
EVAL_ONLY_FIELDS = ("name", "description", "eval_batch_size", "datasets", "backbones", "stealth_samples",
                    "stealth_lm", "scorer_lm", "test_size", "min_selection")


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
    reads = spec is None or spec.cls.reads_training_rows  # (a control that keeps no row: only the length counts)
    return {
        "train": _digest(t["text"], t["label"], t["poisoned"]) if reads else {"rows": len(t)},
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


def _training_rows(trainer: Defense, t: datasets.Dataset, ctx: DefenseContext):
    """(keep mask, texts, labels, added rows): the poisoned training rows ``trainer.select_train`` keeps,
    then the rows ``trainer.add_train`` adds."""
    rows = datasets.Dataset.from_dict({"text": t["text"], "label": t["label"], "row_id": list(range(len(t)))})
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
    return keep, texts, labels, added


class Evaluator:
    """Runs cells; holds what is expensive and shared: datasets, the victim store, the scorers."""

    def __init__(self, data: DataCache | None = None, store: VictimStore | None = None, git: dict | None = None):
        self.data = data or DataCache()
        self.store = store or VictimStore()
        self.git = git

    # --- the victim ------------------------------------------------------------------------
    def context(self, cell: Cell, prep: Prepared) -> DefenseContext:
        from ..models.lm import get_scorer

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
            return self._train_victim(cell, prep, trainer, ctx, built["loaded"], model, tokenizer, on_step, on_model)

        if on_model is not None:  # an analysis that watches training: always train, never cache
            model, tok = build()
            info = do_train(model, tok)
            return Victim(model, tok, prof, pick_device(prof.device), key, info), True
        return self.store.get(key, build, do_train, prof, pick_device(prof.device), identity)

    def _train_victim(self, cell: Cell, prep: Prepared, trainer: Defense, ctx: DefenseContext, loaded,
                      model, tokenizer, on_step: Callable[[int, int], None] | None, on_model: Callable | None) -> dict:
        """Train a victim on the rows ``trainer`` keeps and adds (and its reference rows); the victim's info."""
        t = prep.poisoned.train
        keep, texts, labels, added = _training_rows(trainer, t, ctx)
        if not trainer.reads_training_rows and keep.any():
            raise ContractError(f"{trainer.name} declares reads_training_rows = False (its victim is shared across "
                                f"attacks) but its select_train kept {int(keep.sum())} row(s); drop every row or "
                                "leave reads_training_rows True")
        n_ref = trainer.reference_size(loaded)
        reference = ctx.clean(n_ref) if n_ref else None
        device = pick_device(cell.profile.device)
        if on_model is not None:
            on_model(model.to(device), tokenizer, ctx)
        result = train(model, tokenizer, texts, labels, prep.selection["text"], prep.selection["label"],
                       cell.profile, trainer, cell.seed, device,
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
    if not cell.defense.cls.reads_training_rows:  # a victim shared across attacks: this cell's poison, not its trainer's
        info = {**info, **_filter_stats(np.zeros(len(p.train), dtype=bool), np.asarray(p.train["poisoned"]))}
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
