"""Houlsby bottleneck adapters as a defense baseline: only the adapters (and the head) train.

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP" (ICML 2019). Each transformer layer
gets two small bottleneck modules, one on the output of the attention sublayer and one on the output
of the feed-forward sublayer, each placed *before* that sublayer's residual connection (and, in
post-norm encoders, before its LayerNorm). A module maps ``h`` to ``h + U f(D h)``: a down-projection
``D`` to ``bottleneck`` dimensions, a nonlinearity ``f``, an up-projection ``U`` back, and a skip
connection, so with ``U`` near zero the adapted network starts as the pretrained one. The pretrained
weights stay frozen; the MuScleLoRA paper (Wu et al., ACL 2024) runs this as a baseline with
bottleneck size 8, the default here.

How it is built here (no AdapterHub dependency): the linear layer whose output *is* the sublayer
output before the residual is wrapped in :class:`AdapterLinear` (BERT / RoBERTa:
``attention.output.dense`` and ``output.dense``; Llama-like decoders: ``self_attn.o_proj`` and
``mlp.down_proj``; OPT: ``out_proj`` and ``fc2``). One small difference in BERT-style layers: the
sublayer's dropout (between that projection and the residual) now comes after the adapter, where Houlsby
and AdapterHub put the adapter after that dropout; at evaluation the two are the same, in training the
adapter sees the projection's output before dropout. Parameter names are stable:
``...output.dense.base.weight`` (frozen) and ``...output.dense.adapter.down.weight`` etc.

Initialisation (Houlsby's near-identity init): both projections drawn from a normal distribution
with standard deviation 0.01 truncated at two standard deviations, biases zero, from a generator
seeded by the cell's seed.

The classification head trains (Houlsby: a new task layer is trained with the adapters; PEFT's
default for classification). ``--set adapter.train_head=false`` freezes it at its initial weights,
the choice the MuScleLoRA authors make for their LoRA baseline (this suite's ``lora``). Houlsby also
trains the layer norms; we keep them frozen by default (AdapterHub's Houlsby configuration, which the
baselines of later backdoor papers use, does too): ``--set adapter.train_layer_norm=true`` trains them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from bench.config import ConfigError
from bench.defense import Defense, DefenseContext, TrainingSchedule
from bench.models.adapters import is_head
from bench.models.backbones import BackboneError, LoadedModel
from bench.registry import register

# the linear layers whose output is a sublayer's output before its residual connection
ADAPTER_SITES = {
    "bert": ("attention.output.dense", "output.dense"),
    "roberta": ("attention.output.dense", "output.dense"),
    "xlm-roberta": ("attention.output.dense", "output.dense"),
    "mpnet": ("attention.attn.o", "output.dense"),
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
    "mistral": ("self_attn.o_proj", "mlp.down_proj"),
    "qwen2": ("self_attn.o_proj", "mlp.down_proj"),
    "opt": ("self_attn.out_proj", "fc2"),
}

ACTIVATIONS = {"gelu": torch.nn.GELU, "relu": torch.nn.ReLU, "swish": torch.nn.SiLU, "tanh": torch.nn.Tanh}


class Bottleneck(torch.nn.Module):
    """``x -> up(f(down(x)))`` (the residual is added by :class:`AdapterLinear`)."""

    def __init__(self, width: int, bottleneck: int, activation: str):
        super().__init__()
        self.down = torch.nn.Linear(width, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = torch.nn.Linear(bottleneck, width)

    def reset(self, std: float, generator: torch.Generator | None) -> None:
        with torch.no_grad():
            for layer in (self.down, self.up):
                torch.nn.init.trunc_normal_(layer.weight, 0.0, std, -2 * std, 2 * std, generator=generator)
                layer.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class AdapterLinear(torch.nn.Module):
    """A frozen linear layer followed by a bottleneck adapter with a skip connection:
    ``y = W x + b``, then ``y + adapter(y)``."""

    def __init__(self, base: torch.nn.Linear, bottleneck: int, activation: str):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.adapter = Bottleneck(base.out_features, bottleneck, activation).to(base.weight.device,
                                                                                  base.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.adapter(y)


def adapter_sites(model: Any, model_type: str) -> list[str]:
    """Dotted names of the linear layers to wrap, two per transformer layer."""
    try:
        suffixes = ADAPTER_SITES[model_type]
    except KeyError:
        raise BackboneError(
            f"no adapter placement known for architecture {model_type!r} (known: {', '.join(sorted(ADAPTER_SITES))}); "
            "add the names of its attention-output and feed-forward-output projections to "
            "defenses.adapter.ADAPTER_SITES"
        ) from None
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for suffix in suffixes:
            # "output.dense" must not also catch the attention's "attention.output.dense"
            if name.endswith(suffix) and not (suffix == "output.dense" and name.endswith("attention.output.dense")):
                names.append(name)
                break
    layers = getattr(model.config, "num_hidden_layers", None)
    if not names or (layers is not None and len(names) != 2 * layers):
        raise BackboneError(f"{model_type}: found {len(names)} adapter sites ({names[:4]}...), expected two per layer "
                            f"({layers} layers); check defenses.adapter.ADAPTER_SITES")
    return names


def add_adapters(model: Any, model_type: str, bottleneck: int, activation: str, init_std: float,
                 generator: torch.Generator | None) -> list[AdapterLinear]:
    """Freeze ``model`` and wrap every adapter site in place (in module order, so the random draws and
    the parameter names do not depend on anything but the architecture)."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name in adapter_sites(model, model_type):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = AdapterLinear(getattr(parent, attr), bottleneck, activation)
        module.adapter.reset(init_std, generator)
        setattr(parent, attr, module)
        wrapped.append(module)
    return wrapped


NORM_MARKERS = ("LayerNorm", "layer_norm", "layernorm", "norm.")


@dataclass(frozen=True)
class AdapterConfig(TrainingSchedule):  # + learning_rate, epochs (None: the profile's adapter_learning_rate)
    bottleneck: int = 8  # the MuScleLoRA paper's adapter baseline
    activation: Literal["gelu", "relu", "swish", "tanh"] = "gelu"
    init_std: float = 1e-2  # Houlsby's near-identity initialisation
    train_head: bool = True
    train_layer_norm: bool = False

    def validate(self) -> None:
        if self.bottleneck < 1:
            raise ConfigError(f"adapter.bottleneck={self.bottleneck}: the bottleneck size must be >= 1 "
                              "(e.g. --set adapter.bottleneck=8)")
        if not self.init_std > 0:
            raise ConfigError(f"adapter.init_std={self.init_std}: must be > 0 (Houlsby: --set adapter.init_std=0.01)")
        self.validate_schedule("adapter")


@register("defense", "adapter")
class Adapter(Defense):
    """Houlsby adapters: bottleneck 8 after the attention and FFN outputs of every layer, + head; backbone frozen."""

    Config = AdapterConfig
    parameter_efficient = True

    def prepare_model(self, loaded: LoadedModel, ctx: DefenseContext):
        c = self.config
        model = loaded.model
        add_adapters(model, loaded.model_type, c.bottleneck, c.activation, c.init_std,
                     ctx.torch_generator("adapter-init"))
        for name, p in model.named_parameters():
            if (c.train_head and is_head(name)) or (c.train_layer_norm and any(m in name for m in NORM_MARKERS)
                                                    and ".adapter." not in name):
                p.requires_grad_(True)
        return model
