"""Parameter-efficient building blocks shared by defenses (LoRA via PEFT)."""

from __future__ import annotations

from typing import Any, Sequence

from .backbones import LoadedModel, attention_targets


def add_lora(
    loaded: LoadedModel, r: int, alpha: int, dropout: float,
    targets: Sequence[str] | None = None, train_head: bool = True,
) -> Any:
    """Wrap ``loaded.model`` with PEFT LoRA adapters on ``targets`` (default: attention query and
    value); every other parameter is frozen, except the classification head when ``train_head``
    (PEFT's sequence-classification task keeps a trainable copy of it)."""
    from peft import LoraConfig, TaskType, get_peft_model

    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS if train_head else None, r=r, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=list(targets or attention_targets(loaded.model_type)),
    )
    return get_peft_model(loaded.model, cfg)


HEAD_PREFIXES = ("classifier", "score")


def is_head(name: str) -> bool:
    parts = name.split(".")
    return any(p in HEAD_PREFIXES for p in parts)
