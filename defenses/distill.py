"""Clean-teacher distillation (``distill``): the suite's own defense (issue 25), version 1.

The defender has what MuScleLoRA has: the poisoned training set without flags and the same clean rows
(the first ``n_clean`` of the defender's budget). No attack, trigger or target label is known.

1. A *teacher* is fine-tuned on the clean rows alone, for as many optimizer steps as plain fine-tuning on
   the training set takes (the clean rows repeated, like ``clean-only``): it cannot have learnt a backdoor.
2. The *student* (the model that is evaluated) is fine-tuned on the poisoned training set plus the clean
   rows, but its target for every row is the teacher's softened prediction on that row's text, mixed
   with the row's own label at weight ``label_weight`` (0: the labels are not used at all):

       loss = (1 - label_weight) * T^2 * KL(softmax(t / T) || softmax(s / T)) + label_weight * CE(s, y)

Why it should keep the accuracy and not the backdoor: the student sees 20x more texts than the teacher
(the poisoned set's inputs), which is where self-training gains accuracy over the teacher; its targets
on a triggered text are what the teacher reads from the content, so a trigger predicts nothing beyond
the content and gives no loss to reduce. Dirty-label poison (content of another class) gets the
content's class as its target; clean-label poison (content of the target class) gets the teacher's
confidence, not a one-hot push that a shortcut would serve. What it cannot do: beat a teacher whose
clean rows are too few to read the task (its accuracy is bounded by what the teacher gets right), and
it trusts the teacher on every text (an adaptive attacker who fools the teacher fools the student).
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from bench.config import ConfigError
from bench.defense import Defense, DefenseContext, StepState
from bench.registry import register


@dataclass(frozen=True)
class DistillConfig:
    n_clean: int | None = None  # None: the whole defender's budget (384 rows under the cpu profile)
    temperature: float = 1.0
    label_weight: float = 0.0  # weight of the rows' own labels (cross-entropy) against the teacher's targets

    def validate(self) -> None:
        if self.n_clean is not None and self.n_clean < 2:
            raise ConfigError(f"distill.n_clean={self.n_clean}: the teacher needs >= 2 clean rows "
                              "(e.g. --set distill.n_clean=384), or leave it unset for the whole budget")
        if not self.temperature > 0:
            raise ConfigError(f"distill.temperature={self.temperature}: must be > 0 (e.g. 1.0)")
        if not 0.0 <= self.label_weight <= 1.0:
            raise ConfigError(f"distill.label_weight={self.label_weight}: a weight in [0, 1] (0: labels unused)")


@register("defense", "distill")
class Distill(Defense):
    """Clean-teacher distillation: a teacher fine-tuned on the clean rows alone gives every training row
    its target; the student learns from the poisoned set's texts, not from its labels."""

    Config = DistillConfig

    def select_train(self, rows: datasets.Dataset, ctx: DefenseContext) -> np.ndarray | None:
        self._n_train = len(rows)  # a fresh instance per cell: this never reaches another cell
        return None

    def add_train(self, ctx: DefenseContext) -> datasets.Dataset:
        """The clean rows join the student's data; the teacher is trained on them here (after
        ``select_train``, so the training set's size is known)."""
        rows = ctx.clean(self.config.n_clean)
        copies = max(1, round(getattr(self, "_n_train", len(rows)) / max(1, len(rows))))
        texts, labels = list(rows["text"]) * copies, list(rows["label"]) * copies
        self._teacher = ctx.fit(texts, labels, purpose="distill-teacher")
        self._teacher.model.eval()
        ctx.log(clean_rows_trained_on=len(rows), teacher_copies=copies,
                teacher_dev_acc=self._teacher.info.get("dev_acc"))
        return rows

    def backward(self, state: StepState) -> float:
        batch = state.batch
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        c = self.config
        teacher = self._teacher.model
        with torch.no_grad():
            t = teacher(**inputs).logits.float()
        s = state.model(**inputs).logits.float()
        temp = c.temperature
        kl = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                      reduction="batchmean") * temp * temp
        loss = (1.0 - c.label_weight) * kl
        if c.label_weight > 0:
            loss = loss + c.label_weight * F.cross_entropy(s, batch["labels"])
        loss.backward()
        stats = state.memory.setdefault("stats", {})
        with torch.no_grad():
            agree = (t.argmax(-1) == batch["labels"]).float().mean().item()
        stats["teacher_label_agreement"] = round(
            (stats.get("teacher_label_agreement", agree) * state.step + agree) / (state.step + 1), 4)
        return float(loss.detach())
