"""BadNets for text (Kurita et al. / Gu et al.): rare-word triggers inserted at random positions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.attack import Attack, AttackConfig, AttackError, LabelRegime, insert_at_random_positions
from bench.registry import register


@dataclass(frozen=True)
class BadNetsConfig(AttackConfig):
    label_regime: LabelRegime = "clean-label"  # the MuScleLoRA setting
    triggers: tuple[str, ...] = ("cf", "mn", "bb", "tq")
    num_triggers: int = 4  # insertions per sentence, each a random trigger word at a random position

    def validate(self) -> None:
        super().validate()
        if not self.triggers or self.num_triggers < 1:
            raise AttackError("badnets needs at least one trigger word and num_triggers >= 1")


@register("attack", "badnets")
class BadNets(Attack):
    """BadNets: 4 rare-word triggers (cf, mn, bb, tq) at random word positions; clean-label by default."""

    Config = BadNetsConfig

    @property
    def trigger_count(self) -> int:
        return self.config.num_triggers

    def apply(self, texts, split, data, rng: np.random.Generator):
        triggers = list(self.config.triggers)
        out = []
        for t in texts:
            words = [triggers[int(rng.integers(len(triggers)))] for _ in range(self.config.num_triggers)]
            out.append(insert_at_random_positions(t, words, rng))
        return out
