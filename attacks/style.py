"""StyleBkd (Qi et al., EMNLP 2021): the trigger is a text style (Bible style by default)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.attack import LabelRegime
from bench.data.paraphrase import ParaphraseAttack, ParaphraseConfig
from bench.registry import register

STYLES = ("bible", "shakespeare", "lyrics", "poetry", "tweets")


@dataclass(frozen=True)
class StyleConfig(ParaphraseConfig):
    # bible, shakespeare, lyrics, poetry, tweets (the paper's), or the name of any table
    # <dataset>/paraphrases/<name>.csv (e.g. formal for formal.csv)
    transform: str = "bible"
    label_regime: LabelRegime = "mixed"
    poison_rate: float = 0.1


@register("attack", "style")
class StyleBkd(ParaphraseAttack):
    """StyleBkd: STRAP style transfer (Bible by default) as the trigger; mixed label, rate 0.1."""

    Config = StyleConfig
    transforms = STYLES
    any_table = True  # --set style.transform=formal when <dataset>/paraphrases/formal.csv exists
