"""LoRA (Hu et al., 2022) as a defense baseline: only low-rank adapters on attention train."""

from __future__ import annotations

from dataclasses import dataclass

from bench.adapters import add_lora
from bench.backbones import LoadedModel
from bench.defense import Defense, DefenseContext
from bench.registry import register


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: the attention query and value projections
    train_head: bool = True  # the classification head trains too (PEFT's default for classification)
    learning_rate: float | None = None  # None: the profile's adapter_learning_rate
    epochs: int | None = None


@register("defense", "lora")
class LoRA(Defense):
    """LoRA: r=8, alpha=32, dropout 0 on attention query/value; the rest of the backbone frozen."""

    Config = LoraConfig
    parameter_efficient = True

    def prepare_model(self, loaded: LoadedModel, ctx: DefenseContext):
        c = self.config
        return add_lora(loaded, c.r, c.alpha, c.dropout, c.target_modules, c.train_head)
