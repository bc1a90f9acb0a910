"""The declared rule that chooses the MuScleLoRA family's cpu schedule (benchmarks/tuning_choice.py)."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "tuning_choice", Path(__file__).resolve().parents[1] / "benchmarks" / "tuning_choice.py")
tc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tc)


def rows(none_asr, scores):
    """scores: {(ref, ga_epoch): (cacc, asr)} for musclelora only."""
    out = [{"defense": "none", "cacc": 0.9, "asr": none_asr, "reference_size": None, "ga_epoch": None}]
    for (r, e), (c, a) in scores.items():
        out.append({"defense": "musclelora", "cacc": c, "asr": a, "reference_size": r, "ga_epoch": e})
    return out


def test_highest_task_score_wins_and_a_tie_keeps_the_papers_value():
    base = {(384, 0): (0.90, 0.10), (96, 1): (0.90, 0.20), (96, 0): (0.80, 0.10), (384, 1): (0.85, 0.30)}
    got = tc.choose(rows(0.9, base))["choices"]["musclelora"]
    assert got["chosen"] == [384, 0] and got["why"] == "highest task score"
    # within 0.5 points of the paper's (96, 1): a tie, the paper's value stays
    tied = {**base, (384, 0): (0.90, 0.195)}
    assert tc.choose(rows(0.9, tied))["choices"]["musclelora"]["chosen"] == [96, 1]


def test_no_backdoor_on_the_tuning_set_or_missing_cells_choose_nothing_new():
    base = {(384, 0): (0.90, 0.10), (96, 1): (0.90, 0.20), (96, 0): (0.80, 0.10), (384, 1): (0.85, 0.30)}
    assert tc.choose(rows(0.2, base))["choices"]["musclelora"]["chosen"] == [96, 1]  # none's ASR < 50
    missing = {k: v for k, v in base.items() if k != (96, 0)}
    assert tc.choose(rows(0.9, missing))["choices"]["musclelora"]["chosen"] == list(tc.CURRENT)
    assert tc.choose(rows(0.9, base))["choices"]["ga"]["chosen"] == list(tc.CURRENT)  # no ga cell at all
