"""The tests' path learns: on the toy dataset, the smoke profile's tiny-bert learns the task and the
BadNets backdoor, so a test built on it can see the metrics move (issue 9: with 4 training steps it
predicted one label everywhere, CACC 50 and ASR 0 or 100 whatever the data)."""

from bench.engine.profiles import get_profile
from bench.models.victim import VictimStore
from bench.runner import DataCache, plan, run_cell


def _badnets_none(toy_dir, store, **badnets):
    """``bench run -a badnets -d none --dataset TOY -b tiny-bert --profile smoke --seed 1`` (with attack settings)."""
    cell = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none"], [1], get_profile("smoke"),
                {"badnets": badnets} if badnets else None)[0]
    return run_cell(cell, DataCache().get(str(toy_dir)), store=store)


def test_smoke_learns_the_task_and_the_backdoor(toy_dir, tmp_path):
    store = VictimStore(tmp_path / "victims")
    poisoned = _badnets_none(toy_dir, store)  # the attack's defaults: clean-label, rate 0.1 (24 of 240 rows)
    clean = _badnets_none(toy_dir, store, poison_rate=0.0)  # same trigger at test time, no poisoned training row
    assert store.trainings == 2  # two different victims
    p, c = poisoned["row"], clean["row"]
    assert p["n_poisoned"] == 24 and c["n_poisoned"] == 0
    # the toy test set is balanced (40 rows per label), so any constant predictor scores CACC 0.5
    assert p["n_test_clean"] == 80
    for row in (p, c):
        assert row["cacc"] >= 0.85, row
        assert row["dev_acc"] >= 0.85, row  # the kept epoch's clean dev accuracy
    # the backdoor is learnt from the poisoned rows, not a bias of the model: a model trained on clean
    # rows sends (almost) no triggered negative sentence to the target label
    assert p["asr"] >= 0.8, p
    assert c["asr"] <= 0.25, c
    assert p["asr"] - c["asr"] >= 0.5
