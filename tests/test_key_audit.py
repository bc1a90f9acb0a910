"""benchmarks/key_audit.py: records whose stored config the current code would no longer plan."""

import copy
import importlib.util
import json
from pathlib import Path

from conftest import write_toy_dataset

from bench.data import load_csv_folder
from bench.engine.profiles import get_profile
from bench.reporting.results import config_key
from bench.runner import cell_config, plan

spec = importlib.util.spec_from_file_location(
    "key_audit", Path(__file__).resolve().parents[1] / "benchmarks" / "key_audit.py")
ka = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ka)


def _write(folder: Path, config: dict) -> str:
    key = config_key(config)
    (folder / "records").mkdir(parents=True, exist_ok=True)
    (folder / "records" / f"{key}.json").write_text(json.dumps({"key": key, "config": config, "row": {}}))
    return f"{key}.json"


def test_audit_finds_exactly_the_record_whose_defense_config_was_tampered(tmp_path):
    toy = write_toy_dataset(tmp_path / "toy")
    cell = plan([str(toy)], ["tiny-bert"], ["badnets"], ["lora"], [1], get_profile("smoke"))[0]
    good = cell_config(cell, load_csv_folder(toy))  # planned, never trained
    bad = copy.deepcopy(good)
    # a record made before lora had the setting `epochs` (a changed value of a setting the record has would be
    # planned again: the audit passes the record's values as settings)
    del bad["defense"]["config"]["epochs"]
    stranger = copy.deepcopy(good)
    stranger["dataset"]["name"] = "a-folder-not-here"
    run = tmp_path / "results" / "run"
    _write(run, good)
    tampered = _write(run, bad)
    _write(run, stranger)

    (entry,) = ka.audit(tmp_path / "results", dataset_folders={"toy": toy})
    assert entry["folder"] == str(run)
    assert (entry["records"], entry["same"], entry["differs"], entry["not_checkable"]) == (3, 1, 1, 1)
    assert list(entry["files"]) == [tampered]
    assert entry["differences"] == {"defense.config.epochs: absent -> null": 1}
    assert entry["reason"] == "defense lora has new settings (epochs)"
    assert entry["verdict"] == "some differ"
    assert "a-folder-not-here" in next(iter(entry["not_checkable_reasons"]))
    assert "| run | 3 | 1 | 1 | 1 | some differ |" in ka.markdown([entry], tmp_path / "results")


def test_differences_name_missing_and_extra_fields():
    stored = {"defense": {"name": "x", "config": {"a": 1, "old": 2}}, "profile": {"plugin_settings": []}}
    current = {"defense": {"name": "x", "config": {"a": 1, "epochs": None}, "version": 2}, "profile": {}}
    assert ka.differences(stored, current) == [
        "defense.config.epochs: absent -> null", "defense.config.old: 2 -> absent", "defense.version: absent -> 2"]
