"""The engine's public names, in one place: where attacks, defenses, datasets and backbones meet.

The engine is three modules (see docs/architecture.md): :mod:`bench.engine.plan` turns names and settings
into validated :class:`Cell` objects and their keys, sorts a grid against its results folder and
estimates its time; :mod:`bench.engine.cell` runs one cell (:func:`prepare`, :meth:`Evaluator.victim`,
:meth:`Evaluator.evaluate`, :func:`build_record`); :mod:`bench.engine.grid` runs many (:func:`run_grid`,
:func:`run_claimed_cell`) and tells its observers (progress, ``runs.jsonl``, the leaderboard, the
summary) what happens. Plugins, benchmarks and tests import these names from here.
"""

from __future__ import annotations

from .engine.cell import (
    EVAL_ONLY_FIELDS,
    MIN_ASR_ROWS,
    WARN_ASR_ROWS,
    _WARNED,
    Evaluator,
    Prepared,
    _digest,
    _filter_stats,
    _take_stats,
    _training_rows,
    build_record,
    prepare,
    run_cell,
    split_dev,
    training_profile,
    victim_identity,
)
from .engine.grid import (
    Leaderboard,
    Observer,
    Observers,
    Progress,
    Run,
    RunLog,
    Tally,
    _run_grid,
    run_claimed_cell,
    run_grid,
)
from .engine.plan import (
    Cell,
    DataCache,
    DefenseSpec,
    GridClock,
    Scan,
    _check_models,
    _default_config,
    _defense_identity,
    _expected_inputs,
    _expected_steps,
    _grid_order,
    cell_config,
    dataset_name,
    estimate,
    plan,
    resolve_dataset,
    scan,
)
from .reporting.results import config_key, git_state, load_records, record_path, write_json_atomic, write_leaderboard

__all__ = [
    "EVAL_ONLY_FIELDS", "MIN_ASR_ROWS", "WARN_ASR_ROWS", "Cell", "DataCache", "DefenseSpec", "Evaluator", "GridClock",
    "Leaderboard", "Observer", "Observers", "Prepared", "Progress", "Run", "RunLog", "Scan", "Tally", "build_record",
    "cell_config", "config_key", "dataset_name", "estimate", "git_state", "load_records", "plan", "prepare",
    "record_path", "resolve_dataset", "run_cell", "run_claimed_cell", "run_grid", "scan", "split_dev",
    "training_profile", "victim_identity", "write_json_atomic", "write_leaderboard",
]
