"""Named run profiles: how much data, how many epochs, which optimiser settings.

``cpu`` (the default) is sized so that ``bench run --all`` finishes on a 2-core CPU within about an
hour with meaningful numbers; ``paper`` is the MuScleLoRA paper's encoder setting and is meant for a
GPU. Any field can be overridden with ``--set profile.FIELD=VALUE``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError, build_config
from ..registry import UnknownNameError, suggest


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
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = fp32 everywhere (docs/cost.md: bf16's 3-seed check); bf16: opt in
    stealth_samples: int = 200  # poisoned test sentences scored for stealthiness (0: skip)
    stealth_lm: str | None = "smollm2-135m"  # causal LM for the perplexity increase (None: skip it)
    scorer_lm: str = "smollm2-135m"  # the causal LM that defenses score sentences with (ONION)
    # dev is split once per dataset x seed, the same way for every defense: `clean_size` rows are the
    # defender's clean rows (reference rows, calibration rows), the rest select the model
    clean_size: int = 384
    min_selection: int = 100  # refuse a dev split that leaves fewer selection rows than this
    test_size: int | None = None  # None: the full clean test set; else a fixed stratified slice (declared)

    def validate(self) -> None:
        rules = [
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("max_length", self.max_length >= 8, ">= 8"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("adapter_learning_rate", self.adapter_learning_rate > 0, "> 0"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("grad_clip", self.grad_clip > 0, "> 0"),
            ("train_size", self.train_size is None or self.train_size >= 2, "None or >= 2"),
            ("test_size", self.test_size is None or self.test_size >= 2, "None or >= 2"),
            ("clean_size", self.clean_size >= 0, ">= 0"),
            ("min_selection", self.min_selection >= 1, ">= 1"),
            ("stealth_samples", self.stealth_samples >= 0, ">= 0"),
        ]
        for field, ok, rule in rules:
            if not ok:
                raise ConfigError(f"profile {self.name}: profile.{field}={getattr(self, field)!r} must be {rule}; "
                                  f"change it with --set profile.{field}=VALUE")


PROFILES = {
    "cpu": Profile(
        name="cpu",
        description="2-core CPU default: stratified 3000-row training slice, 3 epochs, lr 5e-5 (adapters 1e-3), "
        "max length 128",
        train_size=3000, epochs=3, batch_size=32, learning_rate=5e-5, adapter_learning_rate=1e-3, max_length=128,
        group_by_length=True,
    ),
    "paper": Profile(
        name="paper",
        description="MuScleLoRA paper (encoders): full training data, 10 epochs, batch 32, lr 2e-5, max length 512; GPU",
        train_size=None, epochs=10, batch_size=32, learning_rate=2e-5, adapter_learning_rate=2e-5, max_length=512,
        datasets=("sst2", "hsol", "agnews"), stealth_samples=1000, stealth_lm="gpt2-large",
        scorer_lm="gpt2", clean_size=256,
    ),
    "smoke": Profile(
        name="smoke",
        description="seconds-long check for tests: at most 256 training rows, 4 epochs, batch 16, lr 5e-3, max "
        "length 32; on the tests' toy dataset tiny-bert learns the task and the BadNets backdoor",
        # 60 steps on the toy dataset (240 rows): what the random 2-layer tiny-bert needs to leave its
        # constant-prediction plateau. With 4 steps (the former 64 rows x 1 epoch) it predicted one label
        # everywhere (CACC 50), so no test could see the metrics change.
        train_size=256, epochs=4, batch_size=16, learning_rate=5e-3, adapter_learning_rate=3e-3, max_length=32,
        backbones=("tiny-bert",), stealth_samples=0, scorer_lm="tiny-llama", clean_size=128,
        min_selection=16,
    ),
}


@dataclass(frozen=True)
class MainJob:
    """The README's first command (`bench run --main`): what fits within an hour on a fresh 2-core
    CPU with every registered defense. Any part can be replaced on the command line (`--main -a
    addsent`, `--main --set profile.test_size=1821`); `--all` stays every attack x every defense."""

    profile: str = "cpu"
    attacks: tuple[str, ...] = ("badnets",)  # one attack: BadNets, the one every defense paper reports
    datasets: tuple[str, ...] = ("sst2",)
    backbones: tuple[str, ...] = ("minilm",)
    seeds: tuple[int, ...] = (1,)
    # Leaner than `cpu`, and declared in every record's settings: a 1500-row training slice (half the
    # cpu profile's: ~20 trainings must fit, one per training-time defense plus the shared plain
    # victim) and a stratified 300-row slice of the clean test set, the same rows for every defense
    # (ONION scores each test sentence with one SmolLM2 pass per word after the prefix it shares with
    # the whole sentence, ~0.8 s a sentence here: the full test set, 1821 clean + 912 poisoned rows,
    # would take ~35 min on its own).
    profile_settings: tuple[tuple[str, str], ...] = (("train_size", "1500"), ("test_size", "300"))
    out: str = "results/main"

    def describe(self) -> str:
        slice_ = ", ".join(f"profile.{k}={v}" for k, v in self.profile_settings)
        return (f"{' + '.join(self.attacks)} x every defense on {', '.join(self.datasets)} with "
                f"{', '.join(self.backbones)}, seed {', '.join(map(str, self.seeds))}, {self.profile} profile, {slice_}")


MAIN_JOB = MainJob()


def get_profile(name: str, overrides: dict[str, str] | None = None) -> Profile:
    if name not in PROFILES:
        raise UnknownNameError(f"unknown profile {name!r}.{suggest(name, list(PROFILES))} Profiles: {', '.join(PROFILES)}")
    base = dataclasses.asdict(PROFILES[name])
    base.update(overrides or {})
    return build_config(Profile, base, owner=f"profile {name}")
