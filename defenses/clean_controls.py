"""Clean-data controls: what the defender's clean rows are worth without any defense method.

MuScleLoRA, ``ga`` and ``ga-lora`` train with a few hundred clean reference rows that the plain
victim never sees. Part of what they gain may come from those rows alone, not from the method. Two
controls, registered like defenses, measure that share with the same rows (the first ``n`` of the
defender's clean rows, the same rows every clean-row defense of a dataset x seed gets):

* ``clean-only``: train on the clean rows alone (every poisoned-set row dropped). It cannot learn a
  backdoor; its CACC is what the clean rows buy by themselves.
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


class _CleanRows(Defense):
    Config = CleanRowsConfig

    def add_train(self, ctx: DefenseContext) -> datasets.Dataset:
        rows = ctx.clean(self.config.n_clean)
        ctx.log(clean_rows_trained_on=len(rows))
        return rows


@register("defense", "clean-only")
class CleanOnly(_CleanRows):
    """Clean-data control: full fine-tuning on the defender's clean rows alone (no poisoned row)."""

    def select_train(self, rows: datasets.Dataset, ctx: DefenseContext) -> np.ndarray:
        return np.zeros(len(rows), dtype=bool)


@register("defense", "none+clean")
class NonePlusClean(_CleanRows):
    """Clean-data control: full fine-tuning on the poisoned training set plus the defender's clean rows."""
