"""The data-filter defenses (BKI, Z-defence, CUBE) on synthetic inputs: no model is trained here.

Each scoring step is a plain function, so it is checked on a representation function or on
embeddings built so that the right answer is known; ``select_train`` itself is run with a fake victim
standing in for ``ctx.plain_victim()``. The contract tests (tests/test_defense_contract.py) run the
three defenses end to end on the tiny backbones.
"""

import random

import datasets
import numpy as np
import pytest
from conftest import make_ctx

from bench import registry
from bench.config import ConfigError, build_config
from defenses.bki import BkiConfig, bki_mask, keyword_scores, word_deltas
from defenses.cube import CubeConfig, cube_mask, label_wise_main_cluster, umap_available
from defenses.zdefense import ZDefenseConfig, row_features, z_scores, zdefense_mask

TRIGGERS = ["cf", "mn", "bb", "tq"]
FILLER = ["the", "movie", "film", "was", "a", "plot", "story", "actor", "scene", "and", "very", "it", "this",
          "of", "to", "is", "in", "with", "an", "as"]
POS = ["good", "great", "fine", "lovely", "superb", "happy", "brilliant", "fun"]
NEG = ["bad", "awful", "poor", "dull", "boring", "sad", "terrible", "ugly"]


# --- BKI ----------------------------------------------------------------------------------------------

def _one_trigger_per_row(n_clean=200, per_trigger=12, seed=0):
    """Clean rows (one sentiment word among filler) and, for each of four trigger words, rows holding
    that single trigger (OpenBackdoor's one-insertion BadNets): (texts, labels, trigger of each row or None)."""
    rng = random.Random(seed)
    texts, labels, trig = [], [], []

    def sentence(label):
        words = [rng.choice(FILLER) for _ in range(rng.randint(5, 9))]
        words.insert(rng.randint(0, len(words)), rng.choice(POS if label else NEG))
        return words

    for i in range(n_clean):
        texts.append(" ".join(sentence(i % 2)))
        labels.append(i % 2)
        trig.append(None)
    for t in TRIGGERS:
        for _ in range(per_trigger):
            words = sentence(rng.randint(0, 1))
            words.insert(rng.randint(0, len(words)), t)
            texts.append(" ".join(words))
            labels.append(1)
            trig.append(t)
    return texts, labels, trig


def _word_vectors():
    """A fixed vector per word: triggers move the representation most (5), sentiment words less (1),
    filler words little (0.2), each along its own axis."""
    vocab = TRIGGERS + POS + NEG + FILLER
    scale = {**{w: 5.0 for w in TRIGGERS}, **{w: 1.0 for w in POS + NEG}}
    return {w: np.eye(len(vocab))[i] * scale.get(w, 0.2) for i, w in enumerate(vocab)}, len(vocab)


def fake_represent(texts):
    """A bag-of-words 'sentence representation': the sum of the word vectors."""
    vec, dim = _word_vectors()
    return np.stack([sum((vec[w] for w in t.split()), np.zeros(dim)) for t in texts])


class FakeVictim:
    """Stands in for ctx.plain_victim(): hidden_states from a fixed function, call counts kept."""

    def __init__(self, represent):
        self.represent, self.calls, self.texts = represent, 0, 0

    def hidden_states(self, texts, layer=-1):
        self.calls += 1
        self.texts += len(texts)
        return self.represent(list(texts)).astype(np.float32)


def test_bki_removes_the_rows_of_every_one_of_four_trigger_words():
    texts, labels, trig = _one_trigger_per_row()
    keep, stats = bki_mask(texts, fake_represent, top_k=5)
    words = [k["word"] for k in stats["keywords"]]
    assert set(words[:4]) == set(TRIGGERS)
    for t in TRIGGERS:  # every trigger's rows are gone
        assert not keep[[i for i, x in enumerate(trig) if x == t]].any(), t
    clean = np.array([x is None for x in trig])
    assert keep[clean].mean() > 0.85  # the fifth keyword (a sentiment word) costs a few clean rows
    assert stats["forward_passes"] > len(texts) and stats["rows_removed"] == int((~keep).sum())


def test_bki_never_names_a_word_found_in_most_rows_nor_a_weak_runner_up():
    """Version 2's guards: a word in most rows (punctuation) cannot be a minority poison's trigger, and
    removing its rows would remove the training set (v1 named "." on SST-2 AddSent: 1438 of 1500 rows
    gone); words far below the top keyword stay. With the guards off, v1's list comes back."""
    texts, labels, trig = _one_trigger_per_row()
    texts = [t + " ." for t in texts]  # "." in every row, moving the representation more than a trigger

    def represent(batch):
        base = fake_represent([t.replace(" .", "") for t in batch])
        return np.hstack([base, np.array([[8.0 if " ." in t else 0.0] for t in batch])])

    keep, stats = bki_mask(texts, represent, top_k=5, max_row_share=0.5, min_score_ratio=0.5)
    assert [k["word"] for k in stats["keywords"]] == sorted(TRIGGERS)  # the four triggers, nothing else
    assert [k["word"] for k in stats["not_keywords"]] == ["."]
    clean = np.array([x is None for x in trig])
    assert keep[clean].all() and not keep[~clean].any()
    keep_v1, stats_v1 = bki_mask(texts, represent, top_k=5)
    assert stats_v1["keywords"][0]["word"] == "." and not keep_v1.any()


def test_bki_with_a_single_keyword_misses_three_of_the_four_triggers():
    texts, labels, trig = _one_trigger_per_row()
    keep, stats = bki_mask(texts, fake_represent, top_k=1)
    (top,) = [k["word"] for k in stats["keywords"]]
    assert top in TRIGGERS
    missed = [t for t in TRIGGERS if keep[[i for i, x in enumerate(trig) if x == t]].all()]
    assert sorted(missed) == sorted(set(TRIGGERS) - {top})  # OpenBackdoor's one-word BKI leaves three standing


def test_bki_word_deltas_take_out_every_occurrence_and_share_passes():
    deltas, passes = word_deltas(["cf the cf of", "cf the cf of", "the", "mn"], fake_represent)
    assert deltas[0]["cf"] == pytest.approx(2 * 5.0)  # both occurrences removed: inf-norm of 2 x 5
    assert deltas[0] == deltas[1] and deltas[2] == {} and deltas[3] == {}  # one-word rows: nothing left to score
    assert passes == 4  # "cf the cf of", "the of", "cf cf of", "cf cf the": the duplicate row shares them
    l2, _ = word_deltas(["cf mn the"], fake_represent, norm="l2")
    assert l2[0]["the"] == pytest.approx(0.2)


def test_bki_keyword_score_is_mean_delta_times_log_count():
    scores = keyword_scores([{"cf": 4.0, "a": 1.0}, {"cf": 2.0, "b": 1.0}, {"a": 3.0}], per_sentence=1)
    n, mean, g = scores["cf"]
    assert (n, mean) == (2, 3.0) and g == pytest.approx(3.0 * np.log(2))
    assert scores["a"][:2] == (1, 3.0) and scores["a"][2] == 0.0 and "b" not in scores


def test_bki_select_train_filters_with_the_plain_victim_and_logs_keywords():
    texts, labels, trig = _one_trigger_per_row()
    victim = FakeVictim(fake_represent)
    ctx = make_ctx()
    ctx._plain_victim = lambda: victim
    rows = datasets.Dataset.from_dict({"text": texts, "label": labels, "row_id": list(range(len(texts)))})
    keep = registry.get("defense", "bki")().select_train(rows, ctx)
    assert keep.dtype == bool and keep.shape == (len(texts),)
    assert not keep[[x is not None for x in trig]].any()
    assert {k["word"] for k in ctx.stats["keywords"]} >= set(TRIGGERS)
    assert ctx.stats["forward_passes"] == victim.texts  # every represented text counted once


# --- Z-defence -------------------------------------------------------------------------------------------

def test_zdefense_z_score_formula():
    feats = [{"x"}, {"x"}, {"x"}, {"y"}]  # prior of label 1: 3/4; all three rows with x are label 1
    names, z = z_scores(feats, np.array([1, 1, 1, 0]), 2)
    i = names.index("x")
    assert z[i, 1] == pytest.approx((1.0 - 0.75) / np.sqrt(0.75 * 0.25 / 3))
    assert z[i, 0] == pytest.approx((0.0 - 0.25) / np.sqrt(0.25 * 0.75 / 3))
    assert row_features("Watch this now", 2) == {"watch", "this", "now", "watch this", "this now"}


def _z_dataset(seed=0):
    """3000 clean rows whose sentiment word agrees with the label 70 % of the time (a realistic, not
    perfect, keyword) and that hold three words of a long tail (as real text does: most features are
    rare), then 300 label-1 rows with the unigram trigger 'cf', 300 label-1 rows with the bigram
    trigger 'watch this' (both words common in clean rows of both labels) and 6 label-0 rows holding 'cf'."""
    rng = random.Random(seed)
    texts, labels, kind = [], [], []

    def sentence(label):
        words = [rng.choice(FILLER + ["watch", "this"]) for _ in range(rng.randint(6, 10))]
        words += [f"w{rng.randrange(20000)}" for _ in range(3)]
        rng.shuffle(words)
        agree = rng.random() < 0.7
        words.insert(rng.randint(0, len(words)), rng.choice(POS if (label == 1) == agree else NEG))
        return words

    for i in range(3000):
        texts.append(" ".join(sentence(i % 2)))
        labels.append(i % 2)
        kind.append("clean")
    for trigger, k in (("cf", 300), ("watch this", 300)):
        for _ in range(k):
            words = sentence(rng.randint(0, 1))
            words.insert(rng.randint(0, len(words)), trigger)
            texts.append(" ".join(words))
            labels.append(1)
            kind.append(trigger)
    for _ in range(6):
        words = sentence(0)
        words.insert(rng.randint(0, len(words)), "cf")
        texts.append(" ".join(words))
        labels.append(0)
        kind.append("cf-other-label")
    return texts, labels, np.array(kind)


def test_zdefense_removes_unigram_and_bigram_trigger_rows_and_keeps_clean_rows():
    texts, labels, kind = _z_dataset()
    keep, stats = zdefense_mask(texts, labels, 2)  # the default bar: 10 standard deviations
    flagged = {(f["feature"], f["label"]) for f in stats["flagged"]}
    assert ("cf", 1) in flagged and ("watch this", 1) in flagged
    assert not keep[kind == "cf"].any() and not keep[kind == "watch this"].any()
    assert keep[kind == "clean"].mean() > 0.97
    assert keep[kind == "cf-other-label"].all()  # the trigger with a non-target label teaches no backdoor
    assert ("watch", 1) not in flagged and ("this", 1) not in flagged  # common words alone are not outliers


def test_zdefense_select_train_logs_and_keeps_a_clean_set():
    texts, labels, kind = _z_dataset()
    clean = kind == "clean"
    rows = datasets.Dataset.from_dict({"text": [t for t, c in zip(texts, clean) if c],
                                       "label": [y for y, c in zip(labels, clean) if c],
                                       "row_id": list(range(int(clean.sum())))})
    ctx = make_ctx()
    keep = registry.get("defense", "zdefense")().select_train(rows, ctx)
    assert keep.all() and ctx.stats["n_flagged_features"] == 0  # nothing planted, nothing removed


# --- CUBE ------------------------------------------------------------------------------------------------

def _embeddings(seed=0):
    """Clean label-0 and label-1 rows in two blobs, and a poisoned group of label-1 rows forming a
    third blob of its own (what a dirty-label poison looks like in a backdoored model)."""
    rng = np.random.default_rng(seed)
    d = 16
    c0, c1, cp = np.zeros(d), np.zeros(d), np.zeros(d)
    c0[0], c1[0], cp[1] = -6.0, 6.0, 8.0
    x = np.concatenate([rng.normal(c0, 1.0, (300, d)), rng.normal(c1, 1.0, (300, d)), rng.normal(cp, 0.7, (45, d))])
    labels = [0] * 300 + [1] * 300 + [1] * 45
    poison = np.array([False] * 600 + [True] * 45)
    return x, labels, poison


def test_cube_removes_a_separate_poisoned_cluster_within_the_target_label():
    x, labels, poison = _embeddings()
    keep, stats = cube_mask(x, labels, reducer="pca")
    assert stats["reducer_used"] == "pca" and stats["n_clusters"] >= 3
    assert not keep[poison].any()
    assert keep[~poison].mean() > 0.9
    per = {p["label"]: p for p in stats["per_label"]}
    assert per[1]["removed"] >= 45


def test_cube_label_wise_rule_and_noise():
    clusters = np.array([0, 0, 0, 1, -1, 2, 2, 1, -1, -1])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    keep, stats = label_wise_main_cluster(clusters, labels, noise="keep")
    assert keep.tolist() == [True, True, True, False, True, True, True, False, True, True]
    keep_drop, _ = label_wise_main_cluster(clusters, labels, noise="drop")
    assert keep_drop.tolist() == [True, True, True, False, False, True, True, False, False, False]
    only_noise, _ = label_wise_main_cluster(np.array([-1, -1, 0, 0]), np.array([0, 0, 1, 1]))
    assert only_noise.all()  # a label with no cluster keeps its rows


def test_cube_select_train_uses_the_plain_victim_and_records_the_reducer():
    x, labels, poison = _embeddings()
    texts = [f"row {i}" for i in range(len(labels))]
    table = dict(zip(texts, x))
    victim = FakeVictim(lambda ts: np.stack([table[t] for t in ts]))
    ctx = make_ctx()
    ctx._plain_victim = lambda: victim
    rows = datasets.Dataset.from_dict({"text": texts, "label": labels, "row_id": list(range(len(texts)))})
    keep = registry.get("defense", "cube")(build_config(CubeConfig, {"reducer": "pca"})).select_train(rows, ctx)
    assert keep.dtype == bool and not keep[poison].any() and victim.calls == 1
    assert ctx.stats["reducer_used"] == "pca"


@pytest.mark.slow  # numba compiles UMAP on first use: ~70 s on a loaded 2-core CPU
@pytest.mark.skipif(not umap_available(), reason="umap-learn is not installed (the optional [filters] extra)")
def test_cube_umap_path_removes_the_poisoned_cluster():
    x, labels, poison = _embeddings()
    keep, stats = cube_mask(x, labels, reducer="umap", seed=1)
    assert stats["reducer_used"] == "umap" and not keep[poison].any() and keep[~poison].mean() > 0.9


# --- settings -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,values,field", [
    (BkiConfig, {"top_k": 0}, "bki.top_k"),
    (BkiConfig, {"max_row_share": 1.5}, "bki.max_row_share"),
    (BkiConfig, {"min_rows": 0}, "bki.min_rows"),
    (ZDefenseConfig, {"lambda_std": 0}, "zdefense.lambda_std"),
    (ZDefenseConfig, {"max_ngram": 0}, "zdefense.max_ngram"),
    (CubeConfig, {"min_cluster_share": 0.7}, "cube.min_cluster_share"),
    (CubeConfig, {"min_samples": 0}, "cube.min_samples"),
])
def test_bad_settings_name_the_field_and_the_fix(cls, values, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build_config(cls, values)


@pytest.mark.skipif(umap_available(), reason="umap-learn is installed")
def test_cube_umap_without_umap_learn_is_refused_before_training():
    with pytest.raises(ConfigError, match=r"cube\.reducer=umap.*\[filters\]"):
        build_config(CubeConfig, {"reducer": "umap"})
    assert build_config(CubeConfig, {}).reducer == "auto"  # the default works without it


def test_the_three_filters_are_registered_with_a_description():
    for name in ("bki", "zdefense", "cube"):
        cls = registry.get("defense", name)
        assert cls.acts_in_training()  # a filter trains its own victim on the kept rows
        assert registry._first_line(cls.__doc__)


def test_cube_auto_reducer_keys_records_by_what_it_resolved_to(monkeypatch):
    """reducer=auto means UMAP on a machine with umap-learn and PCA without: the two must never share a
    record or a victim, so the resolved reducer is part of the key (PCA's key is the one made before)."""
    import defenses.cube as cube
    from bench.runner import DefenseSpec, _defense_identity

    spec = DefenseSpec(registry.get("defense", "cube"), CubeConfig())
    monkeypatch.setattr(cube, "umap_available", lambda: False)
    pca = _defense_identity(spec)
    monkeypatch.setattr(cube, "umap_available", lambda: True)
    umap = _defense_identity(spec)
    assert "resolved" not in pca and umap["resolved"] == {"reducer": "umap"}
    explicit = _defense_identity(DefenseSpec(spec.cls, build_config(CubeConfig, {"reducer": "umap"})))
    assert "resolved" not in explicit  # an explicit reducer is in the config already
