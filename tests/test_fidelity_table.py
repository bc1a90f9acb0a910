"""The fidelity table's verdicts (bench/reporting/tables/fidelity.py, `bench table fidelity`) follow the rules docs/fidelity.md
declared."""

from pathlib import Path

import numpy as np

from bench.reporting.tables import fidelity as ft

ROOT = Path(__file__).resolve().parents[1]

NONE_ASR, NONE_CACC = np.array([0.99, 1.0, 0.98]), np.array([0.81, 0.80, 0.82])


def test_verdicts():
    v = lambda d, asr, cacc=NONE_CACC: ft.verdict(d, np.array(asr), cacc, NONE_ASR, NONE_CACC)  # noqa: E731
    assert v("onion", [0.25, 0.28, 0.30]) == "reproduced"
    assert v("onion", [0.25, 0.28, 0.30], np.array([0.70, 0.72, 0.71])) == "in direction only"  # CACC cost
    assert v("onion", [0.40, 0.45, 0.50]) == "in direction only"
    assert v("onion", [0.75, 0.80, 0.85]) == "not reproduced"
    assert v("onion", [0.10, 0.99, 0.98]) == "not reproduced"  # one good seed is noise, not a result
    assert v("badacts", [0.12, 0.11, 0.12]) == "in direction only"  # the bound is 10 points for BadActs
    assert v("lora", [0.1, 0.1, 0.1]) == "-"  # no declared bound: no verdict


def test_own_settings_tell_cells_of_one_defense_apart():
    s = "badnets.label_regime=dirty; onion.mode=fixed; profile.train_size=1500"
    assert ft._own(s, "onion") == "onion.mode=fixed" and ft._own(s, "rap") == "(defaults)"


def test_defenses_without_a_published_point_get_the_direction_rule_only():
    v = lambda d, asr: ft.verdict(d, np.array(asr), NONE_CACC, NONE_ASR, NONE_CACC)  # noqa: E731
    assert v("bki", [0.05, 0.06, 0.05]) == "in direction only"  # never "reproduced": no published bound
    assert v("bki", [0.90, 0.95, 0.99]) == "not reproduced"


def test_summary_counts_each_baseline_once_at_its_best():
    rows = [{"defense": "bki", "verdict": "not reproduced", "folder": "a", "settings": "(defaults)"},
            {"defense": "bki", "verdict": "in direction only", "folder": "b", "settings": "(defaults)"},
            {"defense": "rap", "verdict": "not reproduced", "folder": "a", "settings": "rap.rap_lr=0.01"},
            {"defense": "lora", "verdict": "-", "folder": "a", "settings": "(defaults)"}]
    assert ft.summary(rows) == [("bki", "in direction only", "b"),
                                ("rap", "not reproduced", "a (rap.rap_lr=0.01)")]


def test_none_of_another_training_size_is_never_the_control():
    import pandas as pd

    base = {"dataset": "sst2", "attack": "badnets", "label_regime": "dirty", "trigger_count": 1, "poison_rate": 0.1,
            "n_test_clean": 300, "defense": "none"}
    seeds = pd.DataFrame([{**base, "n_train": 1500, "seed": 1, "folder": "small", "asr": 0.8},
                          {**base, "n_train": 6920, "seed": 1, "folder": "whole", "asr": 1.0},
                          {**base, "n_train": 6920, "seed": 2, "folder": "whole", "asr": 1.0}])
    setting = ["sst2", "badnets", "dirty", 1, 0.1, 1500, 300]
    got = ft._control(seeds, "none", "other", setting)
    assert list(got.folder) == ["small"] and list(got.seed) == [1]
