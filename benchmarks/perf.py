"""Where the time of a cell goes, measured against what this machine can do (issue 10, first section).

    python benchmarks/perf.py --backbone minilm --profile cpu \\
        --defense none --defense lora --defense musclelora --defense onion \\
        [--steps N] [--repeats R] [--out results/perf]

Writes ``OUT/perf.json`` and ``OUT/perf.md`` (with provenance). For the cell's own data (the profile's
training slice of the dataset, poisoned by the attack exactly as ``bench.runner.prepare`` does) and, per
training recipe (``none``'s plain fine-tuning, or a defense that changes training), on ONE model built
by the defense's ``prepare_model`` and reset to the same initial weights before every run:

* the framework's step, run the way ``bench.models.training.train`` runs it (``Encoded.batch`` padding,
  ``StepState``, ``autocast``, ``defense.backward``, gradient clipping, AdamW, the LR schedule,
  ``zero_grad``), against a bare PyTorch loop written here (pre-collated batches, ``loss.backward()``,
  AdamW, ``zero_grad``; for an aligning defense also the reference forward/backward and the projection,
  the least that exact alignment needs), on the same batches; the two are interleaved, ``--repeats``
  times, warm-up steps excluded; medians and paired ratios;
* an instrumented run: batching/padding (host), forward, backward, the alignment's extra pass
  (reference batch, its forward, its backward, the projection), clipping, optimizer, the rest;
* the per-epoch evaluation (``predict_logits`` over the selection rows) against an epoch of training;
* tokens per second (non-pad) and FLOP/s (``torch.utils.flop_counter.FlopCounterMode`` over the timed
  steps), against this machine's matmul peak in fp32 and bf16, measured in the same run;
* bf16 autocast against fp32 for the ``none`` and ``lora`` steps (speed only: numerics are checked
  elsewhere);
* AdamW implementations (default, foreach, fused) on each recipe's trainable parameters;
* a check that the replica is faithful: ``bench.models.training.train`` itself, one epoch over the timed rows;
* ``onion`` (inference time): seconds per sentence of ONION's word scoring (score cache disabled: a
  temporary ``BENCH_CACHE_DIR``) and of plain victim prediction, on SST-2 test sentences.

Threads: ``bench.models.hardware.configure_threads()``, as ``bench run``; the count is recorded. The load
average at start and end is recorded: other processes may share the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.defense import Defense, StepState
from bench.engine.profiles import get_profile
from bench.models.backbones import CACHE_ENV, resolve_backbone
from bench.models.hardware import cpu_identity
from bench.models.hardware import configure_threads
from bench.models.seeding import torch_seeded
from bench.reporting.results import git_state, provenance, write_json_atomic
from bench.runner import DataCache, Evaluator, plan, prepare
from bench.models.training import (REFERENCE_CHUNK, Encoded, autocast, epoch_batches, length_chunks, pick_device,
                            predict_logits, train, trainable_parameters)

PLAIN = "none"  # the recipe of every post-training defense's victim: plain full fine-tuning
DEFAULT_DEFENSES = ["none", "lora", "musclelora", "onion"]


# --- small helpers ---------------------------------------------------------------------------------

def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def loadavg() -> dict:
    try:
        parts = Path("/proc/loadavg").read_text().split()
        running, total = parts[3].split("/")
        return {"load1": float(parts[0]), "load5": float(parts[1]), "load15": float(parts[2]),
                "runnable": int(running), "tasks": int(total)}
    except (OSError, ValueError, IndexError):
        return {}


def cpu_info() -> dict:
    ident = cpu_identity()
    try:
        bf16_mkldnn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16_mkldnn = None
    return {
        "model": ident["cpu_model"],
        "flags_of_interest": ident["cpu_flags"] or {},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_bf16_supported": bf16_mkldnn,
    }


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def rnd(x: Any, n: int = 4) -> Any:
    if isinstance(x, float):
        return None if not math.isfinite(x) else round(x, n)
    if isinstance(x, dict):
        return {k: rnd(v, n) for k, v in x.items()}
    if isinstance(x, list):
        return [rnd(v, n) for v in x]
    return x


# --- the machine's matmul peak ------------------------------------------------------------------------

def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, min_seconds: float = 1.0) -> dict:
    """FLOP/s of ``torch.mm`` on (m x k) @ (k x n), after one warm-up product, for at least ``min_seconds``."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    torch.mm(a, b)
    iters, t0 = 0, now(device)
    while True:
        torch.mm(a, b)
        iters += 1
        elapsed = now(device) - t0
        if (elapsed >= min_seconds and iters >= 3) or elapsed >= 4 * min_seconds:
            break
    return {"shape": [m, k, n], "iters": iters, "seconds": elapsed, "flops_per_s": 2.0 * m * k * n * iters / elapsed}


def matmul_peak(size: int, dtype: torch.dtype, device: torch.device, budget_s: float = 3.0,
                min_seconds: float = 1.0) -> dict:
    """The rate of a square ``size`` matmul; if one product would take longer than ``budget_s`` (bf16
    without native support is emulated and can be 100x slower), the largest power-of-two size that fits."""
    probe = matmul_rate(256, 256, 256, dtype, device, min_seconds=min(0.2, min_seconds))
    n = size
    while n > 256 and 2.0 * n ** 3 / probe["flops_per_s"] > budget_s:
        n //= 2
    out = matmul_rate(n, n, n, dtype, device, min_seconds)
    out["requested_size"] = size
    if n != size:
        out["note"] = f"size {size} would take > {budget_s:.0f} s a product at the probed rate; measured at {n}"
    return out


# --- one training recipe on one model ----------------------------------------------------------------

@dataclass
class Recipe:
    """One training recipe (plain fine-tuning or a training defense) with its model, data and batches."""

    name: str
    defense: Defense
    model: Any
    tokenizer: Any
    params: list
    init: dict
    train_enc: Encoded
    ref_enc: Encoded | None
    sel_enc: Encoded
    lr: float
    epochs: int
    steps_per_epoch: int
    warm: list  # index lists (warm-up batches)
    timed: list  # index lists (timed batches)
    aligned: bool
    bare_batches: list = field(default_factory=list)  # pre-collated (warm + timed)
    bare_refs: list = field(default_factory=list)  # pre-collated reference batches (aligned only)
    tokenize_seconds: dict = field(default_factory=dict)
    epoch_stats: dict = field(default_factory=dict)
    reference: tuple | None = None  # (texts, labels) of the reference rows


def padded_size(enc: Encoded, idx: list[int]) -> int:
    return len(idx) * max(len(enc.features[i]["input_ids"]) for i in idx)


def nonpad_size(enc: Encoded, idx: list[int]) -> int:
    return sum(len(enc.features[i]["input_ids"]) for i in idx)


def pick_batches(enc: Encoded, batches: list[list[int]], steps: int, warmup: int) -> tuple[list, list]:
    """(warm-up, timed) batches out of one epoch's batches (in the order train() draws them): the timed
    ones at evenly spaced quantiles of padded size, so that they represent the epoch's length mix."""
    while len(batches) < steps + warmup:
        batches = batches + batches
    sizes = [padded_size(enc, b) for b in batches]
    order = np.argsort(sizes, kind="stable")
    picked = sorted({int(order[min(len(order) - 1, int((i + 0.5) * len(order) / steps))]) for i in range(steps)})
    i = 0
    while len(picked) < steps:  # duplicates (tiny epochs): fill with the next unused batches
        if i not in picked:
            picked.append(i)
        i += 1
    picked = sorted(picked)
    rest = [b for j, b in enumerate(batches) if j not in set(picked)]
    return rest[:warmup] if len(rest) >= warmup else (rest + batches)[:warmup], [batches[j] for j in picked]


def selection_rows(prep, limit: int | None) -> tuple[list[str], list[int]]:
    sel = prep.selection if limit is None else prep.selection.select(range(min(limit, len(prep.selection))))
    return list(sel["text"]), list(sel["label"])


def build_recipe(name: str, defense: Defense, cell, prep, ctx, profile, device, seed: int, steps: int,
                 warmup: int, eval_rows: int | None = None) -> Recipe:
    loaded = resolve_backbone(cell.backbone).load(prep.data.num_labels, seed)
    with torch_seeded(seed):  # as the runner builds a victim (PEFT's init draws from the global generator)
        model = defense.prepare_model(loaded, ctx)
    model.to(device)
    tok = loaded.tokenizer
    t = prep.poisoned.train
    texts, labels = list(t["text"]), list(t["label"])
    tk: dict = {}
    t0 = time.perf_counter()
    train_enc = Encoded(tok, texts, labels, profile.max_length)
    tk["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sel_enc = Encoded(tok, *selection_rows(prep, eval_rows), profile.max_length)
    tk["selection"] = time.perf_counter() - t0
    n_ref = defense.reference_size(loaded)
    ref_enc, reference = None, None
    if n_ref:
        ref = ctx.clean(n_ref)
        reference = (list(ref["text"]), list(ref["label"]))
        t0 = time.perf_counter()
        ref_enc = Encoded(tok, reference[0], reference[1], profile.max_length)
        tk["reference"] = time.perf_counter() - t0
    tk["rows"] = {"train": len(train_enc), "selection": len(sel_enc), "reference": len(ref_enc) if ref_enc else 0}
    lr, epochs = defense.schedule(profile)
    batches = epoch_batches(train_enc, profile.batch_size, profile.group_by_length, torch.Generator().manual_seed(seed))
    warm, timed = pick_batches(train_enc, batches, steps, warmup)
    params = trainable_parameters(model)
    aligned = bool(getattr(defense.config, "use_alignment", False)) and ref_enc is not None
    epoch_stats = {
        "batches": len(batches),
        "mean_padded_tokens_per_batch": float(np.mean([padded_size(train_enc, b) for b in batches])),
        "mean_nonpad_tokens_per_batch": float(np.mean([nonpad_size(train_enc, b) for b in batches])),
    }
    return Recipe(name, defense, model, tok, params, {n: p.detach().clone() for n, p in params}, train_enc, ref_enc,
                  sel_enc, lr, epochs, len(batches), warm, timed, aligned, tokenize_seconds=tk,
                  epoch_stats=epoch_stats, reference=reference)


def restore(r: Recipe) -> None:
    with torch.no_grad():
        for n, p in r.params:
            p.copy_(r.init[n])
            p.grad = None


def reference_sampler(r: Recipe, profile, seed: int, device, timer: list | None = None):
    """The reference-batch closure exactly as train() builds it (its own generator, seed + 1)."""
    if r.ref_enc is None:
        return None
    ref_gen = torch.Generator().manual_seed(seed + 1)

    def reference_batch() -> list:
        t0 = time.perf_counter()
        n = min(profile.batch_size, len(r.ref_enc))
        idx = torch.randperm(len(r.ref_enc), generator=ref_gen)[:n].tolist()
        out = length_chunks(r.ref_enc, idx, REFERENCE_CHUNK, device)
        if timer is not None:
            timer.append(time.perf_counter() - t0)
        return out

    return reference_batch


def make_optimizer(r: Recipe, profile):
    """AdamW + the linear schedule, exactly as train() makes them (over the full cell's steps)."""
    optimizer = torch.optim.AdamW([p for _, p in r.params], lr=r.lr, weight_decay=profile.weight_decay)
    total_steps = r.steps_per_epoch * r.epochs
    warmup = int(profile.warmup_ratio * total_steps)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def run_framework(r: Recipe, profile, seed: int, device, precision: str, steps: int | None = None,
                  warm: int | None = None, flops: bool = False) -> dict:
    """The framework's step, as bench.models.training.train runs it, over warm-up + timed batches."""
    from bench.engine import progress

    restore(r)
    optimizer, scheduler = make_optimizer(r, profile)
    memory: dict = {}
    reference_batch = reference_sampler(r, profile, seed, device)
    warm_b = r.warm[:len(r.warm) if warm is None else warm]
    timed_b = r.timed[:len(r.timed) if steps is None else steps]
    times, losses = [], []
    counter = None
    if flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
    model = r.model
    model.train()
    cpu0 = wall0 = None
    with torch_seeded(seed), progress.stage("perf", len(warm_b) + len(timed_b), "step") as bar:
        for i, indices in enumerate(warm_b + timed_b):
            if i == len(warm_b):
                cpu0, wall0 = time.process_time(), now(device)
                if counter is not None:
                    counter.__enter__()
            t0 = now(device)
            batch = r.train_enc.batch(indices, device)
            state = StepState(model, batch, 0, r.epochs, i, reference_batch, memory)
            with autocast(device, precision):
                loss = r.defense.backward(state)
            torch.nn.utils.clip_grad_norm_([p for _, p in r.params], profile.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.advance_to(i + 1)
            t1 = now(device)
            if i >= len(warm_b):
                times.append(t1 - t0)
            losses.append(float(loss))
    out = {"step_seconds": times, "mean": float(np.mean(times)), "first_loss": losses[0],
           "mean_loss_timed": float(np.mean(losses[len(warm_b):])),
           "cpu_util": (time.process_time() - cpu0) / max(1e-9, now(device) - wall0)}
    if counter is not None:
        counter.__exit__(None, None, None)
        out["flops_total"] = int(counter.get_total_flops())
        out["flops_steps"] = len(timed_b)
    restore(r)
    return out


def collate_bare(r: Recipe, profile, seed: int, device) -> None:
    """The bare loop's batches: the same rows (and reference rows), padded once, before any timing."""
    r.bare_batches = [r.train_enc.batch(b, device) for b in r.warm + r.timed]
    if r.aligned:
        sample = reference_sampler(r, profile, seed, device)
        r.bare_refs = [sample() for _ in r.warm + r.timed]


def run_bare(r: Recipe, profile, seed: int, device) -> dict:
    """A bare PyTorch loop on the same model and batches: forward, backward (+ the reference pass and the
    projection for an aligning recipe), AdamW, zero_grad. No clipping, no schedule, no host padding."""
    restore(r)
    params = [p for _, p in r.params]
    opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=profile.weight_decay)
    model = r.model
    model.train()
    nw = len(r.warm)
    times, losses = [], []
    cpu0 = wall0 = None
    with torch_seeded(seed):
        for i, batch in enumerate(r.bare_batches):
            if i == nw:
                cpu0, wall0 = time.process_time(), now(device)
            t0 = now(device)
            loss = model(**batch).loss
            loss.backward()
            if r.aligned:
                ref_loss = sum(w * model(**chunk).loss for chunk, w in r.bare_refs[i])
                ref_grads = torch.autograd.grad(ref_loss, params, allow_unused=True)
                with torch.no_grad():
                    for p, g in zip(params, ref_grads):
                        if g is None or p.grad is None:
                            continue
                        gr = torch.dot(p.grad.flatten(), g.flatten())
                        rr = torch.dot(g.flatten(), g.flatten())
                        p.grad.copy_(g * (gr.abs() / rr.clamp_min(1e-30)))
            opt.step()
            opt.zero_grad(set_to_none=True)
            t1 = now(device)
            if i >= nw:
                times.append(t1 - t0)
            losses.append(float(loss.detach()))
    restore(r)
    return {"step_seconds": times, "mean": float(np.mean(times)), "first_loss": losses[0],
            "mean_loss_timed": float(np.mean(losses[nw:])),
            "cpu_util": (time.process_time() - cpu0) / max(1e-9, now(device) - wall0)}


BREAKDOWN_PARTS = [
    ("batching", "batching/padding (host: Encoded.batch)"),
    ("forward", "forward (training batch, incl. loss)"),
    ("backward", "backward (training batch)"),
    ("align_ref_batch", "alignment: reference batch (host: draw + pad)"),
    ("align_ref_forward", "alignment: reference forward"),
    ("align_ref_backward", "alignment: reference backward (autograd.grad)"),
    ("align_projection", "alignment: projection, norms, stats"),
    ("clip", "gradient clipping"),
    ("optimizer", "optimizer step (AdamW)"),
    ("sched_zero", "scheduler step + zero_grad"),
    ("other", "other (StepState, loss.item, loop)"),
]


def run_breakdown(r: Recipe, profile, seed: int, device) -> dict:
    """One instrumented framework run: every part of the step timed (CPU work is synchronous; on a GPU
    every boundary synchronises). Module hooks time the forwards, Tensor.backward and autograd.grad
    are wrapped for the duration of the run."""
    restore(r)
    optimizer, scheduler = make_optimizer(r, profile)
    memory: dict = {}
    ref_times: list[float] = []
    reference_batch = reference_sampler(r, profile, seed, device, ref_times)
    fwd: list[float] = []
    bwd: list[float] = []
    agrad: list[float] = []
    start: list[float] = []

    def pre(_m, _a):
        start.append(now(device))

    def post(_m, _a, _o):
        fwd.append(now(device) - start.pop())

    h1 = r.model.register_forward_pre_hook(pre)
    h2 = r.model.register_forward_hook(post)
    orig_backward, orig_grad = torch.Tensor.backward, torch.autograd.grad

    def timed_backward(self, *a, **k):
        t0 = now(device)
        try:
            return orig_backward(self, *a, **k)
        finally:
            bwd.append(now(device) - t0)

    def timed_grad(*a, **k):
        t0 = now(device)
        try:
            return orig_grad(*a, **k)
        finally:
            agrad.append(now(device) - t0)

    rows = []
    r.model.train()
    try:
        torch.Tensor.backward, torch.autograd.grad = timed_backward, timed_grad
        with torch_seeded(seed):
            for i, indices in enumerate(r.warm + r.timed):
                del fwd[:], bwd[:], agrad[:], ref_times[:]
                t0 = now(device)
                batch = r.train_enc.batch(indices, device)
                t1 = now(device)
                state = StepState(r.model, batch, 0, r.epochs, i, reference_batch, memory)
                with autocast(device, profile.precision):
                    loss = r.defense.backward(state)
                t2 = now(device)
                torch.nn.utils.clip_grad_norm_([p for _, p in r.params], profile.grad_clip)
                t3 = now(device)
                optimizer.step()
                t4 = now(device)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                float(loss)
                t5 = now(device)
                if i < len(r.warm):
                    continue
                part = {
                    "batching": t1 - t0, "forward": fwd[0] if fwd else 0.0, "backward": sum(bwd),
                    "align_ref_batch": sum(ref_times), "align_ref_forward": sum(fwd[1:]),
                    "align_ref_backward": sum(agrad), "clip": t3 - t2, "optimizer": t4 - t3, "sched_zero": t5 - t4,
                }
                part["align_projection"] = max(0.0, (t2 - t1) - part["forward"] - part["backward"]
                                               - part["align_ref_batch"] - part["align_ref_forward"]
                                               - part["align_ref_backward"])
                part["total"] = t5 - t0
                part["other"] = max(0.0, part["total"] - sum(v for k, v in part.items() if k != "total"))
                rows.append(part)
    finally:
        torch.Tensor.backward, torch.autograd.grad = orig_backward, orig_grad
        h1.remove()
        h2.remove()
        restore(r)
    mean = {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}
    share = {k: mean[k] / mean["total"] for k, _ in BREAKDOWN_PARTS}
    return {"seconds_per_step": mean, "share": share}


def token_stats(r: Recipe) -> dict:
    out = {
        "train_nonpad_per_step": float(np.mean([nonpad_size(r.train_enc, b) for b in r.timed])),
        "train_padded_per_step": float(np.mean([padded_size(r.train_enc, b) for b in r.timed])),
    }
    out["train_pad_share"] = 1 - out["train_nonpad_per_step"] / out["train_padded_per_step"]
    if r.aligned and r.bare_refs:
        refs = r.bare_refs[len(r.warm):]
        nonpad = float(np.mean([sum(float(b["attention_mask"].sum()) for b, _ in chunks) for chunks in refs]))
        padded = float(np.mean([sum(b["attention_mask"].numel() for b, _ in chunks) for chunks in refs]))
        out.update({"reference_nonpad_per_step": nonpad, "reference_padded_per_step": padded,
                    "reference_pad_share": 1 - nonpad / padded})
    return out


def time_eval(r: Recipe, profile, device, repeats: int = 2) -> dict:
    repeats = max(1, repeats)
    """predict_logits over the selection rows, as train() runs it after every epoch; and its FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    secs = []
    for _ in range(repeats):
        t0 = now(device)
        predict_logits(r.model, r.sel_enc, profile.eval_batch_size, device, profile.precision)
        secs.append(now(device) - t0)
    t0 = now(device)
    best = {n: p.detach().clone() for n, p in r.params}  # train() keeps the best epoch's trainable weights
    copy_s = now(device) - t0
    del best
    with FlopCounterMode(display=False) as fc:
        predict_logits(r.model, r.sel_enc, profile.eval_batch_size, device, profile.precision)
    return {"seconds": median(secs), "runs": secs, "rows": len(r.sel_enc), "best_state_copy_seconds": copy_s,
            "flops": int(fc.get_total_flops()), "nonpad_tokens": sum(len(f["input_ids"]) for f in r.sel_enc.features)}


def optimizer_variants(r: Recipe, profile, device, iters: int = 5) -> dict:
    """Seconds per AdamW step on the recipe's trainable parameters: default, foreach, fused; and clipping."""
    from torch.optim.optimizer import _default_to_fused_or_foreach

    params = [p for _, p in r.params]
    out: dict = {"n_tensors": len(params), "n_params": int(sum(p.numel() for p in params))}
    try:
        fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        out["default_resolves_to"] = "fused" if fused else ("foreach" if foreach else "for-loop (single tensor)")
    except Exception as e:  # pragma: no cover - a private helper
        out["default_resolves_to"] = f"unknown ({type(e).__name__})"
    gen = torch.Generator().manual_seed(0)
    for name, kw in (("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        restore(r)
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen) * 1e-3).to(device, p.dtype)
        try:
            opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=profile.weight_decay, **kw)
            opt.step()
            t0 = now(device)
            for _ in range(iters):
                opt.step()
            out[name] = (now(device) - t0) / iters
        except (RuntimeError, ValueError, TypeError) as e:
            out[name] = None
            out[f"{name}_error"] = str(e)[:200]
    for name, kw in (("clip_default", {}), ("clip_foreach", {"foreach": True})):
        t0 = now(device)
        for _ in range(iters):
            torch.nn.utils.clip_grad_norm_(params, profile.grad_clip, **kw)
        out[name] = (now(device) - t0) / iters
    restore(r)
    return out


def train_check(r: Recipe, prep, profile, seed: int, device, eval_rows: int | None = None) -> dict:
    """bench.models.training.train itself, one epoch over the rows of the warm-up + timed batches, the dev
    evaluation included: its seconds per step (the on_step timestamps, first step left out)."""
    rows = sorted({i for b in r.warm + r.timed for i in b})
    t = prep.poisoned.train
    texts, labels = [t["text"][i] for i in rows], [t["label"][i] for i in rows]
    reference = r.reference
    stamps: list[float] = []
    restore(r)
    t0 = now(device)
    res = train(r.model, r.tokenizer, texts, labels, *selection_rows(prep, eval_rows),
                dataclasses.replace(profile, epochs=1), r.defense, seed, device, reference=reference,
                on_step=lambda s, n: stamps.append(now(device)))
    wall = now(device) - t0
    restore(r)
    diffs = list(np.diff(stamps))
    return {"rows": len(rows), "steps": res.steps, "train_seconds": res.train_seconds,
            "seconds_per_step_reported": res.seconds_per_step,
            "seconds_per_step_after_first": float(np.mean(diffs)) if diffs else None,
            "wall_seconds": wall, "outside_steps_seconds": wall - res.train_seconds}


# --- ONION ------------------------------------------------------------------------------------------

def onion_cost(profile, test_texts: list[str], plain: Recipe, device, n: int, repeats: int, seed: int,
               counts: dict, calib: int) -> dict:
    import defenses.onion as onion
    from bench.models.lm import get_scorer
    from bench.models.victim import Victim

    t0 = time.perf_counter()
    scorer = get_scorer(profile.scorer_lm)
    load_s = time.perf_counter() - t0
    scorer.identity()  # file hashes read from the real cache before the cache folder is swapped
    rng = np.random.default_rng(seed)
    multi = [s for s in test_texts if len(onion.split_words(s)) > 1]
    pick = rng.permutation(len(multi))
    sents = [multi[i] for i in pick[:n]]
    warm = [multi[i] for i in pick[n:n + 2]]
    words = [len(onion.split_words(s)) for s in sents]
    saved = os.environ.get(CACHE_ENV)
    runs = []
    try:
        for k in range(repeats + 1):  # the first pass (2 other sentences) warms the scorer up
            with tempfile.TemporaryDirectory(prefix="perf-onion-") as d:
                os.environ[CACHE_ENV] = d
                onion._MEMORY.clear()
                t0 = time.perf_counter()
                _, stats = onion.score_sentences(warm if k == 0 else sents, scorer)
                secs = time.perf_counter() - t0
                if k:
                    if stats["sentences_from_cache"]:
                        raise RuntimeError("ONION scores came from a cache; the timing would be wrong")
                    runs.append(secs)
    finally:
        if saved is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = saved
        onion._MEMORY.clear()
    victim = Victim(plain.model, plain.tokenizer, profile, device)
    victim.predict(warm)
    pred = []
    for _ in range(max(1, repeats)):
        t0 = now(device)
        victim.predict(sents)
        pred.append(now(device) - t0)
    score_ps = median(runs) / len(sents)
    pred_ps = median(pred) / len(sents)
    cell_rows = calib + counts["n_test_clean"] + counts["n_test_poison"]
    return {
        "scorer": profile.scorer_lm, "scorer_load_seconds": load_s, "sentences": len(sents),
        "mean_words": float(np.mean(words)), "lm_sequences_scored": int(sum(w + 1 for w in words)),
        "scoring_seconds_runs": runs, "scoring_sec_per_sentence": score_ps,
        "victim_predict_sec_per_sentence": pred_ps,
        "onion_sec_per_sentence": score_ps + pred_ps,
        "onion_over_plain_predict": (score_ps + pred_ps) / pred_ps,
        "cell_sentences_uncached": cell_rows,
        "cell_scoring_seconds_uncached_est": score_ps * cell_rows,
        "cell_scoring_seconds_clean_cached_est": score_ps * counts["n_test_poison"],
    }


# --- the whole run ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--defense", action="append", help="repeat; default: none, lora, musclelora, onion")
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up steps per run, not timed (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved framework/bare repeats (default 3)")
    ap.add_argument("--out", default="results/perf")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--peak-size", type=int, default=2048, help="square matmul size for the peak (default 2048)")
    ap.add_argument("--peak-seconds", type=float, default=1.0, help="least seconds per matmul rate (default 1)")
    ap.add_argument("--eval-rows", type=int, default=None, help="selection rows evaluated (default: all of them)")
    ap.add_argument("--eval-repeats", type=int, default=2, help="timed evaluation passes (default 2)")
    ap.add_argument("--onion-sentences", type=int, default=20)
    ap.add_argument("--onion-repeats", type=int, default=1)
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast runs")
    ap.add_argument("--no-train-check", action="store_true", help="skip the bench.models.training.train check")
    a = ap.parse_args(argv)
    a.defense = list(dict.fromkeys(a.defense or DEFAULT_DEFENSES))
    if a.steps < 1 or a.repeats < 1 or a.warmup < 0:
        ap.error("--steps and --repeats must be >= 1, --warmup >= 0")
    return a


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    command = "python benchmarks/perf.py " + " ".join(shlex.quote(x) for x in raw_argv)
    wall0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start = loadavg()
    threads = configure_threads()
    git = git_state()
    profile = get_profile(args.profile)
    device = pick_device(profile.device)
    log(f"{command}\n  threads {threads['threads']} ({threads['threads_from']}), load {load_start}, device {device}")

    cells = plan([args.dataset], [args.backbone], [args.attack], args.defense, [args.seed], profile)
    ev = Evaluator(DataCache(args.data_dir), git=git)
    data = ev.data.get(args.dataset)
    prep = prepare(cells[0], data)  # the same for every defense (attack x dataset x seed)
    by_name = {c.defense.name: c for c in cells}

    # recipes: plain fine-tuning (every post-training defense's victim) and each training defense
    recipe_of: dict[str, str] = {}
    recipes: dict[str, Recipe] = {}
    for name, cell in by_name.items():
        trains = cell.defense.cls.acts_in_training()
        rname = name if trains else PLAIN
        recipe_of[name] = rname
        if rname in recipes:
            continue
        defense = cell.defense.build() if trains else Defense()
        ctx = ev.context(cell, prep)
        recipes[rname] = build_recipe(rname, defense, cell, prep, ctx, profile, device, args.seed, args.steps,
                                      args.warmup, args.eval_rows)
        collate_bare(recipes[rname], profile, args.seed, device)
    log(f"recipes: {', '.join(recipes)}; {args.steps} timed + {args.warmup} warm-up steps, {args.repeats} repeats")

    ps = args.peak_seconds
    peak = {"fp32": matmul_peak(args.peak_size, torch.float32, device, min_seconds=ps),
            "bf16": matmul_peak(args.peak_size, torch.bfloat16, device, min_seconds=ps)}
    # the shape of a typical MiniLM/BERT FFN matmul in a training batch: tokens x hidden -> 4 x hidden
    hidden = getattr(next(iter(recipes.values())).model.config, "hidden_size", 384)
    tokens = int(next(iter(recipes.values())).epoch_stats["mean_padded_tokens_per_batch"])
    peak["fp32_model_shape"] = matmul_rate(max(tokens, 16), hidden, 4 * hidden, torch.float32, device, ps / 2)
    peak["bf16_model_shape"] = matmul_rate(max(tokens, 16), hidden, 4 * hidden, torch.bfloat16, device, ps / 2)
    log("peak GFLOP/s: " + ", ".join(f"{k} {v['flops_per_s'] / 1e9:.1f}" for k, v in peak.items()))

    # bf16 autocast: for the plain and lora steps; without native bf16 the step may be many times slower,
    # so a probe decides how many steps the bf16 runs time
    bf16_names = [] if args.no_bf16 else [n for n in (PLAIN, "lora") if n in recipes]
    bf16_plan: dict[str, dict] = {}
    for name in bf16_names:
        r = recipes[name]
        fp = run_framework(r, profile, args.seed, device, profile.precision, steps=1, warm=1)["mean"]
        bf = run_framework(r, profile, args.seed, device, "bf16", steps=1, warm=1)["mean"]
        slow = bf / fp
        steps = args.steps if slow < 3 else max(2, args.steps // 5)
        bf16_plan[name] = {"probe_fp32_s": fp, "probe_bf16_s": bf, "steps": steps,
                           "warmup": min(args.warmup, 1) if slow >= 3 else args.warmup,
                           "note": "" if slow < 3 else f"bf16 probe {slow:.1f}x slower than fp32: "
                                                       f"{steps} timed steps per run"}
        log(f"bf16 probe {name}: fp32 {fp:.3f} s, bf16 {bf:.3f} s per step")

    # interleaved repeats: framework, bare (and bf16), the order rotated every repeat
    runs: dict[str, dict[str, list]] = {n: {"framework": [], "bare": [], "bf16": [], "framework_fp32_same": []}
                                        for n in recipes}
    for rep in range(args.repeats):
        for name, r in recipes.items():
            variants = ["framework", "bare"] + (["bf16"] if name in bf16_plan else [])
            k = rep % len(variants)
            for v in variants[k:] + variants[:k]:
                if v == "framework":
                    res = run_framework(r, profile, args.seed, device, profile.precision)
                elif v == "bare":
                    res = run_bare(r, profile, args.seed, device)
                else:
                    bp = bf16_plan[name]
                    res = run_framework(r, profile, args.seed, device, "bf16", steps=bp["steps"], warm=bp["warmup"])
                runs[name][v].append(res)
            if name in bf16_plan:  # fp32 on exactly the bf16 runs' batches (the bf16 runs may time fewer)
                bp = bf16_plan[name]
                runs[name]["framework_fp32_same"].append(
                    run_framework(r, profile, args.seed, device, profile.precision, steps=bp["steps"],
                                  warm=bp["warmup"])
                    if bp["steps"] != args.steps or bp["warmup"] != args.warmup else runs[name]["framework"][-1])
            log(f"repeat {rep + 1}/{args.repeats} {name}: framework {runs[name]['framework'][-1]['mean']:.4f} s, "
                f"bare {runs[name]['bare'][-1]['mean']:.4f} s"
                + (f", bf16 {runs[name]['bf16'][-1]['mean']:.4f} s" if name in bf16_plan else ""))

    results: dict[str, dict] = {}
    for name, r in recipes.items():
        fw = [x["mean"] for x in runs[name]["framework"]]
        bare = [x["mean"] for x in runs[name]["bare"]]
        paired = [a / b for a, b in zip(fw, bare)]
        out = {
            "defense_object": type(r.defense).__name__, "aligned": r.aligned, "lr": r.lr, "epochs": r.epochs,
            "steps_per_epoch": r.steps_per_epoch,
            "trainable_params": int(sum(p.numel() for _, p in r.params)),
            "total_params": int(sum(p.numel() for p in r.model.parameters())),
            "framework": {"sec_per_step_median": median(fw), "per_repeat": fw,
                          "cpu_util_median": median([x["cpu_util"] for x in runs[name]["framework"]]),
                          "first_loss": runs[name]["framework"][0]["first_loss"]},
            "bare": {"sec_per_step_median": median(bare), "per_repeat": bare,
                     "cpu_util_median": median([x["cpu_util"] for x in runs[name]["bare"]]),
                     "first_loss": runs[name]["bare"][0]["first_loss"],
                     "what": "pre-collated batches; loss.backward(); " + (
                         "reference forward + autograd.grad + per-tensor projection; " if r.aligned else "")
                     + "AdamW step; zero_grad(set_to_none=True)"},
            "framework_over_bare": median(paired), "framework_over_bare_per_repeat": paired,
            "tokenize_seconds": r.tokenize_seconds, "epoch_batches": r.epoch_stats, "tokens": token_stats(r),
        }
        if name in bf16_plan:
            bf = [x["mean"] for x in runs[name]["bf16"]]
            fp_same = [x["mean"] for x in runs[name]["framework_fp32_same"]]
            out["bf16"] = {**bf16_plan[name], "sec_per_step_median": median(bf), "per_repeat": bf,
                           "fp32_same_batches_median": median(fp_same),
                           "speedup_vs_fp32": median([a / b for a, b in zip(fp_same, bf)]),
                           "mean_loss_bf16": runs[name]["bf16"][0]["mean_loss_timed"],
                           "mean_loss_fp32": runs[name]["framework_fp32_same"][0]["mean_loss_timed"]}
        results[name] = out

    for name, r in recipes.items():
        log(f"breakdown, FLOPs, evaluation, optimizer variants: {name}")
        res = results[name]
        res["breakdown"] = run_breakdown(r, profile, args.seed, device)
        fl = run_framework(r, profile, args.seed, device, profile.precision, flops=True)
        flops_step = fl["flops_total"] / fl["flops_steps"]
        sps = res["framework"]["sec_per_step_median"]
        res["flops"] = {
            "per_step": flops_step,
            "per_nonpad_train_token": flops_step / res["tokens"]["train_nonpad_per_step"],
            "achieved_framework": flops_step / sps,
            "achieved_bare": flops_step / res["bare"]["sec_per_step_median"],
            "share_of_peak_fp32": flops_step / sps / peak["fp32"]["flops_per_s"],
            "share_of_peak_bf16": flops_step / sps / peak["bf16"]["flops_per_s"],
            "share_of_model_shape_fp32": flops_step / sps / peak["fp32_model_shape"]["flops_per_s"],
        }
        res["tokens"]["train_nonpad_tokens_per_s"] = res["tokens"]["train_nonpad_per_step"] / sps
        ev_t = time_eval(r, profile, device, args.eval_repeats)
        epoch_train = r.steps_per_epoch * sps * (r.epoch_stats["mean_padded_tokens_per_batch"]
                                                 / res["tokens"]["train_padded_per_step"])
        ev_t["epoch_train_seconds_est"] = epoch_train
        ev_t["share_of_cell"] = (ev_t["seconds"] + ev_t["best_state_copy_seconds"]) / (
            ev_t["seconds"] + ev_t["best_state_copy_seconds"] + epoch_train)
        ev_t["achieved_flops"] = ev_t["flops"] / ev_t["seconds"]
        ev_t["sec_per_sentence"] = ev_t["seconds"] / ev_t["rows"]
        res["evaluation"] = ev_t
        res["cell_estimate"] = {
            "train_seconds": epoch_train * r.epochs, "eval_seconds": ev_t["seconds"] * r.epochs,
            "tokenize_seconds": sum(v for k, v in r.tokenize_seconds.items() if k != "rows"),
        }
        res["optimizer_variants"] = optimizer_variants(r, profile, device)
        if not args.no_train_check:
            res["train_check"] = train_check(r, prep, profile, args.seed, device, args.eval_rows)
            tc = res["train_check"]
            tc["over_replica"] = (tc["seconds_per_step_after_first"] or float("nan")) / sps

    defenses: dict[str, dict] = {}
    base_none = results[PLAIN]["framework"]["sec_per_step_median"] if PLAIN in results else None
    base_lora = results["lora"]["framework"]["sec_per_step_median"] if "lora" in results else None
    for name in args.defense:
        rname = recipe_of[name]
        sps = results[rname]["framework"]["sec_per_step_median"]
        d = {"recipe": rname, "acts_in_training": by_name[name].defense.cls.acts_in_training(),
             "sec_per_step": sps, "vs_none": sps / base_none if base_none else None,
             "vs_lora": sps / base_lora if base_lora else None}
        defenses[name] = d
    if "onion" in args.defense:
        log("ONION scoring cost")
        plain = recipes[PLAIN]
        cal = getattr(by_name["onion"].defense.config, "n_calibration", 200)
        test_texts = list(prep.poisoned.test_clean["text"])
        counts = {"n_test_clean": len(prep.poisoned.test_clean), "n_test_poison": len(prep.poisoned.test_poison)}
        defenses["onion"]["inference"] = onion_cost(profile, test_texts, plain, device, args.onion_sentences,
                                                    args.onion_repeats, args.seed, counts,
                                                    min(cal, len(prep.clean_pool)))

    peak["fp32_end"] = matmul_peak(args.peak_size, torch.float32, device, min_seconds=ps)
    load_end = loadavg()
    wall = time.perf_counter() - wall0
    report = {
        "command": command,
        "backbone": args.backbone, "profile": args.profile, "dataset": args.dataset, "attack": args.attack,
        "seed": args.seed, "device": str(device),
        "settings": {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                     "batch_size": profile.batch_size, "max_length": profile.max_length,
                     "group_by_length": profile.group_by_length, "eval_batch_size": profile.eval_batch_size,
                     "precision": profile.precision, "train_rows": len(prep.poisoned.train),
                     "selection_rows": len(prep.selection), "eval_rows": args.eval_rows or len(prep.selection),
                     "peak_size": args.peak_size},
        "threads": threads, "torch_threads": torch.get_num_threads(), "cpu": cpu_info(),
        "loadavg_start": load_start, "loadavg_end": load_end,
        "peak": peak, "recipes": results, "defenses": defenses,
        "goals": goals(results),
        "provenance": provenance(command=command, wall_seconds=wall, git=git,
                                 extra={"started": started, "threads": threads}),
    }
    report = rnd(report, 6)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "perf.json", report)
    (out / "perf.md").write_text(markdown(report))
    log(f"wrote {out / 'perf.json'} and {out / 'perf.md'} in {wall:.0f} s")
    return report


def goals(results: dict) -> dict:
    g = {"framework_over_bare_max": max(r["framework_over_bare"] for r in results.values()),
         "framework_over_bare_goal": 1.1}
    if "musclelora" in results and "lora" in results:
        m, l_ = results["musclelora"], results["lora"]
        g["musclelora_over_lora"] = m["framework"]["sec_per_step_median"] / l_["framework"]["sec_per_step_median"]
        g["musclelora_over_lora_bare"] = m["bare"]["sec_per_step_median"] / l_["bare"]["sec_per_step_median"]
        g["musclelora_over_lora_goal"] = 2.0
    return g


# --- Markdown -------------------------------------------------------------------------------------

def table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(x: Any) -> str:
        if x is None:
            return "-"
        if isinstance(x, float):
            if not math.isfinite(x):
                return "-"
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def markdown(rep: dict) -> str:
    prov, rec, dfs, peak = rep["provenance"], rep["recipes"], rep["defenses"], rep["peak"]
    git = prov["git"]
    ls, le = rep["loadavg_start"], rep["loadavg_end"]
    cpu = rep["cpu"]
    g = rep["goals"]
    s = rep["settings"]
    md = [
        f"# Cost of a cell: {rep['backbone']}, profile {rep['profile']}, {rep['dataset']} + {rep['attack']}",
        "",
        "Made by:",
        "",
        "```bash",
        rep["command"],
        "```",
        "",
        f"- git {git['commit'][:12]}{' (tree dirty: uncommitted changes)' if git.get('dirty') else ''}; "
        f"torch {prov['packages'].get('torch')}, transformers {prov['packages'].get('transformers')}; "
        f"device {rep['device']}; {cpu['model']}, torch CPU capability {cpu['torch_cpu_capability']}, "
        f"oneDNN bf16 supported: {cpu['mkldnn_bf16_supported']}; flags: "
        + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags_of_interest"].items()) + ".",
        f"- torch threads {rep['torch_threads']} ({rep['threads']['threads_from']}); "
        f"{rep['threads']['available_cores']} cores available to the process.",
        f"- Load average at start {ls.get('load1')} / {ls.get('load5')} / {ls.get('load15')} "
        f"({ls.get('runnable')} runnable), at end {le.get('load1')} / {le.get('load5')} / {le.get('load15')} "
        f"({le.get('runnable')} runnable; the load average counts this run's own threads too). **Other processes "
        "may have shared the CPU during this run** (a shared machine); `cpu util` below is the process's CPU time "
        "over wall time during the timed steps (2.0 = both threads on a core the whole time), and `fp32_end` "
        "repeats the fp32 peak at the end of the run.",
        f"- {s['steps']} timed steps per run after {s['warmup']} warm-up steps; {s['repeats']} repeats, framework, "
        "bare loop and bf16 interleaved (order rotated); medians over repeats of each run's mean step time; "
        "ratios are medians of the per-repeat paired ratios. Batch "
        f"{s['batch_size']}, max length {s['max_length']}, length-grouped {s['group_by_length']}; timed batches "
        "are the first epoch's batches as `train()` draws them, picked at evenly spaced quantiles of padded size.",
        f"- Wall time of this benchmark: {prov['wall_seconds']:.0f} s.",
        "",
        "## Machine peak (measured in this run)",
        "",
        table(["what", "shape (m,k,n)", "GFLOP/s"], [
            [k, "x".join(map(str, v["shape"])), v["flops_per_s"] / 1e9] for k, v in peak.items()]),
        "",
    ]
    notes = [v["note"] for v in peak.values() if v.get("note")]
    if not (cpu["flags_of_interest"].get("avx512_bf16") or cpu["flags_of_interest"].get("amx_bf16")) \
            and rep["device"] == "cpu":
        notes.append("this CPU has neither avx512_bf16 nor AMX, so bf16 matmuls are emulated and far slower than "
                     "fp32 (the fp32 steps below reach many times the bf16 'peak')")
    if notes:
        md += ["Note: " + "; ".join(notes) + ".", ""]
    md += [
        "## Framework against a bare PyTorch loop, per training recipe",
        "",
        "Same model (reset to the same initial weights before every run), same batches. The bare loop has its "
        "batches padded beforehand; for an aligning recipe it also runs the reference forward/backward and the "
        "projection (the least exact alignment needs).",
        "",
        table(["recipe", "framework s/step", "bare s/step", "framework / bare", "cpu util (fw)",
               "non-pad tok/s", "GFLOP/step", "achieved GFLOP/s", "% fp32 peak", "% bf16 peak",
               "% fp32 at model shape"],
              [[n, r["framework"]["sec_per_step_median"], r["bare"]["sec_per_step_median"], r["framework_over_bare"],
                r["framework"]["cpu_util_median"], r["tokens"]["train_nonpad_tokens_per_s"],
                r["flops"]["per_step"] / 1e9, r["flops"]["achieved_framework"] / 1e9,
                pct(r["flops"]["share_of_peak_fp32"]), pct(r["flops"]["share_of_peak_bf16"]),
                pct(r["flops"]["share_of_model_shape_fp32"])] for n, r in rec.items()]),
        "",
        "Per-repeat framework / bare: " + "; ".join(
            f"{n} " + ", ".join(f"{x:.3f}" for x in r["framework_over_bare_per_repeat"]) for n, r in rec.items()) + ".",
        "",
        "## Per defense",
        "",
        table(["defense", "trains its own victim", "recipe", "s/step", "x none", "x lora"],
              [[n, "yes" if d["acts_in_training"] else "no (plain victim)", d["recipe"], d["sec_per_step"],
                d["vs_none"], d["vs_lora"]] for n, d in dfs.items()]),
        "",
        f"Goals (issue 10): framework / bare <= {g['framework_over_bare_goal']} (worst here "
        f"{g['framework_over_bare_max']:.3f})"
        + (f"; musclelora / lora <= {g['musclelora_over_lora_goal']} (here {g['musclelora_over_lora']:.2f}; "
           f"the bare loops' ratio, the floor of exact alignment on this machine: "
           f"{g['musclelora_over_lora_bare']:.2f})" if "musclelora_over_lora" in g else "") + ".",
        "",
        "## Where a step's time goes (instrumented framework run, mean per step)",
        "",
    ]
    names = list(rec)
    rows = []
    for key, label in BREAKDOWN_PARTS:
        rows.append([label] + [f"{rec[n]['breakdown']['seconds_per_step'][key]:.4f} s "
                               f"({100 * rec[n]['breakdown']['share'][key]:.1f} %)" for n in names])
    rows.append(["total (instrumented)"] + [f"{rec[n]['breakdown']['seconds_per_step']['total']:.4f} s" for n in names])
    md += [table(["part"] + names, rows), ""]
    md += ["## Padding and tokens (timed batches)", ""]
    md += [table(["recipe", "non-pad tokens/step", "padded tokens/step", "pad share", "ref non-pad/step",
                  "ref padded/step", "ref pad share", "epoch mean padded/batch"],
                 [[n, r["tokens"]["train_nonpad_per_step"], r["tokens"]["train_padded_per_step"],
                   pct(r["tokens"]["train_pad_share"]), r["tokens"].get("reference_nonpad_per_step"),
                   r["tokens"].get("reference_padded_per_step"),
                   pct(r["tokens"]["reference_pad_share"]) if "reference_pad_share" in r["tokens"] else "-",
                   r["epoch_batches"]["mean_padded_tokens_per_batch"]] for n, r in rec.items()]), ""]
    md += ["## Per-epoch evaluation's share of a cell", "",
           "`predict_logits` over the selection rows (what `train()` runs after every epoch) plus the best-epoch "
           "weight copy, against an epoch of training (steps per epoch x the framework's s/step, scaled by the "
           "epoch's mean padded tokens per batch over the timed batches').", "",
           table(["recipe", "selection rows", "eval s", "eval s/sentence", "eval GFLOP/s", "epoch train s (est)",
                  "eval share of a cell", "tokenize train+sel+ref s"],
                 [[n, r["evaluation"]["rows"], r["evaluation"]["seconds"], r["evaluation"]["sec_per_sentence"],
                   r["evaluation"]["achieved_flops"] / 1e9, r["evaluation"]["epoch_train_seconds_est"],
                   pct(r["evaluation"]["share_of_cell"]), r["cell_estimate"]["tokenize_seconds"]]
                  for n, r in rec.items()]), ""]
    bfr = {n: r["bf16"] for n, r in rec.items() if "bf16" in r}
    if bfr:
        md += ["## bf16 autocast on this device (speed only)", "",
               "`torch.autocast(device, dtype=torch.bfloat16)` around `defense.backward`, as `precision=bf16` does in "
               "`train()`; fp32 timed on the same batches in the same repeats.", "",
               table(["recipe", "fp32 s/step", "bf16 s/step", "speedup (fp32/bf16)", "timed steps/run",
                      "mean loss fp32", "mean loss bf16"],
                     [[n, b["fp32_same_batches_median"], b["sec_per_step_median"], b["speedup_vs_fp32"], b["steps"],
                       b["mean_loss_fp32"], b["mean_loss_bf16"]] for n, b in bfr.items()]), ""]
        md += [f"- {n}: {b['note']}" for n, b in bfr.items() if b.get("note")] + [""]
    md += ["## Optimizer implementations (seconds per step on each recipe's trainable parameters)", "",
           table(["recipe", "tensors", "params", "default resolves to", "AdamW default", "foreach", "fused",
                  "clip default", "clip foreach"],
                 [[n, o["n_tensors"], o["n_params"], o.get("default_resolves_to"), o.get("default"), o.get("foreach"),
                   o.get("fused"), o.get("clip_default"), o.get("clip_foreach")]
                  for n, o in ((n, r["optimizer_variants"]) for n, r in rec.items())]), ""]
    if all("train_check" in r for r in rec.values()):
        md += ["## Check: `bench.models.training.train` itself", "",
               "One epoch of `train()` over the rows of the warm-up + timed batches (it draws its own batches of "
               "them), with its dev evaluation; s/step from its `on_step` timestamps, first step left out.", "",
               table(["recipe", "steps", "train() s/step", "replica s/step", "train() / replica",
                      "train() outside steps s"],
                     [[n, r["train_check"]["steps"], r["train_check"]["seconds_per_step_after_first"],
                       r["framework"]["sec_per_step_median"], r["train_check"]["over_replica"],
                       r["train_check"]["outside_steps_seconds"]] for n, r in rec.items()]), ""]
    if "inference" in dfs.get("onion", {}):
        o = dfs["onion"]["inference"]
        md += ["## ONION at inference", "",
               f"{o['sentences']} SST-2 clean test sentences (seeded sample, {o['mean_words']:.1f} words on "
               f"average; {o['lm_sequences_scored']} LM sequences: each sentence and each leave-one-word-out "
               f"variant), scorer `{o['scorer']}` (loaded once per process in {o['scorer_load_seconds']:.1f} s), "
               "score cache disabled (temporary BENCH_CACHE_DIR). Victim prediction: the plain model, "
               "`Victim.predict` (tokenise + `predict_logits`).", "",
               table(["what", "s/sentence"], [
                   ["ONION word scoring", o["scoring_sec_per_sentence"]],
                   ["victim prediction (plain)", o["victim_predict_sec_per_sentence"]],
                   ["ONION total (scoring + prediction)", o["onion_sec_per_sentence"]],
                   ["ONION / plain prediction", o["onion_over_plain_predict"]],
               ]), "",
               f"An ONION cell scores {o['cell_sentences_uncached']} sentences (calibration + clean and poisoned "
               f"test): about {o['cell_scoring_seconds_uncached_est']:.0f} s uncached, "
               f"{o['cell_scoring_seconds_clean_cached_est']:.0f} s once the clean test scores are cached.", ""]
    return "\n".join(md)


if __name__ == "__main__":
    main()
