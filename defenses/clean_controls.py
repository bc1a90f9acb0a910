"""Clean-data controls: what the defender's clean rows are worth without any defense method.

MuScleLoRA, ``ga`` and ``ga-lora`` train with a few hundred clean reference rows that the plain
victim never sees. Part of what they gain may come from those rows alone, not from the method. Two
controls, registered like defenses, measure that share with the same rows (the first ``n`` of the
defender's clean rows, the same rows every clean-row defense of a dataset x seed gets):

* ``clean-only``: train on the clean rows alone (every poisoned-set row dropped). It cannot learn a
  backdoor; its CACC is what the clean rows buy by themselves. It trains for as many optimizer steps
  as plain fine-tuning on the poisoned set would (version 2): each epoch holds the clean rows repeated
  ``round(n_train / n_clean)`` times. Version 1 took the profile's epochs over the clean rows alone, 36
  steps for 384 rows under the cpu profile, and stayed near chance on clean dev (SST-2 main job: best epoch 57.4 %),
  which measured the schedule, not what the rows are worth. ``--set clean-only.match_steps=false``
  gives the old schedule. Its model depends on the poisoned set's length only, so one trained victim
  serves every attack on a dataset x seed (``reads_training_rows = False``).
* ``none+clean``: plain full fine-tuning on the poisoned training set plus the clean rows.

A defense that uses clean rows should beat both to claim the method works. The leaderboard puts
them beside the defenses that used clean rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np

from bench.config import ConfigError
from bench.defense import Defense, DefenseContext
from bench.registry import register


@dataclass(frozen=True)
class CleanRowsConfig:
    # None: the whole defender's budget (profile.clean_size: 384 rows under the cpu profile, the same
    # number musclelora/ga/ga-lora take as their reference set there)
    n_clean: int | None = None

    def validate(self) -> None:
        if self.n_clean is not None and self.n_clean < 1:
            raise ConfigError(f"n_clean={self.n_clean}: give >= 1 clean rows (e.g. --set clean-only.n_clean=384), "
                              "or leave it unset for the whole defender's budget")


@dataclass(frozen=True)
class CleanOnlyConfig(CleanRowsConfig):
    # repeat the clean rows so an epoch has as many steps as one over the poisoned set (its own class, so
    # none+clean's config, and the keys of its records, stay as they were)
    match_steps: bool = True


class _CleanRows(Defense):
    Config = CleanRowsConfig

    def add_train(self, ctx: DefenseContext) -> datasets.Dataset:
        rows = ctx.clean(self.config.n_clean)
        ctx.log(clean_rows_trained_on=len(rows))
        return rows


def repeats_to_match(n_train: int, n_clean: int) -> int:
    """How many copies of ``n_clean`` rows make an epoch about as long as one over ``n_train`` rows."""
    return max(1, round(n_train / max(1, n_clean)))


@register("defense", "clean-only")
class CleanOnly(_CleanRows):
    """Clean-data control: full fine-tuning on the defender's clean rows alone (no poisoned row), for as
    many steps as plain fine-tuning on the poisoned set."""

    Config = CleanOnlyConfig
    version = 2  # 2: match_steps (the clean rows repeated to the training set's length per epoch)
    reads_training_rows = False  # every attack on a dataset x seed trains the same model: one victim serves them

    def select_train(self, rows: datasets.Dataset, ctx: DefenseContext) -> np.ndarray:
        self._n_train = len(rows)  # a fresh instance per cell: this never reaches another cell
        return np.zeros(len(rows), dtype=bool)

    def add_train(self, ctx: DefenseContext) -> datasets.Dataset:
        rows = super().add_train(ctx)
        copies = repeats_to_match(getattr(self, "_n_train", len(rows)), len(rows)) if self.config.match_steps else 1
        ctx.log(clean_row_copies=copies)
        return datasets.concatenate_datasets([rows] * copies) if copies > 1 else rows


@register("defense", "none+clean")
class NonePlusClean(_CleanRows):
    """Clean-data control: full fine-tuning on the poisoned training set plus the defender's clean rows."""
