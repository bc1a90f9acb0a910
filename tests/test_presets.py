"""Paper presets (bench/engine/presets.py): every preset fits the plugins' Configs, `bench run --preset` applies one
like --set (an explicit --set or --sweep wins), the row records it and the record key does not change."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench import registry
from bench.cli import app
from bench.config import ConfigError, build_config
from bench.engine.presets import PRESETS, Preset, Setting, check, get_preset
from bench.engine.profiles import PROFILES
from bench.registry import UnknownNameError
from bench.reporting.results import config_key
from bench.runner import DataCache, cell_config

runner = CliRunner()
TINY = ["-a", "badnets", "-d", "none", "-b", "tiny-bert", "--profile", "smoke", "--no-progress"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_every_named_config(name):
    preset = PRESETS[name]
    check(preset)
    for plugin, values in preset.assignments().items():  # the same, spelled out: each plugin's own Config
        if plugin == "profile":
            build_config(type(PROFILES["cpu"]), {**PROFILES["cpu"].__dict__, **values})
            continue
        kind = "attack" if registry.has("attack", plugin) else "defense"
        cfg = build_config(registry.get(kind, plugin).Config, values)
        for key, value in values.items():  # the value arrives as stated (lists as tuples)
            got = getattr(cfg, key)
            assert (list(got) if isinstance(got, tuple) else got) == value, f"{name}: {plugin}.{key}"
    assert preset.paper and preset.code and preset.description
    for values in preset.settings.values():
        assert all(s.source.strip() for s in values.values())
    for rep in preset.reported:
        assert rep.source and rep.metrics and all(0 <= v <= 1 for v in rep.metrics.values())


def test_a_preset_with_an_unknown_key_or_plugin_fails():
    typo = Preset("typo", "one line", "a paper", "a repo", {"badnets": {"num_trigers": Setting(1, "here")}})
    with pytest.raises(ConfigError, match="Did you mean 'num_triggers'"):
        check(typo)
    with pytest.raises(UnknownNameError, match="Did you mean 'badnets'"):
        check(Preset("typo", "one line", "a paper", "a repo", {"badnet": {"poison_rate": Setting(0.1, "here")}}))
    with pytest.raises(ConfigError, match="unknown setting 'epoch'"):
        check(Preset("typo", "one line", "a paper", "a repo", {"profile": {"epoch": Setting(1, "here")}}))
    with pytest.raises(ConfigError, match="source"):
        Setting(1, " ")
    with pytest.raises(ConfigError, match="paper"):
        Preset("x", "one line", "", "a repo", {"badnets": {"poison_rate": Setting(0.1, "here")}})
    with pytest.raises(UnknownNameError, match="Did you mean 'onion'"):
        get_preset("onoin")


def test_unknown_preset_is_a_clear_error(tmp_path, toy_dir):
    r = runner.invoke(app, ["run", *TINY, "--dataset", str(toy_dir), "--preset", "musclelorra",
                            "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    assert "Did you mean 'musclelora'" in r.output


def test_list_shows_the_presets():
    r = runner.invoke(app, ["list"])
    assert r.exit_code == 0, r.output
    shown = r.output.split("presets (bench run --preset NAME")[1]
    for p in PRESETS.values():
        assert f"{p.name}  {p.description}" in shown and p.paper in shown


@pytest.fixture
def planned(monkeypatch):
    """Run the CLI up to the plan: the cells `bench run` would hand to run_grid (nothing trains)."""
    import bench.runner

    seen = []

    def fake_run_grid(cells, out_dir, **kw):
        seen.append(cells)
        return {"ran": 0, "skipped": 0, "copied": 0, "claimed_elsewhere": 0, "wall_seconds": 0.0}

    monkeypatch.setattr(bench.runner, "run_grid", fake_run_grid)

    def plan(*args):
        r = runner.invoke(app, ["run", *args], catch_exceptions=False)
        return r, (seen.pop() if r.exit_code == 0 else None)

    return plan


def _keys(cells, toy_dir):
    data = DataCache().get(str(toy_dir))
    return [config_key(cell_config(c, data)) for c in cells]


def test_a_preset_plans_what_its_set_values_plan(planned, tmp_path, toy_dir):
    out = ["--dataset", str(toy_dir), "--out", str(tmp_path / "out")]
    preset = PRESETS["openbackdoor"]  # names onion, rap, strip, ... too: not selected here, so left out
    r, with_preset = planned(*TINY, *out, "--preset", "openbackdoor", "--set", "profile.epochs=1")
    assert r.exit_code == 0, r.output
    sets = [a for a in preset.set_args() if a.split(".")[0] in ("badnets", "profile") and a != "profile.epochs=5"]
    r, with_sets = planned(*TINY, *out, *[x for a in sets for x in ("--set", a)], "--set", "profile.epochs=1")
    assert r.exit_code == 0, r.output
    assert [c.preset for c in with_preset] == ["openbackdoor"] and [c.preset for c in with_sets] == [""]
    cell = with_preset[0]
    assert cell.attack.config.num_triggers == 1 and cell.attack.config.label_regime == "clean-label"
    assert cell.profile.epochs == 1 and cell.profile.warmup_ratio == 0.6  # --set wins, the rest is the preset's
    assert _keys(with_preset, toy_dir) == _keys(with_sets, toy_dir)


def test_set_and_sweep_override_a_preset_but_a_stray_set_still_fails(planned, tmp_path, toy_dir):
    out = ["--dataset", str(toy_dir), "--out", str(tmp_path / "out"), "--preset", "musclelora"]
    r, cells = planned(*TINY, *out, "--set", "badnets.num_triggers=2", "--set", "profile.epochs=1")
    assert r.exit_code == 0, r.output
    assert cells[0].attack.config.num_triggers == 2 and cells[0].attack.config.label_regime == "clean-label"
    r, cells = planned(*TINY, *out, "--sweep", "badnets.num_triggers=1,3", "--sweep", "profile.epochs=1,2")
    assert r.exit_code == 0, r.output
    assert sorted((c.attack.config.num_triggers, c.profile.epochs) for c in cells) == [(1, 1), (1, 2), (3, 1), (3, 2)]
    assert {c.profile.batch_size for c in cells} == {32} and {c.preset for c in cells} == {"musclelora"}
    r, _ = planned(*TINY, *out, "--set", "badnets.num_triggers=2", "--sweep", "badnets.num_triggers=1,3")
    assert r.exit_code == 2 and "already set by --set" in r.output
    r, _ = planned(*TINY, *out, "--set", "lora.r=4")  # the user named lora, which the run does not select
    assert r.exit_code == 2 and "not among the selected" in r.output


def test_a_preset_run_records_its_name_under_the_unchanged_key(tmp_path, toy_dir):
    from bench.config import parse_assignments
    from bench.engine.profiles import get_profile
    from bench.runner import plan

    # the same cell planned from the equivalent --set values (btu's own settings do not apply to -d none)
    given = parse_assignments([a for a in PRESETS["btu"].set_args() if a.startswith(("badnets.", "profile."))]
                              + ["profile.epochs=1"])
    cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none"], [1], get_profile("smoke", given.pop("profile")),
                 given)
    (expected,) = _keys(cells, toy_dir)

    out = tmp_path / "out"
    r = runner.invoke(app, ["run", *TINY, "--dataset", str(toy_dir), "--preset", "btu", "--set", "profile.epochs=1",
                            "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (record,) = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert record["key"] == expected and record["row"]["preset"] == "btu"
    assert "preset" not in json.dumps(record["config"])
    assert "badnets.triggers=" in record["row"]["settings"] and "profile.batch_size=64" in record["row"]["settings"]
    board = pd.read_csv(out / "leaderboard.csv", keep_default_na=False)
    assert list(board["preset"]) == ["btu"] and list(board["key"]) == [expected]


def test_usage_doc_lists_every_preset():
    from bench.data import PROJECT_ROOT

    section = (PROJECT_ROOT / "docs" / "usage.md").read_text().split("## Paper presets")[1].split("\n## ")[0]
    assert {line.split("|")[1].strip().strip("`") for line in section.splitlines() if line.startswith("| `")} \
        == set(PRESETS)
