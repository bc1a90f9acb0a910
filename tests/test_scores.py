"""Seeds aggregated with intervals, the per-defense scores, and a compare that knows seed noise."""

import math

import numpy as np
import pandas as pd
import pytest

from bench.reporting.results import COLUMNS, compare, regressions, to_markdown
from bench.reporting.scores import aggregate, der, interval_text, p_text, shared_settings, summary, t_interval, task_score, welch_p


def _frame(rows):
    base = {"dataset": "sst2", "backbone": "minilm", "poison_rate": 0.1, "label_regime": "dirty",
            "target_label": 1, "trigger_count": 4, "profile": "cpu", "settings": "", "clean_to_target": 0.1,
            "uses_clean": False}
    return pd.DataFrame([{**base, **r} for r in rows], columns=COLUMNS)


def test_der_sign_follows_the_definition_not_the_reference_code():
    # no change: 0.5; backdoor removed at no cost: 1; the same removal with a CACC loss rates lower
    assert der(0.9, 0.9, 0.9, 0.9) == 0.5
    assert der(0.9, 0.0, 0.9, 1.0) == 1.0
    assert der(0.8, 0.0, 0.9, 1.0) == pytest.approx(0.95)  # a 10-point CACC loss costs 0.05
    assert der(0.8, 0.0, 0.9, 1.0) < der(0.9, 0.0, 0.9, 1.0)
    # a CACC gain or an ASR rise are clipped at 0 (max(0, .)), as defined
    assert der(0.95, 0.9, 0.9, 0.9) == 0.5
    assert der(0.9, 1.0, 0.9, 0.5) == 0.5


def test_task_score_and_interval():
    assert task_score(1.0, 0.0) == 1.0 and task_score(0.81, 0.0) == pytest.approx(0.9)
    assert task_score(0.9, 1.0) == 0.0
    mean, sd, lo, hi = t_interval(np.array([0.8, 0.9, 1.0]))
    assert mean == pytest.approx(0.9) and sd == pytest.approx(0.1)
    # t(0.975, 2) = 4.303: half-width 4.303 * 0.1 / sqrt(3)
    assert hi - mean == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-3) and mean - lo == pytest.approx(hi - mean)
    mean, sd, lo, hi = t_interval(np.array([0.7]))
    assert (mean, lo, hi) == (0.7, 0.7, 0.7) and math.isnan(sd)


def test_aggregate_over_seeds_and_der_against_none_of_the_same_cell():
    df = _frame([
        {"attack": "badnets", "defense": "none", "seed": s, "cacc": 0.9, "asr": 1.0} for s in (1, 2, 3)
    ] + [
        {"attack": "badnets", "defense": "lora", "seed": s, "cacc": c, "asr": a, "settings": "lora.r=16"}
        for s, c, a in ((1, 0.85, 0.2), (2, 0.86, 0.3), (3, 0.87, 0.1))
    ] + [{"attack": "addsent", "defense": "lora", "seed": 1, "cacc": 0.8, "asr": 0.5}])
    cells = aggregate(df).set_index(["attack", "defense"])
    lora = cells.loc[("badnets", "lora")]
    assert lora["n_seeds"] == 3 and lora["seeds"] == "1,2,3"
    assert lora["cacc"] == pytest.approx(0.86) and lora["asr"] == pytest.approx(0.2)
    assert lora["asr_lo"] < 0.2 < lora["asr_hi"]
    assert lora["excess_asr"] == pytest.approx(0.1)
    # lora's own setting does not stop it from being rated against none of the same cell
    assert lora["der"] == pytest.approx((0.8 - 0.04 + 1) / 2)
    assert cells.loc[("badnets", "none"), "der"] == 0.5
    assert math.isnan(cells.loc[("addsent", "lora"), "der"])  # no undefended run of addsent here
    assert cells.loc[("addsent", "lora"), "n_seeds"] == 1


def test_summary_ranks_and_names_the_worst_attack():
    rows = []
    for attack, none_asr in (("badnets", 1.0), ("style", 0.9)):
        rows.append({"attack": attack, "defense": "none", "seed": 1, "cacc": 0.9, "asr": none_asr})
        rows.append({"attack": attack, "defense": "good", "seed": 1, "cacc": 0.88,
                     "asr": 0.1 if attack == "badnets" else 0.4})
        rows.append({"attack": attack, "defense": "bad", "seed": 1, "cacc": 0.5, "asr": 0.9})
    s = summary(_frame(rows))
    # scores: good (0.88*0.9)^.5 and (0.88*0.6)^.5 -> 0.808; bad (0.5*0.1)^.5 -> 0.224; none 0 and 0.3 -> 0.150
    assert list(s["defense"]) == ["good", "bad", "none"]
    assert s.set_index("defense").loc["none", "task_score"] == pytest.approx(0.15)
    good = s.set_index("defense").loc["good"]
    assert good["mean_rank"] == 1.0 and good["worst_attack"] == "style" and good["worst_asr"] == 0.4
    assert good["min_seeds"] == 1 and good["n_cells"] == 2
    md = to_markdown(_frame(rows), "Leaderboard", [])
    # the summary leads, sorted by the score; single-seed rows are marked
    assert md.index("## Summary per defense") < md.index("## Cells over their seeds") < md.index("## Every seed")
    assert "good †" in md


def test_shared_settings_drop_only_the_defenses_own():
    assert shared_settings("lora.r=16; profile.epochs=1", "lora") == "profile.epochs=1"
    assert shared_settings("profile.epochs=1", "none") == "profile.epochs=1"
    assert shared_settings(float("nan"), "none") == ""


def test_welch_p():
    assert math.isnan(welch_p(np.array([0.5]), np.array([0.4, 0.5])))
    assert welch_p(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 1.0
    assert welch_p(np.array([0.5, 0.5]), np.array([0.6, 0.6])) == 0.0
    assert welch_p(np.array([0.1, 0.12, 0.11]), np.array([0.9, 0.91, 0.89])) < 0.001


def _seeded(asrs_a, asrs_b):
    a = _frame([{"attack": "badnets", "defense": "lora", "seed": s, "cacc": 0.9, "asr": x}
                for s, x in enumerate(asrs_a, 1)])
    b = _frame([{"attack": "badnets", "defense": "lora", "seed": s, "cacc": 0.9, "asr": x}
                for s, x in enumerate(asrs_b, 1)])
    return compare(a, b, across_seeds=True)[0]


def test_the_regression_gate_ignores_noise_and_fires_on_a_real_change():
    noisy = _seeded([0.10, 0.30, 0.20], [0.25, 0.05, 0.45])  # +5 points, seeds all over the place
    assert noisy["noise_asr"].iloc[0] == "within noise"
    assert len(regressions(noisy, 1.0)) == 0
    real = _seeded([0.10, 0.11, 0.12], [0.50, 0.52, 0.51])  # +40 points, tight seeds
    assert real["noise_asr"].iloc[0] == "beyond noise" and real["p_asr"].iloc[0] < 0.05
    assert len(regressions(real, 1.0)) == 1
    one = _seeded([0.10], [0.30])  # one seed: cannot be tested, the threshold alone decides
    assert one["noise_asr"].iloc[0] == "untested (1 seed)"
    assert len(regressions(one, 1.0)) == 1 and len(regressions(one, 30.0)) == 0


def test_two_records_of_one_seed_count_as_one_seed_and_are_flagged():
    df = _frame([{"attack": "badnets", "defense": "cube", "seed": 1, "cacc": c, "asr": 1.0} for c in (0.8, 0.9)])
    cell = aggregate(df).iloc[0]
    assert cell["n_seeds"] == 1 and cell["duplicate_seed_rows"] == 1
    assert cell["cacc"] == pytest.approx(0.85) and cell["cacc_lo"] == cell["cacc_hi"]  # no interval from one seed
    assert "more than one record for the same seed" in to_markdown(df, "Leaderboard", [])


def test_table_text_of_an_interval_and_a_p_value():
    assert interval_text(0.5, 0.4, 0.6, 3) == "50.0 ± 10.0"
    assert interval_text(0.5, 0.4, 0.6, 1) == "50.0"  # one seed: no interval
    assert interval_text(0.5, float("nan"), float("nan"), 3) == "50.0"
    assert interval_text(None, 0.4, 0.6, 3) == interval_text(float("nan"), 0.4, 0.6, 3) == ""
    assert p_text(np.array([0.9]), np.array([0.1, 0.2])) == "-"
    assert p_text(np.array([0.90, 0.91, 0.92]), np.array([0.10, 0.11, 0.12])) == "< 0.001"
    a, b = np.array([0.5, 0.7, 0.6]), np.array([0.55, 0.8, 0.65])
    assert p_text(a, b, 2) == f"{welch_p(a, b):.2f}" and p_text(a, b) == f"{welch_p(a, b):.3f}"
