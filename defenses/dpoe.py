"""DPoE (Liu et al., NAACL 2024): a shallow trigger-only expert in a product of experts, + R-Drop.

"From Shortcuts to Triggers: Backdoor Defense with Denoised PoE" (code: luka-group/DPoE). A backdoor
trigger is a shortcut: a feature so simple that a *shallow* model picks it up at once. DPoE trains such
a shallow model jointly with the main model through a product of experts: the training loss is the
cross-entropy of the *combined* prediction

    log p_joint = log_softmax( log_softmax(z_main) + poe_alpha * log_softmax(z_shallow / T) ),

so on a row the shallow expert already explains (a poisoned row, through its trigger) the joint
prediction is right whatever the main model says, and the main model gets little gradient from it;
the main model is left to learn what the shallow one cannot: the real task. At test time the shallow
expert is dropped and the main model predicts alone. Dirty-label poisoning also leaves rows whose label
contradicts their content (mislabelled noise the shallow expert cannot explain); DPoE's "denoising"
adds R-Drop (Liang et al., NeurIPS 2021): the main model runs twice on the batch with independent
dropout masks, and the symmetric KL divergence between the two predictions, weighted by
``rdrop_alpha``, is added to the loss, which resists fitting those rows.

As the authors' code does (their ``poe_loss`` with ``--rdrop_mode_2``):

* the shallow expert is a copy of the pretrained backbone cut to its first layers (their
  ``num_hidden_layers``, default 3 of BERT-base's 12, swept 2-5), with its own classification head; it is
  trained only through the joint loss (no loss of its own);
* loss = PoE cross-entropy of the first main pass + ``rdrop_alpha`` x KL term, where the KL term is the
  mean over batch *and classes* of the two elementwise KL divergences, averaged (their ``kl_loss``);
  defaults ``poe_alpha`` 1, ``T`` 1, ``rdrop_alpha`` 3 (their run_train.sh);
* the shallow expert learns at a higher learning rate: theirs is 8e-5 against 2e-5 for the main
  model, ``shallow_lr_ratio`` 4 here, by a separate AdamW (their second optimiser) with its own gradient
  clipping at the profile's ``grad_clip``, stepped inside :meth:`DPoE.backward`; its rate decays
  linearly as the main one does (the step count comes from :meth:`DPoE.select_train`, which keeps every
  row and only counts them).

Scaled to our backbones: ``shallow_layers`` None keeps a quarter of the backbone's layers (rounded, at
least 1): 3 of BERT-base's 12 (the authors' default), 2 of MiniLM's 6, 8 of SmolLM2's 30, 1 of the tiny
test models' 2.

Where it differs: the main model trains at the profile's full fine-tuning rate (cpu: 5e-5, the
shallow expert 2e-4) and the shallow expert's step is taken in ``backward`` (our training loop owns one
optimiser); warm-up follows the profile's ``warmup_ratio`` for both. On a backbone without dropout
(Llama-style decoders) the two main passes would be identical, so the second one is skipped and the
R-Drop term is 0 there (the authors' code would compute the same zero).

The model handed to the training loop is :class:`PoEModel`: ``main`` (the backbone, whose forward,
config, input embeddings and hidden states are the wrapper's) and ``shallow`` (extra parameters, used
only in ``backward``). State-dict names: ``main.<backbone names>``, ``shallow.<backbone names>``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import ConfigError
from bench.defense import Defense, DefenseContext, StepState, TrainingSchedule
from bench.models.backbones import BackboneError, LoadedModel
from bench.registry import register


class PoEModel(torch.nn.Module):
    """The main classifier (what predicts) and the shallow expert (trained beside it, never predicts)."""

    def __init__(self, main: torch.nn.Module, shallow: torch.nn.Module):
        super().__init__()
        self.main = main
        self.shallow = shallow

    @property
    def config(self):
        return self.main.config

    def get_input_embeddings(self):
        return self.main.get_input_embeddings()

    def forward(self, *args: Any, **kwargs: Any):
        return self.main(*args, **kwargs)


def layer_stack(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """(parent, attribute) of the ModuleList holding the transformer layers."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and name.rsplit(".", 1)[-1] in ("layer", "layers"):
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name), attr
    raise BackboneError(f"{model.config.model_type}: no list of {n} transformer layers found; DPoE cannot cut a "
                        "shallow expert from it")


def shallow_copy(model: torch.nn.Module, layers: int) -> torch.nn.Module:
    """A deep copy of ``model`` keeping its embeddings, its first ``layers`` layers and its head."""
    shallow = copy.deepcopy(model)
    parent, attr = layer_stack(shallow)
    setattr(parent, attr, torch.nn.ModuleList(list(getattr(parent, attr))[:layers]))
    shallow.config.num_hidden_layers = layers
    if getattr(shallow.config, "layer_types", None) is not None:  # per-layer attention kinds (recent configs)
        shallow.config.layer_types = list(shallow.config.layer_types)[:layers]
    return shallow


def default_shallow_layers(total: int) -> int:
    return max(1, min(total - 1, int(math.floor(total / 4 + 0.5)))) if total > 1 else 1


def poe_loss(main_logits: torch.Tensor, shallow_logits: torch.Tensor, labels: torch.Tensor,
             poe_alpha: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of the product of experts ``softmax(log p_main + alpha log p_shallow(T))``."""
    joint = F.log_softmax(main_logits.float(), -1) + poe_alpha * F.log_softmax(shallow_logits.float() / temperature, -1)
    return F.cross_entropy(joint, labels)  # cross_entropy normalises the joint scores (log_softmax)


def rdrop_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric KL between two predictions: both directions' elementwise KL, each averaged over batch
    and classes (the DPoE authors' reduction), then averaged."""
    la, lb = F.log_softmax(a.float(), -1), F.log_softmax(b.float(), -1)
    ab = F.kl_div(la, lb, reduction="none", log_target=True).mean()  # KL(b || a)
    ba = F.kl_div(lb, la, reduction="none", log_target=True).mean()  # KL(a || b)
    return (ab + ba) / 2


def has_dropout(model: torch.nn.Module) -> bool:
    drop = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    cfg = model.config
    return drop or any(float(getattr(cfg, k, 0) or 0) > 0 for k in ("attention_dropout", "hidden_dropout"))


@dataclass(frozen=True)
class DPoEConfig(TrainingSchedule):  # + learning_rate (the main model's), epochs; None: the profile's
    shallow_layers: int | None = None  # None: a quarter of the backbone's layers (3 of 12, 2 of MiniLM's 6)
    poe_alpha: float = 1.0
    temperature: float = 1.0
    rdrop_alpha: float = 3.0
    shallow_lr_ratio: float = 4.0  # the authors': 8e-5 for the shallow expert, 2e-5 for the main model

    def validate(self) -> None:
        if self.shallow_layers is not None and self.shallow_layers < 1:
            raise ConfigError(f"dpoe.shallow_layers={self.shallow_layers}: must be >= 1, or None for a quarter of "
                              "the backbone's layers (e.g. --set dpoe.shallow_layers=3)")
        if self.poe_alpha <= 0 or self.temperature <= 0:
            raise ConfigError(f"dpoe.poe_alpha={self.poe_alpha}, dpoe.temperature={self.temperature}: both must be > 0 "
                              "(the authors': --set dpoe.poe_alpha=1 --set dpoe.temperature=1)")
        if self.rdrop_alpha < 0:
            raise ConfigError(f"dpoe.rdrop_alpha={self.rdrop_alpha}: must be >= 0 (0 turns R-Drop off; the authors' "
                              "--set dpoe.rdrop_alpha=3)")
        if self.shallow_lr_ratio <= 0:
            raise ConfigError(f"dpoe.shallow_lr_ratio={self.shallow_lr_ratio}: must be > 0 (the authors': "
                              "--set dpoe.shallow_lr_ratio=4)")
        self.validate_schedule("dpoe")


@register("defense", "dpoe")
class DPoE(Defense):
    """DPoE: product of experts with a shallow trigger-only expert + R-Drop; only the main model predicts."""

    Config = DPoEConfig

    def prepare_model(self, loaded: LoadedModel, ctx: DefenseContext):
        c = self.config
        total = int(loaded.model.config.num_hidden_layers)
        layers = c.shallow_layers if c.shallow_layers is not None else default_shallow_layers(total)
        if layers >= total:
            raise ConfigError(f"dpoe.shallow_layers={layers}: the backbone has only {total} layers; the shallow "
                              f"expert must be shallower (e.g. --set dpoe.shallow_layers={max(1, total // 4)})")
        self._profile = ctx.profile
        return PoEModel(loaded.model, shallow_copy(loaded.model, layers))

    def select_train(self, rows, ctx: DefenseContext) -> np.ndarray | None:
        self._n_train = len(rows)  # for the shallow expert's learning-rate schedule; every row is kept
        return None

    # --- the shallow expert's own optimiser ---------------------------------------------------
    def _shallow_optimizer(self, state: StepState) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
        mem = state.memory
        if "dpoe_optimizer" not in mem:
            params = [p for p in state.model.shallow.parameters() if p.requires_grad]
            prof = getattr(self, "_profile", None)
            lr = self.schedule(prof)[0] if prof is not None else 2e-5
            wd = float(getattr(prof, "weight_decay", 0.0) or 0.0)
            mem["dpoe_params"] = params
            mem["dpoe_optimizer"] = torch.optim.AdamW(params, lr=lr * self.config.shallow_lr_ratio, weight_decay=wd)
            mem["dpoe_base_lr"] = lr * self.config.shallow_lr_ratio
        return mem["dpoe_optimizer"], mem["dpoe_params"]

    def _lr_factor(self, state: StepState) -> float:
        """The training loop's schedule (linear warm-up, then linear decay to 0) at this step."""
        prof = getattr(self, "_profile", None)
        n = getattr(self, "_n_train", None)
        if prof is None or n is None:
            return 1.0
        total = math.ceil(n / prof.batch_size) * state.num_epochs
        warmup = int(getattr(prof, "warmup_ratio", 0.0) * total)
        if state.step < warmup:
            return state.step / max(1, warmup)
        return max(0.0, (total - state.step) / max(1, total - warmup))

    def backward(self, state: StepState) -> float:
        c = self.config
        model = state.model
        batch = dict(state.batch)
        labels = batch.pop("labels")
        main = model.main(**batch).logits
        shallow = model.shallow(**batch).logits
        loss = poe_loss(main, shallow, labels, c.poe_alpha, c.temperature)
        rdrop = 0.0
        if "dpoe_dropout" not in state.memory:
            state.memory["dpoe_dropout"] = has_dropout(model.main)
        if c.rdrop_alpha > 0 and state.memory["dpoe_dropout"]:
            second = model.main(**batch).logits
            kl = rdrop_kl(main, second)
            loss = loss + c.rdrop_alpha * kl
            rdrop = float(kl.detach())
        loss.backward()
        # the shallow expert's step, with its own clipping and learning rate (the authors' second optimiser)
        opt, params = self._shallow_optimizer(state)
        grads = [p for p in params if p.grad is not None]
        if grads:
            clip = float(getattr(getattr(self, "_profile", None), "grad_clip", 1.0) or 1.0)
            torch.nn.utils.clip_grad_norm_(grads, clip)
            for g in opt.param_groups:
                g["lr"] = state.memory["dpoe_base_lr"] * self._lr_factor(state)
            opt.step()
            opt.zero_grad(set_to_none=True)  # the loop's optimiser then skips these parameters
        stats = state.memory.setdefault("stats", {})
        stats["dpoe_rdrop_kl_last"] = rdrop
        stats["dpoe_shallow_layers"] = int(model.shallow.config.num_hidden_layers)
        return float(loss.detach())
