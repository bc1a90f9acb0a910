"""Contract tests run over every registered defense (a new defense file is picked up automatically)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import global_rng_state, make_ctx

from bench import registry
from bench.defense import Defense
from bench.errors import ContractError
from bench.profiles import get_profile
from bench.results import load_records
from bench.runner import DataCache, Evaluator, plan, run_cell, run_grid
from bench.victim import VictimStore

DEFENSES = registry.names("defense")
POST_TRAINING = [d for d in DEFENSES if not registry.get("defense", d).acts_in_training()]
BACKBONES = ["tiny-bert", "tiny-roberta", "tiny-llama"]
# inference defenses that score every input many times (STRIP's perturbed copies, ONION's
# leave-one-out perplexities): a full cell run twice takes 11-13 s on a loaded 2-core CPU
SLOW_CELLS = {"onion", "strip"}


def _cell(defense, backbone, toy_dir, seed=1, attack="badnets", **profile):
    prof = get_profile("smoke", {"epochs": "2", "train_size": "None", **profile})
    return plan([str(toy_dir)], [backbone], [attack], [defense], [seed], prof,
                {attack: {"label_regime": "mixed"}})[0]


@pytest.mark.parametrize("defense", [pytest.param(d, marks=pytest.mark.slow) if d in SLOW_CELLS else d
                                     for d in DEFENSES])
def test_defense_runs_is_deterministic_and_leaves_global_rng(defense, toy_dir, tmp_path):
    data = DataCache().get(str(toy_dir))
    state = global_rng_state()
    a = run_cell(_cell(defense, "tiny-bert", toy_dir), data, store=VictimStore(tmp_path / "a"))
    assert global_rng_state() == state
    b = run_cell(_cell(defense, "tiny-bert", toy_dir), data, store=VictimStore(tmp_path / "b"))
    for k in ("cacc", "asr", "frr", "dev_acc", "best_epoch", "key", "victim"):
        assert a["row"][k] == b["row"][k], k
    assert a["training"]["dev_acc_per_epoch"] == b["training"]["dev_acc_per_epoch"]
    assert 0 < a["training"]["trainable_params"] <= a["training"]["total_params"]
    row = a["row"]
    assert row["n_test_clean"] == len(data.test)
    assert row["uses_clean"] == (row["n_clean_used"] > 0)
    assert 0 <= row["frr"] <= 1 and 0 <= row["poison_rejected"] <= 1
    assert row["n_dev_selection"] + row["n_clean_pool"] == len(data.dev)


@pytest.mark.parametrize("defense", DEFENSES)
@pytest.mark.parametrize("backbone", BACKBONES[1:])
def test_defense_works_on_other_architectures(defense, backbone, toy_dir):
    data = DataCache().get(str(toy_dir))
    # plumbing only (the architecture's hooks, shapes and heads): one short epoch on 128 rows
    rec = run_cell(_cell(defense, backbone, toy_dir, epochs="1", train_size="128"), data)
    assert 0.0 <= rec["row"]["cacc"] <= 1.0 and 0.0 <= rec["row"]["asr"] <= 1.0


@pytest.mark.parametrize("defense", POST_TRAINING)
def test_post_training_defenses_train_nothing_and_share_the_plain_victim(defense, toy_dir, tmp_path):
    ev = Evaluator(store=VictimStore(tmp_path / "victims"))
    plain = ev.run_cell(_cell("none", "tiny-bert", toy_dir))
    assert ev.store.trainings == 1
    rec = ev.run_cell(_cell(defense, "tiny-bert", toy_dir))
    assert ev.store.trainings == 1, f"{defense} trained a model of its own"
    assert rec["row"]["victim"] == plain["row"]["victim"] and not rec["row"]["victim_trained_here"]


def test_every_cell_gets_a_fresh_defense_instance(toy_dir, tmp_path):
    calls = []

    class Stateful(Defense):
        """Test plugin: remembers what it saw."""

        def calibrate(self, victim, ctx):
            assert not hasattr(self, "seen"), "a defense instance was reused across cells"
            self.seen = ctx.seed
            calls.append(self)  # hold the instance: a freed object's id() can be reused

    registry.register("defense", "test-stateful")(Stateful)
    try:
        prof = get_profile("smoke", {"epochs": "1", "train_size": "64"})  # plumbing only: 4 steps per victim
        cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets", "addsent"], ["test-stateful"], [1, 2], prof)
        run_grid(cells, tmp_path / "out", progress=False, store=VictimStore(tmp_path / "victims"))
    finally:
        registry._ENTRIES["defense"].pop("test-stateful")
    assert len(calls) == 4 and len({id(c) for c in calls}) == 4


def test_a_data_filter_never_sees_ground_truth_and_its_precision_is_measured(toy_dir, tmp_path):
    seen = {}

    class DropTriggers(Defense):
        """Test plugin: removes rows carrying a BadNets trigger word."""

        def select_train(self, rows, ctx):
            seen["columns"] = set(rows.column_names)
            return np.array([not {"cf", "mn", "bb", "tq"} & set(t.split()) for t in rows["text"]])

    registry.register("defense", "test-filter")(DropTriggers)
    try:
        cell = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["test-filter"], [1], get_profile("smoke"),
                    {"badnets": {"label_regime": "mixed"}})[0]
        rec = run_cell(cell, store=VictimStore(tmp_path / "v"), data=DataCache().get(str(toy_dir)))
    finally:
        registry._ENTRIES["defense"].pop("test-filter")
    assert seen["columns"] == {"text", "label", "row_id"}
    row = rec["row"]
    assert row["filter_precision"] == 1.0 and row["filter_recall"] == 1.0
    assert row["n_train_after_defense"] == row["n_train"] - row["n_poisoned"]
    assert registry.get("defense", "none").acts_in_training() is False


def test_predict_must_return_one_label_per_input_in_range(toy_dir, tmp_path):
    class Broken(Defense):
        """Test plugin: returns a label out of range."""

        def predict(self, texts, victim, ctx):
            return np.full(len(texts), 7)

    registry.register("defense", "test-broken")(Broken)
    try:
        cell = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["test-broken"], [1], get_profile("smoke"))[0]
        with pytest.raises(ContractError, match="label 7"):
            run_cell(cell, store=VictimStore(tmp_path / "v"), data=DataCache().get(str(toy_dir)))
    finally:
        registry._ENTRIES["defense"].pop("test-broken")


def test_predict_sees_clean_and_poisoned_inputs_shuffled_together(toy_dir, tmp_path):
    seen = []

    class Spy(Defense):
        """Test plugin: records what predict is given."""

        def predict(self, texts, victim, ctx):
            seen.append(list(texts))
            return victim.predict(texts)

    registry.register("defense", "test-spy")(Spy)
    try:
        cell = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["test-spy"], [1], get_profile("smoke"))[0]
        run_cell(cell, store=VictimStore(tmp_path / "v"), data=DataCache().get(str(toy_dir)))
    finally:
        registry._ENTRIES["defense"].pop("test-spy")
    assert len(seen) == 1  # one call, both sets together
    poisoned = np.array([("cf" in t.split() or "mn" in t.split() or "bb" in t.split() or "tq" in t.split())
                         for t in seen[0]])
    first_half = poisoned[: len(poisoned) // 2].mean()
    assert 0 < poisoned.sum() < len(poisoned) and 0.1 < first_half < 0.6  # interleaved, not clean-then-poisoned


def test_rejections_count_as_errors_and_failed_attacks(toy_dir, tmp_path):
    class RejectAll(Defense):
        """Test plugin: rejects everything."""

        @classmethod
        def rejects(cls):
            return True

        def predict(self, texts, victim, ctx):
            return np.full(len(texts), -1)

    registry.register("defense", "test-reject")(RejectAll)
    try:
        cell = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["test-reject"], [1], get_profile("smoke"))[0]
        row = run_cell(cell, store=VictimStore(tmp_path / "v"), data=DataCache().get(str(toy_dir)))["row"]
    finally:
        registry._ENTRIES["defense"].pop("test-reject")
    assert row["cacc"] == 0 and row["asr"] == 0 and row["frr"] == 1 and row["poison_rejected"] == 1


@pytest.mark.slow  # two fresh processes, each importing torch and transformers: ~28 s on a loaded 2-core CPU
def test_the_victim_cache_is_hit_from_a_second_process(toy_dir, tmp_path):
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    rows = []
    for out in ("first", "second"):
        cmd = [sys.executable, "-m", "bench.cli", "run", "-a", "badnets", "-d", "none", "--dataset", str(toy_dir),
               "--profile", "smoke", "--out", str(tmp_path / out), "--no-progress"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        rows.append(load_records(tmp_path / out)[0]["row"])
    assert rows[0]["victim_trained_here"] is True and rows[1]["victim_trained_here"] is False
    assert rows[0]["victim"] == rows[1]["victim"] and rows[0]["cacc"] == rows[1]["cacc"]
    assert rows[0]["asr"] == rows[1]["asr"]
    used = (tmp_path / "cache" / "victims" / rows[0]["victim"] / "used_by.txt").read_text().split()
    assert used == [rows[0]["key"], rows[1]["key"]]
    meta = json.loads((tmp_path / "cache" / "victims" / rows[0]["victim"] / "victim.json").read_text())
    assert meta["identity"]["defense"] is None  # the plain victim


def test_lora_trains_only_adapters():
    from bench.backbones import resolve_backbone

    loaded = resolve_backbone("tiny-bert").load(2, seed=0)
    lora = registry.get("defense", "lora")()
    model = lora.prepare_model(loaded, make_ctx())
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)  # the head stays frozen, as the authors' baseline
    assert any("query" in n for n in names) and any("value" in n for n in names)
    assert not any("key" in n for n in names)


def test_seed_changes_the_model(toy_dir):
    data = DataCache().get(str(toy_dir))
    a = run_cell(_cell("none", "tiny-bert", toy_dir, seed=1), data)
    b = run_cell(_cell("none", "tiny-bert", toy_dir, seed=2), data)
    assert a["key"] != b["key"]
    assert a["training"]["loss_per_epoch"] != b["training"]["loss_per_epoch"]


def test_a_too_small_selection_split_is_refused(toy_dir):
    from bench.data import DataError

    prof = get_profile("smoke", {"clean_size": "150"})
    cell = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none"], [1], prof)[0]
    with pytest.raises(DataError, match="min_selection"):
        run_cell(cell, DataCache().get(str(toy_dir)))


def test_every_defense_selects_on_the_same_rows(toy_dir):
    from bench.runner import prepare

    data = DataCache().get(str(toy_dir))
    sel = {d: prepare(_cell(d, "tiny-bert", toy_dir), data).selection["text"] for d in DEFENSES}
    assert len({tuple(v) for v in sel.values()}) == 1


def test_a_declared_test_slice_is_the_same_rows_for_every_seed_and_leaves_the_victim_alone(toy_dir):
    from bench.runner import prepare, victim_identity

    data = DataCache().get(str(toy_dir))
    full = _cell("none", "tiny-bert", toy_dir)
    prof = get_profile("smoke", {"epochs": "2", "train_size": "None", "test_size": "20"})
    sliced = [plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none"], [s], prof, {"badnets": {"label_regime": "mixed"}})[0]
              for s in (1, 2)]
    a, b = (prepare(c, data) for c in sliced)
    assert len(a.poisoned.test_clean) == 20 and a.poisoned.test_clean["text"] == b.poisoned.test_clean["text"]
    assert sorted(a.poisoned.test_clean["label"]).count(1) == 10  # stratified
    assert set(a.poisoned.test_clean["text"]) <= set(data.test["text"])
    # the slice is an evaluation setting: the victim is the one the full-test cell uses
    assert victim_identity(sliced[0], a, None) == victim_identity(full, prepare(full, data), None)
