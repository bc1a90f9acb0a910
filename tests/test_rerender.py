"""Every committed results folder re-renders from its records (issue 26: behaviour does not change).

A results folder is any folder under ``results/`` (at any depth) that holds ``records/`` and
``leaderboard.csv``; folders are found when the test is collected, so a folder added later is checked
too. For each, ``records/`` and ``runs.jsonl`` are copied into a temporary folder of the same name,
:func:`bench.reporting.results.write_leaderboard` rebuilds the four derived files there, and each must be byte-identical
to the one in the folder, with one normalisation: the ``bench leaderboard --out PATH`` of the Markdown
names the folder the file was written in (a temporary one here), so that path is left out on both sides.

Folders written by older code are listed in :data:`KNOWN` with the reason, file by file; most of them are
still compared on what did not change (the CSV without the columns added since, the Markdown without the
lines that depended on a live process). A folder that a run on this machine is writing right now is
skipped: its records and leaderboard are in the middle of being updated.

The folders with more than ``SLOW_RECORDS`` records are ``slow`` (together about 10 s on a 2-core CPU).
"""

from __future__ import annotations

import csv
import io
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.data import PROJECT_ROOT
from bench.reporting.results import read_runs, write_leaderboard

RESULTS = PROJECT_ROOT / "results"
FILES = ("leaderboard.csv", "leaderboard_cells.csv", "summary.csv", "leaderboard.md")
SLOW_RECORDS = 40
OUT_PATH = re.compile(r"by `bench leaderboard --out [^`]*`")


@dataclass(frozen=True)
class Known:
    """Why a committed file does not re-render byte-identically, and what is still compared."""

    reason: str
    compare: bool = True  # False: the file is not compared at all (or is absent)
    without_columns: tuple[str, ...] = ()  # a CSV: compared cell by cell without these re-rendered columns
    without_lines: str = ""  # a Markdown file: lines matching this regex are left out on both sides


NO_PRESET = Known("written before records had a `preset` column (fb990ba, issue 24); every other column is "
                  "compared", without_columns=("preset",))
OLD_SCHEMA_CSV = Known("written by the first schema (uses_clean_reference; no frr, poison_rejected, filter_*, "
                       "n_clean_*, victim columns); its records keep that schema, so the CSV is not compared",
                       compare=False)
OLD_SCHEMA_MD = Known("written before the summary sections and the clean-data columns existed", compare=False)
NO_CELLS = Known("absent: written before leaderboard_cells.csv and summary.csv existed", compare=False)
OLD = {"leaderboard.csv": OLD_SCHEMA_CSV, "leaderboard.md": OLD_SCHEMA_MD,
       "leaderboard_cells.csv": NO_CELLS, "summary.csv": NO_CELLS}

# folder (relative to results/) -> file -> why it differs. Checked today (issue 26 step 1).
KNOWN: dict[str, dict[str, Known]] = {
    "baselines-inference": {"leaderboard.csv": NO_PRESET},
    "baselines-training": {"leaderboard.csv": NO_PRESET},
    "fidelity/onion-dirty": {"leaderboard.csv": NO_PRESET},
    "grid-h200": {
        "leaderboard.csv": NO_PRESET,
        "leaderboard.md": Known("written before `cells run in all` counted the records of each run id "
                                "(90cfe81): two grouped run lines say 92 and 11 cells, a re-render 94 and 13",
                                without_lines=r"^- `bench run .* ran (27|10) times .*cells run in all"),
    },
    "imported/handmade": {"leaderboard.csv": NO_PRESET},
    "imported/release": {"leaderboard.csv": NO_PRESET},
    "imported/release-defenses": {"leaderboard.csv": NO_PRESET},
    "imported/release-defenses-h100": {"leaderboard.csv": NO_PRESET},
    "imported/release-seeds-h100": {"leaderboard.csv": NO_PRESET},
    "leaderboard": {"leaderboard.csv": NO_PRESET},
    "main-job": {"leaderboard.csv": NO_PRESET},
    "superseded/clean-reference": OLD,
    "superseded/core": OLD,
    "superseded/cost": OLD,
    "superseded/main-job-554161a": {
        "leaderboard.csv": NO_PRESET,
        "leaderboard.md": Known("rendered as results/main-job before the folder moved here: its first note names "
                                "`main-job/records/`", without_lines=r"^- \d+ records in `main-job(-554161a)?/records/`"),
    },
    "superseded/musclelora": OLD,
    "superseded/musclelora-reference-chunks": {
        "leaderboard.csv": Known("written before the n_train_added and preset columns; every other column is compared",
                                 without_columns=("n_train_added", "preset")),
        "leaderboard.md": OLD_SCHEMA_MD,
        "leaderboard_cells.csv": NO_CELLS, "summary.csv": NO_CELLS,
    },
    "superseded/paraphrase": OLD,
    "superseded/tuning": OLD,
    "tuning-protocol": {"leaderboard.csv": NO_PRESET},
    "tuning-protocol/dev-schedules": {"leaderboard.csv": NO_PRESET},
    "tuning-protocol/family": {"leaderboard.csv": NO_PRESET},
}


def result_folders() -> list[Path]:
    return sorted(p.parent for p in RESULTS.rglob("records") if p.is_dir() and (p.parent / "leaderboard.csv").is_file())


def _param(folder: Path):
    name = folder.relative_to(RESULTS).as_posix()
    slow = sum(1 for _ in (folder / "records").glob("*.json")) > SLOW_RECORDS
    return pytest.param(folder, id=name, marks=[pytest.mark.slow] if slow else [])


def _csv_rows(text: str, without: tuple[str, ...] = ()) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    drop = {i for i, c in enumerate(rows[0]) if c in without} if rows else set()
    return [[v for i, v in enumerate(r) if i not in drop] for r in rows]


def _md_lines(text: str, without: str) -> list[str]:
    lines = OUT_PATH.sub("by `bench leaderboard --out OUT`", text).split("\n")
    return [line for line in lines if not (without and re.search(without, line))]


def test_results_folders_are_found():
    folders = {f.relative_to(RESULTS).as_posix() for f in result_folders()}
    assert {"grid-h200", "superseded/core", "tuning-protocol", "tuning-protocol/family"} <= folders
    stale = set(KNOWN) - folders
    assert not stale, f"KNOWN names folders that are gone: {sorted(stale)}; remove them from KNOWN"


@pytest.mark.parametrize("folder", [_param(f) for f in result_folders()])
def test_a_results_folder_re_renders_from_its_records(folder: Path, tmp_path: Path):
    name = folder.relative_to(RESULTS).as_posix()
    if any(r["status"] == "running" for r in read_runs(folder)):
        pytest.skip(f"{name}: a run on this machine is writing it now")
    out = tmp_path / folder.name
    out.mkdir()
    shutil.copytree(folder / "records", out / "records")
    if (folder / "runs.jsonl").is_file():
        shutil.copyfile(folder / "runs.jsonl", out / "runs.jsonl")
    write_leaderboard(out)
    known = KNOWN.get(name, {})
    problems = []
    for f in FILES:
        k = known.get(f)
        if k is not None and not k.compare:
            continue
        if not (folder / f).is_file():
            problems.append(f"{f}: absent from {folder} (re-render it, or list it in KNOWN with the reason)")
            continue
        committed, rendered = (folder / f).read_bytes().decode(), (out / f).read_bytes().decode()
        if f.endswith(".md"):
            same = _md_lines(committed, k.without_lines if k else "") == _md_lines(rendered, k.without_lines if k else "")
        elif k is not None:
            same = _csv_rows(committed) == _csv_rows(rendered, k.without_columns)
        else:
            same = (folder / f).read_bytes() == (out / f).read_bytes()
        if not same:
            problems.append(f"{f}: the re-render from records/ differs"
                            + (f" (beyond the known difference: {k.reason})" if k else ""))
    assert not problems, f"results/{name}: " + "; ".join(problems)
