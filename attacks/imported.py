"""Poisoned data made elsewhere: the attack ``file``.

``--attack file --set file.train=PATH --set file.test_poison=PATH`` trains on a poisoned training set
read from a file and measures ASR on a poisoned test set read from a file; ``--set file.folder=DIR``
takes both from a folder in OpenBackdoor's / MuScleLoRA's layout, or from what ``bench export`` wrote.
The clean dev and test splits come from the dataset (``--dataset``), as for every attack: models are
selected on the dataset's own clean dev split, never on a dev file of the import.

File formats (:func:`read_rows`):

* OpenBackdoor's CSV (what MuScleLoRA releases): columns text, label, poison_label (1 = poisoned),
  with or without a leading row-index column, with or without the header ``,0,1,2`` (``0,1,2``
  when there is no index column);
* a CSV whose header names its columns: ``text,label`` and optionally ``poisoned`` (or
  ``poison_label``) and ``orig_label`` (the label a poisoned row had before poisoning).

A folder (:func:`folder_files`): ``train-poison.csv`` and ``test-poison.csv`` (and, when present,
``train-clean.csv``, ``dev-poison.csv``). In MuScleLoRA's release an attack folder holds the mixture
in ``clean/<rate>/`` or ``mix/<rate>/`` (its top-level ``train-poison.csv`` has *every* row
poisoned): the one mixture folder is used, and a folder with several asks for one of them.

What the record states is derived from the rows, and ``None`` (unknown) where the rows cannot say:

* poison flags from the file; else, given the clean training split it was made from
  (``file.clean_train=PATH``, ``train-clean.csv`` in a folder, or ``dataset`` for the dataset's own
  training split), the rows whose text is not in it; else unknown: ``n_poisoned``, ``poison_rate``
  and the label regime are ``None``, never 0;
* the label regime from the labels the poisoned rows had before poisoning (an ``orig_label``
  column, or the labels of the clean rows missing from the file): all the target -> ``clean-label``,
  none -> ``dirty``, both -> ``mixed`` (bench's names); unknown -> ``None``;
* the target label from the poisoned test set (the label its rows carry) or ``file.target_label``;
  both given and different is an error.

A profile's ``train_size`` never silently subsamples an imported file: a larger file is sampled
stratified by poison flag and label (so the poisoned share is kept), a smaller one is kept whole
(``file.keep_whole=true`` keeps any file whole), and ``counts.train_sampling`` says which.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import datasets
import numpy as np
import pandas as pd
import typer

from bench.engine import progress
from bench import registry
from bench.cli_shared import USER_ERRORS, DataDirOpt, command_line, fail
from bench.attack import Attack, AttackError, PoisonedData
from bench.config import build_config, config_dict
from bench.data import TextDataset, stratified_indices
from bench.registry import register

ROLES = ("train", "test_poison", "clean_train", "dev_poison")
_WARNED: set = set()


def _warn_once(key, msg: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        progress.warn(msg)


# --- reading files ------------------------------------------------------------------------------

_READ: dict[tuple, tuple[pd.DataFrame, str]] = {}  # (path, size, mtime) -> (rows, format)
_SHA: dict[tuple, str] = {}


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def file_sha256(path: Path) -> str:
    key = _stat_key(path)
    if key not in _SHA:
        _SHA[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _SHA[key]


def _is_int_column(col: pd.Series) -> bool:
    values = pd.to_numeric(col.str.strip(), errors="coerce")
    return bool(len(col)) and bool(values.notna().all()) and bool((values == values.round()).all())


def read_rows(path: str | Path, role: str = "file") -> tuple[pd.DataFrame, str]:
    """(rows, format) of a poisoned-data CSV: columns text, label (int) and, where the file has them,
    poisoned (0/1) and orig_label (int). Cached per file content (path, size, mtime)."""
    path = Path(path)
    key = _stat_key(path)
    if key in _READ:
        return _READ[key][0].copy(), _READ[key][1]
    where = f"{path} (file.{role})"
    try:
        raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise AttackError(f"{where}: the file is empty; it needs rows text,label[,poison_label]") from None
    except pd.errors.ParserError as e:
        raise AttackError(f"{where}: cannot be read as a CSV ({str(e).strip()}); a text holding commas must be "
                          'quoted ("a, b",1,0)') from None
    except UnicodeDecodeError as e:
        raise AttackError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from None
    first = [str(v).strip() for v in raw.iloc[0]]
    lowered = [v.lower() for v in first]
    names = {"text": "text", "sentence": "text", "label": "label", "poisoned": "poisoned",
             "poison_label": "poisoned", "orig_label": "orig_label"}
    if "text" in lowered or "sentence" in lowered:  # a header naming its columns
        cols = {names[v]: i for i, v in enumerate(lowered) if v in names}
        if "label" not in cols:
            raise AttackError(f"{where}: the header {','.join(first)} has no label column; name the columns "
                              "text,label[,poisoned] or use OpenBackdoor's layout (text, label, poison_label)")
        body, fmt = raw.iloc[1:], "csv with named columns " + ",".join(v for v in lowered if v in names)
    else:
        header = first in (["", "0", "1", "2"], ["0", "1", "2"], ["", "0", "1"], ["0", "1"])
        body = raw.iloc[1:] if header else raw
        n = raw.shape[1]
        if n == 4:  # index, text, label, poison_label
            cols, layout = {"text": 1, "label": 2, "poisoned": 3}, "index, text, label, poison_label"
        elif n == 3 and (first == ["", "0", "1"] or (not header and not _is_int_column(body.iloc[:, 1]))):
            cols, layout = {"text": 1, "label": 2}, "index, text, label"
        elif n == 3:
            cols, layout = {"text": 0, "label": 1, "poisoned": 2}, "text, label, poison_label"
        elif n == 2:
            cols, layout = {"text": 0, "label": 1}, "text, label"
        else:
            raise AttackError(f"{where}: {n} columns without a header naming them; expected OpenBackdoor's "
                              "layout (index, text, label, poison_label; header ,0,1,2 optional) or a header "
                              "text,label[,poisoned]")
        fmt = f"OpenBackdoor csv ({layout}; {'header ' + ','.join(first) if header else 'no header'})"
    if not len(body):
        raise AttackError(f"{where}: no rows after the header; the file needs at least one row")
    out = pd.DataFrame({"text": body.iloc[:, cols["text"]].astype(str).to_numpy()})
    for name in ("label", "poisoned", "orig_label"):
        if name not in cols:
            continue
        col = body.iloc[:, cols[name]].astype(str).str.strip()
        values = pd.to_numeric(col, errors="coerce")
        bad = values.isna() | (values != values.round())
        if name == "poisoned":
            bad |= ~values.isin([0, 1])
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            want = "0 or 1 (1 = poisoned)" if name == "poisoned" else "an integer class id"
            raise AttackError(f"{where}: data row {i + 1} has {name} {col.iloc[i]!r}, expected {want}; detected "
                              f"format: {fmt}. Fix that row, or give the file a header naming its columns "
                              "(text,label[,poisoned])")
        out[name] = values.astype(int).to_numpy()
    _READ[key] = (out, fmt)
    return out.copy(), fmt


def _check_range(df: pd.DataFrame, path: Path, role: str, data: TextDataset) -> None:
    for col in ("label", "orig_label"):
        if col not in df:
            continue
        bad = (df[col] < 0) | (df[col] >= data.num_labels)
        if col == "orig_label":
            bad &= df[col] != -1  # -1: unknown
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise AttackError(f"{path} (file.{role}): data row {i + 1} has {col} {int(df[col].iloc[i])}, out of "
                              f"range for {data.name} ({data.num_labels} classes: 0..{data.num_labels - 1}); "
                              "import it with the dataset it was made from (--dataset)")


# --- where the files are ------------------------------------------------------------------------

def _is_rate(name: str) -> bool:
    try:
        float(name)
    except ValueError:
        return False
    return True


def folder_files(folder: str | Path) -> dict[str, Path]:
    """The files of an OpenBackdoor/MuScleLoRA (or ``bench export``) folder, by role; the keys
    ``release_dev_clean`` and ``release_test_clean`` are there only for the check that a release's
    dev and test splits differ. Raises with the layout spelt out when the folder does not fit it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AttackError(f"file.folder {str(folder)!r} is not a folder; give a folder holding train-poison.csv and "
                          "test-poison.csv (OpenBackdoor / MuScleLoRA layout, or what `bench export` wrote)")
    mixtures = sorted(p for p in folder.glob("*/*/train-poison.csv")
                      if p.parent.parent.name in ("clean", "mix", "dirty") and _is_rate(p.parent.name))
    if len(mixtures) > 1:
        listed = ", ".join(str(p.parent.relative_to(folder)) for p in mixtures)
        raise AttackError(f"file.folder {folder} holds several poisoned training mixtures ({listed}); name one: "
                          f"--set file.folder={mixtures[0].parent}")
    if mixtures:
        train, base = mixtures[0], folder
    elif (folder / "train-poison.csv").is_file():
        train = folder / "train-poison.csv"
        # a <attack>/<clean|mix>/<rate> folder of the release: the test files are two levels up
        base = folder if (folder / "test-poison.csv").is_file() else folder.parent.parent
    else:
        below = sorted(str(p.parent.relative_to(folder)) for pattern in ("*/test-poison.csv", "*/*/test-poison.csv")
                       for p in folder.glob(pattern))
        hint = f"; attack folders below it: {', '.join(below[:8])}" if below else ""
        raise AttackError(f"file.folder {folder}: no train-poison.csv in it nor in a clean/<rate>/ or mix/<rate>/ "
                          "folder below it; an OpenBackdoor/MuScleLoRA folder holds train-poison.csv and "
                          "test-poison.csv (or give the files: --set file.train=PATH --set file.test_poison=PATH)"
                          f"{hint}"
                          + (" (`bench musclelora-release` runs them all)" if below else ""))
    out = {"train": train}
    for role, name in (("test_poison", "test-poison.csv"), ("clean_train", "train-clean.csv"),
                       ("dev_poison", "dev-poison.csv"), ("release_dev_clean", "dev-clean.csv"),
                       ("release_test_clean", "test-clean.csv")):
        if (base / name).is_file():
            out[role] = base / name
    return out


def _check_provenance(files: dict, data: TextDataset, facts: dict) -> None:
    """Warnings about where the files came from: a release whose dev and test splits are the same
    sentences (MuScleLoRA's HSOL), and a `bench export` made from another dataset."""
    if "release_dev_clean" in files and "release_test_clean" in files:
        dev_rel, _ = read_rows(files["release_dev_clean"], "dev-clean")
        test_rel, _ = read_rows(files["release_test_clean"], "test-clean")
        same = int(test_rel["text"].isin(set(dev_rel["text"])).sum())
        facts["release_dev_test_overlap"] = same
        if same:
            _warn_once(("release", str(files["release_dev_clean"])), (
                f"{files['release_dev_clean'].parent}: its dev-clean.csv and test-clean.csv share {same} of "
                f"{len(test_rel)} test sentences (the release selects models on its test set). bench never reads "
                f"that dev file: it selects on {data.name}'s own clean dev split ({len(data.dev)} rows)"))
    manifest = files["train"].parent / "manifest.json"
    if manifest.is_file():  # written by `bench export`: was it made from this dataset?
        try:
            made_from = json.loads(manifest.read_text()).get("dataset", {})
        except (json.JSONDecodeError, AttributeError):
            made_from = {}
        if made_from.get("fingerprint") not in (None, data.fingerprint):
            _warn_once(("manifest", str(manifest)), (
                f"{manifest}: exported from dataset {made_from.get('name')!r} (fingerprint "
                f"{made_from.get('fingerprint')}), imported with {data.name} ({data.fingerprint}): clean dev and test "
                f"come from {data.name}"))


def _absolute(value: str) -> str:
    return str(Path(value).expanduser().resolve()) if value else value


@dataclass(frozen=True)
class FileConfig:
    """Settings of the attack ``file`` (paths are stored as absolute paths)."""

    folder: str = ""  # an OpenBackdoor / MuScleLoRA folder, or what `bench export` wrote
    train: str = ""  # the poisoned training set (CSV)
    test_poison: str = ""  # the poisoned test set: non-target rows with the trigger, labelled with the target
    clean_train: str = ""  # the clean training split the file was made from; "dataset": the dataset's own
    dev_poison: str = ""  # poisoned dev rows (read by `bench fourier` only; never used to select a model)
    # instead of test_poison: a registered attack builds it at rate 0 (syntactic, style:transform=formal)
    test_attack: str = ""
    target_label: int | None = None  # None: the label the poisoned test set's rows carry
    trigger_count: int | None = None  # what the record states as trigger count (a file cannot say)
    keep_whole: bool = False  # train on the whole file even when it is larger than profile.train_size
    drop_dev_overlap: bool = False  # drop unpoisoned training rows whose text is in the dataset's dev split
    label: str = ""  # rows and tables name the attack file:<label> (file alone when empty)

    def __post_init__(self):
        for name in ("folder", "train", "test_poison", "dev_poison"):
            object.__setattr__(self, name, _absolute(getattr(self, name)))
        if self.clean_train != "dataset":
            object.__setattr__(self, "clean_train", _absolute(self.clean_train))

    def files(self) -> dict:
        """Role -> Path (``clean_train`` may be the string "dataset"); explicit paths override a folder's."""
        found = folder_files(self.folder) if self.folder else {}
        for role in ROLES:
            value = getattr(self, role)
            if value == "dataset":
                found[role] = value
            elif value:
                found[role] = Path(value)
        if self.test_attack:  # the attack builds the poisoned test set, whatever the folder holds
            found.pop("test_poison", None)
        return found

    def validate(self) -> None:
        if not self.folder and not self.train:
            raise AttackError("file: give the poisoned data: --set file.folder=DIR (OpenBackdoor / MuScleLoRA layout, "
                              "or a `bench export` folder), or --set file.train=PATH with --set file.test_poison=PATH")
        if self.test_poison and self.test_attack:
            raise AttackError("file: file.test_poison and file.test_attack both give the poisoned test set; keep one")
        if self.test_attack.partition(":")[0].strip() == "file":
            raise AttackError("file.test_attack=file: name an attack that builds a poisoned test set, e.g. syntactic")
        if self.test_attack:
            registry.get("attack", self.test_attack.partition(":")[0].strip())  # an unknown name fails now
        if self.label and not re.fullmatch(r"[A-Za-z0-9._-]+", self.label):
            raise AttackError(f"file.label {self.label!r}: use letters, digits, '.', '_' or '-' "
                              "(e.g. musclelora-badnets)")
        if self.trigger_count is not None and self.trigger_count < 1:
            raise AttackError(f"file.trigger_count {self.trigger_count}: give a count >= 1, or leave it unset "
                              "(unknown)")
        files = self.files()
        if "test_poison" not in files and not self.test_attack:
            raise AttackError("file: no poisoned test set; give --set file.test_poison=PATH (rows with the trigger, "
                              "labelled with the target), or let an attack build it: --set file.test_attack=syntactic")
        for role, path in files.items():
            if isinstance(path, Path) and not path.is_file():
                raise AttackError(f"file.{role}: {path} does not exist; give the path of a CSV file")


@dataclass
class _TrainPart:
    """The imported training rows (after any dev-overlap drop) and what the whole file says."""

    rows: pd.DataFrame  # text, label, poisoned (-1 unknown), orig_label (-1 unknown)
    facts: dict


@register("attack", "file")
class ImportedAttack(Attack):
    """Poisoned data from files: --set file.folder=DIR (OpenBackdoor/MuScleLoRA) or file.train=, file.test_poison=."""

    Config = FileConfig
    imported = True

    def __init__(self, config: FileConfig | None = None):
        super().__init__(config)
        self._parts: dict[tuple, _TrainPart] = {}

    @property
    def name(self) -> str:
        return f"file:{self.config.label}" if self.config.label else "file"

    @property
    def trigger_count(self):
        return self.config.trigger_count

    def stated(self, poisoned) -> dict:
        c = poisoned.counts
        return {"poison_rate": c["poison_rate"], "label_regime": c["label_regime"],
                "trigger_count": self.config.trigger_count}

    # --- the target label ---------------------------------------------------------------------
    def _target(self, data: TextDataset, files: dict) -> tuple[int, str]:
        setting = self.config.target_label
        if "test_poison" not in files:  # a test attack builds the poisoned test set
            if setting is not None:
                return self.target(data), "file.target_label"
            return self.target(data), f"the dataset's conventional target ({data.name})"
        path = files["test_poison"]
        rows, _ = read_rows(path, "test_poison")
        _check_range(rows, path, "test_poison", data)
        labels = Counter(int(v) for v in rows["label"])
        if len(labels) > 1:
            shown = ", ".join(f"label {k}: {v} rows" for k, v in sorted(labels.items()))
            raise AttackError(f"{path} (file.test_poison): a poisoned test set's rows all carry the target label (the "
                              f"label the trigger should produce), but this file has several ({shown}); keep only "
                              "the triggered rows of non-target sentences, labelled with the target")
        found = next(iter(labels))
        if setting is not None and setting != found:
            raise AttackError(f"file.target_label={setting}, but the rows of {path} carry label {found}: the two "
                              "disagree; drop the setting (the file decides) or fix the file")
        return found, "file.test_poison (the label its rows carry)" + (" = file.target_label" if setting is not None
                                                                        else "")

    # --- the training rows ----------------------------------------------------------------------
    def _train_part(self, data: TextDataset) -> _TrainPart:
        key = (data.fingerprint, data.num_labels)
        if key in self._parts:
            return self._parts[key]
        cfg = self.config
        files = cfg.files()
        target, target_from = self._target(data, files)
        df, fmt = read_rows(files["train"], "train")
        _check_range(df, files["train"], "train", data)
        path = files["train"]
        facts: dict = {"target_label_from": target_from, "files": {}}
        for role, p in files.items():
            if isinstance(p, Path) and role in ROLES:
                facts["files"][role] = {"path": str(p), "sha256": file_sha256(p)}
        facts["files"]["train"]["format"] = fmt
        facts["files"]["train"]["rows"] = len(df)

        clean = None
        if files.get("clean_train") == "dataset":
            clean = pd.DataFrame({"text": list(data.train["text"]), "label": list(data.train["label"])})
            facts["clean_train_from"] = f"the dataset's training split ({data.name})"
        elif "clean_train" in files:
            clean, _ = read_rows(files["clean_train"], "clean_train")
            facts["clean_train_from"] = str(files["clean_train"])

        # poison flags: the file's, else derived against the clean split, else unknown (-1)
        if "poisoned" in df:
            flags, facts["poison_flags"] = df["poisoned"].to_numpy(), "file"
        elif clean is not None:
            known = set(clean["text"])
            flags = np.array([0 if t in known else 1 for t in df["text"]], dtype=int)
            facts["poison_flags"] = "derived: rows whose text is not in the clean training split"
        else:
            flags, facts["poison_flags"] = np.full(len(df), -1), "unknown"
        wrong = np.flatnonzero((flags == 1) & (df["label"].to_numpy() != target))
        if len(wrong) and facts["poison_flags"] == "file":
            i = int(wrong[0])
            raise AttackError(f"{path} (file.train): data row {i + 1} is flagged poisoned but labelled "
                              f"{int(df['label'].iloc[i])}, not the target label {target} ({target_from}); a "
                              f"poisoned training row carries the target label ({len(wrong)} rows do not). Fix the "
                              "file's label or poison_label column, or set file.target_label")
        if len(wrong):
            facts["n_derived_poisoned_not_target"] = int(len(wrong))
            _warn_once(("not-target", str(path)), f"{path}: {len(wrong)} rows are not in the clean training split "
                       f"but do not carry the target label {target}; the clean split given may not be the one the "
                       "file was made from (they are counted as poisoned)")

        # the labels the poisoned rows had: an orig_label column, else the clean rows missing from the file
        orig = df["orig_label"].to_numpy().copy() if "orig_label" in df else np.full(len(df), -1)
        orig[flags == 0] = df["label"].to_numpy()[flags == 0]
        poisoned = flags == 1
        n_poisoned = int(poisoned.sum()) if (flags >= 0).all() else None
        source = None
        if n_poisoned and (orig[poisoned] >= 0).all():
            source, facts["orig_labels_from"] = Counter(int(v) for v in orig[poisoned]), "the file's orig_label column"
        elif n_poisoned and clean is not None:
            kept = Counter(zip(df["text"][flags == 0], df["label"][flags == 0]))
            missing = Counter(zip(clean["text"], clean["label"])) - kept
            n_missing = sum(missing.values())
            facts["n_clean_rows_missing_from_file"] = n_missing
            if n_missing == n_poisoned:
                source = Counter()
                for (_, label), count in missing.items():
                    source[int(label)] += count
                facts["orig_labels_from"] = "the clean training split: the labels of its rows missing from the file"
            else:
                facts["orig_labels_from"] = None
                _warn_once(("sources", str(path)), f"{path}: {n_poisoned} rows are poisoned but {n_missing} rows of "
                           "the clean training split are missing from the file, so the labels the poisoned rows had "
                           "(and the label regime) are unknown")
        regime = None
        if source:
            labels = set(source)
            regime = "clean-label" if labels == {target} else "dirty" if target not in labels else "mixed"
        facts.update({
            "n_train_file": len(df), "n_poisoned_file": n_poisoned,
            "n_poisoned_flipped_file": sum(c for k, c in source.items() if k != target) if source else
            (0 if n_poisoned == 0 else None),
            "poisoned_from_labels": {str(k): v for k, v in sorted(source.items())} if source else None,
            "label_regime": regime, "target_label": target,
        })

        dev_texts = set(data.dev["text"])
        in_dev = np.array([t in dev_texts for t in df["text"]], dtype=bool)
        facts["n_file_rows_in_dev"] = int(in_dev.sum())
        rows = pd.DataFrame({"text": df["text"], "label": df["label"], "poisoned": flags, "orig_label": orig})
        if cfg.drop_dev_overlap:
            drop = in_dev & (flags != 1)
            rows = rows[~drop].reset_index(drop=True)
            facts["n_train_dropped_dev_overlap"] = int(drop.sum())
        elif in_dev.any():
            _warn_once(("dev", str(path), data.fingerprint), (
                f"{path}: {int(in_dev.sum())} of its {len(df)} training rows are also rows of {data.name}'s dev "
                "split, which selects the model and supplies the defenses' clean rows: model selection then sees "
                "training rows. --set file.drop_dev_overlap=true drops them (the record counts them)"))
        _check_provenance(files, data, facts)
        part = _TrainPart(rows, facts)
        self._parts[key] = part
        return part

    def training_rows(self, data: TextDataset, size: int | None, seed: int) -> datasets.Dataset:
        """The imported rows, whole, or a stratified ``size``-row sample of a larger file that keeps
        its poisoned share (stratified by poison flag and label; by label alone when flags are unknown)."""
        rows = self._train_part(data).rows
        n = len(rows)
        if size is not None and not self.config.keep_whole and n > size:
            flags, labels = rows["poisoned"].to_numpy(), rows["label"].to_numpy()
            strata = labels if (flags < 0).any() else flags * data.num_labels + labels
            rows = rows.iloc[stratified_indices(strata, size, seed)]
            how = "label (poisoned rows unknown)" if (flags < 0).any() else "poison flag and label"
            _warn_once(("sample", self.config.files()["train"], size), (
                f"{self.name}: the imported training set has {n} rows, more than profile.train_size={size}: training "
                f"on {size} rows sampled stratified by {how} (counts.train_sampling says so); "
                "--set file.keep_whole=true (or --set profile.train_size=none) trains on all of them"))
        return datasets.Dataset.from_dict({c: rows[c].tolist() for c in ("text", "label", "poisoned", "orig_label")})

    # --- the poisoned data ------------------------------------------------------------------------
    def _test_attack(self, data: TextDataset) -> Attack:
        name, _, rest = self.config.test_attack.partition(":")
        cls = registry.get("attack", name.strip())  # looked up by name: attacks never import each other
        settings = dict(kv.split("=", 1) for kv in rest.split(",") if "=" in kv)
        settings = {k.strip(): v.strip() for k, v in settings.items()}
        settings.update(poison_rate="0", target_label=str(self.target(data)))
        return cls(build_config(cls.Config, settings, owner=f"file.test_attack {name.strip()}"))

    def poison(self, data: TextDataset, seed: int, train: datasets.Dataset | None = None):
        part = self._train_part(data)
        target = part.facts["target_label"]
        train = self.training_rows(data, None, seed) if train is None else train
        flags, orig = np.asarray(train["poisoned"]), np.asarray(train["orig_label"])
        known = not (flags < 0).any()
        whole = len(train) == len(part.rows)
        n_poisoned = int((flags == 1).sum()) if known else None
        if not known or not n_poisoned:
            flipped = n_poisoned  # None (unknown) or 0
        elif (orig[flags == 1] >= 0).all():
            flipped = int((orig[flags == 1] != target).sum())
        else:
            flipped = part.facts["n_poisoned_flipped_file"] if whole else None
        files = self.config.files()
        if "test_poison" in files:
            rows, _ = read_rows(files["test_poison"], "test_poison")
            test_poison = datasets.Dataset.from_dict({"text": rows["text"].tolist(), "label": [target] * len(rows),
                                                      "orig_label": [-1] * len(rows)})
            dev_poison = datasets.Dataset.from_dict({"text": [], "label": [], "orig_label": []})
            if "dev_poison" in files:
                drows, _ = read_rows(files["dev_poison"], "dev_poison")
                dev_poison = datasets.Dataset.from_dict({"text": drows["text"].tolist(), "label": [target] * len(drows),
                                                         "orig_label": [-1] * len(drows)})
            test_from, skipped = "file", {"dev": None, "test": None}
        else:
            other = self._test_attack(data)
            built = other.poison(data, seed, train=data.train.select([]))
            test_poison, dev_poison = built.test_poison, built.dev_poison
            test_from = f"attack {other.name} ({self.config.test_attack})"
            skipped = {s: built.counts.get(f"{s}_skipped_no_transform") for s in ("dev", "test")}
        test_texts, dev_texts = set(data.test["text"]), set(data.dev["text"])
        n_in_test = sum(t in test_texts for t in train["text"])
        own = sum(t in test_texts for t in data.train["text"])  # what the dataset's own split already shares
        if n_in_test > own:
            _warn_once(("test", str(files["train"]), data.fingerprint), (
                f"{files['train']}: {n_in_test} of its training rows are sentences of {data.name}'s test split "
                f"({own} of the dataset's own training rows are): CACC is then measured partly on training rows"))
        sampling = "whole" if whole else ("stratified-by-poison-flag" if known else "stratified-by-label")
        counts = {
            "n_train": len(train), "n_poisoned": n_poisoned, "n_poisoned_flipped": flipped, "n_pool": None,
            "train_skipped_no_transform": None, "dev_skipped_no_transform": skipped["dev"],
            "test_skipped_no_transform": skipped["test"],
            "poison_rate": round(n_poisoned / len(train), 6) if known and len(train) else None,
            "label_regime": part.facts["label_regime"] if n_poisoned != 0 else None,
            "train_sampling": sampling, "n_train_file": len(part.rows),
            "poison_flags": part.facts["poison_flags"], "target_label_from": part.facts["target_label_from"],
            "test_poison_from": test_from, "n_train_in_test": int(n_in_test),
            "n_train_in_dev": int(sum(t in dev_texts for t in train["text"])),
            "imported": {k: v for k, v in part.facts.items() if k not in ("poison_flags", "target_label_from")},
        }
        return PoisonedData(train, data.dev, dev_poison, data.test, test_poison, target, counts)

    def source_identity(self, data: TextDataset) -> dict:
        """The files' content (and a test attack's own source), so a changed file is a new cell."""
        files = self.config.files()
        ident = {"files": {role: file_sha256(p)[:16] for role, p in sorted(files.items())
                           if role in ROLES and isinstance(p, Path)}}
        if self.config.test_attack:
            other = self._test_attack(data)
            ident["test_attack"] = {"name": other.name, "config": config_dict(other.config),
                                    **other.source_identity(data)}
        return ident


# --- the MuScleLoRA release ------------------------------------------------------------------------

RELEASE_DATASETS = {"sst2": "sst-2", "hsol": "hsol"}  # bench dataset -> the release's folder
RELEASE_ATTACKS = ("badnets", "addsent", "stylebkd", "synbkd")


def musclelora_release(data_dir: str | Path, dataset: str, attacks: list[str] | None = None,
                       target: int = 1) -> list[tuple[str, Path]]:
    """(attack, folder) for each attack of MuScleLoRA's released poisoned data for ``dataset``
    (``<data>/published/musclelora/<sst-2|hsol>/<target>/<attack>/``)."""
    if dataset not in RELEASE_DATASETS:
        raise AttackError(f"the MuScleLoRA release holds {', '.join(RELEASE_DATASETS)}, not {dataset!r}"
                          f"{registry.suggest(dataset, list(RELEASE_DATASETS))}")
    root = Path(data_dir) / "published" / "musclelora" / RELEASE_DATASETS[dataset] / str(target)
    if not root.is_dir():
        raise AttackError(f"{root} does not exist; the benchmark data folder (--data-dir) holds the release under "
                          "published/musclelora/ (`bench data fetch musclelora-release` builds it; docs/data.md)")
    out = []
    for a in attacks or RELEASE_ATTACKS:
        if a not in RELEASE_ATTACKS:
            raise AttackError(f"the MuScleLoRA release's attacks are {', '.join(RELEASE_ATTACKS)}, not {a!r}"
                              f"{registry.suggest(a, list(RELEASE_ATTACKS))}")
        out.append((a, root / a))
    return out


@register("command", "musclelora-release")
def musclelora_release_cmd(
    ctx: typer.Context,
    dataset: Optional[List[str]] = typer.Option(None, "--dataset", metavar="sst2|hsol", help="Dataset (repeatable; default both)."),
    attack: Optional[List[str]] = typer.Option(
        None, "--attack", "-a", metavar="NAME", help="The release's attacks: badnets, addsent, stylebkd, synbkd (default all)."),
    defense: List[str] = typer.Option(..., "--defense", "-d", metavar="NAME", help="Defense name (repeatable)."),
    backbone: Optional[List[str]] = typer.Option(None, "--backbone", "-b", metavar="NAME|FOLDER|HUB_ID", help="Backbone."),
    seed: Optional[List[int]] = typer.Option(None, "--seed", "-s", metavar="N", help="Seed (repeatable; default 1)."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", metavar="NAME", help="Run profile (default cpu)."),
    out: Path = typer.Option(Path("results") / "imported", "--out", "-o", metavar="FOLDER", help="Results folder."),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="PLUGIN.KEY=VALUE",
                                             help="Settings as for run (file.KEY=VALUE applies to every imported attack)."),
    force: bool = typer.Option(False, "--force", help="Recompute cells already recorded. Trained victims are "
                               "still reused from the victim cache; to retrain them too, remove them first with "
                               "`bench cache clear` (`bench cache list` shows them)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Plain lines instead of bars."),
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Run MuScleLoRA's released poisoned data (<data>/published/musclelora/, its four attacks) through defenses:
    one `file` attack per release folder, named file:musclelora-<attack>. Unpoisoned training rows whose
    sentence is in the dataset's dev split are dropped (file.drop_dev_overlap=true; set it false to keep them)."""
    from bench.config import parse_assignments
    from bench.data import resolve_data_dir
    from bench.engine.profiles import get_profile
    from bench.runner import plan, run_grid

    command = command_line(ctx)
    try:
        settings = parse_assignments(set_ or [])
        prof = get_profile(profile or "cpu", settings.pop("profile", {}))
        # the release's training files hold sentences of our dev splits (HSOL: 514-520 rows); model
        # selection must not see rows trained on, so they are dropped unless the user says otherwise
        file_settings = {"drop_dev_overlap": "true", **settings.pop("file", {})}
        root = resolve_data_dir(data_dir, need="published/musclelora")
        cells = []
        for ds in dataset or ["sst2", "hsol"]:
            for name, folder in musclelora_release(root, ds, attack):
                chosen = {**settings, "file": {**file_settings, "folder": str(folder), "label": f"musclelora-{name}"}}
                cells += plan([ds], list(backbone or prof.backbones), ["file"], list(defense), list(seed or [1]), prof,
                              chosen)
        summary = run_grid(cells, out, data_dir=data_dir, command=command,
                           progress="lines" if no_progress else "auto", force=force)
    except USER_ERRORS as e:
        fail(e)
    typer.echo(f"{summary['ran']} cells run, {summary['skipped']} already recorded, "
               f"{summary['wall_seconds'] / 60:.1f} min; leaderboard: {out / 'leaderboard.csv'} and .md")
