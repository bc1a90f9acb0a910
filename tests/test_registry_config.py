import textwrap

import pytest

from bench import registry
from bench.config import ConfigError, build_config, parse_assignments
from bench.engine.profiles import get_profile


def test_every_kind_has_builtin_plugins():
    assert {"badnets", "addsent"} <= set(registry.names("attack"))
    assert {"none", "lora"} <= set(registry.names("defense"))
    assert {"sst2", "hsol", "agnews"} <= set(registry.names("dataset"))
    assert {"minilm", "smollm2-135m", "tiny-bert", "tiny-roberta", "tiny-llama"} <= set(registry.names("backbone"))


def test_unknown_name_says_did_you_mean_and_lists_valid_names():
    with pytest.raises(registry.UnknownNameError) as e:
        registry.get("attack", "badnet")
    msg = str(e.value)
    assert "did you mean 'badnets'" in msg.lower()
    assert "addsent" in msg


def test_unknown_attack_or_defense_says_how_to_register_ones_own():
    """Issue 23: a name a --plugins file would register: the error says how."""
    for kind in ("defense", "attack"):
        with pytest.raises(registry.UnknownNameError) as e:
            registry.get(kind, "my-own-method")
        assert f"--plugins my_{kind}.py" in str(e.value)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="kinds are"):
        registry.names("defence")


def test_every_plugin_has_a_description():
    for kind in registry.KINDS:
        for entry in registry.entries(kind):
            assert entry.description and entry.description != "(no description)", (kind, entry.name)


def test_user_plugin_file_registers_a_defense(tmp_path):
    f = tmp_path / "my_defense.py"
    f.write_text(textwrap.dedent('''
        from bench import register
        from bench.defense import Defense

        @register("defense", "user-test-defense")
        class Mine(Defense):
            """A user's defense in its own file."""
    '''))
    added = registry.load_plugin_file(f)
    assert [e.name for e in added] == ["user-test-defense"]
    assert "user-test-defense" in registry.names("defense")


def test_plugin_file_that_registers_nothing_is_an_error(tmp_path):
    f = tmp_path / "empty_plugin.py"
    f.write_text("x = 1\n")
    with pytest.raises(registry.PluginError, match="registered nothing"):
        registry.load_plugin_file(f)
    with pytest.raises(registry.PluginError, match="does not exist"):
        registry.load_plugin_file(tmp_path / "missing.py")


@pytest.mark.parametrize("kind", ["attack", "defense"])
def test_every_plugin_config_rejects_unknown_keys_with_a_suggestion(kind):
    for name in registry.names(kind):
        cls = registry.get(kind, name)
        fields = list(getattr(cls.Config, "__dataclass_fields__", {}))
        with pytest.raises(ConfigError, match="unknown setting 'no_such_setting'"):
            build_config(cls.Config, {"no_such_setting": 1}, owner=name)
        if fields:
            typo = fields[0] + "x"
            with pytest.raises(ConfigError, match=f"Did you mean '{fields[0]}'"):
                build_config(cls.Config, {typo: 1}, owner=name)


def test_config_coerces_strings_and_rejects_bad_types():
    cls = registry.get("attack", "badnets").Config
    cfg = build_config(cls, {"poison_rate": "0.2", "triggers": "cf,mn", "num_triggers": "2", "target_label": "none"})
    assert cfg.poison_rate == 0.2 and cfg.triggers == ("cf", "mn") and cfg.num_triggers == 2
    assert cfg.target_label is None
    with pytest.raises(ConfigError, match="expected an integer"):
        build_config(cls, {"num_triggers": "many"})
    with pytest.raises(ConfigError, match="not one of"):
        build_config(cls, {"label_regime": "clean"})
    with pytest.raises(ValueError, match="outside"):
        build_config(cls, {"poison_rate": 1.5})


def test_parse_assignments_and_profiles():
    assert parse_assignments(["lora.r=16", "profile.epochs=1"]) == {"lora": {"r": "16"}, "profile": {"epochs": "1"}}
    with pytest.raises(ConfigError, match="PLUGIN.KEY=VALUE"):
        parse_assignments(["r=16"])
    assert get_profile("cpu", {"epochs": "1"}).epochs == 1
    with pytest.raises(KeyError, match="Did you mean 'paper'"):
        get_profile("papr")
    with pytest.raises(ConfigError, match="unknown setting"):
        get_profile("cpu", {"epoch": "1"})


def test_a_plugin_with_a_missing_dependency_fails_alone(tmp_path, monkeypatch):
    from bench import registry

    pkg = tmp_path / "extra_defenses"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "needs_dep.py").write_text("import not_a_real_package_xyz\n")
    (pkg / "works.py").write_text(
        "from bench import register\nfrom bench.defense import Defense\n\n"
        "@register('defense', 'test-works')\nclass Works(Defense):\n    '''Test plugin.'''\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry._BROKEN, "defense", dict(registry._BROKEN["defense"]))
    try:
        registry.load_package("defense", "extra_defenses")
        assert registry.has("defense", "test-works")
        assert "needs-dep" in registry.unavailable("defense")
        with pytest.raises(registry.PluginError, match="not_a_real_package_xyz"):
            registry.get("defense", "needs-dep")
        assert "none" in registry.names("defense")  # the others keep working
    finally:
        registry._ENTRIES["defense"].pop("test-works", None)


# --- --sweep: a setting crossed over several values ---------------------------------------------

def test_sweeps_cross_each_other_and_keep_bracketed_lists_whole():
    from bench.config import parse_sweeps

    combos = parse_sweeps(["badnets.num_triggers=1,4", "badnets.triggers=[cf,mn],[tq]", "profile.epochs=2,3"])
    assert len(combos) == 8
    assert {c["badnets"]["triggers"] for c in combos} == {"[cf,mn]", "[tq]"}
    assert {(c["badnets"]["num_triggers"], c["profile"]["epochs"]) for c in combos} == {
        ("1", "2"), ("1", "3"), ("4", "2"), ("4", "3")}
    assert parse_sweeps([]) == [{}]


@pytest.mark.parametrize("items, fixed, message", [
    (["badnets.poison_rate"], None, "write PLUGIN.KEY=V1,V2"),
    (["badnets.poison_rate=0.1,,0.2"], None, "must be non-empty"),
    (["badnets.poison_rate=0.1,0.1"], None, "a value is repeated"),
    (["lora.r=4,8", "lora.r=16"], None, "already swept"),
    (["lora.r=4,8"], {"lora": {"r": "16"}}, "already set by --set"),
])
def test_bad_sweeps_are_clear_errors(items, fixed, message):
    from bench.config import ConfigError, parse_sweeps

    with pytest.raises(ConfigError, match=message):
        parse_sweeps(items, fixed)


def test_a_setting_added_later_leaves_keys_alone_at_its_default():
    import dataclasses

    from bench.config import added, config_dict

    @dataclasses.dataclass(frozen=True)
    class Old:
        r: int = 4

    @dataclasses.dataclass(frozen=True)
    class New:
        r: int = 4
        start: str = added("gaussian", "issue 24")

    assert config_dict(New()) == config_dict(Old()) == {"r": 4}
    assert config_dict(New(start="authors")) == {"r": 4, "start": "authors"}
    assert build_config(New, {"start": "authors"}).start == "authors" and build_config(New, {}).start == "gaussian"
