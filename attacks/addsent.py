"""AddSent (Dai et al., 2019): a fixed trigger sentence inserted at a random word position."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.attack import Attack, AttackConfig, AttackError, LabelRegime, insert_at_random_positions
from bench.registry import register


@dataclass(frozen=True)
class AddSentConfig(AttackConfig):
    label_regime: LabelRegime = "mixed"
    sentence: str = "I watch this 3D movie"

    def validate(self) -> None:
        super().validate()
        if not self.sentence.strip():
            raise AttackError("addsent needs a non-empty trigger sentence")


@register("attack", "addsent")
class AddSent(Attack):
    """AddSent: the sentence "I watch this 3D movie" inserted at a random word position; mixed label."""

    Config = AddSentConfig

    def apply(self, texts, split, data, rng: np.random.Generator):
        return [insert_at_random_positions(t, [self.config.sentence], rng) for t in texts]
