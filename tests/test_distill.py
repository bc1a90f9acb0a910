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
        def clean(self, n=None):
            return clean if n is None else clean.select(range(n))

        def fit(self, texts, labels, purpose):
            seen.update(texts=texts, labels=labels, purpose=purpose)
            return SimpleNamespace(model=torch.nn.Linear(1, 1), info={"dev_acc": 0.9})

        def log(self, **kw):
            seen.update(kw)

    d = Distill()
    poisoned = datasets.Dataset.from_dict({"text": [f"row {i} cf" for i in range(12)], "label": [1] * 12})
    assert d.select_train(poisoned, Ctx()) is None  # no row dropped: the poisoned texts are the student's data
    added = d.add_train(Ctx())
    assert list(added["text"]) == list(clean["text"])
    # as many steps as plain training on the 12 rows: the 4 clean rows 3 times, and nothing else
    assert seen["texts"] == list(clean["text"]) * 3 and seen["labels"] == list(clean["label"]) * 3
    assert seen["teacher_copies"] == 3


@pytest.mark.parametrize("bad", [{"n_clean": 1}, {"temperature": 0.0}, {"label_weight": 1.5}])
def test_bad_settings_name_the_fix(bad):
    with pytest.raises(ConfigError, match="distill"):
        DistillConfig(**bad).validate()
