"""MuScleLoRA's layers: the multi-scale low-rank term on the pre-classifier layer, and the small
decoder head it wraps on decoder LLMs."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from bench.models.backbones import DECODER_TYPES, BackboneError, LoadedModel


# --- multi-scale low-rank layer (MuScleLoRA's "multiple radial scalings") -----------------------


class MultiScaleLowRank(torch.nn.Module):
    """``y = W0 x + b0 + s * R diag(K) L x`` around a frozen linear layer.

    ``L`` is (B*r x d_in) and ``R`` is (d_out x B*r), both Kaiming-uniform (a = sqrt 5) so the added
    term is non-zero from step 0; ``K`` repeats each of the B scale factors r times; ``s = alpha / r``.
    The scale factors stretch the low-rank directions radially, so the frequencies the layer can fit
    are pushed down (Wu et al., ACL 2024).
    """

    def __init__(self, base: torch.nn.Linear, scales: Sequence[float], rank: int, alpha: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        if rank < 1 or not scales:
            raise ValueError("the multi-scale layer needs rank >= 1 and at least one scale factor")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        width = len(scales) * rank
        dtype, device = base.weight.dtype, base.weight.device
        self.L = torch.nn.Parameter(torch.empty(width, base.in_features, dtype=dtype, device=device))
        self.R = torch.nn.Parameter(torch.empty(base.out_features, width, dtype=dtype, device=device))
        torch.nn.init.kaiming_uniform_(self.L, a=math.sqrt(5), generator=generator)
        torch.nn.init.kaiming_uniform_(self.R, a=math.sqrt(5), generator=generator)
        k = torch.tensor([float(f) for f in scales], dtype=dtype, device=device).repeat_interleave(rank)
        self.register_buffer("K", k)
        self.scaling = alpha / rank

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaling * torch.nn.functional.linear(torch.nn.functional.linear(x, self.L) * self.K, self.R)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)


class DecoderHead(torch.nn.Module):
    """hidden -> inner -> labels without bias: the small head MuScleLoRA puts on decoder LLMs so that
    its first layer can carry the multi-scale term."""

    def __init__(self, hidden: int, inner: int, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        self.dense = torch.nn.Linear(hidden, inner, bias=False)
        self.out_proj = torch.nn.Linear(inner, num_labels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dense(self.dropout(x)))


def pre_classifier_path(model: Any, model_type: str) -> str:
    """Dotted path of the dense layer right before the classifier."""
    if model_type in ("bert",):
        suffix = "pooler.dense"
    elif model_type in ("roberta", "xlm-roberta", "mpnet"):  # MPNet's head is RoBERTa's: dense, tanh, out_proj
        suffix = "classifier.dense"
    elif model_type in DECODER_TYPES:
        suffix = "score.dense"
    else:
        raise BackboneError(
            f"no pre-classifier layer known for architecture {model_type!r} (known: bert, roberta, mpnet "
            "and decoder LLMs); add it to defenses.musclelora.layers.pre_classifier_path"
        )
    for name, module in model.named_modules():
        if name.endswith(suffix) and isinstance(module, torch.nn.Linear):
            return name
    raise BackboneError(f"{model_type} model has no linear layer named *.{suffix}")


def replace_decoder_head(loaded: LoadedModel, inner: int, generator: torch.Generator | None = None,
                         dropout: float = 0.0) -> None:
    """Swap a decoder's ``score`` for a :class:`DecoderHead` (before any adapter is added)."""
    old = loaded.model.score
    head = DecoderHead(old.in_features, inner, old.out_features, dropout).to(old.weight.device, old.weight.dtype)
    for layer in (head.dense, head.out_proj):
        torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    loaded.model.score = head


def add_multiscale(model: Any, model_type: str, scales: Sequence[float], rank: int, alpha: float,
                   generator: torch.Generator | None = None) -> MultiScaleLowRank:
    """Wrap the pre-classifier dense layer of ``model`` in place; return the wrapper."""
    path = pre_classifier_path(model, model_type)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    wrapped = MultiScaleLowRank(getattr(parent, attr), scales, rank, alpha, generator)
    setattr(parent, attr, wrapped)
    return wrapped


def default_scales(loaded: LoadedModel) -> list[float]:
    """MuScleLoRA's scale factors by family: BERT-base [1,4,...,28], RoBERTa-base [1,2,4,...,16],
    large encoders (hidden >= 1024) [1..9], decoder LLMs [1,2,3,4].

    Encoders narrower than BERT-base (MiniLM: 384) get [1,2,3,4], the paper's smallest list: on
    MiniLM the BERT-base list slowed clean learning (dev accuracy 73 % after one epoch against 85 %)
    and left a higher ASR (results/superseded/tuning, docs/findings.md, "MuScleLoRA on MiniLM")."""
    hidden = getattr(loaded.model.config, "hidden_size", 768)
    if loaded.is_decoder:
        return [1, 2, 3, 4]
    if hidden >= 1024:
        return list(range(1, 10))
    if hidden < 768:
        return [1, 2, 3, 4]
    if loaded.model_type in ("roberta", "xlm-roberta"):
        return [1, 2, 4, 6, 8, 10, 12, 14, 16]
    return [1, 4, 8, 12, 16, 20, 24, 28]
