"""Prefix tuning as a defense baseline: only per-layer virtual key/value prefixes (and the head) train.

Li & Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation" (ACL 2021), in the form
P-Tuning v2 (Liu et al., ACL 2022) uses for classification: every attention layer gets
``num_virtual_tokens`` learned key vectors and value vectors that every real token can attend to, as
if a prefix of that many tokens preceded the input in every layer. The backbone is frozen; the
classification head trains with the prefixes (PEFT's sequence-classification setting).

Why not PEFT's ``PrefixTuningConfig``: PEFT 0.21 passes the prefixes as ``past_key_values``, which the
transformers 5 BERT, RoBERTa and Llama classification models no longer accept (PEFT raises "Model does
not support past key values"). So the prefixes enter through the attention interface instead: the
model's attention implementation is set to ``bench_prefix``, a thin wrapper around transformers' SDPA
attention that concatenates the layer's prefix keys and values in front of the real ones and extends
the attention mask (prefix columns always visible; a causal model keeps its causal mask on the real
tokens). So, unlike PEFT on older transformers, the real tokens keep their own positions (BERT's
absolute positions are not shifted by the prefix length, Llama's rotary positions start at 0), the
padding mask and ``output_hidden_states`` work as before (hidden states hold the real tokens only), and
``inputs_embeds`` works.

Parameters (one :class:`PrefixKV` per attention module, named ``...attention.self.prefix.key`` /
``.value`` for BERT and ``...self_attn.prefix.key`` for Llama): ``[kv_heads, num_virtual_tokens,
head_dim]`` each, drawn from N(0, ``init_std``) with a generator seeded by the cell's seed (PEFT's
prefix encoder without projection draws its embedding from N(0, 1), the default here). No
reparameterisation MLP (PEFT's ``prefix_projection=False`` default).

Learning rate: the profile's adapter rate (1e-3 under ``cpu``) left prefix tuning near chance on clean
dev (SST-2 BadNets, 1500 rows, 141 steps: 55.3 %); prefix tuning is known to need rates well above
LoRA's (P-Tuning v2 searches 5e-3 to 1e-2 and up). Under the ``cpu`` profile it is 3e-2, chosen on clean
dev only by a rule declared before the runs: the highest clean dev accuracy among 1e-3, 5e-3, 1e-2,
3e-2 (55.3, 68.2, 74.4, 81.4 %; ``results/tuning-protocol/``). 3e-2 is the edge of that grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.config import ConfigError
from bench.defense import Defense, DefenseContext, TrainingSchedule
from bench.models.adapters import is_head
from bench.models.backbones import BackboneError, LoadedModel
from bench.registry import register

ATTN_IMPLEMENTATION = "bench_prefix"
# the modules that call the attention interface, by the end of their dotted name
ATTENTION_MODULES = ("attention.self", "self_attn")


class PrefixKV(torch.nn.Module):
    """One layer's virtual keys and values: ``[kv_heads, tokens, head_dim]`` each."""

    def __init__(self, kv_heads: int, tokens: int, head_dim: int):
        super().__init__()
        self.key = torch.nn.Parameter(torch.zeros(kv_heads, tokens, head_dim))
        self.value = torch.nn.Parameter(torch.zeros(kv_heads, tokens, head_dim))

    def reset(self, std: float, generator: torch.Generator | None) -> None:
        with torch.no_grad():
            for p in (self.key, self.value):
                p.copy_(torch.randn(p.shape, generator=generator) * std)


def prefix_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, **kwargs: Any):
    """SDPA attention with the module's prefix keys/values in front of the real ones."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix = getattr(module, "prefix", None)
    if not isinstance(prefix, PrefixKV):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    batch, q_len, k_len = query.shape[0], query.shape[2], key.shape[2]
    tokens = prefix.key.shape[1]
    pk = prefix.key.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
    pv = prefix.value.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
    if attention_mask is None:  # no padding: transformers left the mask to SDPA's is_causal flag
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", False) if causal is None else causal
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device)
        if causal and q_len > 1:
            mask = mask.tril(diagonal=k_len - q_len)
        attention_mask = mask.expand(batch, 1, q_len, k_len)
    shape = (*attention_mask.shape[:-1], tokens)
    if attention_mask.dtype == torch.bool:
        visible = torch.ones(shape, dtype=torch.bool, device=attention_mask.device)
    else:  # an additive float mask: 0 where visible
        visible = torch.zeros(shape, dtype=attention_mask.dtype, device=attention_mask.device)
    attention_mask = torch.cat([visible, attention_mask], dim=-1)
    kwargs["is_causal"] = False
    return sdpa_attention_forward(module, query, torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2),
                                  attention_mask, **kwargs)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, prefix_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)  # the same masks as SDPA


def add_prefixes(model: Any, tokens: int, init_std: float, generator: torch.Generator | None) -> list[PrefixKV]:
    """Attach a :class:`PrefixKV` to every attention module of ``model`` and route its attention
    through :func:`prefix_attention`."""
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    modules = [(n, m) for n, m in model.named_modules() if n.endswith(ATTENTION_MODULES)]
    layers = getattr(cfg, "num_hidden_layers", None)
    if not modules or (layers is not None and len(modules) != layers):
        raise BackboneError(
            f"{cfg.model_type}: found {len(modules)} attention modules named *{' or *'.join(ATTENTION_MODULES)}, "
            f"expected one per layer ({layers}); prefix tuning knows BERT/RoBERTa-style and Llama-style attention "
            "(MPNet's relative-position attention is not one of them: use `adapter` or `lora` on that backbone)"
        )
    _register_attention()
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    except (ValueError, AttributeError) as e:
        raise BackboneError(f"{cfg.model_type}: cannot route attention through prefix tuning ({e})") from None
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:
        raise BackboneError(f"{cfg.model_type} does not use transformers' attention interface; prefix tuning "
                            "cannot reach its attention")
    out = []
    for _, module in modules:
        ref = next(module.parameters())
        prefix = PrefixKV(kv_heads, tokens, head_dim)
        prefix.reset(init_std, generator)
        module.prefix = prefix.to(ref.device, ref.dtype)
        out.append(module.prefix)
    return out


@dataclass(frozen=True)
class PrefixConfig(TrainingSchedule):  # + learning_rate, epochs (None: the profile's adapter_learning_rate)
    num_virtual_tokens: int = 8
    init_std: float = 1.0  # PEFT's prefix embedding: N(0, 1)
    train_head: bool = True

    def validate(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ConfigError(f"prefix.num_virtual_tokens={self.num_virtual_tokens}: must be >= 1 "
                              "(e.g. --set prefix.num_virtual_tokens=8)")
        if not self.init_std > 0:
            raise ConfigError(f"prefix.init_std={self.init_std}: must be > 0 (e.g. --set prefix.init_std=1.0)")
        self.validate_schedule("prefix")


@register("defense", "prefix")
class Prefix(Defense):
    """Prefix tuning: 8 virtual key/value tokens in every attention layer, + head; backbone frozen."""

    Config = PrefixConfig
    parameter_efficient = True
    # chosen on clean dev (see the module docstring); the user's --set overrides it
    profile_defaults = {"cpu": {"learning_rate": 3e-2}}

    def prepare_model(self, loaded: LoadedModel, ctx: DefenseContext):
        c = self.config
        model = loaded.model
        for p in model.parameters():
            p.requires_grad_(False)
        add_prefixes(model, c.num_virtual_tokens, c.init_std, ctx.torch_generator("prefix-init"))
        for name, p in model.named_parameters():
            if ".prefix." in name or (c.train_head and is_head(name)):
                p.requires_grad_(True)
        return model
