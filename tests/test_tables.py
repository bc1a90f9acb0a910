"""`bench table`: one subcommand per table of bench/reporting/tables/, printing what the table function returns."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import BenchError
from bench.reporting.tables import matrix

ROOT = Path(__file__).resolve().parents[1]
TABLES = ["fidelity", "matrix", "seeds", "goal", "grid", "defenses", "release"]

runner = CliRunner()


def test_help_lists_every_table():
    r = runner.invoke(app, ["table", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for name in TABLES:
        assert f" {name} " in r.output, (name, r.output)


def test_matrix_prints_the_table_function_text():
    folder = ROOT / "results" / "setting-matrix-h200"
    r = runner.invoke(app, ["table", "matrix", str(folder)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.output == matrix.table(folder) + "\n"


def test_a_missing_folder_is_a_usage_error():
    r = runner.invoke(app, ["table", "grid", str(ROOT / "results" / "no-such-folder")])
    assert r.exit_code == 2


def test_seeds_splits_an_attack_held_at_two_settings_and_compares_within_each():
    """results/distill-v3 holds SST-2 BadNets clean-label (4 triggers) and dirty-label (1 trigger): one block
    each, and a p-value only ever pools the seeds of its own setting."""
    import pandas as pd

    from bench.reporting.scores import p_text
    from bench.reporting.tables.seeds import table

    folder = ROOT / "results" / "distill-v3"
    text = table(folder, "sst2", "badnets")
    heads = [line for line in text.splitlines() if line.startswith("minilm, ")]
    assert len(heads) == 2 and any("dirty, 1 trigger" in h for h in heads) and any("clean-label, 4" in h for h in heads)
    seeds = pd.read_csv(folder / "leaderboard.csv")
    seeds = seeds[(seeds.dataset == "sst2") & (seeds.attack == "badnets")]
    dirty = seeds[seeds.label_regime == "dirty"]
    want = p_text(dirty[dirty.defense == "distill"].cacc.to_numpy(), dirty[dirty.defense == "clean-only"].cacc.to_numpy())
    block = text.split(heads[1])[1] if "dirty" in heads[1] else text.split(heads[0])[1].split(heads[1])[0]
    row = next(line for line in block.splitlines() if line.startswith("| `distill`"))
    assert row.split("|")[8].strip() == want
    r = runner.invoke(app, ["table", "seeds", str(folder), "sst2", "no-such-attack"])
    assert r.exit_code != 0 and "no cell of attack 'no-such-attack'" in r.output


def test_the_knowledge_curve_puts_each_budget_in_its_column_and_draws_it(toy_dir, tmp_path):
    """A tiny curve: `none` (no clean row) and `clean-only` at two budgets, two seeds, through `bench table curve`."""
    from bench.engine.grid import run_grid
    from bench.engine.profiles import get_profile
    from bench.models.victim import VictimStore
    from bench.reporting.scores import p_text
    from bench.reporting.tables.curve import compare, curve_frame, plot, seed_rows, table
    from bench.runner import plan

    prof = get_profile("smoke", {"epochs": "1", "train_size": "64", "clean_size": "32"})
    regime = {"badnets": {"label_regime": "mixed"}}
    cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none"], [1, 2], prof, regime)
    for n in (8, 32):
        cells += plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["clean-only"], [1, 2], prof,
                      {**regime, "clean-only": {"n_clean": n}})
    cells += plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none+clean"], [1, 2], prof,
                  {**regime, "none+clean": {"n_clean": 8}})
    out = tmp_path / "curve"
    run_grid(cells, out, progress=False, store=VictimStore(tmp_path / "victims"))
    frame = curve_frame(out, "toy")
    got = {(r.defense, r.budget): r.n_seeds for r in frame.itertuples()}
    assert got == {("none", 0): 2, ("clean-only", 8): 2, ("clean-only", 32): 2, ("none+clean", 8): 2}
    # --against: none+clean beside clean-only at the same budget (8 rows; nothing at 32), with Welch p over seeds
    rows = seed_rows(out, "toy")
    mine, ref = (rows[(rows.defense == d) & (rows.budget == 8)] for d in ("none+clean", "clean-only"))
    lines = [ln for ln in compare(out, "toy", "clean-only").splitlines() if ln.startswith("| badnets |")]
    assert len(lines) == 1 and lines[0].startswith("| badnets | 8 | `none+clean` | 2 |")
    fields = [f.strip() for f in lines[0].split("|")]
    assert fields[5] == f"{100 * (mine.cacc.mean() - ref.cacc.mean()):+.1f}"
    assert fields[8] == p_text(mine.asr.to_numpy(), ref.asr.to_numpy())
    with pytest.raises(BenchError, match="no cell of defense 'musclelora'"):
        compare(out, "toy", "musclelora")
    r = runner.invoke(app, ["table", "curve", str(out), "toy", "--against", "clean-only"])
    assert r.exit_code == 0 and lines[0] in r.output and "| 8 rows | 32 rows |" in r.output
    assert frame.setting.nunique() == 1  # the budget knob is the defense's own setting: one curve, not three
    text = table(out, "toy")
    assert "| 0 rows | 8 rows | 32 rows |" in text and "| badnets | `clean-only` |  |" in text
    png = plot(out, "toy", tmp_path / "curve.png")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(BenchError, match="no cell of dataset 'sst2'.*it holds: toy"):
        table(out, "sst2")


def _goal_rows(rows: list[tuple]) -> "pd.DataFrame":
    import pandas as pd

    cols = ["dataset", "attack", "defense", "seed", "cacc", "asr", "clean_to_target"]
    f = pd.DataFrame(rows, columns=cols)
    return f.assign(backbone="minilm", settings="profile.train_size=null", label_regime="mixed", poison_rate=0.1,
                    target_label=1, trigger_count=1, frr=0.0, profile="cpu")


def test_the_goal_table_judges_each_criterion_from_the_seeds_and_names_where_it_fails(tmp_path):
    """Issue 25's goal on a hand-made folder: on `a`, ours keeps `none`'s CACC, is above the control beyond noise
    and at its untriggered rate; on `b`, the backdoor stays (ASR 40 over untriggered) and CACC ties the control."""
    from bench.reporting.scores import welch_p
    from bench.reporting.tables.goal import goal_frame, table

    rows = []
    for s, j in zip((1, 2, 3), (-0.002, 0.0, 0.002)):
        rows += [("toy", "a", "none", s, 0.90 + j, 0.99, 0.10), ("toy", "a", "clean-only", s, 0.80 + j, 0.10, 0.10),
                 ("toy", "a", "distill", s, 0.89 + j, 0.11, 0.10), ("toy", "a", "lora", s, 0.85 + j, 0.50, 0.10),
                 ("toy", "b", "none", s, 0.90 + j, 0.99, 0.10), ("toy", "b", "clean-only", s, 0.80 + 5 * j, 0.1, 0.1),
                 ("toy", "b", "distill", s, 0.80 - 5 * j, 0.50, 0.10)]
    _goal_rows(rows).to_csv(tmp_path / "leaderboard.csv", index=False)
    f = goal_frame(tmp_path).set_index("attack")
    assert round(100 * f.loc["a", "cacc_vs_none"], 6) == -1.0 and round(100 * f.loc["b", "asr_gap"], 6) == 40.0
    assert f.loc["a", "best_other"] == "lora" and f.loc["b", "best_other"] == ""  # not `none`, not the control
    assert f.loc["a", "cacc_p"] == welch_p([0.888, 0.89, 0.892], [0.798, 0.8, 0.802]) < 0.05
    text = table(tmp_path)
    assert "| toy | a | mixed, 1 trigger(s), rate 0.1, target 1 | 3 | -1.0 |" in text
    verdicts = {line.split(":")[0][2:]: line for line in text.splitlines() if line.startswith("- ")}
    assert verdicts["CACC at least `none`'s - 1.5 on average (-5.5)"].endswith("not met")
    assert verdicts["CACC above the control beyond noise on every attack"].endswith("not met (fails on b)")
    assert verdicts["ASR within 15 of untriggered on the worst attack (+40.0)"].endswith("not met (fails on b)")
    best = next(v for k, v in verdicts.items() if k.startswith("task score ahead of the best other defense"))
    assert "not judged there): not met" in best and "on b" in best
    # the reach of the "beyond noise" criteria: `none`'s CACC and the ceiling (`none`'s CACC at its untriggered rate)
    assert f.loc["a", "ceiling"] == pytest.approx(0.9) and f.loc["a", "ceiling_p"] < 0.05 and f.loc["a", "none_cacc_p"] < 0.05
    assert "| 90.0 (" in text and "out of reach" not in text
    tie = [("toy", "c", "none", s, 0.80 + j, 0.99, 0.10) for s, j in zip((1, 2, 3), (-0.01, 0.0, 0.01))]
    tie += [("toy", "c", d, s, 0.80 - j, 0.10, 0.10) for d in ("clean-only", "distill") for s, j in zip((1, 2, 3), (-0.01, 0.0, 0.01))]
    _goal_rows(rows + tie).to_csv(tmp_path / "leaderboard.csv", index=False)
    g = goal_frame(tmp_path).set_index("attack")
    assert g.loc["c", "none_cacc_p"] == 1.0 and g.loc["c", "ceiling_p"] > 0.99 and g.loc["b", "ceiling_p"] < 0.05
    text = table(tmp_path)
    assert "(`none` is not beyond noise either on c: out of reach there at these seeds): not met (fails on b, c)" in text
    assert "(the ceiling is not beyond noise either on c: out of reach there at these seeds): not met" in text
    # the same folder without attack b meets every criterion on a's numbers alone
    _goal_rows([r for r in rows if r[1] == "a"]).to_csv(tmp_path / "leaderboard.csv", index=False)
    text = table(tmp_path)
    assert text.count(": met") == 6 and "not met" not in text, text
    with pytest.raises(BenchError, match="no cell of defense 'ours'.*it holds: clean-only, distill, lora, none"):
        table(tmp_path, defense="ours")
    no_control = [r for r in rows if r[1] == "a" and r[2] != "clean-only"]
    _goal_rows(no_control).to_csv(tmp_path / "leaderboard.csv", index=False)
    r = runner.invoke(app, ["table", "goal", str(tmp_path)])
    assert r.exit_code != 0 and "none of 'clean-only'" in r.output
    # --with pools a second folder's cells (here the control); a cell in both folders counts once
    other = tmp_path / "control"
    other.mkdir()
    both = _goal_rows([r for r in rows if r[1] == "a"]).assign(key=lambda f: [f"k{i}" for i in range(len(f))])
    both[both.defense == "clean-only"].to_csv(other / "leaderboard.csv", index=False)
    both.to_csv(tmp_path / "leaderboard.csv", index=False)
    r = runner.invoke(app, ["table", "goal", str(tmp_path), "--with", str(other)])
    assert r.exit_code == 0 and r.output == table([tmp_path]) + "\n", r.output
    # one defense at two of its own settings (e.g. two budgets) is not pooled into one sample of six seeds
    twice = both.assign(key=[f"j{i}" for i in range(len(both))], settings="profile.train_size=null; lora.r=16")
    twice[twice.defense == "lora"].to_csv(other / "leaderboard.csv", index=False)
    with pytest.raises(BenchError, match="holds 'lora' seed 1 more than once"):
        table([tmp_path, other])
