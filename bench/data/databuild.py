"""Building the benchmark data folders from the public source files, deterministically.

Each recipe reads pinned files of two research repositories (see :mod:`bench.data.datafetch`) and writes
one folder in the suite's plain layout::

    <dataset>/{train,dev,test}.csv            columns text,label        (label: integer class id)
    <dataset>/paraphrases/<transform>.csv     columns text,paraphrase   (text: the original sentence)
    published/musclelora/...                  the MuScleLoRA release's poisoned sets, unchanged

The output is byte for byte the committed manifest's (``bench data verify`` checks it): the same
parsing, the same pairing of original and transformed sentences, the same CSV dialect.

Pairing. A transformed file is paired with its clean file row by row when the two have the same
length (and, for the StyleAttack files, the same labels). Otherwise the generators dropped the
sentences they failed on, and the pairs come from a monotone alignment that maximises the summed
word-set Jaccard similarity of matched rows (a match needs similarity >= 0.12 and, where asked, equal
labels), searched within a band of 400 rows around the diagonal; rows left unmatched are left out.
"""

from __future__ import annotations

import csv
import io
import random
import re
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import sparse

MUSCLE = "ZrW00/MuScleLoRA"
STYLEATTACK = "thunlp/StyleAttack"
SPLITS = ("train", "dev", "test")
POISON_FILES = ("train-clean", "train-poison", "dev-clean", "dev-poison", "test-clean", "test-poison")
STYLES = ("bible", "shakespeare", "lyrics", "poetry", "tweets")
HSOL_DEV_SHARE, HSOL_DEV_SEED = 0.1, 13
BAND, FLOOR = 400, 0.12

# fetch name -> folder under the data root
FOLDERS = {"sst2": "sst2", "hsol": "hsol", "agnews": "agnews", "musclelora-release": "published/musclelora"}

Read = Callable[[str, str], bytes]  # (repository, path) -> the file's bytes, checked


# --- reading the source formats ---------------------------------------------------------------------

def read_tsv(data: bytes) -> list[tuple[str, int]]:
    """A ``sentence<TAB>label`` file with a header line; lines without a tab (a line break inside a
    sentence) are skipped."""
    rows = []
    for line in data.decode("utf-8").splitlines()[1:]:
        if "\t" in line:
            text, label = line.rsplit("\t", 1)
            rows.append((text.strip(), int(label.strip())))
    return rows


def read_release_csv(data: bytes) -> list[tuple[str, int]]:
    """OpenBackdoor's CSV (header ``,0,1,2``: index, text, label, poison flag) as (text, label)."""
    return [(r[1].strip(), int(r[2])) for r in list(csv.reader(io.StringIO(data.decode("utf-8"))))[1:]]


# --- writing ------------------------------------------------------------------------------------------

def _write_csv(path: Path, header: tuple[str, str], rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_split(folder: Path, split: str, rows: list[tuple[str, int]]) -> None:
    _write_csv(folder / f"{split}.csv", ("text", "label"), rows)


def write_paraphrases(folder: Path, name: str, pairs: list[tuple[str, str]]) -> int:
    """The first paraphrase of each original sentence (empty ones dropped); returns the count."""
    table: dict[str, str] = {}
    for text, para in pairs:
        if text and para:
            table.setdefault(text, para)
    _write_csv(folder / "paraphrases" / f"{name}.csv", ("text", "paraphrase"), table.items())
    return len(table)


# --- pairing ----------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9']+")


def _word_matrix(texts: list[str], vocab: dict[str, int]) -> sparse.csr_matrix:
    indptr, indices = [0], []
    for t in texts:
        ids = {vocab.setdefault(w, len(vocab)) for w in _WORD.findall(t.lower())}
        indices.extend(sorted(ids))
        indptr.append(len(indices))
    return sparse.csr_matrix((np.ones(len(indices), np.int32), indices, indptr))


def align(clean: list[tuple[str, int]], other: list[tuple[str, int]], labels_must_match: bool,
          band: int = BAND, floor: float = FLOOR) -> list[tuple[str, str]]:
    """Monotone alignment of two row lists where rows may be missing on either side.

    Dynamic programme over (i, j) = (clean rows consumed, other rows consumed), restricted to
    ``|j - int(i * m / n)| <= band``: a cell's score is the best of skipping a clean row (preferred on
    ties), skipping an other row, or matching the two rows (similarity >= ``floor``; labels equal if
    asked) and adding their Jaccard similarity. Computed one row of the table at a time with numpy;
    returns the matched (clean text, other text) pairs in order."""
    n, m = len(clean), len(other)
    vocab: dict[str, int] = {}
    X, Y = _word_matrix([c[0] for c in clean], vocab), _word_matrix([o[0] for o in other], vocab)
    X = sparse.csr_matrix(X, shape=(n, len(vocab)))
    Y = sparse.csr_matrix(Y, shape=(m, len(vocab)))
    x_len, y_len = np.diff(X.indptr), np.diff(Y.indptr)
    clean_labels, other_labels = np.array([c[1] for c in clean]), np.array([o[1] for o in other])
    UP, LEFT, DIAG, NONE = 0, 1, 2, 3
    rows: list[tuple[int, np.ndarray]] = []  # per i: (first j, back pointers)
    prev_lo, prev = 0, np.zeros(0)
    for i in range(n + 1):
        centre = int(i * m / max(1, n))
        lo, hi = max(0, centre - band), min(m, centre + band)
        js = np.arange(lo, hi + 1)
        up = np.full(len(js), -np.inf)
        diag = np.full(len(js), -np.inf)
        if i > 0:
            k = js - prev_lo
            inside = (k >= 0) & (k < len(prev))
            up[inside] = prev[k[inside]]
            kd = k - 1
            has = (js >= 1) & (kd >= 0) & (kd < len(prev))
            if has.any():
                jj = js[has] - 1  # contiguous
                inter = (Y[jj[0]:jj[-1] + 1] @ X[i - 1].T).toarray().ravel()
                union = x_len[i - 1] + y_len[jj] - inter
                sim = inter / np.maximum(1, union)
                ok = sim >= floor
                if labels_must_match:
                    ok &= other_labels[jj] == clean_labels[i - 1]
                base = prev[kd[has]]
                vals = np.where(ok & np.isfinite(base), base + sim, -np.inf)
                diag[has] = vals
        cand = np.maximum(up, diag)
        if i == 0 and lo == 0:
            cand[0] = 0.0  # the start cell
        score = np.maximum.accumulate(cand)
        left = np.concatenate(([-np.inf], score[:-1]))
        best_ul = np.maximum(up, left)
        back = np.where(diag > best_ul, DIAG, np.where(left > up, LEFT, np.where(np.isfinite(up), UP, NONE)))
        if i == 0 and lo == 0:
            back[0] = NONE
        back[~np.isfinite(score)] = NONE
        rows.append((lo, back.astype(np.int8)))
        prev_lo, prev = lo, score
    if not (prev_lo <= m < prev_lo + len(prev)) or not np.isfinite(prev[m - prev_lo]):
        return []
    pairs, i, j = [], n, m
    while (i, j) != (0, 0):
        lo, back = rows[i]
        step = back[j - lo]
        if step == DIAG:
            pairs.append((clean[i - 1][0], other[j - 1][0]))
            i, j = i - 1, j - 1
        elif step == LEFT:
            j -= 1
        elif step == UP:
            i -= 1
        else:  # pragma: no cover - every finite cell has a way back
            raise AssertionError(f"alignment lost its way at ({i}, {j})")
    return pairs[::-1]


def paired(clean: list[tuple[str, int]], other: list[tuple[str, int]], labels_must_match: bool,
           log: list[str], what: str) -> list[tuple[str, str]]:
    """Row by row where the files line up, else :func:`align` (noted in ``log``)."""
    if len(clean) == len(other) and (not labels_must_match or all(c[1] == o[1] for c, o in zip(clean, other))):
        return [(c[0], o[0]) for c, o in zip(clean, other)]
    pairs = align(clean, other, labels_must_match)
    log.append(f"{what}: {len(clean)} original vs {len(other)} transformed rows, {len(pairs)} pairs by alignment")
    return pairs


# --- the recipes --------------------------------------------------------------------------------------

def _release_dir(dataset: str, attack: str) -> str:
    return f"poison_data/{dataset}/1/{attack}"


def _release_pairs(read: Read, dataset: str, attack: str, log: list[str], target: int = 1):
    """Original/transformed pairs of a release attack: every training row, and the non-target rows of
    dev and test (the release transformed only those)."""
    base = _release_dir(dataset, attack)
    get = lambda name: read_release_csv(read(MUSCLE, f"{base}/{name}.csv"))  # noqa: E731
    pairs = paired(get("train-clean"), get("train-poison"), False, log, f"{dataset} {attack} train")
    for split in ("dev", "test"):
        clean = [r for r in get(f"{split}-clean") if r[1] != target]
        pairs += paired(clean, get(f"{split}-poison"), False, log, f"{dataset} {attack} {split}")
    return pairs


def _style_pairs(read: Read, dataset: str, style: str, log: list[str]):
    pairs = []
    for split in SPLITS:
        clean = read_tsv(read(STYLEATTACK, f"data/clean/{dataset}/{split}.tsv"))
        other = read_tsv(read(STYLEATTACK, f"data/transfer/{style}/{dataset}/{split}.tsv"))
        pairs += paired(clean, other, True, log, f"{dataset} {style} {split}")
    return pairs


def stratified_holdout(rows: list, share: float, seed: int) -> tuple[list, list]:
    """(rest, held out): ``share`` of each label's rows, drawn after one seeded shuffle; both in file order."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    by_label: dict[int, list[int]] = {}
    for i in order:
        by_label.setdefault(rows[i][1], []).append(i)
    held = set()
    for ids in by_label.values():
        held.update(ids[: round(len(ids) * share)])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def _build_sst2(read: Read, out: Path, log: list[str]) -> None:
    for split in SPLITS:
        write_split(out, split, read_tsv(read(MUSCLE, f"datasets/SentimentAnalysis/SST-2/{split}.tsv")))
    write_paraphrases(out, "scpn", _release_pairs(read, "sst-2", "synbkd", log))
    write_paraphrases(out, "bible", _release_pairs(read, "sst-2", "stylebkd", log))
    for style in STYLES[1:]:
        write_paraphrases(out, style, _style_pairs(read, "sst-2", style, log))


def _build_hsol(read: Read, out: Path, log: list[str]) -> None:
    # the source's dev file is its test file: dev is cut from the training file instead
    train, dev = stratified_holdout(read_tsv(read(MUSCLE, "datasets/Toxic/hsol/train.tsv")),
                                    HSOL_DEV_SHARE, HSOL_DEV_SEED)
    write_split(out, "train", train)
    write_split(out, "dev", dev)
    write_split(out, "test", read_tsv(read(MUSCLE, "datasets/Toxic/hsol/test.tsv")))
    write_paraphrases(out, "scpn", _release_pairs(read, "hsol", "synbkd", log))
    write_paraphrases(out, "bible", _release_pairs(read, "hsol", "stylebkd", log))


def _build_agnews(read: Read, out: Path, log: list[str]) -> None:
    for split in SPLITS:
        write_split(out, split, read_tsv(read(STYLEATTACK, f"data/clean/ag/{split}.tsv")))
    for style in STYLES:
        write_paraphrases(out, style, _style_pairs(read, "ag", style, log))
    # HiddenKiller's AG News SCPN files do not line up with the clean ones: AG News has no scpn table


def release_files(source_files: dict[str, list[str]]) -> list[str]:
    """The release's files: everything the manifest pins under ``poison_data/`` of the MuScleLoRA repository."""
    return sorted(p for p in source_files.get(MUSCLE, []) if p.startswith("poison_data/"))


def _build_release(read: Read, out: Path, log: list[str], source_files: dict[str, list[str]]) -> None:
    for path in release_files(source_files):
        dest = out / path.removeprefix("poison_data/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(read(MUSCLE, path))


def needs(name: str, source_files: dict[str, list[str]]) -> list[tuple[str, str]]:
    """The (repository, path) source files that building ``name`` reads."""
    if name == "musclelora-release":
        return [(MUSCLE, p) for p in release_files(source_files)]
    release = lambda ds: [(MUSCLE, f"{_release_dir(ds, a)}/{f}.csv")  # noqa: E731
                          for a in ("synbkd", "stylebkd") for f in POISON_FILES]
    style = lambda ds, styles: [(STYLEATTACK, f"data/{kind}/{ds}/{s}.tsv")  # noqa: E731
                                for kind in ["clean"] + [f"transfer/{st}" for st in styles] for s in SPLITS]
    if name == "sst2":
        return ([(MUSCLE, f"datasets/SentimentAnalysis/SST-2/{s}.tsv") for s in SPLITS] + release("sst-2")
                + style("sst-2", STYLES[1:]))
    if name == "hsol":
        return [(MUSCLE, f"datasets/Toxic/hsol/{s}.tsv") for s in ("train", "test")] + release("hsol")
    if name == "agnews":
        return style("ag", STYLES)
    raise KeyError(name)


def build(name: str, read: Read, out: Path, source_files: dict[str, list[str]]) -> list[str]:
    """Write dataset ``name`` into the folder ``out``; returns notes on the pairing."""
    log: list[str] = []
    recipe = {"sst2": _build_sst2, "hsol": _build_hsol, "agnews": _build_agnews}.get(name)
    if recipe is not None:
        recipe(read, out, log)
    else:
        _build_release(read, out, log, source_files)
    return log
