"""Contract tests run over every registered attack (a new attack file is picked up automatically)."""

import numpy as np
import pytest
from conftest import global_rng_state

from bench import registry
from bench.attack import AttackError
from bench.config import build_config

# attacks that poison the dataset's rows themselves; `file` imports rows poisoned elsewhere (no rate,
# regime or seed of its own) and has its own tests in tests/test_import_export.py
ATTACKS = [n for n in registry.names("attack") if not registry.get("attack", n).imported]


def make(name, **settings):
    cls = registry.get("attack", name)
    return cls(build_config(cls.Config, settings, owner=name))


def _usable(name, data):
    return make(name)


@pytest.mark.parametrize("name", ATTACKS)
def test_same_seed_same_output_and_different_seed_differs(name, toy_data):
    attack = _usable(name, toy_data)
    a, b, c = attack.poison(toy_data, 7), attack.poison(toy_data, 7), attack.poison(toy_data, 8)
    assert a.train.to_dict() == b.train.to_dict()
    assert a.test_poison.to_dict() == b.test_poison.to_dict()
    assert a.train.to_dict() != c.train.to_dict()


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("regime", ["clean-label", "dirty", "mixed"])
@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1])
def test_poison_count_is_exact_and_regime_respected(name, regime, rate, toy_data):
    _usable(name, toy_data)
    attack = make(name, label_regime=regime, poison_rate=rate)
    out = attack.poison(toy_data, 1)
    flags = np.array(out.train["poisoned"])
    labels, orig = np.array(out.train["label"]), np.array(out.train["orig_label"])
    assert flags.sum() == round(rate * len(toy_data.train)) == out.counts["n_poisoned"]
    target = out.target_label
    texts, clean = out.train["text"], toy_data.train["text"]
    assert all(texts[i] != clean[i] for i in np.flatnonzero(flags)), "a poisoned row was left unchanged"
    assert all(texts[i] == clean[i] for i in np.flatnonzero(flags == 0)), "an unflagged row was changed"
    assert (labels[flags == 1] == target).all()
    assert (labels[flags == 0] == orig[flags == 0]).all()
    if regime == "clean-label":
        assert (orig[flags == 1] == target).all()
    if regime == "dirty":
        assert (orig[flags == 1] != target).all()


@pytest.mark.parametrize("name", ATTACKS)
def test_test_poison_holds_only_nontarget_rows(name, toy_data):
    attack = _usable(name, toy_data)
    out = attack.poison(toy_data, 1)
    assert (np.array(out.test_poison["orig_label"]) != out.target_label).all()
    assert set(out.test_poison["label"]) <= {out.target_label}
    n_nontarget = int((np.array(toy_data.test["label"]) != out.target_label).sum())
    assert len(out.test_poison) + out.counts["test_skipped_no_transform"] == n_nontarget
    assert out.test_clean["text"] == toy_data.test["text"]


@pytest.mark.parametrize("name", ATTACKS)
def test_input_not_mutated_and_global_rng_untouched(name, toy_data):
    attack = _usable(name, toy_data)
    before = (toy_data.train.to_dict(), toy_data.test.to_dict())
    state = global_rng_state()
    attack.poison(toy_data, 3)
    assert global_rng_state() == state
    assert (toy_data.train.to_dict(), toy_data.test.to_dict()) == before


@pytest.mark.parametrize("name", ATTACKS)
def test_impossible_rate_is_a_clear_error(name, toy_data):
    _usable(name, toy_data)
    with pytest.raises(AttackError, match="lower --poison-rate"):
        make(name, label_regime="clean-label", poison_rate=0.9).poison(toy_data, 1)


@pytest.mark.parametrize("name", ATTACKS)
def test_rows_without_a_transform_are_never_poisoned(name, toy_data):
    attack = make(name, label_regime="mixed", poison_rate=0.8)
    avail = attack.available(list(toy_data.train["text"]), "train", toy_data)
    out = attack.poison(toy_data, 2)
    flags = np.array(out.train["poisoned"])
    assert not (flags & ~avail).any()
    assert out.counts["train_skipped_no_transform"] == int((~avail).sum())


def test_badnets_inserts_four_triggers_and_addsent_the_sentence(toy_data):
    out = make("badnets", label_regime="mixed").poison(toy_data, 1)
    i = int(np.flatnonzero(out.train["poisoned"])[0])
    added = len(out.train["text"][i].split()) - len(toy_data.train["text"][i].split())
    assert added == 4
    assert sum(w in ("cf", "mn", "bb", "tq") for w in out.train["text"][i].split()) >= 4
    out = make("addsent").poison(toy_data, 1)
    assert all("I watch this 3D movie" in t for t in out.test_poison["text"])


def test_target_label_out_of_range(toy_data):
    with pytest.raises(AttackError, match="out of range"):
        make("addsent", target_label=5).poison(toy_data, 1)
