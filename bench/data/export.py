"""``bench export``: an attack's poisoned data for a dataset and seed, in the field's formats.

What a cell of that attack, dataset, seed and profile trains and is tested on (the runner's own
:func:`bench.runner.prepare`, so a profile's ``train_size`` / ``test_size`` slices are those of the
cell), written to one folder:

* OpenBackdoor's CSV layout (what MuScleLoRA releases): ``train-poison.csv`` (the poisoned training
  set, poison flags in the last column), ``train-clean.csv`` (the same rows before poisoning),
  ``dev-clean.csv``, ``dev-poison.csv``, ``test-clean.csv``, ``test-poison.csv``; each with a row-index
  column and the header ``,0,1,2`` (columns text, label, poison_label);
* ``hf/``: the same splits as a Hugging Face ``datasets.DatasetDict`` (``save_to_disk``; load with
  ``datasets.load_from_disk``), with the extra columns bench has (``orig_label``, ``orig_text``);
* ``manifest.json``: attack, settings, dataset (with its content fingerprint), seed, profile, counts,
  the sha256 of every CSV file and the row digests bench keys victims by.

``bench run -a file --set file.folder=DIR --dataset D --seed S --profile P`` imports it again: the
same training rows in the same order (so the same victim key), the same clean dev/test and poisoned
test rows, hence the same numbers; only the attack's name in the record differs (``file`` against
the original name), so the cell key differs too: ``manifest.json`` holds the original cell's key
(``original_key_with_defense_none``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import datasets
import pandas as pd

from .. import registry
from ..config import ConfigError, build_config
from ..engine.profiles import Profile
from ..reporting.results import ResultsError, git_state, write_text_atomic

CSV_FILES = ("train-poison.csv", "train-clean.csv", "dev-clean.csv", "dev-poison.csv", "test-clean.csv",
             "test-poison.csv")


def export_cell(attack: str, dataset: str, seed: int, profile: Profile, settings: dict | None = None):
    """The cell whose data is exported (defense ``none``: the data do not depend on the defense)."""
    from ..runner import Cell, DefenseSpec, resolve_dataset

    settings = dict(settings or {})
    stray = [k for k in settings if k != attack]
    if stray:
        raise ConfigError(f"--set names {stray[0]!r}; export takes the exported attack's settings ({attack}.KEY=VALUE) "
                          "and profile.KEY=VALUE")
    cls = registry.get("attack", attack)
    attack_obj = cls(build_config(cls.Config, settings.get(attack, {}), owner=f"attack {attack}"))
    none = registry.get("defense", "none")
    return Cell(resolve_dataset(dataset), profile.backbones[0], attack_obj, DefenseSpec(none, none.Config()), seed,
                profile)


def _openbackdoor_csv(path: Path, texts, labels, flags) -> None:
    frame = pd.DataFrame({0: list(texts), 1: [int(v) for v in labels], 2: [int(v) for v in flags]})
    frame.to_csv(path)  # the row index first, header ,0,1,2: what OpenBackdoor writes and reads


def export(cell, out: str | Path, data_dir: str | Path | None = None, command: str = "") -> dict:
    """Write the cell's poisoned data to ``out`` (see the module doc); return the manifest."""
    from ..reporting.results import config_key
    from ..runner import DataCache, _digest, cell_config, prepare

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise ResultsError(f"--out {out}: {'a file' if not out.is_dir() else 'a folder that holds other files'}; give "
                           "a new or empty folder (a folder holding an earlier export is overwritten)")
    data = DataCache(data_dir).get(cell.dataset)
    prep = prepare(cell, data)
    p = prep.poisoned
    prof = cell.profile
    imported = getattr(cell.attack, "imported", False)
    clean_train = None if imported else cell.attack.training_rows(data, prof.train_size, cell.seed)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "hf", ignore_errors=True)

    n, t = len(p.train), p.target_label
    splits = {
        "train-poison.csv": (p.train["text"], p.train["label"], p.train["poisoned"]),
        "dev-clean.csv": (p.dev_clean["text"], p.dev_clean["label"], [0] * len(p.dev_clean)),
        "dev-poison.csv": (p.dev_poison["text"], [t] * len(p.dev_poison), [1] * len(p.dev_poison)),
        "test-clean.csv": (p.test_clean["text"], p.test_clean["label"], [0] * len(p.test_clean)),
        "test-poison.csv": (p.test_poison["text"], [t] * len(p.test_poison), [1] * len(p.test_poison)),
    }
    if clean_train is not None:
        splits["train-clean.csv"] = (clean_train["text"], clean_train["label"], [0] * len(clean_train))
    else:
        (out / "train-clean.csv").unlink(missing_ok=True)
    files = {}
    for name, (texts, labels, flags) in splits.items():
        _openbackdoor_csv(out / name, texts, labels, flags)
        files[name] = {"rows": len(texts), "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest()}

    hf = {"train": p.train, "dev_clean": p.dev_clean, "dev_poison": p.dev_poison, "test_clean": p.test_clean,
          "test_poison": p.test_poison}
    if clean_train is not None:
        hf["train_clean"] = clean_train
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the command prints its own summary
    try:
        datasets.DatasetDict({k: datasets.Dataset.from_dict(v.to_dict()) for k, v in hf.items()}).save_to_disk(
            str(out / "hf"))
    finally:
        if bars:
            datasets.enable_progress_bars()

    config = cell_config(cell, data)
    manifest = {
        "what": "bench export: the poisoned data of one cell (attack x dataset x seed x profile)",
        "attack": config["attack"],
        "stated": cell.attack.stated(p),  # poison_rate, label_regime, trigger_count as the record states them
        "target_label": t,
        "dataset": config["dataset"],
        "seed": cell.seed,
        "profile": {"name": prof.name, "train_size": prof.train_size, "test_size": prof.test_size},
        "counts": {**p.counts, "n_train": n, "n_dev_clean": len(p.dev_clean), "n_dev_poison": len(p.dev_poison),
                   "n_test_clean": len(p.test_clean), "n_test_poison": len(p.test_poison)},
        "files": files,
        "row_digests": {  # as bench.runner digests them (train: text, label, poisoned; the others: text, label)
            "train": _digest(p.train["text"], p.train["label"], p.train["poisoned"]),
            "dev_clean": _digest(p.dev_clean["text"], p.dev_clean["label"]),
            "test_clean": _digest(p.test_clean["text"], p.test_clean["label"]),
            "test_poison": _digest(p.test_poison["text"], [t] * len(p.test_poison)),
        },
        "format": ("OpenBackdoor CSV: a row-index column, header ,0,1,2; columns text, label, poison_label "
                   "(1 = poisoned). hf/: datasets.DatasetDict.save_to_disk with the splits "
                   + ", ".join(hf) + " (columns as bench holds them; -1 = unknown)"),
        "dev_note": ("dev-clean.csv is the dataset's whole dev split; bench splits it into model-selection rows and "
                     "the defender's clean rows per seed (bench.runner.split_dev), and an import reads the dev split "
                     "from the dataset, not from this file"),
        # the key of the original cell's record under defense `none` (an import is keyed as attack `file`)
        "original_key_with_defense_none": config_key(config),
        "import_with": (f"bench run -a file --set file.folder={out.resolve()} --dataset {cell.dataset} "
                        f"--seed {cell.seed} --profile {prof.name}"
                        + (f" --set profile.train_size={prof.train_size}" if prof.train_size is not None and
                           prof.train_size != _profile_default(prof, "train_size") else "")
                        + (f" --set profile.test_size={prof.test_size}" if prof.test_size is not None else "")
                        + " -d DEFENSE"),
        "command": command,
        "git": git_state(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def _profile_default(prof: Profile, field: str):
    from ..engine.profiles import PROFILES

    return getattr(PROFILES[prof.name], field)
