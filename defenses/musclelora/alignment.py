"""Gradient alignment to a clean reference set (MuScleLoRA's second half).

Each step: ``g`` is the gradient of the (possibly poisoned) training batch, ``r`` the gradient of a
batch of clean reference samples. Per trainable tensor, the aligned gradient is the projection
magnitude of ``g`` on ``r`` carried along ``r``: ``|<g, r>| / ||r||^2 * r``. It is used while the
reference set is still being learnt (mean reference-gradient norm above a floor and reference loss
above a threshold); afterwards, from ``ga_epoch`` on, a share ``rho`` of the raw gradient is mixed
back in, ``rho`` rising linearly from 0 at ``ga_epoch`` by ``max_raw_ratio / (epochs - ga_epoch)`` an
epoch (as the authors' code: it never quite reaches ``max_raw_ratio``); before that the raw gradient
is kept. A tensor whose reference gradient is zero (or absent) keeps its raw gradient, as theirs does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.defense import StepState

MODES = ("aligned", "mixed", "raw")


@dataclass(frozen=True)
class AlignmentSettings:
    min_ref_grad_norm: float = 5e-7
    min_ref_loss: float = 0.4
    max_raw_ratio: float = 0.1
    ga_epoch: int = 1
    refresh_every: int = 1  # recompute the reference gradient every k steps (1: every step, as the paper)


def project(g: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``|<g, r>| / ||r||^2 * r`` (zero when either is zero; :func:`aligned_backward` never projects
    on a zero ``r``)."""
    rr = torch.dot(r.flatten(), r.flatten())
    if rr == 0:
        return torch.zeros_like(g)
    return torch.abs(torch.dot(g.flatten(), r.flatten())) / rr * r


def raw_ratio(epoch: int, num_epochs: int, s: AlignmentSettings) -> float:
    """rho = max_raw_ratio * (epoch - ga_epoch) / (num_epochs - ga_epoch): 0 at ``ga_epoch``; at the
    last epoch ``max_raw_ratio * (1 - 1 / (num_epochs - ga_epoch))`` (0.09 over 10 epochs from epoch 0)."""
    if epoch < s.ga_epoch:
        return 0.0
    span = max(1, num_epochs - s.ga_epoch)
    return s.max_raw_ratio * min(1.0, (epoch - s.ga_epoch) / span)


def aligned_backward(state: StepState, s: AlignmentSettings) -> float:
    """Backward pass of one step with gradient alignment; returns the training loss.

    The reference gradient and loss are cached in ``state.memory`` and refreshed every
    ``refresh_every`` steps; the chosen mode is counted in ``state.memory["stats"]``.
    """
    if state.reference_batch is None:
        raise RuntimeError("gradient alignment needs a clean reference set (reference_size > 0)")
    model, mem = state.model, state.memory
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(**state.batch).loss
    loss.backward()

    if "ref_grads" not in mem or state.step % s.refresh_every == 0:
        # the batch's mean loss from length-sorted chunks (each padded on its own): one backward pass
        ref_loss = sum(w * model(**chunk).loss for chunk, w in state.reference_batch())
        grads = torch.autograd.grad(ref_loss, params, allow_unused=True)
        norms = [g.norm() for g in grads if g is not None and g.norm() > 0]
        mem["ref_grads"] = [None if g is None else g.detach() for g in grads]
        mem["ref_loss"] = float(ref_loss.detach())
        mem["ref_norm"] = float(torch.stack(norms).mean()) if norms else 0.0

    if mem["ref_norm"] > s.min_ref_grad_norm and mem["ref_loss"] > s.min_ref_loss:
        mode, rho = "aligned", 0.0
    elif s.max_raw_ratio > 0 and state.epoch >= s.ga_epoch:
        mode, rho = "mixed", raw_ratio(state.epoch, state.num_epochs, s)
    else:
        mode, rho = "raw", 1.0
    stats = mem.setdefault("stats", {})
    stats.setdefault("alignment_modes", dict.fromkeys(MODES, 0))[mode] += 1
    per_epoch = stats.setdefault("alignment_modes_per_epoch", [])
    while len(per_epoch) <= state.epoch:
        per_epoch.append(dict.fromkeys(MODES, 0))
    per_epoch[state.epoch][mode] += 1
    # raw or mixed: the step's update carried some raw (possibly poisoned) gradient; the runner keeps these
    # statistics as they stood at the end of the kept epoch, so 0 there means the kept weights never took one
    stats["steps_with_raw_gradient"] = stats.get("steps_with_raw_gradient", 0) + (mode != "aligned")
    if mode != "raw":
        with torch.no_grad():
            for p, r in zip(params, mem["ref_grads"]):
                if p.grad is None or r is None or not bool(r.any()):
                    continue  # no reference direction for this tensor: its raw gradient is kept
                a = project(p.grad, r)
                p.grad.copy_(a if mode == "aligned" else (1 - rho) * a + rho * p.grad)
    return float(loss.detach())
