"""`bench table`: one subcommand per table of bench/reporting/tables/, printing what the table function returns."""

from pathlib import Path

from typer.testing import CliRunner

from bench.cli import app
from bench.reporting.tables import matrix

ROOT = Path(__file__).resolve().parents[1]
TABLES = ["fidelity", "matrix", "seeds", "grid", "defenses", "release"]

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
