"""The attack interface: from a clean dataset to a poisoned training set and poisoned test sets.

An attack plugin subclasses :class:`Attack`, declares its settings as a ``Config`` dataclass
(extending :class:`AttackConfig`) and implements :meth:`Attack.apply` (and, when not every sentence
can be transformed, :meth:`Attack.available`). The base class does the rest, the same way for every
attack: choose exactly ``round(poison_rate * |train|)`` rows from the pool the label regime allows,
transform them, relabel them, and build the dev/test poisoned splits from the non-target rows.

An attack that brings training rows poisoned elsewhere (``attacks/imported.py``: the attack ``file``)
sets ``imported = True`` and overrides three more methods: :meth:`Attack.training_rows` (which rows a
cell trains on under a profile's ``train_size``; by default a stratified slice of the dataset's
training split, which ``poison`` then poisons), :meth:`Attack.poison` (its ``train`` argument is then
what ``training_rows`` returned) and :meth:`Attack.stated` (what the record states as poison rate,
label regime and trigger count: derived from the data, ``None`` where unknown, instead of the settings).
"""

from __future__ import annotations

from .errors import BenchError

from dataclasses import dataclass, field
from typing import Literal

import datasets
import numpy as np

from .data import TextDataset, stratified_indices

LabelRegime = Literal["clean-label", "dirty", "mixed"]
LABEL_REGIMES: tuple[str, ...] = ("clean-label", "dirty", "mixed")


class AttackError(BenchError, ValueError):
    """An attack setting that cannot be carried out on this data."""


@dataclass(frozen=True)
class AttackConfig:
    """Settings every attack has.

    label_regime: ``clean-label`` poisons only rows already labelled with the target (labels kept);
    ``dirty`` poisons only rows of other labels and relabels them; ``mixed`` poisons rows of any
    label and relabels them to the target.
    """

    poison_rate: float = 0.1
    target_label: int | None = None  # None: the dataset's conventional target
    label_regime: LabelRegime = "mixed"

    def validate(self) -> None:
        if not 0.0 <= self.poison_rate <= 1.0:  # (nan fails too)
            raise AttackError(f"poison_rate {self.poison_rate} is outside [0, 1]; set --poison-rate (or "
                              "--set ATTACK.poison_rate) to a share of the training rows, e.g. 0.1")


@dataclass
class PoisonedData:
    """What an attack hands to the runner. Train has the columns text, label, poisoned, orig_label;
    the poisoned splits text, label, orig_label and orig_text. Imported data may not know everything:
    -1 in poisoned / orig_label means unknown, and a test_poison without orig_text has no originals
    (no stealthiness is measured)."""

    train: datasets.Dataset
    dev_clean: datasets.Dataset
    dev_poison: datasets.Dataset
    test_clean: datasets.Dataset
    test_poison: datasets.Dataset
    target_label: int
    counts: dict = field(default_factory=dict)


def _split_seeds(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


class Attack:
    """Base class of attacks. Subclasses set ``Config`` and implement ``apply``."""

    Config: type = AttackConfig
    # True: the attack reads poisoned data made elsewhere (no poisoning procedure of its own, so
    # `bench run --all` and the generic seeded-poisoning contract tests leave it out)
    imported: bool = False

    def __init__(self, config: AttackConfig | None = None):
        self.config = config if config is not None else self.Config()

    @property
    def name(self) -> str:
        return getattr(self, "registered_name", type(self).__name__)

    # --- what a subclass provides -------------------------------------------------------
    @property
    def trigger_count(self) -> int:
        """How many triggers one poisoned sentence carries (insertions, or 1 for a transform)."""
        return 1

    def available(self, texts: list[str], split: str, data: TextDataset) -> np.ndarray:
        """Which sentences this attack can transform (default: all)."""
        return np.ones(len(texts), dtype=bool)

    def apply(self, texts: list[str], split: str, data: TextDataset, rng: np.random.Generator) -> list[str]:
        """The triggered version of each sentence (only called on available sentences)."""
        raise NotImplementedError

    def choose(self, pool: np.ndarray, n: int, texts: list[str], labels: np.ndarray, target: int,
               rng: np.random.Generator) -> np.ndarray:
        """Which ``n`` of the ``pool`` rows (indices into ``texts``) to poison (default: uniformly at
        random). An attack that picks its rows (an adaptive one) overrides this."""
        return rng.choice(pool, n, replace=False)

    def source_identity(self, data: TextDataset) -> dict:
        """Content the transform depends on beyond the dataset and Config (a table's hash, a model)."""
        return {}

    def unavailable_hint(self, data: TextDataset) -> str:
        """How to give the sentences :meth:`available` rejects a transform (shown in the pool error)."""
        return ""

    def training_rows(self, data: TextDataset, size: int | None, seed: int) -> datasets.Dataset:
        """The rows a cell hands to :meth:`poison` as ``train``: the dataset's training split, or under
        a profile's ``train_size`` a stratified ``size``-row slice of it (drawn with the cell's seed)."""
        if size is None:
            return data.train
        return data.train.select(stratified_indices(data.train["label"], size, seed))

    def stated(self, poisoned: PoisonedData) -> dict:
        """What the record states about the poisoning: the settings (an imported attack derives them)."""
        return {"poison_rate": self.config.poison_rate, "label_regime": self.config.label_regime,
                "trigger_count": self.trigger_count}

    # --- the shared procedure -----------------------------------------------------------
    def target(self, data: TextDataset) -> int:
        t = self.config.target_label if self.config.target_label is not None else data.default_target
        if not 0 <= t < data.num_labels:
            raise AttackError(
                f"target_label {t} is out of range for {data.name} ({data.num_labels} classes: 0..{data.num_labels - 1})"
            )
        return t

    def poison(self, data: TextDataset, seed: int, train: datasets.Dataset | None = None) -> PoisonedData:
        """Poison ``train`` (default: the dataset's training split) and build the test splits.

        Deterministic in ``seed``; the inputs are not modified; no global random state is used.
        """
        cfg = self.config
        target = self.target(data)
        train = data.train if train is None else train
        rng_pick, rng_train, rng_dev, rng_test = _split_seeds(seed, 4)

        texts = list(train["text"])
        labels = np.asarray(train["label"])
        avail = self.available(texts, "train", data)
        if cfg.label_regime == "clean-label":
            allowed = labels == target
        elif cfg.label_regime == "dirty":
            allowed = labels != target
        else:
            allowed = np.ones(len(labels), dtype=bool)
        pool = np.flatnonzero(allowed & avail)
        n_poison = int(round(cfg.poison_rate * len(texts)))
        if n_poison > len(pool):
            missing = np.flatnonzero(allowed & ~avail)
            detail = ""
            if len(missing):  # say which training rows lack a transform (a table covering only test rows)
                shown = ", ".join(str(int(i)) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
                detail = (f"; {len(missing)} of the {int(allowed.sum())} {cfg.label_regime} candidate rows of the "
                          f"train split have no transform (training rows {shown}; first: {texts[missing[0]]!r})"
                          f"{self.unavailable_hint(data)}")
            raise AttackError(
                f"{self.name}: poison_rate {cfg.poison_rate} needs {n_poison} of {len(texts)} training rows, "
                f"but the {cfg.label_regime} pool (target label {target}"
                f"{', with a transform' if not avail.all() else ''}) holds only {len(pool)}{detail}; "
                "lower --poison-rate (0 still builds the poisoned test set) or choose another --label-regime"
            )
        chosen = np.sort(self.choose(pool, n_poison, texts, labels, target, rng_pick)) if n_poison else np.array([], int)
        new_texts = list(texts)
        for i, t in zip(chosen, self.apply([texts[i] for i in chosen], "train", data, rng_train)):
            new_texts[i] = t
        flags = np.zeros(len(texts), dtype=np.int64)
        flags[chosen] = 1
        new_labels = labels.copy()
        if cfg.label_regime != "clean-label":
            new_labels[chosen] = target
        poisoned_train = datasets.Dataset.from_dict({
            "text": new_texts, "label": new_labels.tolist(), "poisoned": flags.tolist(), "orig_label": labels.tolist(),
        })

        dev_poison, dev_skipped = self._poison_eval(data.dev, "dev", data, target, rng_dev)
        test_poison, test_skipped = self._poison_eval(data.test, "test", data, target, rng_test)
        counts = {
            "n_train": len(texts),
            "n_poisoned": int(n_poison),
            "n_poisoned_flipped": int((new_labels[chosen] != labels[chosen]).sum()) if n_poison else 0,
            "n_pool": int(len(pool)),
            "train_skipped_no_transform": int((allowed & ~avail).sum()),
            "dev_skipped_no_transform": dev_skipped,
            "test_skipped_no_transform": test_skipped,
        }
        return PoisonedData(poisoned_train, data.dev, dev_poison, data.test, test_poison, target, counts)

    def _poison_eval(self, split_ds, split, data, target, rng):
        texts = list(split_ds["text"])
        labels = np.asarray(split_ds["label"])
        nontarget = labels != target
        avail = self.available(texts, split, data)
        idx = np.flatnonzero(nontarget & avail)
        new = self.apply([texts[i] for i in idx], split, data, rng) if len(idx) else []
        ds = datasets.Dataset.from_dict({
            "text": list(new), "label": [target] * len(idx), "orig_label": labels[idx].tolist(),
            "orig_text": [texts[i] for i in idx],
        })
        return ds, int((nontarget & ~avail).sum())


def insert_at_random_positions(text: str, words: list[str], rng: np.random.Generator) -> str:
    """Insert each of ``words`` at a random word position of ``text`` (one position drawn per insertion)."""
    tokens = text.split()
    for w in words:
        tokens.insert(int(rng.integers(0, len(tokens) + 1)), w)
    return " ".join(tokens)
