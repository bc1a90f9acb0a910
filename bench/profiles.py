"""Named run profiles: how much data, how many epochs, which optimiser settings.

``cpu`` (the default) is sized so that ``bench run --all`` finishes on a 2-core CPU within about an
hour with meaningful numbers; ``paper`` is the MuScleLoRA paper's encoder setting and is meant for a
GPU. Any field can be overridden with ``--set profile.FIELD=VALUE``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from .config import build_config
from .registry import UnknownNameError, suggest


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    train_size: int | None  # stratified slice of the training split (None: all of it)
    epochs: int
    batch_size: int
    learning_rate: float  # full fine-tuning
    adapter_learning_rate: float  # parameter-efficient defenses (LoRA and its kin)
    max_length: int
    eval_batch_size: int = 64
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    group_by_length: bool = False  # batches of similar length (less padding, same data per epoch)
    datasets: tuple[str, ...] = ("sst2",)  # what --all runs on
    backbones: tuple[str, ...] = ("minilm",)
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on a GPU that has it
    stealth_samples: int = 200  # poisoned test sentences scored for stealthiness (0: skip)
    stealth_lm: str | None = "smollm2-135m"  # causal LM for the perplexity increase (None: skip it)
    # plugin settings this budget needs ("plugin.key=value"); --set overrides them
    plugin_settings: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 8:
            raise ValueError(f"profile {self.name}: epochs, batch_size must be >= 1 and max_length >= 8")
        if self.train_size is not None and self.train_size < 2:
            raise ValueError(f"profile {self.name}: train_size must be None or >= 2")


PROFILES = {
    "cpu": Profile(
        name="cpu",
        description="2-core CPU default: stratified 3000-row training slice, 3 epochs, lr 5e-5 (adapters 1e-3), "
        "max length 128",
        train_size=3000, epochs=3, batch_size=32, learning_rate=5e-5, adapter_learning_rate=1e-3, max_length=128,
        group_by_length=True,
        # measured on minilm (README "MuScleLoRA on MiniLM", results/tuning): with 3 epochs, alignment
        # to 96 reference samples caps clean accuracy near 77 %; 384 gives higher CACC and lower ASR.
        # ga_epoch=0: no raw-gradient phase in the first epoch (with 3 epochs the reference loss falls
        # below 0.4 within epoch 0, and those raw steps taught the backdoor: ASR 55 % against 12 %);
        # the ablations with alignment (ga, ga-lora) use the same schedule
        plugin_settings=("musclelora.reference_size=384", "musclelora.ga_epoch=0", "ga-lora.reference_size=384",
                         "ga-lora.ga_epoch=0", "ga.reference_size=384", "ga.ga_epoch=0"),
    ),
    "paper": Profile(
        name="paper",
        description="MuScleLoRA paper (encoders): full training data, 10 epochs, batch 32, lr 2e-5, max length 512; GPU",
        train_size=None, epochs=10, batch_size=32, learning_rate=2e-5, adapter_learning_rate=2e-5, max_length=512,
        datasets=("sst2", "hsol", "agnews"), stealth_samples=1000, stealth_lm="gpt2-large",
    ),
    "smoke": Profile(
        name="smoke",
        description="seconds-long plumbing check for tests: 64 training rows, 1 epoch, max length 32",
        train_size=64, epochs=1, batch_size=16, learning_rate=1e-3, adapter_learning_rate=3e-3, max_length=32,
        backbones=("tiny-bert",), stealth_samples=0,
    ),
}


def get_profile(name: str, overrides: dict[str, str] | None = None) -> Profile:
    if name not in PROFILES:
        raise UnknownNameError(f"unknown profile {name!r}.{suggest(name, list(PROFILES))} Profiles: {', '.join(PROFILES)}")
    base = dataclasses.asdict(PROFILES[name])
    base.update(overrides or {})
    return build_config(Profile, base, owner=f"profile {name}")
