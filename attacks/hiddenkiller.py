"""HiddenKiller (Qi et al., ACL 2021) in its own paper's setting: syntactic trigger, dirty label, 20 %."""

from __future__ import annotations

from dataclasses import dataclass

from bench.attack import LabelRegime
from bench.data.paraphrase import ParaphraseAttack, ParaphraseConfig
from bench.registry import register


@dataclass(frozen=True)
class HiddenKillerConfig(ParaphraseConfig):
    transform: str = "scpn"
    label_regime: LabelRegime = "dirty"  # only non-target rows are transformed and relabelled
    poison_rate: float = 0.2


@register("attack", "hiddenkiller")
class HiddenKiller(ParaphraseAttack):
    """HiddenKiller: the SCPN syntactic trigger, dirty label (non-target rows relabelled), rate 0.2."""

    Config = HiddenKillerConfig
    transforms = ("scpn",)
