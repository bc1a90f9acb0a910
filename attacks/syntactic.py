"""SynBkd (Qi et al., ACL 2021) as OpenBackdoor and MuScleLoRA run it: a syntactic template trigger."""

from __future__ import annotations

from dataclasses import dataclass

from bench.attack import LabelRegime
from bench.data.paraphrase import ParaphraseAttack, ParaphraseConfig
from bench.registry import register


@dataclass(frozen=True)
class SyntacticConfig(ParaphraseConfig):
    transform: str = "scpn"  # SCPN paraphrase to the template S(SBAR)(,)(NP)(VP)(.)
    label_regime: LabelRegime = "mixed"
    poison_rate: float = 0.1


@register("attack", "syntactic")
class SynBkd(ParaphraseAttack):
    """SynBkd: SCPN paraphrase to the template S(SBAR)(,)(NP)(VP)(.) as the trigger; mixed label, rate 0.1."""

    Config = SyntacticConfig
    transforms = ("scpn",)
