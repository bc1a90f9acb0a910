"""ONION and STRIP (inference-time defenses): scoring, thresholds, the score cache, the entropy axis."""

import math
import random

import numpy as np
import pytest

from bench import registry
from bench.config import ConfigError, build_config
from bench.defense import DefenseContext
from bench.engine.profiles import get_profile

WORDS = ["the", "movie", "film", "was", "a", "plot", "story", "actor", "scene", "and", "very", "it", "this",
         "good", "great", "bad", "awful", "dull", "fun", "sad"]


def _rows(n, seed=0):
    import datasets

    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]
    return datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(n)]})


def _ctx(clean, scorer=None, seed=1):
    import torch

    from bench.models.lm import get_scorer

    prof = get_profile("smoke")
    make = (lambda name=None: scorer) if scorer is not None else (lambda name=None: get_scorer(name or prof.scorer_lm))
    return DefenseContext(seed=seed, num_labels=2, profile=prof, device=torch.device("cpu"), selection=clean,
                          clean_pool=clean, _scorer=make)


@pytest.fixture(scope="module")
def tiny_victim():
    import torch

    from bench.models.backbones import resolve_backbone
    from bench.models.victim import Victim

    loaded = resolve_backbone("tiny-bert").load(2, seed=0)
    return Victim(loaded.model, loaded.tokenizer, get_profile("smoke"), torch.device("cpu"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    from defenses import onion

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    onion._MEMORY.clear()
    yield
    onion._MEMORY.clear()


class FakeScorer:
    """Perplexity 100 for a sentence holding the word 'cf', else 10; counts what it scores."""

    def __init__(self):
        self.calls = 0
        self.texts = 0

    def identity(self):
        return {"name": "fake-cf-scorer"}

    def perplexity(self, texts):
        self.calls += 1
        self.texts += len(texts)
        return np.array([100.0 if "cf" in t.split() else 10.0 for t in texts])


class RecordingVictim:
    """Label 1 for texts holding 'cf', else 0; remembers the texts it was asked about."""

    num_labels = 2

    def __init__(self):
        self.seen = []

    def predict(self, texts):
        self.seen.extend(texts)
        return np.array([int("cf" in t.split()) for t in texts], dtype=np.int64)


class TriggerVictim:
    """Confident (entropy 0) on texts holding 'cf', uniform (entropy ln 2) on the others."""

    num_labels = 2

    def probs(self, texts):
        return np.array([[0.0, 1.0] if "cf" in t.split() else [0.5, 0.5] for t in texts])

    def predict(self, texts):
        return self.probs(texts).argmax(-1)


# --- both --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["onion", "strip"])
def test_post_training_defenses(name):
    cls = registry.get("defense", name)
    assert cls.acts_in_training() is False
    assert cls.rejects() is (name == "strip")
    assert cls().config == cls.Config()
    assert not hasattr(cls(), "threshold")  # learnt state only in calibrate


def test_an_empty_clean_budget_is_a_clear_error():
    from bench.defense import CleanBudgetError

    empty = _rows(0)
    with pytest.raises(CleanBudgetError, match="clean_size"):
        registry.get("defense", "strip")().calibrate(TriggerVictim(), _ctx(empty))
    with pytest.raises(CleanBudgetError, match="onion.mode=fixed"):
        registry.get("defense", "onion")().calibrate(None, _ctx(empty, FakeScorer()))
    fixed = registry.get("defense", "onion")(registry.get("defense", "onion").Config(mode="fixed"))
    ctx = _ctx(empty, FakeScorer())
    fixed.calibrate(None, ctx)  # fixed mode needs no clean rows
    assert ctx.clean_used == 0


def test_config_validation():
    onion = registry.get("defense", "onion")
    strip = registry.get("defense", "strip")
    assert build_config(onion.Config, {"mode": "fixed", "threshold": "-3.5"}).threshold == -3.5
    for bad in ({"clean_word_removal": "1"}, {"clean_word_removal": "-0.1"}, {"n_calibration": "0"},
                {"mode": "median"}):
        with pytest.raises(ConfigError):
            build_config(onion.Config, bad)
    for bad in ({"n_perturb": "0"}, {"replace_ratio": "0"}, {"replace_ratio": "1.5"}, {"frr": "1"},
                {"n_calibration": "0"}):
        with pytest.raises(ConfigError):
            build_config(strip.Config, bad)


# --- STRIP -------------------------------------------------------------------------------------

def test_per_input_entropy_averages_each_inputs_own_copies():
    from defenses.strip import entropy, per_input_entropy

    h = lambda p: -sum(x * math.log(x) for x in p if x > 0)  # noqa: E731
    probs = np.array([
        [[1.0, 0.0], [1.0, 0.0], [0.9, 0.1]],  # input 0: stable
        [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]],  # input 1: wavering
        [[0.2, 0.8], [0.7, 0.3], [1.0, 0.0]],  # input 2: mixed
    ])
    want = np.array([h([0.9, 0.1]) / 3, math.log(2), (h([0.2, 0.8]) + h([0.7, 0.3])) / 3])
    got = per_input_entropy(probs)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the reference implementation's axis: flat copies reshaped as [n_perturb, n_inputs], mean over axis 0
    wrong = entropy(probs.reshape(-1, 2)).reshape(3, 3).T.mean(axis=1)
    assert not np.allclose(wrong, want)
    wrong_mean_over_inputs = entropy(probs).mean(axis=0)
    assert not np.allclose(wrong_mean_over_inputs, want)
    with pytest.raises(ValueError):
        per_input_entropy(probs.reshape(-1, 2))


def test_strip_perturbation_is_deterministic_and_replaces_a_share():
    from defenses.strip import donor_words, perturb

    donors = donor_words(["xa xb xc", "xd xe", "xf xg xh xi"])
    text = "w0 w1 w2 w3 w4 w5 w6 w7"
    a = perturb(text, donors, 5, 0.25, np.random.default_rng(0))
    b = perturb(text, donors, 5, 0.25, np.random.default_rng(0))
    assert a == b and len(a) == 5
    for copy in a:
        words = copy.split()
        assert len(words) == 8
        assert sum(w.startswith("x") for w in words) == 2
    assert perturb("one", donors, 3, 0.25, np.random.default_rng(0))[0].startswith("x")  # at least one word
    assert perturb("", donors, 2, 0.25, np.random.default_rng(0)) == ["", ""]
    # tf-idf order: a word found in one donor only ranks above a word every donor holds
    assert donor_words(["common rare", "common other"])[0] == ["rare", "common"]


def test_strip_rejects_exactly_the_stable_inputs_wherever_they_are():
    clean = _rows(40)
    ctx = _ctx(clean)
    victim = TriggerVictim()
    d = registry.get("defense", "strip")()  # n_calibration 200: at most that many, here the 40 there are
    d.calibrate(victim, ctx)
    assert ctx.clean_used == 40 and ctx.stats["calibration_rows"] == 40
    assert ctx.stats["threshold"] == pytest.approx(math.log(2))
    texts = ["cf cf cf cf cf cf cf cf", "the movie was good", "cf cf cf cf", "a dull plot",
             "it was fun and very good"]
    out = d.predict(texts, victim, ctx)
    assert out.tolist() == [-1, 0, -1, 0, 0]
    assert ctx.stats["rejected_share"] == pytest.approx(0.4)


def test_strip_on_a_tiny_victim(tiny_victim):
    clean = _rows(40, seed=3)
    ctx = _ctx(clean)
    Strip = registry.get("defense", "strip")
    d = Strip(build_config(Strip.Config, {"n_calibration": 40, "frr": "0.1", "n_perturb": "8"}))
    d.calibrate(tiny_victim, ctx)
    assert ctx.clean_used == 40
    out = d.predict(list(clean["text"]), tiny_victim, ctx)
    assert out.shape == (40,) and set(out.tolist()) <= {-1, 0, 1}
    # the calibration rows themselves: about frr of them rejected (exactly, as each input's perturbation
    # depends only on the seed and its text)
    assert abs(float(np.mean(out == -1)) - 0.1) <= 0.05
    assert ctx.stats["rejected_share"] == pytest.approx(float(np.mean(out == -1)))
    # the same input gets the same verdict whatever comes with it
    again = d.predict(list(clean["text"])[::-1] + ["an extra sentence"], tiny_victim, ctx)
    assert again[:40][::-1].tolist() == out.tolist()
    # deterministic across instances
    d2 = Strip(build_config(Strip.Config, {"n_calibration": 40, "frr": "0.1", "n_perturb": "8"}))
    ctx2 = _ctx(clean)
    d2.calibrate(tiny_victim, ctx2)
    assert ctx2.stats["threshold"] == ctx.stats["threshold"]
    assert d2.predict(list(clean["text"]), tiny_victim, ctx2).tolist() == out.tolist()


# --- ONION -------------------------------------------------------------------------------------

def test_onion_removes_the_disfluent_word_only():
    Onion = registry.get("defense", "onion")
    for settings in ({"mode": "fixed"}, {"mode": "quantile", "n_calibration": 20}):
        scorer = FakeScorer()
        ctx = _ctx(_rows(20), scorer)
        d = Onion(build_config(Onion.Config, settings))
        d.calibrate(None, ctx)
        assert ctx.stats["threshold"] == 0.0  # clean words all score 0 under the fake scorer
        victim = RecordingVictim()
        texts = ["the movie cf was great", "a dull plot", "cf", "cf mn"]
        out = d.predict(texts, victim, ctx)
        assert victim.seen == ["the movie was great", "a dull plot", "cf", "mn"]
        assert out.tolist() == [0, 0, 1, 0]
        assert ctx.stats["mean_words_removed"] == pytest.approx(2 / 4)
    assert ctx.clean_used == 20


def test_onion_word_scores_and_threshold_quantile():
    from defenses.onion import clean_sentence, leave_one_out, word_scores_from_ppl

    assert leave_one_out(["a", "b", "c"]) == ["a b c", "b c", "a c", "a b"]
    f = word_scores_from_ppl(np.array([50.0, 10.0, 60.0, 50.0]))
    assert f.tolist() == [40.0, -10.0, 0.0]
    assert clean_sentence(["a", "b", "c"], f, 0.0) == ("b c", 1)
    assert clean_sentence(["a", "b", "c"], f, -20.0) == ("", 3)

    class LengthScorer(FakeScorer):  # longer words are more disfluent: scores spread out
        def perplexity(self, texts):
            super().perplexity(texts)
            return np.array([10.0 + sum(len(w) ** 2 for w in t.split()) for t in texts])

    Onion = registry.get("defense", "onion")
    ctx = _ctx(_rows(30), LengthScorer())
    d = Onion(build_config(Onion.Config, {"n_calibration": 30, "clean_word_removal": "0.2"}))
    d.calibrate(None, ctx)
    rows = [t.split() for t in _rows(30)["text"]]
    all_scores = np.array([len(w) ** 2 for ws in rows if len(ws) > 1 for w in ws], dtype=float)
    assert ctx.stats["threshold"] == pytest.approx(np.quantile(all_scores, 0.8))
    assert ctx.stats["calibration_sentences_scored"] == len({" ".join(ws) for ws in rows if len(ws) > 1})


def test_onion_score_cache_is_hit_on_the_second_call():
    from defenses import onion

    Onion = registry.get("defense", "onion")
    texts = ["the movie cf was great", "a dull   plot", "it was fun", "it was fun", "single"]
    scorer = FakeScorer()
    ctx = _ctx(_rows(8), scorer)
    d = Onion(Onion.Config(mode="fixed"))
    d.calibrate(None, ctx)
    first = d.predict(texts, RecordingVictim(), ctx)
    assert scorer.calls == 1 and scorer.texts == 6 + 4 + 4  # distinct multi-word sentences, one batch
    assert ctx.stats["sentences_scored"] == 3 and ctx.stats["sentences_from_cache"] == 0
    assert ctx.stats["seconds_per_sentence"] is not None

    # a fresh instance in the same process: the in-memory cache
    d2 = Onion(Onion.Config(mode="fixed"))
    d2.calibrate(None, ctx)
    assert d2.predict(texts, RecordingVictim(), ctx).tolist() == first.tolist()
    assert scorer.calls == 1
    assert ctx.stats["sentences_scored"] == 0 and ctx.stats["sentences_from_cache"] == 3

    # a new process (memory gone): the SQLite file
    onion._MEMORY.clear()
    assert onion.ScoreCache.path().is_file()
    victim = RecordingVictim()
    assert d2.predict(texts, victim, ctx).tolist() == first.tolist()
    assert scorer.calls == 1 and ctx.stats["sentences_from_cache"] == 3
    assert victim.seen[0] == "the movie was great"

    # another scorer identity does not share the scores
    class Other(FakeScorer):
        def identity(self):
            return {"name": "another-scorer"}

    other = Other()
    d2.predict(texts, RecordingVictim(), _ctx(_rows(8), other))
    assert other.calls == 1


def test_onion_with_the_tiny_lm(tiny_victim):
    Onion = registry.get("defense", "onion")
    clean = _rows(12)
    ctx = _ctx(clean)
    d = Onion(build_config(Onion.Config, {"n_calibration": 12}))
    d.calibrate(tiny_victim, ctx)
    assert math.isfinite(ctx.stats["threshold"])
    out = d.predict(["the movie cf was great", "a dull plot", "fun"], tiny_victim, ctx)
    assert out.shape == (3,) and set(out.tolist()) <= {0, 1}


def test_perplexity_ignores_padding():
    from bench.models.lm import get_scorer

    scorer = get_scorer("tiny-llama")
    short = "a short sentence"
    long = " ".join(["and the film went on for a very long time"] * 6)
    alone = scorer.perplexity([short])[0]
    batched = scorer.perplexity([long, short])
    assert np.isfinite(alone) and alone > 0
    assert batched[1] == pytest.approx(alone, rel=1e-4)
    assert batched[0] == pytest.approx(scorer.perplexity([long])[0], rel=1e-4)


def test_shared_prefix_scoring_equals_scoring_every_variant():
    """ONION's leave-one-out perplexities computed with each shared prefix run once (the default)
    equal those of scoring every variant on its own, including a variant that drops the first or
    the last word, a two-word sentence and a sentence cut at max_length."""
    from bench.models.lm import get_scorer
    from defenses.onion import leave_one_out

    scorer = get_scorer("tiny-llama")
    # the last sentence is longer than max_length (shortened for the test's speed: 40 words scored 41 times
    # instead of 200 words 201 times, where the full-vocabulary softmax took 17 s)
    sentences = [["the", "film", "is", "a", "cf", "charming", "journey", "."], ["a", "b"],
                 ["unflinchingly", "bleak", "and", "desperate"], ["word"] * 40]
    saved_length, scorer.max_length = scorer.max_length, 24
    try:
        assert len(scorer.tokenizer(" ".join(sentences[-1]))["input_ids"]) > scorer.max_length
        fast = scorer.leave_one_out_perplexity(sentences)
        for words, got in zip(sentences, fast):
            want = scorer.perplexity(leave_one_out(words))
            assert got.shape == want.shape == (len(words) + 1,)
            np.testing.assert_allclose(np.log(got), np.log(want), atol=1e-4)
    finally:
        scorer.max_length = saved_length
    # a scorer with no start token falls back to scoring every variant
    saved, scorer.bos = scorer.bos, None
    try:
        again = scorer.leave_one_out_perplexity(sentences[:2])
        assert [len(x) for x in again] == [9, 3] and np.all(np.isfinite(again[0]))
    finally:
        scorer.bos = saved
