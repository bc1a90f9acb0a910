"""Text-classification data: the benchmark CSV folders, a user's own folder, or a hub id.

Every dataset becomes a :class:`TextDataset`: three ``datasets.Dataset`` splits (train, dev, test)
with the columns ``text`` (str) and ``label`` (int in ``[0, num_labels)``), plus a content
fingerprint used in result keys (never a name alone).
"""

from __future__ import annotations

from .errors import BenchError

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

ENV_VAR = "BENCH_DATA_DIR"
SPLITS = ("train", "dev", "test")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class DataError(BenchError, ValueError):
    """Data that cannot be used, with the file and the problem named."""


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` (CLI ``--data-dir``), else ``$BENCH_DATA_DIR``, else ``../shared/data``."""
    if explicit:
        path, how = Path(explicit), "--data-dir"
    elif os.environ.get(ENV_VAR):
        path, how = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        path, how = (PROJECT_ROOT / ".." / "shared" / "data").resolve(), "the default ../shared/data"
    if not path.is_dir():
        raise DataError(
            f"benchmark data folder {str(path)!r} (from {how}) does not exist; "
            f"pass --data-dir PATH or set {ENV_VAR}=PATH to the folder holding sst2/, hsol/, agnews/"
        )
    return path


@dataclass
class TextDataset:
    name: str
    train: datasets.Dataset
    dev: datasets.Dataset
    test: datasets.Dataset
    num_labels: int
    default_target: int
    fingerprint: str
    root: Path | None = None  # folder of the CSVs (paraphrase tables live under it)
    extra: dict = field(default_factory=dict)

    def split(self, name: str) -> datasets.Dataset:
        if name not in SPLITS:
            raise KeyError(f"split {name!r}; splits are {SPLITS}")
        return getattr(self, name)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file is missing; a dataset folder needs train.csv, dev.csv and test.csv")
    try:
        df = pd.read_csv(path, keep_default_na=False, dtype={"text": str})
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: cannot be read as a CSV with a header row text,label ({str(e).strip()}); a text "
                        'that holds commas must be quoted ("a, b",1)') from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; it needs a header row text,label and at least one row") from None
    missing = [c for c in ("text", "label") if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}. "
            "The file needs a header row with the columns text,label"
        )
    if len(df) == 0:
        raise DataError(f"{path}: the split is empty (header only); it needs at least one row")
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = labels.isna() | (labels != labels.round())
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: row {i + 2} has label '{df['label'].iloc[i]}', which is not an integer class id; "
            "labels must be integers 0..K-1"
        )
    return pd.DataFrame({"text": df["text"].astype(str), "label": labels.astype(int)})


def _check_range(frames: dict[str, pd.DataFrame], paths: dict[str, Path], num_labels: int) -> None:
    for split, df in frames.items():
        bad = (df["label"] < 0) | (df["label"] >= num_labels)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{paths[split]}: row {i + 2} has label {int(df['label'].iloc[i])}, out of range for "
                f"{num_labels} classes (valid: 0..{num_labels - 1})"
            )


def _fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _to_dataset(df: pd.DataFrame) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"text": df["text"].tolist(), "label": df["label"].tolist()})


def load_csv_folder(
    folder: str | os.PathLike, name: str | None = None, num_labels: int | None = None, default_target: int = 1
) -> TextDataset:
    """A folder of train.csv, dev.csv, test.csv (columns text,label)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder {str(folder)!r} does not exist")
    paths = {s: folder / f"{s}.csv" for s in SPLITS}
    frames = {s: _read_csv(p) for s, p in paths.items()}
    classes = sorted(set(frames["train"]["label"]))
    if len(classes) < 2:
        raise DataError(f"{paths['train']}: every row has label {classes[0]} (only one class); a classifier (and a backdoor into "
                        "another label) needs training rows of at least two classes")
    if num_labels is None:
        num_labels = int(frames["train"]["label"].max()) + 1
    _check_range(frames, paths, num_labels)
    if not 0 <= default_target < num_labels:
        default_target = 0
    return TextDataset(
        name=name or folder.name,
        train=_to_dataset(frames["train"]),
        dev=_to_dataset(frames["dev"]),
        test=_to_dataset(frames["test"]),
        num_labels=num_labels,
        default_target=default_target,
        fingerprint=_fingerprint(list(paths.values())),
        root=folder,
    )


def load_hub(dataset_id: str, text_column: str | None = None) -> TextDataset:  # pragma: no cover - needs network
    """A Hugging Face hub dataset with train / validation / test splits and a label column."""
    try:
        dd = datasets.load_dataset(dataset_id)
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds
        raise DataError(
            f"cannot load dataset {dataset_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Offline? Use a registered dataset (bench list) or a folder of train/dev/test CSV files"
        ) from None
    split_map = {"train": "train", "dev": "validation" if "validation" in dd else "dev", "test": "test"}
    frames = {}
    for ours, theirs in split_map.items():
        if theirs not in dd:
            raise DataError(f"hub dataset {dataset_id!r} has no {theirs!r} split (has {list(dd)})")
        ds = dd[theirs]
        col = text_column or next((c for c in ("text", "sentence", "content") if c in ds.column_names), None)
        if col is None or "label" not in ds.column_names:
            raise DataError(f"hub dataset {dataset_id!r}: needs a text column and a label column, has {ds.column_names}")
        frames[ours] = pd.DataFrame({"text": ds[col], "label": ds["label"]})
    num_labels = int(frames["train"]["label"].max()) + 1
    fp = hashlib.sha256(repr([dd[s]._fingerprint for s in dd]).encode()).hexdigest()[:16]
    return TextDataset(dataset_id, *(_to_dataset(frames[s]) for s in SPLITS), num_labels, 1 if num_labels == 2 else 0, fp)


def stratified_indices(labels: list[int] | np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` row indices keeping the label proportions, drawn with ``seed``; sorted."""
    labels = np.asarray(labels)
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / counts.sum() * size).astype(int)
    # hand the rounding remainder to the classes with the largest fractional parts
    rest = size - quota.sum()
    frac = counts / counts.sum() * size - quota
    for j in np.argsort(-frac, kind="stable")[:rest]:
        quota[j] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))
