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
