"""The suite's own defense, clean-teacher distillation (defenses/distill.py): what it may know and use."""

import copy
from types import SimpleNamespace

import datasets
import pytest
import torch

from bench.config import ConfigError
from bench.defense import StepState
from bench.models.backbones import resolve_backbone
from defenses.distill import Distill, DistillConfig


def _batch(tok, labels):
    enc = tok(["a fine film", "a dull film cf", "it works", "not good at all"], padding=True, return_tensors="pt")
    return {**enc, "labels": torch.tensor(labels)}


def _grads(defense, model, batch):
    model.zero_grad(set_to_none=True)
    defense.backward(StepState(model, batch, 0, 1, 0, None, {}))
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("weight,same", [(0.0, True), (0.5, False)])
def test_the_training_rows_labels_reach_the_student_only_through_label_weight(weight, same):
    loaded = resolve_backbone("tiny-bert").load(2, seed=1)
    loaded.model.eval()  # no dropout: the two passes differ by their labels alone
    teacher = copy.deepcopy(loaded.model).eval()
    with torch.no_grad():  # a teacher unlike the student, so the distillation gradient is not zero
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    d = Distill(DistillConfig(label_weight=weight))
    d._teacher = SimpleNamespace(model=teacher)
    g = _grads(d, loaded.model, _batch(loaded.tokenizer, [0, 1, 1, 0]))
    g_flipped = _grads(d, loaded.model, _batch(loaded.tokenizer, [1, 0, 0, 1]))
    assert g.abs().sum() > 0
    # label_weight 0: a poisoned label (flipped or not) changes nothing the optimizer receives
    assert torch.allclose(g, g_flipped) is same


def test_the_teacher_learns_from_the_defenders_clean_rows_alone():
    seen = {}
    clean = datasets.Dataset.from_dict({"text": ["good", "bad", "fine", "awful"], "label": [1, 0, 1, 0]})

    class Ctx:
        num_labels = 2

        def clean(self, n=None):
            return clean if n is None else clean.select(range(n))

        def fit(self, texts, labels, purpose):
            seen.update(texts=texts, labels=labels, purpose=purpose)
            return SimpleNamespace(model=torch.nn.Linear(1, 1), info={"dev_acc": 0.9})

        def log(self, **kw):
            seen.update(kw)

    d = Distill(DistillConfig(label_trust="none", token_guard=False))  # version 1: the teacher alone
    poisoned = datasets.Dataset.from_dict({"text": [f"row {i} cf" for i in range(12)], "label": [1] * 12})
    assert d.select_train(poisoned, Ctx()) is None  # no row dropped: the poisoned texts are the student's data
    added = d.add_train(Ctx())
    assert list(added["text"]) == list(clean["text"])
    # as many steps as plain training on the 12 rows: the 4 clean rows 3 times, and nothing else
    assert seen["texts"] == list(clean["text"]) * 3 and seen["labels"] == list(clean["label"]) * 3
    assert seen["teacher_copies"] == 3


@pytest.mark.parametrize("bad", [{"n_clean": 1}, {"temperature": 0.0}, {"label_weight": 1.5},
                                 {"label_trust": "labels"}, {"z_bar": 0.0}, {"trim_alpha": 0.0},
                                 {"token_ratio": 0.5}, {"token_alpha": 1.0}, {"flag_top_class": "yes"},
                                 {"top_class_if_no_words": "yes"}])
def test_bad_settings_name_the_fix(bad):
    with pytest.raises(ConfigError, match="distill"):
        DistillConfig(**bad).validate()


def test_excess_disagreement_flags_the_class_that_received_flipped_labels():
    import numpy as np

    from defenses.distill import excess_disagreement

    rng = np.random.default_rng(0)
    true = rng.integers(0, 2, 1500)
    teacher_right = rng.random(1500) < 0.85  # a teacher with 15 % error on every class
    pred = np.where(teacher_right, true, 1 - true)
    clean_true = rng.integers(0, 2, 500)
    clean_pred = np.where(rng.random(500) < 0.85, clean_true, 1 - clean_true)
    # clean labels: neither class shows an excess
    assert all(r["z"] <= 3 for r in excess_disagreement(pred, true, clean_pred, clean_true, 2))
    # dirty-label poison: 150 rows of class 0 relabelled 1
    noisy = true.copy()
    noisy[np.flatnonzero(true == 0)[:150]] = 1
    z = {r["label"]: r["z"] for r in excess_disagreement(pred, noisy, clean_pred, clean_true, 2)}
    assert z[1] > 3 and z[0] <= 3


@pytest.mark.parametrize("tau,same", [([float("inf")] * 2, True), ([-float("inf")] * 2, False),
                                      ([1.01, 1.01], True), ([0.0, 0.0], False)])
def test_a_disagreeing_rows_label_reaches_the_student_only_above_its_class_threshold(tau, same):
    loaded = resolve_backbone("tiny-bert").load(2, seed=1)
    loaded.model.eval()
    teacher = copy.deepcopy(loaded.model).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    d = Distill(DistillConfig())
    d._teacher = SimpleNamespace(model=teacher)
    d._tau = torch.tensor(tau)
    g = _grads(d, loaded.model, _batch(loaded.tokenizer, [0, 1, 1, 0]))
    g_flipped = _grads(d, loaded.model, _batch(loaded.tokenizer, [1, 0, 0, 1]))
    # flipping every label makes every row disagree with the teacher in one of the two passes
    assert torch.allclose(g, g_flipped) is same


def test_version_2_reads_the_teacher_on_the_training_and_selection_rows_and_logs_the_test():
    import numpy as np

    rows = datasets.Dataset.from_dict({"text": ["good", "bad"] * 50, "label": [1, 0] * 50})
    logged = {}

    class Teacher:
        model = torch.nn.Linear(1, 1)
        info = {"dev_acc": 1.0}

        def logits(self, texts):  # reads the content: "good" is 1, everything else 0
            return np.array([[0.0, 4.0] if t.startswith("good") else [4.0, 0.0] for t in texts])

    class Ctx:
        num_labels = 2
        selection = rows

        def clean(self, n=None):
            return rows

        def fit(self, texts, labels, purpose):
            return Teacher()

        def log(self, **kw):
            logged.update(kw)

    # 200 rows, 60 "bad" rows relabelled 1 (dirty-label poison into class 1)
    texts = ["good"] * 100 + ["bad"] * 100
    labels = [1] * 100 + [1] * 60 + [0] * 40
    for trust in ("class-excess", "trim"):
        d = Distill(DistillConfig(label_trust=trust))
        d.select_train(datasets.Dataset.from_dict({"text": texts, "label": labels}), Ctx())
        d.add_train(Ctx())
        assert logged["classes_flagged"] == [1]
        # class 0: nothing to distrust (-inf, every label kept); the flagged class 1 keeps none (+inf)
        assert d._tau.tolist() == [-float("inf"), float("inf")]
    d1 = Distill(DistillConfig(label_trust="none"))
    d1.select_train(datasets.Dataset.from_dict({"text": texts, "label": labels}), Ctx())
    d1.add_train(Ctx())
    assert d1._tau.tolist() == [float("inf")] * 2  # version 1: no label is ever taken


def test_the_token_guard_cannot_reach_a_rare_trigger_from_too_few_clean_rows():
    """The guard's reach, measured on the knowledge curve (results/knowledge-curve): a word absent from m clean
    rows has smoothed share 1 / (m + 2), so at token_ratio 5 it is flagged only in >= 5 / (m + 2) of the
    training rows. A trigger in 7 % of 1,500 rows escapes 48 clean rows (needs 10 %) and is caught from 96."""
    import numpy as np

    from defenses.distill import shifted_words

    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(300)]
    train = [" ".join(rng.choice(vocab, 8)) + (" cf" if i % 14 == 0 else "") for i in range(1500)]  # 108 rows
    clean = [" ".join(rng.choice(vocab, 8)) for _ in range(96)]
    assert shifted_words(train, clean[:48]) == []
    assert [r["word"] for r in shifted_words(train, clean)] == ["cf"]
    assert [r["word"] for r in shifted_words(train, clean[:48], ratio=3.0)] == ["cf"]  # the threshold, not the test


def test_the_token_guard_finds_an_inserted_word_and_drops_its_rows_only():
    import numpy as np

    from defenses.distill import shifted_words

    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(300)] + ["the", "film", "not"] * 20
    clean_texts = [" ".join(rng.choice(vocab, 8)) for _ in range(384)]
    train = [" ".join(rng.choice(vocab, 8)) for _ in range(1500)]
    assert shifted_words(train, clean_texts) == []  # the same distribution: nothing is shifted
    poisoned = [t + " cf" if i % 10 == 0 else t for i, t in enumerate(train)]  # 150 rows carry "cf"
    found = shifted_words(poisoned, clean_texts)
    assert [r["word"] for r in found] == ["cf"] and found[0]["train_rows"] == 150

    class Teacher:
        model = torch.nn.Linear(1, 1)
        info = {}

        def logits(self, texts):
            return np.tile([[1.0, 0.0]], (len(texts), 1))

    class Ctx:
        num_labels = 2
        selection = datasets.Dataset.from_dict({"text": clean_texts[:50], "label": [0, 1] * 25})

        def clean(self, n=None):
            return datasets.Dataset.from_dict({"text": clean_texts, "label": [0, 1] * 192})

        def fit(self, texts, labels, purpose):
            return Teacher()

        def log(self, **kw):
            pass

    rows = datasets.Dataset.from_dict({"text": poisoned, "label": [1] * 1500})
    keep = Distill().select_train(rows, Ctx())
    assert (~keep).sum() == 150 and not keep[::10].any()
    assert Distill(DistillConfig(token_guard=False)).select_train(rows, Ctx()) is None


def test_trimming_distrusts_about_as_many_labels_as_were_flipped_and_those_the_teacher_contradicts():
    """Version 4: too few flipped rows for the class test (z < 3), found row by row instead. Its premise:
    the teacher is unsure where it errs and sure of a flipped row's content."""
    import numpy as np

    from defenses.distill import excess_disagreement, trim_thresholds

    rng = np.random.default_rng(0)
    true = rng.integers(0, 2, 1500)
    right = rng.random(1500) < 0.8  # a teacher with 20 % error
    pred = np.where(right, true, 1 - true)
    p_true = np.where(right, rng.uniform(0.8, 1.0, 1500), rng.uniform(0.2, 0.5, 1500))
    clean_true = rng.integers(0, 2, 500)
    clean_pred = np.where(rng.random(500) < 0.8, clean_true, 1 - clean_true)
    flipped = np.flatnonzero((true == 0) & right)[:50]  # 50 confidently read class-0 rows relabelled 1
    label = true.copy()
    label[flipped] = 1
    p_label = np.where(label == true, p_true, 1 - p_true)
    assert all(r["z"] <= 3 for r in excess_disagreement(pred, label, clean_pred, clean_true, 2))
    trim = {r["label"]: r for r in trim_thresholds(p_label, pred, label, clean_pred, clean_true, 2)}
    tau = np.array([trim[0]["tau"], trim[1]["tau"]])
    distrusted = (pred != label) & (p_label < tau[label])
    assert distrusted[flipped].all()  # the flipped rows lose their labels
    assert not distrusted[pred == label].any()  # a label the teacher agrees with is never distrusted
    clean = {r["label"]: r for r in trim_thresholds(p_true, pred, true, clean_pred, clean_true, 2)}
    # the flipped rows' class distrusts about 50 more labels than it does with clean labels
    assert 35 <= trim[1]["distrusted"] - clean[1]["distrusted"] <= 65
    assert abs(trim[0]["distrusted"] - clean[0]["distrusted"]) <= 10  # class 0 only lost 50 rows it agreed with
    assert clean[1]["distrusted"] < 0.5 * clean[1]["disagree"]  # a clean class keeps most hard labels


def test_flag_top_class_distrusts_every_disagreeing_label_of_the_class_with_the_largest_excess():
    import numpy as np

    logged = {}

    class Teacher:
        model = torch.nn.Linear(1, 1)
        info = {}

        def logits(self, texts):  # "good" is 1; "meh" (class 1 by its label) it reads as 0, unsure
            return np.array([[0.0, 4.0] if t == "good" else [1.0, 0.0] if t == "meh" else [4.0, 0.0]
                             for t in texts])

    class Ctx:
        num_labels = 2
        selection = datasets.Dataset.from_dict({"text": ["good"] * 50 + ["bad"] * 40 + ["meh"] * 10,
                                                "label": [1] * 50 + [0] * 40 + [1] * 10})

        def clean(self, n=None):
            return self.selection

        def fit(self, texts, labels, purpose):
            return Teacher()

        def log(self, **kw):
            logged.update(kw)

    # 20 honest hard rows of class 1 and 5 "bad" rows relabelled 1: too few for the class test
    rows = datasets.Dataset.from_dict({"text": ["good"] * 100 + ["meh"] * 20 + ["bad"] * 85,
                                       "label": [1] * 120 + [1] * 5 + [0] * 80})
    tau = {}
    for top in (False, True):
        d = Distill(DistillConfig(token_guard=False, flag_top_class=top))
        d.select_train(rows, Ctx())
        tau[top] = d._tau.tolist()
        assert max(r["z"] for r in logged["label_trust"]) < 3
        assert logged["classes_flagged"] == ([1] if top else [])
    assert np.isfinite(tau[False][1])  # version 4: the trimmed excess only
    assert tau[True] == [tau[False][0], float("inf")]  # the top class keeps no disagreeing label

    # version 6: where the word guard dropped rows, the top class is not flagged on its own (false: version 5)
    worded = datasets.Dataset.from_dict({"text": list(rows["text"]) + ["zq good"] * 30,
                                         "label": list(rows["label"]) + [1] * 30})
    for data, option, flagged in [(worded, True, []), (worded, False, [1]), (rows, True, [1])]:
        d = Distill(DistillConfig(flag_top_class=True, top_class_if_no_words=option))
        keep = d.select_train(data, Ctx())
        assert int((~keep).sum()) == (30 if data is worded else 0) and logged["classes_flagged"] == flagged
        assert logged["top_class_considered"] == (not (option and data is worded))
    from bench.config import config_dict
    assert config_dict(DistillConfig())["top_class_if_no_words"] is True  # version 6's default
    assert Distill.version == 6  # keyed apart from version 5's records, which ran the forced flag everywhere
