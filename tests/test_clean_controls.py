"""The clean-data controls: clean-only trains on the defender's clean rows alone, none+clean adds
them to the poisoned set; both count the rows in the record and sort beside the clean-row defenses."""

import pytest

from bench import registry
from bench.defense import Defense
from bench.engine.profiles import get_profile
from bench.errors import ContractError
from bench.models.victim import VictimStore
from bench.reporting.results import records_frame
from bench.runner import DataCache, plan, run_cell


def _run(defense, toy_dir, tmp_path, settings=None, **profile):
    prof = get_profile("smoke", {"epochs": "1", **{k: str(v) for k, v in profile.items()}})
    cell = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], [defense], [1], prof,
                {"badnets": {"label_regime": "mixed"}, **(settings or {})})[0]
    return run_cell(cell, store=VictimStore(tmp_path / defense), data=DataCache().get(str(toy_dir)))


def test_clean_only_trains_on_the_clean_rows_alone_for_as_many_steps_as_plain_training(toy_dir, tmp_path):
    rec = _run("clean-only", toy_dir, tmp_path, clean_size=40)
    row, info = rec["row"], rec["training"]
    copies = round(row["n_train"] / 40)
    assert copies > 1 and info["training_stats"]["clean_row_copies"] == copies
    assert row["n_train_after_defense"] == row["n_train_added"] == 40 * copies
    assert row["n_clean_used"] == 40 and row["uses_clean"]  # 40 distinct rows, however often repeated
    assert row["filter_recall"] == 1.0  # every poisoned row is gone with the rest
    assert info["training_stats"]["clean_rows_trained_on"] == 40
    plain = _run("none", toy_dir, tmp_path, clean_size=40)["training"]
    assert abs(info["steps"] - plain["steps"]) <= plain["steps"] * 40 / row["n_train"] + 1


def test_clean_only_without_step_matching_takes_each_clean_row_once_per_epoch(toy_dir, tmp_path):
    rec = _run("clean-only", toy_dir, tmp_path, {"clean-only": {"match_steps": False}}, clean_size=40)
    assert rec["row"]["n_train_after_defense"] == 40 and rec["training"]["training_stats"]["clean_row_copies"] == 1


def test_none_plus_clean_adds_the_clean_rows_to_the_poisoned_set(toy_dir, tmp_path):
    row = _run("none+clean", toy_dir, tmp_path, clean_size=40)["row"]
    assert row["n_train_after_defense"] == row["n_train"] + 40
    assert row["n_clean_used"] == 40 and row["n_poisoned"] > 0


def test_controls_sort_beside_the_defenses_that_used_clean_rows():
    rows = [{"dataset": "d", "backbone": "b", "attack": "a", "defense": d, "seed": 1, "uses_clean": u}
            for d, u in [("clean-only", True), ("lora", False), ("musclelora", True), ("none", False),
                         ("none+clean", True)]]
    order = list(records_frame([{"row": r} for r in rows])["defense"])
    assert order == ["lora", "none", "clean-only", "musclelora", "none+clean"]


def test_a_defense_that_keeps_and_adds_nothing_is_refused(toy_dir, tmp_path):
    import numpy as np

    class Nothing(Defense):
        """Test plugin: drops every row and adds none."""

        def select_train(self, rows, ctx):
            return np.zeros(len(rows), dtype=bool)

    registry.register("defense", "test-nothing")(Nothing)
    try:
        with pytest.raises(ContractError, match="nothing to train on"):
            _run("test-nothing", toy_dir, tmp_path)
    finally:
        registry._ENTRIES["defense"].pop("test-nothing")


def test_none_plus_clean_keeps_its_record_keys():
    """clean-only's step matching is its own setting: none+clean's config, and so the keys of its
    records (three seeds in results/leaderboard), must not change with it."""
    from bench.config import config_dict

    cfg = config_dict(registry.get("defense", "none+clean").Config())
    assert cfg == {"n_clean": None} and registry.get("defense", "none+clean").version == 1
