"""LoRA (Hu et al., 2022) as a defense baseline: only low-rank adapters on attention train.

As in the MuScleLoRA authors' LoRA baseline, the classification head stays frozen at its initial
weights, so ``lora`` and ``mslr`` differ in the multi-scale layer alone. ``--set lora.train_head=true``
gives the head-training variant (PEFT's default for classification; this suite's ``lora`` before
version 2)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.models.adapters import add_lora
from bench.models.backbones import LoadedModel
from bench.defense import Defense, DefenseContext, TrainingSchedule
from bench.config import ConfigError
from bench.registry import register


@dataclass(frozen=True)
class LoraConfig(TrainingSchedule):  # + learning_rate, epochs (None: the profile's adapter_learning_rate)
    r: int = 8
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: the attention query and value projections
    train_head: bool = False  # True: the classification head trains too (PEFT's default for classification)

    def validate(self) -> None:
        if self.r < 1 or self.alpha <= 0:
            raise ConfigError(f"lora.r={self.r}, lora.alpha={self.alpha}: the rank must be >= 1 and alpha > 0 "
                              "(e.g. --set lora.r=8)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout}: a dropout probability is in [0, 1)")
        self.validate_schedule("lora", note="")


@register("defense", "lora")
class LoRA(Defense):
    """LoRA: r=8, alpha=32, dropout 0 on attention query/value; the rest of the backbone and the head frozen."""

    Config = LoraConfig
    parameter_efficient = True
    version = 2  # 2: the classification head is frozen by default (as the MuScleLoRA authors' baseline)

    def prepare_model(self, loaded: LoadedModel, ctx: DefenseContext):
        c = self.config
        return add_lora(loaded, c.r, c.alpha, c.dropout, c.target_modules, c.train_head)
