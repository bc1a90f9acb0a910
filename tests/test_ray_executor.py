"""`bench run --executor ray`: a small grid through a local Ray cluster gets the same records as the
local executor, its post-training cells share one plain victim trained once (two waves), and a rerun
recomputes nothing. The Ray test is skipped when the optional `ray` package is not installed
(pip install -e '.[ray]'); it is `slow` (a local cluster and its workers start in 10-40 s on 2 cores)."""

import importlib.util
import json
import sys

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.reporting.results import read_runs

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="the optional ray package is not installed (pip install -e '.[ray]')")
runner = CliRunner()

# none, strip and a --plugins defense share the plain victim: the none cell trains it (wave 1), the
# other two wait for it (wave 2) and load it; the plugin's class reaches the workers by value
GRID = ["run", "-a", "badnets", "-d", "none", "-d", "strip", "-d", "ray-plugin-none", "-b", "tiny-bert",
        "--profile", "smoke", "--seed", "1", "--no-progress"]
PLUGIN = (
    "from bench import register\nfrom bench.defense import Defense\n\n"
    "@register('defense', 'ray-plugin-none')\nclass RayPluginNone(Defense):\n"
    "    '''The plain victim, from a --plugins file (sent to the Ray workers).'''\n"
)
SAME = ("cacc", "asr", "clean_to_target", "frr", "poison_rejected", "n_poisoned", "n_train_after_defense",
        "n_test_clean", "n_test_poison", "best_epoch", "dev_acc", "victim", "settings")


def records(out):
    recs = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    return {r["key"]: r for r in recs}


@pytest.mark.slow
@needs_ray
def test_ray_executor_gets_the_local_records(toy_dir, tmp_path, monkeypatch):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    plugin = tmp_path / "ray_plugin.py"
    plugin.write_text(PLUGIN)
    grid = [*GRID, "--dataset", str(toy_dir), "--plugins", str(plugin)]
    r = runner.invoke(app, [*grid, "--out", str(local)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "ray-cache"))  # the Ray run trains its own victim
    args = [*grid, "--out", str(on_ray), "--executor", "ray"]
    r = runner.invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "3 cells run, 0 already recorded" in r.output

    a, b = records(local), records(on_ray)
    assert len(a) == 3 and a.keys() == b.keys()
    for key in a:
        assert a[key]["config"] == b[key]["config"]
        assert {k: a[key]["row"][k] for k in SAME} == {k: b[key]["row"][k] for k in SAME}, a[key]["row"]["defense"]
        assert "--executor ray" in b[key]["provenance"]["command"]
    # two waves: the plain victim trained once, by the none cell (wave 1); the others loaded it
    trained = {rec["row"]["defense"]: rec["row"]["victim_trained_here"] for rec in b.values()}
    assert trained == {"none": True, "strip": False, "ray-plugin-none": False}
    assert len(list((tmp_path / "ray-cache" / "victims").glob("*/victim.json"))) == 1
    run = read_runs(on_ray)[-1]
    assert run["status"] == "finished" and run["cells_run"] == 3 and run["victims_trained"] == 1, run
    assert (on_ray / "leaderboard.csv").is_file() and not list((on_ray / "claims").glob("*.json"))

    r = runner.invoke(app, args, catch_exceptions=False)  # resumable: nothing left, no cluster started
    assert r.exit_code == 0 and "0 cells run, 3 already recorded" in r.output


def test_waves_train_each_victim_before_the_cells_that_reuse_it(toy_dir):
    from bench.engine.executors import victim_group, waves
    from bench.engine.profiles import get_profile
    from bench.runner import plan

    cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets", "addsent"], ["strip", "lora", "none", "rap"], [1, 2],
                 get_profile("smoke"))
    first, later = waves(cells)
    assert sorted(c.defense.name for c in first) == ["lora"] * 4 + ["none"] * 4  # one plain victim per group
    assert len(later) == 4
    for cell in first:
        if cell.defense.name == "none":  # trains its group's plain victim; the group's other cells wait for it
            assert sorted(c.defense.name for c in later[victim_group(cell)]) == ["rap", "strip"]


def test_the_per_cell_step_skips_a_recorded_or_claimed_cell(toy_dir, tmp_path):
    """What every executor runs per cell leaves a recorded cell, and one a live run holds, alone."""
    from bench.engine.claims import try_claim
    from bench.engine.profiles import get_profile
    from bench.runner import plan, run_claimed_cell

    cell = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none"], [1], get_profile("smoke"))[0]
    never = object()  # an evaluator that must not be used
    held = try_claim(tmp_path, "k1", cell.label)  # this live process holds the claim
    assert run_claimed_cell(never, cell, "k1", tmp_path) == ("claimed", None)
    held.release()
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "k2.json").write_text("{}")
    assert run_claimed_cell(never, cell, "k2", tmp_path) == ("recorded", None)


def test_executor_options_are_checked(tmp_path, monkeypatch):
    out = ["--out", str(tmp_path / "o"), "--no-progress", "-a", "badnets", "-d", "none"]
    r = runner.invoke(app, ["run", *out, "--executor", "rey"])
    assert r.exit_code == 2 and "Did you mean 'ray'" in r.output
    r = runner.invoke(app, ["run", *out, "--ray-address", "auto"])
    assert r.exit_code == 2 and "--executor ray" in r.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    r = runner.invoke(app, ["run", *out, "--executor", "ray"])
    assert r.exit_code == 2 and "pip install 'bench[ray]'" in r.output
