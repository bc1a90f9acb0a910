"""RAP and BadActs on tiny random victims: settings, what they change, what they return."""

import datasets
import numpy as np
import pytest
import torch

from bench import registry
from bench.config import ConfigError, build_config
from bench.defense import DefenseContext
from bench.engine.profiles import get_profile
from bench.models.backbones import resolve_backbone
from bench.models.victim import Victim

WORDS = ["good", "bad", "film", "plot", "dull", "great", "story", "awful", "fun", "scene", "poor", "actor"]


def _texts(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(n)]


def _victim(backbone="tiny-bert"):
    prof = get_profile("smoke")
    loaded = resolve_backbone(backbone).load(2, seed=0)
    victim = Victim(loaded.model, loaded.tokenizer, prof, torch.device("cpu"))
    victim.model.eval()
    # a random head predicts one class for almost everything: centre it so both labels occur
    head = [m for m in victim.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    z = victim.logits(_texts(40, 99))
    with torch.no_grad():
        if head.bias is None:
            head.bias = torch.nn.Parameter(torch.zeros(2))
        head.bias[1] -= float(np.median(z[:, 1] - z[:, 0]))
    return victim


def _ctx(victim, n=32, seed=1):
    texts = _texts(n, seed)
    pred = victim.predict(texts)
    labels = [int(p) if i % 5 else 1 - int(p) for i, p in enumerate(pred)]  # every 5th one wrong
    clean = datasets.Dataset.from_dict({"text": texts, "label": labels})
    return DefenseContext(seed=1, num_labels=2, profile=victim.settings, device=torch.device("cpu"),
                          selection=clean, clean_pool=clean)


def _defense(name, **settings):
    cls = registry.get("defense", name)
    return cls(build_config(cls.Config, settings, owner=name))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["rap", "badacts"])
def test_post_training_defense(name):
    cls = registry.get("defense", name)
    assert cls.acts_in_training() is False
    assert cls.rejects() is (name == "rap")


# --- RAP ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("protected", [0, 1])
def test_rap_trains_on_the_protected_label_only(protected, monkeypatch):
    victim = _victim()
    ctx = _ctx(victim)
    rows = ctx.clean(16)
    labels = np.asarray(rows["label"])
    pred = victim.predict(list(rows["text"]))
    expected = [t for t, y, p in zip(rows["text"], labels, pred) if y == protected and p == protected]
    assert expected, "the test needs correctly classified rows of both labels"

    seen = []
    original = Victim.encode
    monkeypatch.setattr(Victim, "encode", lambda self, texts: seen.append(list(texts)) or original(self, texts))
    rap = _defense("rap", protected_label=protected, n_calibration=16, rap_epochs=2)
    rap.calibrate(victim, ctx)

    assert ctx.stats["rap_protected_label"] == protected
    assert ctx.stats["rap_rows"] == len(expected)
    perturbed = [t for call in seen for t in call if t.startswith("mb ")]
    assert perturbed and set(perturbed) == {f"mb {t}" for t in expected}
    assert ctx.stats["rap_threshold"] is not None and np.isfinite(ctx.stats["rap_threshold"])


def test_rap_protects_every_label_by_default_without_knowing_the_target():
    """Version 2: no label is assumed to be the target (version 1 protected label 1, the target of SST-2 and
    HSOL); each label's word starts from the original embedding, so its part equals a one-label RAP."""
    victim = _victim()
    every = _defense("rap", n_calibration=16, rap_epochs=2)
    assert every.config.protected_label is None and registry.get("defense", "rap").version == 2
    ctx = _ctx(victim)
    every.calibrate(victim, ctx)
    assert ctx.stats["rap_protected_label"] == "every"
    per = ctx.stats["rap_per_label"]
    assert set(per) == {"0", "1"} and all(per[k]["rap_rows"] > 0 for k in per)
    for k in (0, 1):
        one = _defense("rap", protected_label=k, n_calibration=16, rap_epochs=2)
        one_ctx = _ctx(victim)
        one.calibrate(victim, one_ctx)
        assert one_ctx.stats["rap_threshold"] == pytest.approx(per[str(k)]["rap_threshold"])
    assert not torch.equal(every._rows[0], every._rows[1])
    # an input is judged by the RAP of the label the victim predicts: both labels can be rejected
    texts = list(ctx.clean(16)["text"])
    pred = victim.predict(texts)
    every._threshold = {0: float("inf"), 1: float("inf")}  # every drop is under the bar: reject all
    assert (every.predict(texts, victim, ctx) == -1).all()
    every._threshold = {0: float("inf"), 1: float("-inf")}  # only inputs predicted as 0 are rejected
    out = every.predict(texts, victim, ctx)
    assert ((out == -1) == (pred == 0)).all() and (pred == 0).any() and (pred == 1).any()


def test_rap_protected_label_out_of_range():
    victim = _victim()
    rap = _defense("rap", protected_label=2, n_calibration=16)
    with pytest.raises(ConfigError, match="protected_label"):
        rap.calibrate(victim, _ctx(victim))
    with pytest.raises(ConfigError):
        _defense("rap", protected_label=-1)
    with pytest.raises(ConfigError):
        _defense("rap", prob_lower=0.3, prob_upper=0.1)


def test_rap_changes_only_the_word_rows_of_its_copy():
    victim = _victim()
    ctx = _ctx(victim)
    before = _state(victim.model)
    rap = _defense("rap", n_calibration=32, rap_epochs=3, rap_lr=0.5)
    rap.calibrate(victim, ctx)
    assert _same(before, _state(victim.model))  # the victim is untouched

    ids = rap.word_ids(victim.tokenizer)
    after = _state(rap._rap.model)
    emb_name = next(k for k, v in after.items() if v.shape == victim.input_embeddings().weight.shape)
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed == [emb_name]
    rows = torch.nonzero((after[emb_name] != before[emb_name]).any(1)).flatten().tolist()
    assert rows == ids
    # the norm of the trained row is kept
    assert torch.allclose(after[emb_name][ids].norm(dim=1), before[emb_name][ids].norm(dim=1), atol=1e-5)
    assert all(not p.requires_grad for p in rap._rap.model.parameters())


def test_rap_predict_labels_and_rejections():
    victim = _victim()
    ctx = _ctx(victim)
    rap = _defense("rap", protected_label=1, n_calibration=32, rap_epochs=2)
    rap.calibrate(victim, ctx)
    texts = _texts(20, 7) + ["cf " + t for t in _texts(10, 8)]
    out = rap.predict(texts, victim, ctx)
    assert out.shape == (len(texts),) and out.dtype.kind == "i"
    assert set(out.tolist()) <= {-1, 0, 1}
    pred = victim.predict(texts)
    kept = out != -1
    assert (out[kept] == pred[kept]).all()  # RAP rejects or keeps the victim's label
    assert (pred[~kept] == 1).all()  # only protected-label predictions are rejected
    assert 0.0 <= ctx.stats["rap_rejected_share"] <= 1.0
    assert rap.predict([], victim, ctx).shape == (0,)


# --- BadActs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-roberta", "tiny-llama"])
def test_badacts_on_every_architecture(backbone):
    victim = _victim(backbone)
    ctx = _ctx(victim)
    texts = _texts(12, 5) + ["cf cf " + t for t in _texts(6, 6)]
    before_state = _state(victim.model)
    before_logits = victim.logits(texts)

    bad = _defense("badacts", n_calibration=32, interval_epochs=2)
    bad.calibrate(victim, ctx)
    out = bad.predict(texts, victim, ctx)
    assert out.shape == (len(texts),) and set(out.tolist()) <= {0, 1}

    assert len(ctx.stats["badacts_layers"]) == 2  # the two blocks of the tiny models
    assert np.isfinite(ctx.stats["badacts_threshold"])
    assert 0.0 <= ctx.stats["badacts_flagged_share"] <= 1.0
    # the victim is untouched, and no hook is left on it or on the copy
    assert _same(before_state, _state(victim.model))
    np.testing.assert_array_equal(victim.logits(texts), before_logits)
    for model in (victim.model, bad._victim.model):
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    np.testing.assert_array_equal(bad._victim.logits(texts), before_logits)


def test_badacts_purify_all_clamps_and_is_deterministic():
    victim = _victim()
    texts = _texts(16, 3)
    outs = []
    for _ in range(2):
        ctx = _ctx(victim)
        bad = _defense("badacts", n_calibration=32, purify="all", intervals="gaussian", delta=0.01)
        bad.calibrate(victim, ctx)
        outs.append(bad.predict(texts, victim, ctx))
    np.testing.assert_array_equal(outs[0], outs[1])
    # intervals of +- 0.01 std squeeze every input towards the mean activation: one label for all
    assert len(set(outs[0].tolist())) == 1


def test_badacts_optimizes_intervals_and_keeps_clean_accuracy():
    victim = _victim()
    ctx = _ctx(victim)
    bad = _defense("badacts", n_calibration=32, interval_epochs=3, purify="all")
    bad.calibrate(victim, ctx)
    assert ctx.stats["badacts_interval_attempts"] >= 1
    assert 0.0 <= ctx.stats["badacts_interval_acc"] <= 1.0
    assert ctx.stats["badacts_interval_width_mean"] > 0
    rows = ctx.clean(32)
    labels, texts = np.asarray(rows["label"]), list(rows["text"])
    right = victim.predict(texts) == labels
    purified = bad.predict(texts, victim, ctx)
    assert (purified[right] == labels[right]).mean() >= ctx.stats["badacts_interval_acc"] - 1e-9


def test_badacts_layer_pattern():
    victim = _victim("tiny-llama")
    ctx = _ctx(victim)
    bad = _defense("badacts", n_calibration=32, intervals="gaussian", layer_pattern=r"layers\.\d+\.mlp$")
    bad.calibrate(victim, ctx)
    assert ctx.stats["badacts_layers"] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    with pytest.raises(ConfigError, match="layer_pattern"):
        _defense("badacts", n_calibration=32, layer_pattern="nothing-matches-this").calibrate(victim, ctx)
    with pytest.raises(ConfigError):
        _defense("badacts", layer_pattern="(")


def test_badacts_can_start_at_the_authors_intervals():
    victim = _victim()
    ctx = _ctx(victim)
    bad = _defense("badacts", n_calibration=32, interval_epochs=0, interval_start="authors")
    bad.calibrate(victim, ctx)
    assert ctx.stats["badacts_interval_width_mean"] == pytest.approx(np.e)  # [1 - e, 1] for every neuron
    gauss_ctx = _ctx(victim)
    _defense("badacts", n_calibration=32, interval_epochs=0).calibrate(victim, gauss_ctx)
    assert gauss_ctx.stats["badacts_interval_width_mean"] != pytest.approx(np.e)
