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

Version 2 (``label_trust="class-excess"``, the default) gives back the labels where they carry what the
teacher lacks. Version 1's measured problem was accuracy: the student barely beat its teacher, because
on the rows the teacher gets wrong it learnt the teacher's mistake. A row's own label now replaces the
teacher's target when (a) the teacher's prediction disagrees with the label and (b) the label's class
shows no excess of such disagreements. (b) is a two-proportion z-test per class: the share of training
rows labelled ``c`` that the teacher calls something else, against the teacher's error rate on clean
rows of class ``c`` (the selection rows, which every defense reads); ``z > z_bar`` marks class ``c`` as
receiving flipped labels, and its disagreeing rows keep the teacher's target. So dirty-label poison
(rows of another class relabelled to the target: a large excess in the target class) never gives its
label to the student, while clean-label poison (the target's own rows, labels correct) mostly agrees with
the teacher and gets the teacher's soft target, as in version 1. Every other row keeps version 1's
target. What it cannot see: a poisoned row that the teacher also misreads as the target class.

Version 3 (``token_guard=True``, the default) closes the hole version 2 measured: under clean-label
BadNets its ASR was 100 %, because the target-class poison rows that the teacher misreads (about a
sixth of them) had their labels trusted, and hard rows carrying a trigger are exactly what a backdoor
needs. The defender's clean rows are a sample of the same distribution as the training set, so a word
that is far more frequent in the training set than in the clean rows was put there: a word is *shifted*
when its share of training rows is at least ``token_ratio`` times its (add-one smoothed) share of clean
rows and a one-sided binomial test rejects the clean share at ``token_alpha`` (Bonferroni over the words
in >= 3 training rows). Every training row holding a shifted word is dropped before the student sees
it; the class test then runs on the rows kept. A trigger that is not a word (a syntax or a style) is not
seen by this guard, nor is a word in fewer than ``token_ratio / (m + 2)`` of the training rows for ``m``
clean rows: from 48 clean rows no BadNets trigger word at rate 0.1 with 4 triggers (6-7.5 % of the rows each)
is flagged; from 96, all four on SST-2 and three or four on HSOL are (results/knowledge-curve, -hsol).

Version 4 (``label_trust="trim"``, the default) closes the hole version 3 measured under style and
syntactic poison (ASR 48.9 and 63.6): the class test flagged the target class in 1 of 6 seeds, since
about 75 flipped rows among about 700 are too few for a per-class test at three sigma, and in the
unflagged seeds every flipped row kept its label (the one flagged seed gave ASR 24.0, near the
untriggered rate). The evidence is per row, so the decision is too: in every class ``c`` that the test
does not flag, the teacher disagrees with ``k`` of the ``n`` rows labelled ``c``; at most ``n * e_low``
of them are the teacher's own mistakes, where ``e_low`` is the one-sided ``trim_alpha`` lower
Clopper-Pearson bound of its error on the selection rows of class ``c``. The excess
``k - n * e_low`` disagreeing rows whose label the teacher finds least likely keep the teacher's target;
the rest keep their label, as in version 2. A flagged class still keeps no disagreeing label. Clean
classes lose the labels of a few hard rows (the bound's margin); a class that received flipped rows
loses about as many labels as it received, the ones the teacher contradicts most, which are where a
content-preserving trigger's flipped rows sit (their content is another class).

Version 5 (``flag_top_class=True``, the default) acts on what version 4 measured under style and
syntactic poison: the seed whose class test flagged the target class was the one near the untriggered
rate, while in the others z stayed under 3 and the trimmed labels were half honest (the teacher's
probability of the label ranks a flipped row below an honest hard row only 63-69 % of the time;
results/probes/distill-trust). A defender running a backdoor defense assumes its set is poisoned, so the
class with the largest positive excess z is flagged whatever its size: none of its disagreeing rows keeps
its label; the other classes are trimmed as in version 4. The cost where no class received flipped rows:
the hard rows of one class learn the teacher's reading instead of their labels. Chosen on a declared
tuning set (docs/tuning.md), not on a headline number.

Version 6 (``top_class_if_no_words=True``, the default; chosen on its declared tuning set,
results/tuning-distill-v6): version 5's forced flag only where the word guard dropped no row. Where it dropped
rows, the poison it found was words and the labels need carry no more of it; there version 5 flagged the
non-target class in most cells (results/distill-v5), and on the whole set that class's hard rows, given a
weak teacher's reading, cost CACC (results/whole-set-v5). Its known weakness: a decoy word trigger beside a
style switches the forced flag off.
"""

from __future__ import annotations

import re
from collections import Counter
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
    # "class-excess" (version 2): a row's label replaces the teacher's target where the teacher disagrees
    # with it and the label's class shows no excess of disagreement (z <= z_bar); "none": version 1
    # "trim" (version 4): as class-excess, and in the classes it trusts the excess of disagreements over
    # the teacher's error (its trim_alpha lower bound) keeps the teacher's target, least likely labels first
    label_trust: str = "trim"
    z_bar: float = 3.0
    trim_alpha: float = 0.05
    # version 3: drop the training rows holding a word far more frequent there than in the clean rows
    token_guard: bool = True
    token_ratio: float = 5.0
    token_alpha: float = 0.01
    # version 5: the class with the largest positive excess z is flagged even under z_bar (the
    # defender knows its set is poisoned; a class that received flipped rows shows the largest excess)
    flag_top_class: bool = True
    # version 6: the top class is flagged only when the word guard dropped no row, since the poison it
    # found was words and the labels need carry no more of it (false: version 5's rule)
    top_class_if_no_words: bool = True

    def validate(self) -> None:
        if self.n_clean is not None and self.n_clean < 2:
            raise ConfigError(f"distill.n_clean={self.n_clean}: the teacher needs >= 2 clean rows "
                              "(e.g. --set distill.n_clean=384), or leave it unset for the whole budget")
        if not self.temperature > 0:
            raise ConfigError(f"distill.temperature={self.temperature}: must be > 0 (e.g. 1.0)")
        if not 0.0 <= self.label_weight <= 1.0:
            raise ConfigError(f"distill.label_weight={self.label_weight}: a weight in [0, 1] (0: labels unused)")
        if self.label_trust not in LABEL_TRUST:
            raise ConfigError(f"distill.label_trust={self.label_trust!r}: one of {', '.join(LABEL_TRUST)} "
                              "(e.g. --set distill.label_trust=none for version 1)")
        if not self.z_bar > 0:
            raise ConfigError(f"distill.z_bar={self.z_bar}: a z-score bar > 0 (e.g. 3.0)")
        if not isinstance(self.flag_top_class, bool):
            raise ConfigError(f"distill.flag_top_class={self.flag_top_class!r}: true or false "
                              "(e.g. --set distill.flag_top_class=true)")
        if not isinstance(self.top_class_if_no_words, bool):
            raise ConfigError(f"distill.top_class_if_no_words={self.top_class_if_no_words!r}: true or false "
                              "(e.g. --set distill.top_class_if_no_words=true)")
        if not 0 < self.trim_alpha < 1:
            raise ConfigError(f"distill.trim_alpha={self.trim_alpha}: a test level in (0, 1) (e.g. 0.05)")
        if not self.token_ratio >= 1:
            raise ConfigError(f"distill.token_ratio={self.token_ratio}: a frequency ratio >= 1 (e.g. 5.0)")
        if not 0 < self.token_alpha < 1:
            raise ConfigError(f"distill.token_alpha={self.token_alpha}: a test level in (0, 1) (e.g. 0.01)")


LABEL_TRUST = ("trim", "class-excess", "none")


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def shifted_words(train_texts: list[str], clean_texts: list[str], ratio: float = 5.0,
                  alpha: float = 0.01, min_rows: int = 3) -> list[dict]:
    """The words whose share of training rows is >= ``ratio`` times their add-one smoothed share of
    clean rows, with a one-sided binomial p-value under the clean share below ``alpha`` / (words
    tested), the most shifted first."""
    from scipy.stats import binom

    n, m = len(train_texts), len(clean_texts)
    df_train = Counter(w for t in train_texts for w in _words(t))
    df_clean = Counter(w for t in clean_texts for w in _words(t))
    tested = {w: x for w, x in df_train.items() if x >= min_rows}
    bar = alpha / max(1, len(tested))
    out = []
    for w, x in tested.items():
        p0 = (df_clean[w] + 1) / (m + 2)
        share = x / max(n, 1)
        if share >= ratio * p0:
            pval = float(binom.sf(x - 1, n, p0))
            if pval < bar:
                out.append({"word": w, "train_rows": x, "clean_rows": df_clean[w], "ratio": round(share / p0, 2),
                            "p": pval})
    return sorted(out, key=lambda r: -r["ratio"])


def excess_disagreement(train_pred: np.ndarray, train_label: np.ndarray, clean_pred: np.ndarray,
                        clean_label: np.ndarray, num_labels: int) -> list[dict]:
    """Per class ``c``: the share of training rows labelled ``c`` that the teacher predicts otherwise,
    the same share on clean rows of class ``c``, and the pooled two-proportion z-score of the excess
    (positive: more disagreement in the training set than the teacher's own error explains)."""
    out = []
    for c in range(num_labels):
        n, m = int((train_label == c).sum()), int((clean_label == c).sum())
        k_train = int(((train_pred != c) & (train_label == c)).sum())
        k_clean = int(((clean_pred != c) & (clean_label == c)).sum())
        d, e = k_train / max(n, 1), k_clean / max(m, 1)
        pooled = (k_train + k_clean) / max(n + m, 1)
        se = float(np.sqrt(pooled * (1 - pooled) * (1 / max(n, 1) + 1 / max(m, 1))))
        z = (d - e) / se if se > 0 else (float("inf") if d > e else 0.0)
        out.append({"label": c, "n_train": n, "n_clean": m, "disagree_train": round(d, 4),
                    "disagree_clean": round(e, 4), "z": round(z, 3) if np.isfinite(z) else z})
    return out


def trim_thresholds(train_p_label: np.ndarray, train_pred: np.ndarray, train_label: np.ndarray,
                    clean_pred: np.ndarray, clean_label: np.ndarray, num_labels: int,
                    alpha: float = 0.05) -> list[dict]:
    """Per class ``c``: the teacher's probability of the label (``tau``) below which a disagreeing
    training row labelled ``c`` keeps the teacher's target. The teacher disagrees with ``k`` of the
    ``n`` rows labelled ``c``; its own mistakes account for at most ``n * e_low`` of them (``e_low``:
    the one-sided ``alpha`` lower Clopper-Pearson bound of its error on clean rows of ``c``); the
    ``excess = k - ceil(n * e_low)`` disagreeing rows with the lowest ``train_p_label`` are distrusted.
    ``tau`` is -inf where nothing is in excess and +inf where every disagreeing row is."""
    from scipy.stats import beta

    out = []
    for c in range(num_labels):
        in_c = train_label == c
        n, m = int(in_c.sum()), int((clean_label == c).sum())
        k_clean = int(((clean_pred != c) & (clean_label == c)).sum())
        e_low = float(beta.ppf(alpha, k_clean, m - k_clean + 1)) if k_clean > 0 else 0.0
        p = np.sort(train_p_label[in_c & (train_pred != c)])
        excess = max(0, len(p) - int(np.ceil(n * e_low)))
        tau = -np.inf if excess == 0 else (np.inf if excess >= len(p) else float(p[excess]))
        out.append({"label": c, "n_train": n, "disagree": len(p), "error_low": round(e_low, 4),
                    "distrusted": excess, "tau": tau})
    return out


@register("defense", "distill")
class Distill(Defense):
    """Clean-teacher distillation: a teacher fine-tuned on the clean rows gives every training row its
    target, a label only where the teacher and class test trust it; rows with shifted words dropped."""

    Config = DistillConfig
    version = 6  # defaults changed (v2: label_trust="class-excess"; v3: token_guard; v4: "trim"; v5: flag_top_class; v6: top_class_if_no_words): old records keyed apart

    def select_train(self, rows: datasets.Dataset, ctx: DefenseContext) -> np.ndarray | None:
        """The teacher is trained here (the training set's size sets its step count); with
        ``token_guard`` the rows holding a shifted word are dropped, and the class test reads the rest."""
        c = self.config
        clean = ctx.clean(c.n_clean)  # a fresh instance per cell: nothing here reaches another cell
        copies = max(1, round(len(rows) / max(1, len(clean))))
        self._clean_rows = clean
        self._teacher = ctx.fit(list(clean["text"]) * copies, list(clean["label"]) * copies,
                                purpose="distill-teacher")
        self._teacher.model.eval()
        ctx.log(clean_rows_trained_on=len(clean), teacher_copies=copies,
                teacher_dev_acc=self._teacher.info.get("dev_acc"))
        keep = None
        if c.token_guard:
            texts = list(rows["text"])
            shifted = shifted_words(texts, list(clean["text"]), c.token_ratio, c.token_alpha)
            bad = {r["word"] for r in shifted}
            keep = np.array([not (_words(t) & bad) for t in texts], dtype=bool)
            ctx.log(shifted_words=shifted[:20], n_shifted_words=len(shifted), rows_dropped=int((~keep).sum()))
        # tau[c]: a disagreeing row labelled c keeps its label where the teacher gives it >= tau[c]
        self._tau = torch.full((ctx.num_labels,), float("inf"))
        if c.label_trust != "none":
            words_found = keep is not None and not keep.all()
            flag_top = c.flag_top_class and not (c.top_class_if_no_words and words_found)
            self._tau = self._label_thresholds(rows if keep is None else rows.select(np.flatnonzero(keep)), ctx,
                                               flag_top)
        return keep

    def add_train(self, ctx: DefenseContext) -> datasets.Dataset:
        """The clean rows the teacher learnt from join the student's data."""
        return self._clean_rows

    def _label_thresholds(self, train: datasets.Dataset, ctx: DefenseContext, flag_top: bool) -> torch.Tensor:
        """Per class, the teacher probability of the label from which a disagreeing row keeps its label:
        -inf in a trusted class (version 2), +inf in a flagged one, the trimmed excess's bound (v4)."""
        sel = ctx.selection
        train_label = np.asarray(train["label"])
        logits = torch.as_tensor(np.asarray(self._teacher.logits(list(train["text"]))), dtype=torch.float32)
        train_pred = logits.argmax(-1).numpy()
        clean_label = np.asarray(sel["label"])
        clean_pred = np.asarray(self._teacher.logits(list(sel["text"]))).argmax(-1)
        per_class = excess_disagreement(train_pred, train_label, clean_pred, clean_label, ctx.num_labels)
        flagged = [r["label"] for r in per_class if r["z"] > self.config.z_bar]
        top = max(per_class, key=lambda r: r["z"])
        if flag_top and top["z"] > 0 and top["label"] not in flagged:
            flagged.append(top["label"])
        tau = [float("inf") if cl in flagged else -float("inf") for cl in range(ctx.num_labels)]
        log = {"label_trust": per_class, "classes_flagged": flagged, "top_class_considered": flag_top}
        if self.config.label_trust == "trim":
            p_label = logits.softmax(-1)[torch.arange(len(train_label)), torch.as_tensor(train_label)].numpy()
            trim = trim_thresholds(p_label, train_pred, train_label, clean_pred, clean_label, ctx.num_labels,
                                   self.config.trim_alpha)
            tau = [t if cl in flagged else r["tau"] for cl, (t, r) in enumerate(zip(tau, trim))]
            log["label_trim"] = trim
            log["labels_distrusted"] = int(sum(r["disagree"] if r["label"] in flagged else r["distrusted"]
                                               for r in trim))
        ctx.log(**log)
        return torch.tensor(tau, dtype=torch.float32)

    def backward(self, state: StepState) -> float:
        batch = state.batch
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        c = self.config
        teacher = self._teacher.model
        with torch.no_grad():
            t = teacher(**inputs).logits.float()
        s = state.model(**inputs).logits.float()
        y = batch["labels"]
        temp = c.temperature
        kl = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                      reduction="none").sum(-1) * temp * temp
        ce = F.cross_entropy(s, y, reduction="none")
        per_row = (1.0 - c.label_weight) * kl + c.label_weight * ce
        agree = t.argmax(-1) == y
        # the label replaces the teacher where they disagree and the teacher gives the label at least
        # tau[label] (v2: -inf in a trusted class, +inf in a flagged one; v4: the trimmed excess's bound)
        tau = getattr(self, "_tau", torch.full((s.shape[-1],), float("inf"))).to(y.device)
        p_label = t.softmax(-1).gather(-1, y[:, None])[:, 0]
        on_label = ~agree & (p_label >= tau[y])
        loss = torch.where(on_label, ce, per_row).mean()
        loss.backward()
        stats = state.memory.setdefault("stats", {})
        for name, value in (("teacher_label_agreement", agree.float().mean().item()),
                            ("rows_on_label", on_label.float().mean().item())):
            stats[name] = round((stats.get(name, value) * state.step + value) / (state.step + 1), 4)
        return float(loss.detach())
