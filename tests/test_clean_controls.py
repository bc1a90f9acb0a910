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

    _refused(Nothing, "nothing to train on", toy_dir, tmp_path)


def _refused(cls, match, toy_dir, tmp_path):
    """Register a test plugin, run one cell of it, expect a ContractError matching ``match``, unregister it."""
    registry.register("defense", "test-plugin")(cls)
    try:
        with pytest.raises(ContractError, match=match):
            _run("test-plugin", toy_dir, tmp_path)
    finally:
        registry._ENTRIES["defense"].pop("test-plugin")


def test_none_plus_clean_keeps_its_record_keys():
    """clean-only's step matching is its own setting: none+clean's config, and so the keys of its
    records (three seeds in results/leaderboard), must not change with it."""
    from bench.config import config_dict

    cfg = config_dict(registry.get("defense", "none+clean").Config())
    assert cfg == {"n_clean": None} and registry.get("defense", "none+clean").version == 1


def test_clean_only_trains_one_victim_for_every_attack_and_states_each_cells_own_poison(toy_dir, tmp_path):
    """clean-only keeps no poisoned row, so BadNets and AddSent on one dataset x seed train the same model: the
    second cell loads the first one's victim (same key, same CACC) and still counts its own poisoned rows."""
    prof = get_profile("smoke", {"epochs": "1", "clean_size": "40"})
    data, store = DataCache().get(str(toy_dir)), VictimStore(tmp_path / "victims")
    cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets", "addsent"], ["clean-only"], [1], prof,
                 {"badnets": {"label_regime": "mixed", "poison_rate": 0.1}, "addsent": {"poison_rate": 0.2}})
    first, second = (run_cell(c, store=store, data=data) for c in cells)
    assert first["row"]["victim_trained_here"] and not second["row"]["victim_trained_here"]
    assert first["row"]["victim"] == second["row"]["victim"] and first["row"]["cacc"] == second["row"]["cacc"]
    for rec in (first, second):
        row = rec["row"]
        assert row["filter_recall"] == 1.0 and row["filter_precision"] == row["n_poisoned"] / row["n_train"]
    assert first["row"]["n_poisoned"] != second["row"]["n_poisoned"]
    # none trains one victim per attack: its training rows differ
    plain = plan([str(toy_dir)], ["tiny-bert"], ["badnets", "addsent"], ["none"], [1], prof,
                 {"badnets": {"label_regime": "mixed", "poison_rate": 0.1}, "addsent": {"poison_rate": 0.2}})
    assert len({run_cell(c, store=store, data=data)["row"]["victim"] for c in plain}) == 2


def test_a_defense_that_promises_to_keep_no_row_and_keeps_one_is_refused(toy_dir, tmp_path):
    import numpy as np

    class Liar(Defense):
        """Test plugin: says its victim does not depend on the training rows, then keeps one."""

        reads_training_rows = False

        def select_train(self, rows, ctx):
            keep = np.zeros(len(rows), dtype=bool)
            keep[0] = True
            return keep

    _refused(Liar, "reads_training_rows = False.*kept 1 row", toy_dir, tmp_path)
