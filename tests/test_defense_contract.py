"""Contract tests run over every registered defense (a new defense file is picked up automatically)."""

import pytest
from conftest import global_rng_state

from bench import registry
from bench.profiles import get_profile
from bench.runner import DataCache, plan, run_cell

DEFENSES = registry.names("defense")
BACKBONES = ["tiny-bert", "tiny-roberta", "tiny-llama"]


def _cell(defense, backbone, toy_dir, seed=1, attack="badnets"):
    prof = get_profile("smoke", {"epochs": "2", "train_size": "None"})
    return plan([str(toy_dir)], [backbone], [attack], [defense], [seed], prof,
                {attack: {"label_regime": "mixed"}})[0]


@pytest.mark.parametrize("defense", DEFENSES)
def test_defense_runs_is_deterministic_and_leaves_global_rng(defense, toy_dir):
    cache = DataCache()
    data = cache.get(str(toy_dir))
    state = global_rng_state()
    a = run_cell(_cell(defense, "tiny-bert", toy_dir), data)
    assert global_rng_state() == state
    b = run_cell(_cell(defense, "tiny-bert", toy_dir), data)
    for k in ("cacc", "asr", "dev_acc", "best_epoch", "key"):
        assert a["row"][k] == b["row"][k], k
    assert a["training"]["dev_acc_per_epoch"] == b["training"]["dev_acc_per_epoch"]
    assert 0 < a["training"]["trainable_params"] <= a["training"]["total_params"]
    row = a["row"]
    assert row["n_test_clean"] == len(data.test)
    assert row["uses_clean_reference"] == (row["n_reference"] > 0)


@pytest.mark.parametrize("defense", DEFENSES)
@pytest.mark.parametrize("backbone", BACKBONES[1:])
def test_defense_works_on_other_architectures(defense, backbone, toy_dir):
    data = DataCache().get(str(toy_dir))
    rec = run_cell(_cell(defense, backbone, toy_dir), data)
    assert 0.0 <= rec["row"]["cacc"] <= 1.0 and 0.0 <= rec["row"]["asr"] <= 1.0


def test_lora_trains_only_adapters_and_head(toy_dir):
    from bench.backbones import resolve_backbone
    from bench.defense import DefenseContext

    loaded = resolve_backbone("tiny-bert").load(2, seed=0)
    lora = registry.get("defense", "lora")()
    model = lora.prepare_model(loaded, DefenseContext(0, 2, None, None, None))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "classifier" in n for n in names)
    assert any("query" in n for n in names) and any("value" in n for n in names)
    assert not any("key" in n for n in names)


def test_seed_changes_the_model(toy_dir):
    data = DataCache().get(str(toy_dir))
    a = run_cell(_cell("none", "tiny-bert", toy_dir, seed=1), data)
    b = run_cell(_cell("none", "tiny-bert", toy_dir, seed=2), data)
    assert a["key"] != b["key"]
    assert a["training"]["loss_per_epoch"] != b["training"]["loss_per_epoch"]
