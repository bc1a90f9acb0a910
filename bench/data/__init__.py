"""Text-classification data: the benchmark CSV folders, a user's own folder, or a hub id.

Every dataset becomes a :class:`TextDataset`: three ``datasets.Dataset`` splits (train, dev, test)
with the columns ``text`` (str) and ``label`` (int in ``[0, num_labels)``), plus a content
fingerprint used in result keys (never a name alone).
"""

from __future__ import annotations

from ..errors import BenchError

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from ..engine import progress

ENV_VAR = "BENCH_DATA_DIR"
SPLITS = ("train", "dev", "test")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class DataError(BenchError, ValueError):
    """Data that cannot be used, with the file and the problem named."""


SHARED_DATA = (PROJECT_ROOT / ".." / "shared" / "data").resolve()


def data_roots() -> list[tuple[Path, str]]:
    """The folders a built-in dataset is looked up in when neither --data-dir nor $BENCH_DATA_DIR is
    given, in order, each with how it is named: the data cache, then ../shared/data beside the project."""
    from ..models.backbones import cache_dir

    return [(cache_dir() / "data", "the data cache"), (SHARED_DATA, "../shared/data beside the project")]


def resolve_data_dir(explicit: str | os.PathLike | None = None, need: str | None = None, fetch: bool = True) -> Path:
    """The data folder (root) to read from: ``explicit`` (``--data-dir``), else ``$BENCH_DATA_DIR``, else the
    first of :func:`data_roots` holding ``need`` (a folder under the root, such as ``sst2``), else -- for a
    dataset ``bench data fetch`` knows -- the data cache after fetching it there (``fetch=False``: an error)."""
    chosen = (Path(explicit), "--data-dir") if explicit else (
        (Path(os.environ[ENV_VAR]), f"${ENV_VAR}") if os.environ.get(ENV_VAR) else None)
    if chosen is not None:
        path, how = chosen
        if not path.is_dir():
            raise DataError(f"benchmark data folder {str(path)!r} (from {how}) does not exist; pass --data-dir PATH or "
                            f"set {ENV_VAR}=PATH to the folder holding sst2/, hsol/, agnews/ (`bench data fetch --dest "
                            "PATH` builds one)")
        if need and not (path / need).is_dir():
            raise DataError(f"benchmark data folder {str(path)!r} (from {how}) has no {need}/; build it there with "
                            f"`bench data fetch --dest {path}`, or drop {how} to use the data cache")
        return path
    roots = data_roots()
    for root, _ in roots:
        if (root / need).is_dir() if need else root.is_dir():
            return root
    from .databuild import FOLDERS

    name = next((n for n, f in FOLDERS.items() if f == need), None)
    where = " nor in ".join(f"{r} ({how})" for r, how in roots)
    fix = (f"run `bench data fetch{' ' + name if name else ''}` on a machine with a network (and copy "
           f"{roots[0][0]} here), or pass --data-dir PATH / set {ENV_VAR}=PATH to a folder holding "
           f"{need or 'sst2/, hsol/, agnews/'}")
    if name is None or not fetch:
        raise DataError(f"benchmark data{' ' + repr(need) if need else ''} is not in {where}; {fix}")
    from .datafetch import fetch as fetch_data

    progress.note(f"{name}: not in {where}: fetching it from its public sources (bench data fetch {name})")
    try:
        fetch_data([name])
    except DataError as e:
        raise DataError(f"dataset {name!r} is not in {where}, and fetching it failed ({e}); {fix}") from None
    return roots[0][0]


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


def _check_header(path: Path) -> None:
    """A repeated text or label column: pandas would rename the second (``text.1``) and use the first."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader(f), [])
    for col in ("text", "label"):
        if header.count(col) > 1:
            raise DataError(f"{path}: the header row ({','.join(header)}) names the column {col!r} "
                            f"{header.count(col)} times; rename or drop all but one of them")


def _read_csv(path: Path) -> pd.DataFrame:
    """The rows of one split; the index is the row's position (its line number in the file is index + 2)."""
    if not path.is_file():
        raise DataError(f"{path}: file is missing; a dataset folder needs train.csv, dev.csv and test.csv")
    _check_header(path)
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


NO_TEXT = ("", "nan", "none", "null")  # after strip() and lower(): a text that is missing, not a sentence


def _drop_empty_texts(df: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, int]:
    """Rows whose text is empty, whitespace or nan/none/null are dropped, counted and reported."""
    empty = df["text"].str.strip().str.lower().isin(NO_TEXT)
    n = int(empty.sum())
    if n == len(df):
        raise DataError(f"{path}: every row has an empty text (or nan/none/null); "
                        "the text column must hold the sentences")
    if n:
        lines = ", ".join(str(i + 2) for i in df.index[empty][:5])
        progress.warn(f"{path}: skipped {n} row(s) with an empty text (or nan/none/null), at row(s) {lines}"
                      f"{', ...' if n > 5 else ''}; fill in the texts or delete these rows to silence this")
    return df[~empty], n


def _check_range(frames: dict[str, pd.DataFrame], paths: dict[str, Path], num_labels: int) -> None:
    for split, df in frames.items():
        bad = (df["label"] < 0) | (df["label"] >= num_labels)
        if bad.any():
            i = int(df.index[bad.to_numpy()][0])
            raise DataError(
                f"{paths[split]}: row {i + 2} has label {int(df['label'][i])}, out of range for "
                f"{num_labels} classes (valid: 0..{num_labels - 1})"
            )


def _check_classes_in_train(train: pd.DataFrame, path: Path, num_labels: int) -> None:
    """Every class 0..num_labels-1 has training rows (labels from 1, or a stray 7 in a 0/1 file, do not)."""
    counts = train["label"].value_counts().sort_index()
    missing = [c for c in range(num_labels) if c not in counts.index]
    if not missing:
        return
    # the row to show: the rarest class past the first gap (the stray 7, or a class of a file numbered from 1)
    past = counts[counts.index > missing[0]].sort_values(kind="stable")
    row = ""
    if len(past):
        i = int(train.index[(train["label"] == past.index[0]).to_numpy()][0])
        row = f"row {i + 2} has label {past.index[0]}; "
    shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    present = ", ".join(f"{c} ({n} row{'s' if n != 1 else ''})" for c, n in counts.items())
    raise DataError(
        f"{path}: no training row has class {shown}, so the labels are not the class ids 0..{num_labels - 1}; "
        f"{row}classes present: {present}. Renumber the labels 0..K-1 (K the number of classes) "
        "and give every class rows in train.csv"
    )


def _check_overlap(frames: dict[str, pd.DataFrame], paths: dict[str, Path]) -> None:
    """A dev or test split made of training texts is an error; a partial overlap is reported."""
    seen = set(frames["train"]["text"])
    for split in ("dev", "test"):
        inside = frames[split]["text"].isin(seen)
        n, total = int(inside.sum()), len(inside)
        use = "model selection" if split == "dev" else "evaluation"
        if n == total:
            raise DataError(
                f"{paths[split]}: every {split} text also appears in {paths['train']} (the same rows or a subset), so "
                f"{use} would run on training data; use a {split} file of rows held out from training"
            )
        if n:
            distinct = frames[split]["text"][inside].nunique()
            progress.warn(f"{paths[split]}: {n} of {total} rows ({n / total:.2%}; {distinct} distinct) also "
                          f"appear in {paths['train']}; their {use} is not on held-out text")


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
    frames, skipped = {}, {}
    for s, p in paths.items():
        frames[s], skipped[s] = _drop_empty_texts(_read_csv(p), p)
    classes = sorted(set(frames["train"]["label"]))
    if len(classes) < 2:
        raise DataError(f"{paths['train']}: every row has label {classes[0]} (only one class); a classifier (and a backdoor into "
                        "another label) needs training rows of at least two classes")
    if num_labels is None:
        num_labels = int(frames["train"]["label"].max()) + 1
    _check_range(frames, paths, num_labels)
    _check_classes_in_train(frames["train"], paths["train"], num_labels)
    _check_overlap(frames, paths)
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
        extra={"skipped_rows": skipped},
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
