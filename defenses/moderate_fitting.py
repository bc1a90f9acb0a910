"""Moderate-fitting (Zhu et al., NeurIPS 2022): low-capacity reparameterised LoRA, lower lr, fewer epochs.

"Moderate-fitting as a Natural Backdoor Defender for Pre-trained Language Models" (code:
thunlp/Moderate-fitting). The paper observes that a parameter-efficient model which only *moderately*
fits the poisoned training set learns the clean task but not the backdoor, and restricts training to
that stage on three axes: the capacity of the trainable part, the learning rate and the number of
epochs. Its capacity reduction is a *global low-rank reparameterisation*: all PET parameters are not
free but generated, at every forward pass, by a small network with a ``mid_dim``-wide bottleneck,
``theta = W2 tanh(W1 e)`` (``e`` a learned ``in_dim`` vector), so every LoRA matrix of every layer
moves through the same two-dimensional code. The authors' LoRA setting (their released config for
RoBERTa-base on SST-2), which this defense reproduces:

* LoRA rank 8, alpha 16, no dropout, on the attention query and value projections (via PEFT,
  :func:`bench.models.adapters.add_lora`);
* two generator networks, ``in_dim = mid_dim = 2``: one makes every ``lora_A`` (its code vector drawn
  uniformly in [0, 1)), the other every ``lora_B`` (its code vector zero, so every ``B`` and the LoRA
  update start at exactly zero, as in plain LoRA); linear layers without bias, PyTorch's default
  initialisation, from a generator seeded by the cell's seed;
* learning rate 3e-4, below the usual LoRA rates.

Scaled to our profiles: the epochs default to half the profile's, rounded up (2 of the cpu profile's 3),
and the learning rate to ``lr_scale`` x the profile's adapter learning rate (0.3: the authors' 3e-4 at
an adapter rate of 1e-3), except under the ``cpu`` profile, where it is 3e-3. The authors' 3e-4 left the
model at chance on clean dev there (SST-2 BadNets, 1500 rows, 94 steps: 50.4 % against ``lora``'s
83.0 %): their schedule has several times more steps (the full SST-2 training set). 3e-3 was chosen on
clean dev only, by a rule declared before the runs: the lowest of 3e-4, 1e-3, 3e-3, 1e-2 whose clean
dev accuracy is within 5 points of ``lora``'s (50.4, 50.6, 79.5, 82.6 %; ``results/tuning-protocol/``).
It is above ``lora``'s rate: through the 2-wide generator a step moves far less than a LoRA step does,
so "a lower learning rate" does not carry over as a number. ``--set moderate-fitting.learning_rate=...``
/ ``epochs=...`` set them outright.

Deviation: the authors' code also generates the classification head's weights from the first network;
here the head trains directly, as ``--set moderate-fitting.train_head=false`` would freeze it
(``lora``'s default since version 2). Note that the generator networks have more scalar parameters
than the LoRA matrices they generate (the last linear layer has ``mid_dim`` weights per generated
value): the paper's reduction is in the dimension of the space the update can move in per step, not in
the parameter count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from bench.config import ConfigError
from bench.defense import Defense, DefenseContext, TrainingSchedule
from bench.models.adapters import add_lora
from bench.models.backbones import LoadedModel
from bench.registry import register


class Generator(torch.nn.Module):
    """``e -> W2 tanh(W1 e)``: one flat vector of ``size`` generated parameters."""

    def __init__(self, in_dim: int, mid_dim: int, size: int):
        super().__init__()
        self.code = torch.nn.Parameter(torch.zeros(in_dim))
        self.inner = torch.nn.Linear(in_dim, mid_dim, bias=False)
        self.outer = torch.nn.Linear(mid_dim, size, bias=False)

    def reset(self, code: str, generator: torch.Generator | None) -> None:
        with torch.no_grad():
            for layer in (self.inner, self.outer):  # nn.Linear's default: Kaiming-uniform with a = sqrt(5)
                torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            if code == "uniform":
                self.code.copy_(torch.rand(self.code.shape, generator=generator))
            else:
                self.code.zero_()

    def forward(self) -> torch.Tensor:
        return self.outer(torch.tanh(self.inner(self.code)))


class LowRankReparameterization(torch.nn.Module):
    """Generates the weights of the given LoRA ``A`` and ``B`` linear layers before every forward pass.

    The layers' own ``weight`` parameters are removed; after :meth:`allocate` each holds a slice of the
    generated vector (a plain tensor, so gradients flow back into the generator networks)."""

    def __init__(self, a_layers: list[torch.nn.Linear], b_layers: list[torch.nn.Linear], in_dim: int, mid_dim: int):
        super().__init__()
        # plain lists: the layers belong to the model already; registering them here would duplicate them
        self._slots = {"a": list(a_layers), "b": list(b_layers)}
        self._shapes = {k: [tuple(layer.weight.shape) for layer in v] for k, v in self._slots.items()}
        for layers in self._slots.values():
            for layer in layers:
                del layer.weight
        self.gen_a = Generator(in_dim, mid_dim, sum(math.prod(s) for s in self._shapes["a"]))
        self.gen_b = Generator(in_dim, mid_dim, sum(math.prod(s) for s in self._shapes["b"]))

    def reset(self, generator: torch.Generator | None) -> None:
        self.gen_a.reset("uniform", generator)
        self.gen_b.reset("zero", generator)

    def allocate(self, *_: Any, **__: Any) -> None:
        for key, gen in (("a", self.gen_a), ("b", self.gen_b)):
            flat, start = gen(), 0
            for layer, shape in zip(self._slots[key], self._shapes[key]):
                n = math.prod(shape)
                layer.weight = flat[start:start + n].view(shape)
                start += n

    def release(self, *_: Any) -> None:
        """Detach the generated weights once a forward pass is done (its graph already holds them), so
        the model stays deep-copyable (``Victim.copy``) between passes."""
        for layers in self._slots.values():
            for layer in layers:
                layer.weight = layer.weight.detach()


def reparameterize_lora(model: Any, in_dim: int, mid_dim: int, generator: torch.Generator | None
                        ) -> LowRankReparameterization:
    """Replace every LoRA ``A``/``B`` weight of a PEFT model by generated ones (in module order)."""
    a_layers, b_layers = [], []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if ".lora_A." in f"{name}.":
                a_layers.append(module)
            elif ".lora_B." in f"{name}.":
                b_layers.append(module)
    if not a_layers or len(a_layers) != len(b_layers):
        raise RuntimeError(f"expected PEFT LoRA layers in pairs, found {len(a_layers)} A and {len(b_layers)} B")
    ref = a_layers[0].weight
    reparam = LowRankReparameterization(a_layers, b_layers, in_dim, mid_dim)
    reparam.reset(generator)
    reparam.to(ref.device, ref.dtype)
    model.add_module("moderate_reparam", reparam)
    # bound methods: a deep copy of the model (Victim.copy) gets hooks bound to its own copy
    model.register_forward_pre_hook(reparam.allocate)
    model.register_forward_hook(reparam.release)
    reparam.allocate()
    reparam.release()
    return reparam


@dataclass(frozen=True)
class ModerateFittingConfig(TrainingSchedule):  # + learning_rate, epochs: set outright (None: the scales)
    lora_r: int = 8
    lora_alpha: int = 16
    in_dim: int = 2
    mid_dim: int = 2  # the bottleneck of the reparameterisation network: the capacity knob
    train_head: bool = True
    lr_scale: float = 0.3  # learning rate when learning_rate is None: lr_scale x the profile's adapter_learning_rate
    epoch_scale: float = 0.5  # epochs when epochs is None: ceil(epoch_scale x the profile's epochs)

    def validate(self) -> None:
        f = "moderate-fitting"
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise ConfigError(f"{f}.lora_r={self.lora_r}, {f}.lora_alpha={self.lora_alpha}: the rank must be >= 1 "
                              f"and alpha > 0 (the authors': --set {f}.lora_r=8 --set {f}.lora_alpha=16)")
        if self.in_dim < 1 or self.mid_dim < 1:
            raise ConfigError(f"{f}.in_dim={self.in_dim}, {f}.mid_dim={self.mid_dim}: both must be >= 1 "
                              f"(the authors': --set {f}.mid_dim=2)")
        if not 0 < self.lr_scale <= 1:
            raise ConfigError(f"{f}.lr_scale={self.lr_scale}: must be in (0, 1] (a lower learning rate than lora's; "
                              f"or set {f}.learning_rate outright)")
        if not 0 < self.epoch_scale <= 1:
            raise ConfigError(f"{f}.epoch_scale={self.epoch_scale}: must be in (0, 1] (or set {f}.epochs outright)")
        self.validate_schedule(f, note=" (or None: lr_scale x the profile's adapter_learning_rate)",
                               epochs_note=" (or None: epoch_scale x the profile's)")


@register("defense", "moderate-fitting")
class ModerateFitting(Defense):
    """Moderate-fitting: LoRA r=8 generated through a 2-wide reparameterisation bottleneck, 0.3x lr, half the epochs."""

    Config = ModerateFittingConfig
    parameter_efficient = True
    # chosen on clean dev (see the module docstring); the user's --set overrides it
    profile_defaults = {"cpu": {"learning_rate": 3e-3}}

    def schedule(self, settings: Any) -> tuple[float, int]:
        c = self.config
        lr = c.learning_rate if c.learning_rate is not None else c.lr_scale * settings.adapter_learning_rate
        epochs = c.epochs if c.epochs is not None else max(1, math.ceil(c.epoch_scale * settings.epochs))
        return float(lr), int(epochs)

    def prepare_model(self, loaded: LoadedModel, ctx: DefenseContext):
        c = self.config
        model = add_lora(loaded, c.lora_r, c.lora_alpha, 0.0, train_head=c.train_head)
        reparameterize_lora(model, c.in_dim, c.mid_dim, ctx.torch_generator("moderate-fitting-init"))
        return model
