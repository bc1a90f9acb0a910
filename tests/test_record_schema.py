"""The record is one typed definition (bench/reporting/record.py, issue 26): a row the runner builds has exactly the
schema's columns, and the derived lists (CSV columns, Markdown columns, cell key, stated fields) agree."""

import dataclasses
import json

import pytest

from bench.engine import cell as cell_mod
from bench.engine.profiles import Profile, get_profile
from bench.reporting import record, results
from bench.reporting.record import EvaluationInfo, Row, TrainingInfo
from bench.reporting.results import CELL_KEY, COLUMNS, MD_COLUMNS, SCHEMA, STATED, records_frame
from bench.runner import EVAL_ONLY_FIELDS, Evaluator, build_record, plan
from conftest import write_toy_dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One smoke cell through the real runner path: its record and the arguments build_record got."""
    from bench.data import load_csv_folder

    toy = write_toy_dataset(tmp_path_factory.mktemp("toy") / "toy")
    cell = plan([str(toy)], ["tiny-bert"], ["badnets"], ["none"], [1], get_profile("smoke"))[0]
    seen = {}

    def spy(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return build_record(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(cell_mod, "build_record", spy)  # Evaluator.run_cell (bench/engine/cell.py) calls it there
    try:
        rec = Evaluator().run_cell(cell, data=load_csv_folder(toy))
    finally:
        mp.undo()
    return rec, seen


def test_a_built_row_has_exactly_the_schema_columns(built):
    rec, _ = built
    row = rec["row"]
    assert set(row) == set(COLUMNS), (f"row keys not in the schema: {sorted(set(row) - set(COLUMNS))}; "
                                      f"schema columns not in the row: {sorted(set(COLUMNS) - set(row))}")
    assert list(row) == list(record.ROW_FIELDS)  # the record's JSON order, as committed records have it
    assert list(rec["training"]) == [f.name for f in dataclasses.fields(TrainingInfo)]
    assert list(rec["evaluation"]) == [f.name for f in dataclasses.fields(EvaluationInfo)]
    # the record survives JSON and comes back as one leaderboard row holding every value it built
    back = json.loads(json.dumps(rec, default=str))
    frame = records_frame([back])
    assert list(frame.columns) == COLUMNS and len(frame) == 1
    for c in ("dataset", "backbone", "attack", "defense", "seed", "target_label", "victim", "key", "preset"):
        assert frame.loc[0, c] == row[c]


def test_a_missing_or_an_unknown_row_field_is_an_error(built):
    row = built[0]["row"]
    Row(**row)  # the built row is a Row
    with pytest.raises(TypeError):
        Row(**{k: v for k, v in row.items() if k != "n_reference"})
    with pytest.raises(TypeError):
        Row(**row, uses_clean_reference=False)


def test_build_record_refuses_a_stated_field_the_schema_does_not_have(built, monkeypatch):
    _, seen = built
    cell = seen["args"][0]
    real = type(cell.attack).stated
    monkeypatch.setattr(type(cell.attack), "stated", lambda self, p: {**real(self, p), "trigger_kind": "word"})
    with pytest.raises(TypeError, match="trigger_kind"):
        build_record(*seen["args"], **seen["kwargs"])
    monkeypatch.setattr(type(cell.attack), "stated", lambda self, p: {"poison_rate": 0.1, "label_regime": "dirty"})
    with pytest.raises(TypeError, match="trigger_count"):
        build_record(*seen["args"], **seen["kwargs"])


def test_the_derived_lists_agree_with_the_row():
    fields = [f.name for f in dataclasses.fields(Row)]
    assert sorted(COLUMNS) == sorted(fields) and len(set(COLUMNS)) == len(COLUMNS)
    assert [c.name for c in SCHEMA] == COLUMNS
    assert set(CELL_KEY) <= set(COLUMNS) and set(STATED) <= set(COLUMNS) and set(MD_COLUMNS) <= set(COLUMNS)
    assert set(results.METRICS) <= set(COLUMNS)
    assert all(c.fmt in ("", "pct", "signed", "3f") for c in SCHEMA)
    assert all(not c.fmt or c.md for c in SCHEMA)  # a format only where the Markdown shows the column
    # the names the rest of the code imports from bench.reporting.results are the derived ones
    assert results.CELL_KEY is record.CELL_KEY and results.SCHEMA is record.SCHEMA and results.STATED is record.STATED


def test_the_committed_column_orders_stay():
    # the CSV order and the record order of the committed leaderboards and records (tests/test_rerender.py
    # checks the files; this names the two orders so a reordered field fails here first)
    assert COLUMNS[10:14] == ["poison_rate", "label_regime", "target_label", "trigger_count"]
    assert list(record.ROW_FIELDS[10:14]) == ["poison_rate", "label_regime", "trigger_count", "target_label"]
    assert CELL_KEY == ["dataset", "backbone", "attack", "defense", "seed", "poison_rate", "label_regime",
                        "target_label", "profile", "settings"]
    assert STATED == ("poison_rate", "label_regime", "trigger_count")
    assert COLUMNS[-3:] == ["settings", "preset", "key"]


def test_eval_only_fields_are_profile_fields():
    assert set(EVAL_ONLY_FIELDS) <= {f.name for f in dataclasses.fields(Profile)}
