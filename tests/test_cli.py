"""The CLI through typer's test runner, and one end-to-end run on a tiny backbone."""

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.cli import app

runner = CliRunner()

SMOKE = ["--profile", "smoke", "--set", "profile.epochs=4", "--set", "profile.train_size=None",
         "--set", "profile.learning_rate=0.003", "--no-progress"]


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_list_shows_every_kind():
    r = invoke("list")
    assert r.exit_code == 0
    for word in ("attacks:", "defenses:", "datasets:", "backbones:", "badnets", "lora", "sst2", "minilm", "tiny-llama"):
        assert word in r.output


def test_list_with_a_user_plugin(tmp_path):
    f = tmp_path / "cli_plugin.py"
    f.write_text(
        "from bench import register\nfrom bench.defense import Defense\n\n"
        "@register('defense', 'cli-user-defense')\nclass D(Defense):\n    '''From a user file.'''\n"
    )
    r = invoke("list", "--plugins", str(f))
    assert r.exit_code == 0 and "cli-user-defense" in r.output and "From a user file." in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--attack", "badnet", "--defense", "none"], "Did you mean 'badnets'"),
        (["--attack", "badnets", "--defense", "lor"], "Did you mean 'lora'"),
        (["--attack", "badnets", "--defense", "none", "--backbone", "tiny-bert", "--dataset", "sst"], "Did you mean 'sst2'"),
        (["--attack", "badnets", "--defense", "lora", "--set", "lora.rank=4"], "unknown setting 'rank'"),
        (["--attack", "badnets", "--defense", "none", "--set", "lora.r=4"], "not among the selected"),
        (["--attack", "badnets", "--defense", "none", "--profile", "gpu"], "unknown profile"),
        (["--attack", "badnets", "--defense", "none", "--label-regime", "dirty-label"], "not one of"),
        (["--attack", "badnets"], "at least one --attack and one --defense"),
    ],
)
def test_bad_input_is_a_clear_error(args, message, tmp_path):
    r = runner.invoke(app, ["run", *args, "--out", str(tmp_path / "out"), "--no-progress"])
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_missing_data_dir_is_a_clear_error(tmp_path):
    r = runner.invoke(app, ["run", "--attack", "badnets", "--defense", "none", "--backbone", "tiny-bert",
                            "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 2 and "does not exist" in r.output and "--data-dir" in r.output


@pytest.mark.slow  # 4 cells, then resume, reuse and compare: ~10 s on a loaded 2-core CPU
def test_end_to_end_leaderboard_resume_and_compare(toy_dir, tmp_path):
    out = tmp_path / "out"
    args = ["run", "--attack", "badnets", "--attack", "addsent", "--defense", "none", "--defense", "lora",
            "--dataset", str(toy_dir), "--backbone", "tiny-bert", "--seed", "1",
            "--set", "badnets.label_regime=mixed", "--out", str(out), *SMOKE]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "4 cells run, 0 already recorded" in r.output
    df = pd.read_csv(out / "leaderboard.csv")
    assert sorted(zip(df.attack, df.defense)) == [("addsent", "lora"), ("addsent", "none"),
                                                   ("badnets", "lora"), ("badnets", "none")]
    assert (df.n_test_clean == 80).all() and (df.n_test_poison == 40).all()
    assert (df.n_poisoned == 24).all() and (df.poison_rate == 0.1).all() and (df.target_label == 1).all()
    assert set(df.label_regime) == {"mixed"} and set(df.trigger_count) == {1, 4}
    # the toy task and the triggers are learnable: full fine-tuning learns both
    none = df[df.defense == "none"]
    assert (none.cacc > 0.9).all(), none
    assert (none.asr > 0.9).all(), none
    records = list((out / "records").glob("*.json"))
    assert len(records) == 4
    rec = json.loads(records[0].read_text())
    for k in ("commit", "dirty"):
        assert k in rec["provenance"]["git"]
    assert rec["provenance"]["packages"]["torch"] and rec["provenance"]["wall_seconds"] > 0
    assert rec["provenance"]["command"].startswith("bench run")
    assert rec["config"]["dataset"]["fingerprint"]
    # timings are tied to the CPU that gave them (bf16 is emulated without avx512_bf16/AMX)
    cpu = rec["provenance"]["machine"]
    if Path("/proc/cpuinfo").exists():
        assert cpu["cpu_model"] and set(cpu["cpu_flags"]) >= {"avx2", "avx512_bf16", "amx_bf16"}

    # an interrupted or repeated run resumes: nothing is recomputed
    r = invoke(*args)
    assert "0 cells run, 4 already recorded" in r.output
    # a changed setting is a different cell (the key hashes the configuration's content)
    r = invoke("run", "--attack", "badnets", "--defense", "none", "--dataset", str(toy_dir), "--backbone", "tiny-bert",
               "--set", "badnets.label_regime=mixed", "--out", str(out), *SMOKE, "--set", "profile.epochs=1")
    assert "1 cells run, 0 already recorded" in r.output
    assert len(list((out / "records").glob("*.json"))) == 5

    # another results folder reuses the recorded cells instead of recomputing them
    out2 = tmp_path / "out2"
    r = invoke(*[str(out2) if a == str(out) else a for a in args], "--reuse", str(out))
    assert "0 cells run, 0 already recorded, 4 copied" in r.output
    copied = json.loads(next((out2 / "records").glob("*.json")).read_text())
    assert copied["provenance"]["copied_from"].startswith(str(out))
    assert pd.read_csv(out2 / "leaderboard.csv")[["cacc", "asr"]].equals(df[["cacc", "asr"]])

    md = invoke("leaderboard", "--out", str(out))
    assert md.exit_code == 0 and "| addsent" in md.output

    # compare: a copy with a worse cell fails the regression gate
    b = df.copy()
    b.loc[(b.attack == "badnets") & (b.defense == "lora"), "asr"] += 0.05
    b = pd.concat([b, b.iloc[[0]].assign(seed=99)])
    b.to_csv(tmp_path / "b.csv", index=False)
    same = invoke("compare", str(out / "leaderboard.csv"), str(out / "leaderboard.csv"), "--fail-on-regression", "1")
    assert same.exit_code == 0 and "no cell regresses" in same.output
    worse = runner.invoke(app, ["compare", str(out / "leaderboard.csv"), str(tmp_path / "b.csv"),
                                "--fail-on-regression", "1"])
    assert worse.exit_code == 1
    assert "+5.00" in worse.output and "1 cells only in" in worse.output


def test_the_regression_gate_names_the_cells_that_regressed(tmp_path):
    """Issue 23: --fail-on-regression said how many cells regressed, not which."""
    cells = [dict(dataset="sst2", backbone="minilm", attack=a, defense=d, seed=1, poison_rate=0.1,
                  label_regime="dirty", target_label=1, profile="cpu", settings=s, cacc=0.9, asr=0.2)
             for a, d, s in (("badnets", "lora", ""), ("addsent", "onion", ""), ("badnets", "none", "lora.r=4"))]
    a = pd.DataFrame(cells)
    b = a.copy()
    b.loc[0, "asr"] += 0.05   # badnets/lora: ASR +5 points
    b.loc[2, "cacc"] -= 0.03  # badnets/none (lora.r=4): CACC -3 points
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    r = runner.invoke(app, ["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--fail-on-regression", "1"])
    assert r.exit_code == 1
    assert "2 cells regress by more than 1.0 points:" in r.output
    assert "sst2/minilm/badnets/lora seed 1: CACC +0.00, ASR +5.00 points" in r.output
    assert "sst2/minilm/badnets/none seed 1 (lora.r=4): CACC -3.00, ASR +0.00 points" in r.output
    assert "addsent/onion seed 1:" not in r.output


def test_run_force_help_says_victims_come_from_the_cache():
    r = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "250"})
    text = " ".join(r.output.replace("│", " ").split())  # the help's box, unwrapped
    assert "still reused from the victim cache" in text and "bench cache clear" in text


def test_compare_rejects_a_file_that_is_not_a_leaderboard(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    r = runner.invoke(app, ["compare", str(tmp_path / "x.csv"), str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and "missing column(s)" in r.output


def test_cost_command_writes_the_ratio_table(toy_dir, tmp_path):
    out = tmp_path / "cost"
    r = invoke("cost", "--dataset", str(toy_dir), "--backbone", "tiny-bert", "--profile", "smoke",
               "--refresh", "1", "--refresh", "3", "--out", str(out))
    assert r.exit_code == 0, r.output
    text = (out / "cost.md").read_text()
    assert "x_lora" in text and text.count("| badnets") == 3
    df = pd.read_csv(out / "leaderboard.csv")
    # refresh_every=1 is musclelora's default, so only k=3 shows in the settings column
    assert sorted(df.settings.fillna("")) == ["", "", "musclelora.refresh_every=3"]
    assert sorted(df.defense) == ["lora", "musclelora", "musclelora"]


def test_profile_defaults_of_a_plugin_do_not_change_other_cells_keys(toy_dir):
    from bench.engine.profiles import get_profile
    from bench.reporting.results import config_key
    from bench.runner import DataCache, cell_config, plan

    data = DataCache().get(str(toy_dir))
    keys = {}
    for extra in ({}, {"musclelora": {"reference_size": "120"}}):
        for cell in plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none", "musclelora"], [1],
                         get_profile("smoke"), extra):
            keys.setdefault(cell.defense.name, set()).add(config_key(cell_config(cell, data)))
    assert len(keys["none"]) == 1  # unaffected by a musclelora setting
    assert len(keys["musclelora"]) == 2  # its resolved config changed, so its key did
    cpu = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["musclelora"], [1], get_profile("cpu"))[0]
    assert cpu.defense.config.reference_size == 384 and cpu.settings() == ""  # the plugin's cpu default


def test_cells_with_identical_training_data_share_one_victim(toy_dir, tmp_path):
    """At poison rate 0 every attack trains on the same rows: the grid trains once and evaluates each attack."""
    from bench.engine.profiles import get_profile
    from bench.models.victim import VictimStore
    from bench.reporting.results import load_records
    from bench.runner import DataCache, plan, run_cell, run_grid

    prof = get_profile("smoke")
    cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets", "addsent"], ["none"], [1], prof,
                 settings={"badnets": {"poison_rate": 0.0}, "addsent": {"poison_rate": 0.0}})
    summary = run_grid(cells, tmp_path / "out", progress=False, store=VictimStore(tmp_path / "v"))
    assert summary["victims_trained"] == 1
    recs = {r["row"]["attack"]: r for r in load_records(tmp_path / "out")}
    assert recs["badnets"]["row"]["victim"] == recs["addsent"]["row"]["victim"]
    assert sorted(r["row"]["victim_trained_here"] for r in recs.values()) == [False, True]
    trainer = next(r for r in recs.values() if r["row"]["victim_trained_here"])
    assert {r["victim"]["trained_by"] for r in recs.values()} == {f"{toy_dir.name}/tiny-bert/"
                                                                   f"{trainer['row']['attack']}/none/seed1"}
    # the shared model gives what training it again would
    alone = run_cell(cells[0], DataCache().get(str(toy_dir)), store=VictimStore(tmp_path / "v2"))
    assert alone["row"]["cacc"] == recs["badnets"]["row"]["cacc"]
    assert alone["row"]["asr"] == recs["badnets"]["row"]["asr"]
    # poisoned training rows differ per attack, so nothing is shared
    poisoned = plan([str(toy_dir)], ["tiny-bert"], ["badnets", "addsent"], ["none"], [1], prof)
    store = VictimStore(tmp_path / "v3")
    data = DataCache().get(str(toy_dir))
    rows = [run_cell(c, data, store=store)["row"] for c in poisoned]
    assert rows[0]["victim"] != rows[1]["victim"] and store.trainings == 2


def test_a_plugin_version_bump_changes_its_keys_only(toy_dir):
    from bench.engine.profiles import get_profile
    from bench.runner import DataCache, cell_config, plan

    data = DataCache().get(str(toy_dir))
    cells = {c.defense.name: c for c in plan([str(toy_dir)], ["tiny-bert"], ["badnets"],
                                             ["none", "lora", "musclelora", "mslr"], [1], get_profile("smoke"))}
    assert "version" not in cell_config(cells["none"], data)["defense"]  # version 1 leaves old keys as they were
    assert cell_config(cells["lora"], data)["defense"]["version"] == 2  # 2: head frozen by default
    assert cell_config(cells["musclelora"], data)["defense"]["version"] == cells["musclelora"].defense.version >= 4
    assert cell_config(cells["mslr"], data)["defense"]["version"] == 3  # 3: decoder head dropout


def test_a_broken_plugin_file_is_a_clear_error_and_a_plugin_bug_keeps_its_traceback(toy_dir, tmp_path):
    bad = tmp_path / "syntax_plugin.py"
    bad.write_text("def broken(:\n")
    r = runner.invoke(app, ["list", "--plugins", str(bad)])
    assert r.exit_code == 2 and "syntax error at line 1" in r.output and "Traceback" not in r.output
    buggy = tmp_path / "buggy_plugin.py"
    buggy.write_text(
        "from bench import register\nfrom bench.defense import Defense\n\n"
        "@register('defense', 'cli-buggy')\nclass D(Defense):\n    '''Raises inside predict.'''\n"
        "    def predict(self, texts, victim, ctx):\n        raise ZeroDivisionError('plugin bug')\n"
    )
    r = runner.invoke(app, ["run", "-a", "badnets", "-d", "cli-buggy", "--dataset", str(toy_dir), "--plugins",
                            str(buggy), "--out", str(tmp_path / "o"), *SMOKE])
    assert isinstance(r.exception, ZeroDivisionError)  # not swallowed as a user error


def test_cache_list_and_clear(toy_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    invoke("run", "-a", "badnets", "-d", "none", "-d", "strip", "--dataset", str(toy_dir), "--out",
           str(tmp_path / "o"), *SMOKE)
    r = invoke("cache", "list")
    assert r.exit_code == 0 and "1 victims" in r.output and "plain" in r.output
    assert r.output.count("|") > 6  # one row, two records used it
    r = invoke("cache", "clear", "--yes")
    assert "removed 1 victims" in r.output
    assert "0 victims" in invoke("cache", "list").output


def _captured_grid(monkeypatch):
    """Replace run_grid with a recorder: what `bench run` would run, without training."""
    import bench.runner

    seen = {}

    def fake(cells, out_dir, **kw):
        seen.update(cells=cells, out=out_dir)
        return {"ran": 0, "skipped": 0, "copied": 0, "claimed_elsewhere": 0, "wall_seconds": 0.0}

    monkeypatch.setattr(bench.runner, "run_grid", fake)
    return seen


def test_main_job_is_one_attack_times_every_defense_on_a_declared_test_slice(monkeypatch):
    from bench import registry
    from bench.engine.profiles import MAIN_JOB

    seen = _captured_grid(monkeypatch)
    res = runner.invoke(app, ["run", "--main"])
    assert res.exit_code == 0, res.output
    cells = seen["cells"]
    assert sorted({c.defense.name for c in cells}) == sorted(registry.names("defense"))
    assert {c.attack.name for c in cells} == set(MAIN_JOB.attacks) == {"badnets"}
    assert {c.seed for c in cells} == {1}
    assert all(c.profile.test_size == 300 and c.profile.train_size == 1500 and c.profile.name == "cpu" for c in cells)
    assert str(seen["out"]) == "results/main"


def test_main_job_parts_can_be_replaced_and_all_stays_everything(monkeypatch):
    from bench import registry

    seen = _captured_grid(monkeypatch)
    res = runner.invoke(app, ["run", "--main", "-a", "addsent", "--set", "profile.test_size=1000", "-o", "x"])
    assert res.exit_code == 0, res.output
    assert {c.attack.name for c in seen["cells"]} == {"addsent"}
    assert {c.profile.test_size for c in seen["cells"]} == {1000} and str(seen["out"]) == "x"
    res = runner.invoke(app, ["run", "--all"])
    assert res.exit_code == 0, res.output
    # every attack that poisons data itself; `file` imports poisoned data and needs its files named
    generating = {n for n in registry.names("attack") if not registry.get("attack", n).imported}
    assert {c.attack.name for c in seen["cells"]} == generating and "file" in set(registry.names("attack")) - generating
    assert {c.profile.test_size for c in seen["cells"]} == {None}  # --all: the full test set
    res = runner.invoke(app, ["run", "--main", "--all"])
    assert res.exit_code == 2 and "--main and --all" in res.output


def test_seeds_is_a_shorthand_for_seeds_one_to_n(monkeypatch):
    seen = _captured_grid(monkeypatch)
    res = runner.invoke(app, ["run", "--main", "--seeds", "3", "-d", "none"])
    assert res.exit_code == 0, res.output
    assert sorted({c.seed for c in seen["cells"]}) == [1, 2, 3] and len(seen["cells"]) == 3
    res = runner.invoke(app, ["run", "--main", "--seeds", "2", "--seed", "5"])
    assert res.exit_code == 2 and "--seeds 2 and --seed 5" in res.output
    res = runner.invoke(app, ["run", "--main", "--seeds", "0"])
    assert res.exit_code == 2 and ">= 1" in res.output


def test_help_names_every_command_and_shows_brackets_as_typed():
    """`bench --help` lists every command; rich markup must not eat '[ray]' from an install hint."""
    env = {"COLUMNS": "250"}
    r = runner.invoke(app, ["--help"], env=env)
    assert r.exit_code == 0
    commands = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    commands += [g.name for g in app.registered_groups]
    assert len(commands) >= 10
    for name in commands:
        assert name in r.output, name
    r = runner.invoke(app, ["run", "--help"], env=env)
    assert r.exit_code == 0
    assert "pip install 'bench[ray]'" in r.output
    assert "list[str]" not in r.output


def test_sweep_makes_one_keyed_cell_per_value_and_the_row_shows_it(tmp_path, toy_dir):
    out = tmp_path / "out"
    r = invoke("run", "-a", "badnets", "-d", "none", "--dataset", str(toy_dir), "-b", "tiny-bert", "--profile", "smoke",
               "--set", "profile.epochs=1", "--sweep", "badnets.num_triggers=1,2", "--out", str(out), "--no-progress")
    assert r.exit_code == 0, r.output
    import pandas as pd

    cells = pd.read_csv(out / "leaderboard.csv")
    assert sorted(cells["trigger_count"]) == [1, 2] and cells["key"].nunique() == 2
    assert set(cells["settings"]) == {"badnets.num_triggers=1; profile.epochs=1", "badnets.num_triggers=2; profile.epochs=1"}
    bad = runner.invoke(app, ["run", "-a", "badnets", "-d", "none", "--dataset", str(toy_dir), "-b", "tiny-bert",
                              "--sweep", "badnets.num_trigers=1,2", "--out", str(out), "--no-progress"])
    assert bad.exit_code == 2 and "num_trigers" in bad.output


def test_a_sweep_over_one_defense_setting_runs_the_other_defense_once(tmp_path, toy_dir):
    out = tmp_path / "out"
    r = invoke("run", "-a", "badnets", "-d", "none", "-d", "lora", "--dataset", str(toy_dir), "-b", "tiny-bert",
               "--profile", "smoke", "--set", "profile.epochs=1", "--sweep", "lora.r=2,4", "--out", str(out),
               "--no-progress")
    assert r.exit_code == 0, r.output
    assert len(list((out / "records").glob("*.json"))) == 3
