"""MuScleLoRA (Wu et al., ACL 2024): LoRA + multiple radial scalings + gradient alignment.

"Acquiring Clean Language Models from Backdoor Poisoned Datasets by Downscaling Frequency Space".
A backdoor mapping is a low-frequency function of the input (one token or one style flips the
label everywhere), so a network, which learns low frequencies first, picks it up early. MuScleLoRA
pushes what the model can fit towards high frequencies and steers the updates with a small clean
set, so the clean mapping is learnt before the backdoor one:

* LoRA on the attention query and value projections; the rest of the backbone and the
  classification head frozen;
* a multi-scale low-rank term on the dense layer right before the classifier
  (:class:`.layers.MultiScaleLowRank`);
* gradient alignment to a clean reference set, the first rows of the defender's clean dev rows
  (:func:`.alignment.aligned_backward`).

The ablations of the paper are registered here too: ``ga`` (full fine-tuning + alignment),
``mslr`` (LoRA + multi-scale layer) and ``ga-lora`` (LoRA + alignment).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.config import ConfigError
from bench.defense import Defense, DefenseContext, StepState, TrainingSchedule
from bench.models.adapters import add_lora, is_head
from bench.models.backbones import DECODER_TYPES, LoadedModel
from bench.registry import register

from .alignment import AlignmentSettings, aligned_backward
from .layers import add_multiscale, default_scales, replace_decoder_head

# Settings for the cpu profile (3 epochs on a 3000-row slice). First found on SST-2 test ASR
# (results/superseded/tuning: exploration, not evidence), then kept by the declared tuning protocol (docs/tuning.md "Tuning
# protocol", results/tuning-protocol/family: AG News dirty-label BadNets, highest task score of 384/96
# reference rows x ga_epoch 0/1, for musclelora, ga and ga-lora alike).
CPU_ALIGNMENT = {"reference_size": 384, "ga_epoch": 0}


@dataclass(frozen=True)
class MuscleLoRAConfig(TrainingSchedule):  # + learning_rate, epochs (None: the profile's adapter_learning_rate)
    """Settings; None means "the default for this backbone family" (encoder / decoder LLM)."""

    use_lora: bool = True
    lora_r: int | None = None  # 8 (2 for decoder LLMs)
    lora_alpha: int | None = None  # 32 (8 for decoder LLMs)
    lora_dropout: float = 0.0
    use_mslr: bool = True
    scales: tuple[float, ...] | None = None  # None: defenses.musclelora.layers.default_scales
    mslr_rank: int = 1
    mslr_alpha: float | None = None  # 6 (4 for decoder LLMs)
    decoder_head_hidden: int = 16
    use_alignment: bool = True
    reference_size: int | None = None  # 96 (128 for decoder LLMs), drawn from clean dev
    min_ref_grad_norm: float = 5e-7
    min_ref_loss: float | None = None  # 0.4 (0 for decoder LLMs)
    max_raw_ratio: float | None = None  # 0.1 (0 for decoder LLMs: no raw gradient is ever mixed back in)
    ga_epoch: int | None = None  # 1 (0 for decoder LLMs)
    decoder_head_dropout: float = 0.1  # dropout before the decoder head (the authors' decoder setting)
    refresh_every: int = 1
    freeze_head: bool = True

    def validate(self) -> None:
        if self.max_raw_ratio is not None and not 0.0 <= self.max_raw_ratio <= 1.0:
            raise ConfigError(f"max_raw_ratio={self.max_raw_ratio}: a share of the raw gradient is in [0, 1]")
        if self.ga_epoch is not None and self.ga_epoch < 0:
            raise ConfigError(f"ga_epoch={self.ga_epoch}: must be >= 0 (0: mixing may start in the first epoch)")
        if not 0.0 <= self.decoder_head_dropout < 1.0:
            raise ConfigError(f"decoder_head_dropout={self.decoder_head_dropout}: a dropout probability is in [0, 1)")
        if self.refresh_every < 1:
            raise ConfigError("refresh_every must be >= 1")
        if self.use_alignment and self.reference_size is not None and self.reference_size < 1:
            raise ConfigError("alignment needs reference_size >= 1")


def _pick(value, encoder, decoder, loaded: LoadedModel):
    if value is not None:
        return value
    return decoder if loaded.is_decoder else encoder


@register("defense", "musclelora")
class MuscleLoRA(Defense):
    """MuScleLoRA: LoRA + multi-scale low-rank pre-classifier layer + gradient alignment to clean reference rows."""

    Config = MuscleLoRAConfig
    parameter_efficient = True
    profile_defaults = {"cpu": CPU_ALIGNMENT}
    # 2: narrow encoders (MiniLM) default to scales [1,2,3,4] (1: the BERT-base list); 3: the reference
    # batch's loss from length-sorted chunks (same mean loss, a third of the padding; dropout masks differ);
    # 4: the authors' raw-ratio schedule, a zero reference gradient keeps the raw one, decoder defaults
    # (max_raw_ratio 0, ga_epoch 0, head dropout 0.1)
    version = 4

    def reference_size(self, loaded: LoadedModel) -> int:
        if not self.config.use_alignment:
            return 0
        return int(_pick(self.config.reference_size, 96, 128, loaded))

    def prepare_model(self, loaded: LoadedModel, ctx: DefenseContext):
        c = self.config
        gen = torch.Generator().manual_seed(ctx.seed)
        if loaded.is_decoder and (c.use_mslr or c.freeze_head):
            replace_decoder_head(loaded, c.decoder_head_hidden, gen, c.decoder_head_dropout)
        model = loaded.model
        if c.use_lora:
            model = add_lora(
                loaded, _pick(c.lora_r, 8, 2, loaded), _pick(c.lora_alpha, 32, 8, loaded), c.lora_dropout,
                train_head=not c.freeze_head,
            )
        elif c.freeze_head:
            for name, p in model.named_parameters():
                if is_head(name):
                    p.requires_grad_(False)
        if c.use_mslr:
            scales = list(c.scales) if c.scales else default_scales(loaded)
            add_multiscale(model, loaded.model_type, scales, c.mslr_rank, _pick(c.mslr_alpha, 6.0, 4.0, loaded), gen)
        return model

    def backward(self, state: StepState) -> float:
        if not self.config.use_alignment:
            return super().backward(state)
        c = self.config
        decoder = state.model.config.model_type in DECODER_TYPES
        min_loss = c.min_ref_loss if c.min_ref_loss is not None else (0.0 if decoder else 0.4)
        max_raw = c.max_raw_ratio if c.max_raw_ratio is not None else (0.0 if decoder else 0.1)
        ga_epoch = c.ga_epoch if c.ga_epoch is not None else (0 if decoder else 1)
        settings = AlignmentSettings(c.min_ref_grad_norm, min_loss, max_raw, ga_epoch, c.refresh_every)
        return aligned_backward(state, settings)


@dataclass(frozen=True)
class GAConfig(MuscleLoRAConfig):
    use_lora: bool = False
    use_mslr: bool = False
    freeze_head: bool = False



@register("defense", "ga")
class GradientAlignment(MuscleLoRA):
    """MuScleLoRA ablation: full fine-tuning with gradient alignment to clean reference rows."""

    Config = GAConfig
    parameter_efficient = False  # full fine-tuning: the profile's learning_rate
    version = 4  # 3: chunked reference batches; 4: the authors' raw-ratio schedule and zero-reference rule


@dataclass(frozen=True)
class MSLRConfig(MuscleLoRAConfig):
    use_alignment: bool = False


@register("defense", "mslr")
class MultiScaleLoRA(MuscleLoRA):
    """MuScleLoRA ablation: LoRA + multi-scale low-rank pre-classifier layer, no alignment."""

    Config = MSLRConfig
    profile_defaults: dict = {}
    version = 3  # no alignment (version 3's reference chunks did not apply); 3: decoder head dropout 0.1


@dataclass(frozen=True)
class GALoRAConfig(MuscleLoRAConfig):
    use_mslr: bool = False


@register("defense", "ga-lora")
class GALoRA(MuscleLoRA):
    """MuScleLoRA ablation: LoRA with gradient alignment to clean reference rows, no multi-scale layer."""

    Config = GALoRAConfig
    version = 4  # 3: chunked reference batches; 4: the authors' raw-ratio schedule and zero-reference rule


# the family's own commands, `bench cost` and `bench fourier` (registered as commands, added by bench/cli.py)
from . import cost, fourier  # noqa: E402,F401
