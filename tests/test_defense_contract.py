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
from bench.engine.profiles import get_profile
from bench.errors import ContractError
from bench.models.victim import VictimStore
from bench.reporting.results import load_records
from bench.runner import DataCache, Evaluator, plan, run_cell, run_grid

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


# Parameter-efficient defenses freeze the backbone and train small added parts (LoRA, adapters, prefixes;
# LoRA keeps the classifier head frozen too, as its authors' baseline). The tiny backbones are random,
# not pretrained, so there is no representation for the adapters to steer: on the toy task their
# training loss stays on the 0.69 plateau (tiny-roberta: flat over 4 epochs, also at 10x the smoke
# profile's adapter_learning_rate) and CACC stays at chance. For them the test asks the plumbing only
# (the hooks, shapes, heads on the architecture; only the added parts train), on a short budget.
FROZEN_BACKBONE = {d for d in DEFENSES if registry.get("defense", d).parameter_efficient}
# what a defense keeps of the toy task by design: BKI removes the training rows holding the words it
# finds most important, and on the toy set the sentiment words are as decisive as the trigger (73 of
# 240 rows removed; CACC 0.71-0.83 measured on tiny-roberta and tiny-llama)
MIN_CACC = {"bki": 0.65}
# settings that fit the toy set: BTU takes a fraction of the tokenizer's vocabulary as suspects per
# round (15 of BERT's 30k at the default), which on the toy set's 33 words is every word, so its
# unlearning erases the task (CACC 0.5 with clean dev accuracy 1.0 before it); one token per round is
# the same method at the toy set's scale
TOY_SETTINGS = {"btu": {"suspect_fraction": 1e-5}}


@pytest.mark.parametrize("defense", DEFENSES)
@pytest.mark.parametrize("backbone", BACKBONES[1:])
def test_defense_works_on_other_architectures(defense, backbone, toy_dir):
    """On tiny-roberta and tiny-llama every defense learns the toy task (CACC well above the 0.5 of any
    constant predictor on the balanced toy test set) and the backdoor is measured (ASR over the
    poisoned test rows, a non-empty set). Measured: 60 steps at the smoke profile's learning rate
    leave tiny-roberta at chance for half the defenses (it leaves the plateau between 30 and 60
    steps); at learning rate 1e-2 every full fine-tuning defense reaches CACC >= 0.9 (BKI: 0.74)."""
    data = DataCache().get(str(toy_dir))
    cls = registry.get("defense", defense)
    frozen = defense in FROZEN_BACKBONE
    budget = {"epochs": "1", "train_size": "128"} if frozen else {"epochs": "4", "learning_rate": "0.01"}
    prof = get_profile("smoke", {"train_size": "None", **budget})
    settings = {"badnets": {"label_regime": "mixed"}, **{k: v for k, v in TOY_SETTINGS.items() if k == defense}}
    cell = plan([str(toy_dir)], [backbone], ["badnets"], [defense], [1], prof, settings)[0]
    rec = run_cell(cell, data)
    if not frozen and max(rec["training"]["dev_acc_per_epoch"]) < 0.6:
        # tiny-roberta's plateau (see above) can hold a run at chance for its whole budget: measured for
        # distill at seed 1 on an avx512 CPU (clean dev 0.53 in all of 4, 6 and 8 epochs, teacher at 0.94),
        # where seeds 2 and 3 leave it by epoch 3. One more seed; a defense that breaks training fails both
        cell = plan([str(toy_dir)], [backbone], ["badnets"], [defense], [2], prof, settings)[0]
        rec = run_cell(cell, data)
    row, training = rec["row"], rec["training"]
    # the backdoor is measured: ASR is a share of the poisoned test rows (every non-target test row, triggered)
    assert row["n_test_clean"] == len(data.test) == 80
    assert row["n_test_poison"] == sum(1 for y in data.test["label"] if y != row["target_label"]) > 0
    assert rec["counts"]["n_test_poison"] == row["n_test_poison"]
    assert float(row["asr"] * row["n_test_poison"]).is_integer() and 0.0 <= row["asr"] <= 1.0
    assert row["n_poisoned"] > 0 and 0.0 <= row["cacc"] <= 1.0
    if cls.acts_in_training():
        epochs = cls(cell.defense.config).schedule(prof)[1]
        assert len(training["loss_per_epoch"]) == len(training["dev_acc_per_epoch"]) == epochs
        assert all(np.isfinite(training["loss_per_epoch"]))
    if frozen:
        assert 0 < training["trainable_params"] < training["total_params"] / 10, "the backbone did not stay frozen"
        return
    # the task is learnt: the kept epoch's clean dev accuracy and the test CACC leave chance behind
    assert row["cacc"] >= MIN_CACC.get(defense, 0.8), row
    # dev accuracy's bar sits 0.05 under CACC's: measured for ga on tiny-roberta at seed 1 on an Intel Xeon
    # (avx512_bf16) CPU, the kept epoch's clean dev accuracy 0.781 with CACC >= 0.8, where an AMD EPYC passed 0.8;
    # 0.75 still leaves far behind the 0.5 of a constant predictor on the balanced toy dev set
    assert row["dev_acc"] >= MIN_CACC.get(defense, 0.8) - 0.05, row
    if not cls.rejects():
        assert row["frr"] == 0


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
    from bench.models.backbones import resolve_backbone

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


class _DropHalf(Defense):
    """Test plugin: removes every other training row (fewer rows, fewer steps)."""

    def select_train(self, rows, ctx):
        return np.arange(len(rows)) % 2 == 0


class _AddClean(Defense):
    """Test plugin: trains on 48 of the defender's clean rows beside the poisoned set."""

    def add_train(self, ctx):
        return ctx.clean(48)


class _CleanOnly(Defense):
    """Test plugin: drops every training row and trains on all of the defender's clean rows."""

    def select_train(self, rows, ctx):
        return np.zeros(len(rows), dtype=bool)

    def add_train(self, ctx):
        return ctx.clean()


class _Reference(Defense):
    """Test plugin: asks for a clean reference set during training."""

    def reference_size(self, loaded):
        return 32


class _AuxFit(Defense):
    """Test plugin, post-training: trains an auxiliary classifier on clean rows (``ctx.fit``)."""

    def calibrate(self, victim, ctx):
        rows = ctx.clean(64)
        ctx.fit(rows["text"], rows["label"], purpose="test-aux")


# each would change the rows that select the model if the runner let the defense reach them: fewer or
# no training rows, extra clean rows (taken from the pool the selection rows are split from), a reference
# set, an auxiliary training of its own
_SELECTION_PROBES = {"test-drop-half": _DropHalf, "test-add-clean": _AddClean, "test-clean-only": _CleanOnly,
                     "test-reference": _Reference, "test-aux-fit": _AuxFit}


def test_every_defense_selects_on_the_same_rows(toy_dir, tmp_path, monkeypatch):
    """The clean dev rows that choose the kept epoch are the same rows for every defense: what every
    training (the victim's and an auxiliary one) is handed as its dev set, what a defense's context
    offers as ``ctx.selection``, and what the record counts (``n_dev_selection``)."""
    import bench.models.training

    real_train = bench.models.training.train
    seen: dict[str, list] = {}
    current = {"defense": None}

    def spy_train(model, tokenizer, train_texts, train_labels, dev_texts, dev_labels, *args, **kwargs):
        seen[current["defense"]].append(("train", list(dev_texts), list(dev_labels)))
        return real_train(model, tokenizer, train_texts, train_labels, dev_texts, dev_labels, *args, **kwargs)

    patched = [m for name, m in list(sys.modules.items())
               if (name == "bench" or name.startswith("bench.")) and getattr(m, "train", None) is real_train]
    assert patched, "no bench module calls bench.models.training.train: update this test's spy"
    for m in patched:
        monkeypatch.setattr(m, "train", spy_train)
    for name, cls in _SELECTION_PROBES.items():
        def spy_calibrate(self, victim, ctx, _real=cls.calibrate):
            seen[self.name].append(("ctx", list(ctx.selection["text"]), list(ctx.selection["label"])))
            return _real(self, victim, ctx)
        monkeypatch.setattr(cls, "calibrate", spy_calibrate)
        registry.register("defense", name)(cls)
    data = DataCache().get(str(toy_dir))
    ev = Evaluator(store=VictimStore(tmp_path / "victims"))
    rows = {}
    try:
        prof = get_profile("smoke", {"epochs": "1", "train_size": "64"})  # plumbing only: 4 steps a training
        for d in ["none", *_SELECTION_PROBES]:
            current["defense"] = d
            seen[d] = []
            cell = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], [d], [1], prof)[0]
            rows[d] = ev.run_cell(cell, data=data)["row"]
    finally:
        for name in _SELECTION_PROBES:
            registry._ENTRIES["defense"].pop(name, None)
    # every probe did what would move the rows
    assert rows["test-drop-half"]["n_train_after_defense"] == rows["none"]["n_train"] // 2
    assert rows["test-add-clean"]["n_train_added"] == 48 and rows["test-clean-only"]["n_train_added"] == 128
    assert rows["test-reference"]["n_reference"] == 32 and rows["test-aux-fit"]["n_clean_used"] == 64
    assert [k for k, *_ in seen["none"]] == ["train"]
    assert [k for k, *_ in seen["test-aux-fit"]] == ["ctx", "train"]  # the plain victim is cached; the aux trains
    for d in _SELECTION_PROBES:
        assert seen[d], d
    # ... and none of them moved the selection rows
    texts, labels = seen["none"][0][1], seen["none"][0][2]
    assert len(texts) == rows["none"]["n_dev_selection"] == len(data.dev) - 128  # profile.clean_size
    assert set(texts) <= set(data.dev["text"])
    for d, calls in seen.items():
        assert rows[d]["n_dev_selection"] == rows["none"]["n_dev_selection"], d
        for kind, t, y in calls:
            assert (t, y) == (texts, labels), f"{d}: {kind} selection rows differ from none's"


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
