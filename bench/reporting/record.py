"""The record's one typed definition: the leaderboard row, the training info and the evaluation info.

A cell's record (``records/<key>.json``) holds ``row`` (one leaderboard row), ``training`` and
``evaluation`` among its parts. Each is a dataclass here, built with every field named (a missing or
an unknown field is a ``TypeError`` at once, not a blank column later), and everything that used to
be a hand-kept list is derived from :class:`Row`'s fields:

- ``SCHEMA`` / ``COLUMNS``: the leaderboard CSV's columns, in order (field order, with ``csv_after``
  moving a field; see below);
- ``MD_COLUMNS``: those the Markdown table shows (``md``), with their format (``fmt``);
- ``CELL_KEY``: the columns that identify a cell across two leaderboards (``cell_key``);
- ``STATED``: what a row states about the poisoning, shown as "unknown" when an imported file leaves
  it so (``stated``).

The field order of :class:`Row` is the order of the record's JSON ``row``; the CSV has the same order
except ``target_label``, which it shows beside the label regime (``csv_after``). Both orders are the
committed ones and stay: committed records and leaderboards re-render byte-identically
(``tests/test_rerender.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Column:
    """One leaderboard column: its record field, whether the Markdown table shows it, and how."""

    name: str
    md: bool = False
    fmt: str = ""  # "pct": a share shown in percent; "signed": +1.0; "3f": 3 decimals


def col(md: bool = False, fmt: str = "", cell_key: bool = False, stated: bool = False, csv_after: str = ""):
    """A :class:`Row` field: ``md`` shown in the Markdown table with format ``fmt``; ``cell_key`` part of
    the cell's identity across leaderboards; ``stated`` what the row states about the poisoning;
    ``csv_after`` the column it follows in the CSV, where that differs from the record's order."""
    return field(metadata={"md": md, "fmt": fmt, "cell_key": cell_key, "stated": stated, "csv_after": csv_after})


@dataclass(frozen=True)
class Row:
    """One leaderboard row: one cell (dataset, backbone, attack, defense, seed) and what it measured."""

    dataset: str = col(md=True, cell_key=True)
    backbone: str = col(md=True, cell_key=True)
    attack: str = col(md=True, cell_key=True)
    defense: str = col(md=True, cell_key=True)
    seed: int = col(md=True, cell_key=True)
    cacc: float = col(md=True, fmt="pct")
    asr: float | None = col(md=True, fmt="pct")
    clean_to_target: float | None = col(md=True, fmt="pct")
    frr: float = col(md=True, fmt="pct")
    poison_rejected: float | None = col(md=True, fmt="pct")
    poison_rate: float | None = col(md=True, cell_key=True, stated=True)
    label_regime: str | None = col(md=True, cell_key=True, stated=True)
    trigger_count: int | None = col(md=True, stated=True)
    target_label: int = col(md=True, cell_key=True, csv_after="label_regime")
    n_poisoned: int = col()
    n_train: int = col()
    n_train_after_defense: int | None = col()
    n_train_added: int = col()
    filter_precision: float | None = col(md=True, fmt="3f")
    filter_recall: float | None = col(md=True, fmt="3f")
    train_skipped_no_transform: int = col()
    test_skipped_no_transform: int = col()
    n_test_clean: int = col(md=True)
    n_test_poison: int = col(md=True)
    ppl_increase: float | None = col()
    ppl_increase_median: float | None = col(md=True, fmt="signed")
    similarity: float | None = col(md=True, fmt="3f")
    n_dev_selection: int = col(md=True)
    n_clean_pool: int = col()
    n_clean_used: int = col(md=True)
    uses_clean: bool = col()
    n_reference: int = col()
    best_epoch: int | None = col()
    dev_acc: float | None = col()
    train_seconds: float | None = col(md=True)
    sec_per_step: float | None = col()
    predict_sec_per_input: float = col()
    victim: str = col()
    victim_trained_here: bool = col()
    profile: str = col(cell_key=True)
    settings: str = col(md=True, cell_key=True)
    preset: str = col()
    key: str = col()

    def as_dict(self) -> dict[str, Any]:
        """The record's ``row``: every field, in the record's order (values as given, not copied)."""
        return _fields(self)


def _fields(obj: Any) -> dict[str, Any]:
    """A dataclass's fields in declaration order (values as given, not copied: unlike dataclasses.asdict)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


@dataclass(frozen=True)
class TrainingInfo:
    """The record's ``training``: how the victim trained (from the victim's info; None where it says nothing)."""

    dev_acc_per_epoch: Any
    loss_per_epoch: Any
    steps: Any
    trainable_params: Any
    total_params: Any
    device: Any
    defense_stats: Any
    kept_epoch_defense_stats: Any
    training_stats: Any
    best_epoch: Any

    @classmethod
    def from_info(cls, info: dict) -> "TrainingInfo":
        return cls(**{f.name: info.get(f.name) for f in dataclasses.fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        return _fields(self)


@dataclass(frozen=True)
class EvaluationInfo:
    """The record's ``evaluation``: the cost of calibrating and predicting the test inputs."""

    calibrate_seconds: float
    predict_seconds: float
    predict_sec_per_input: float

    @classmethod
    def from_metrics(cls, metrics: dict) -> "EvaluationInfo":
        return cls(**{f.name: metrics[f.name] for f in dataclasses.fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        return _fields(self)


def _csv_order() -> list[dataclasses.Field]:
    order = [f for f in dataclasses.fields(Row) if not f.metadata["csv_after"]]
    for f in dataclasses.fields(Row):
        if f.metadata["csv_after"]:
            at = next(i for i, g in enumerate(order) if g.name == f.metadata["csv_after"])
            order.insert(at + 1, f)
    return order


ROW_FIELDS = tuple(f.name for f in dataclasses.fields(Row))  # the record's order
SCHEMA = [Column(f.name, f.metadata["md"], f.metadata["fmt"]) for f in _csv_order()]  # the CSV's order
COLUMNS = [c.name for c in SCHEMA]
MD_COLUMNS = [c.name for c in SCHEMA if c.md]
CELL_KEY = [f.name for f in _csv_order() if f.metadata["cell_key"]]
STATED = tuple(f.name for f in _csv_order() if f.metadata["stated"])
