"""BadActs (Yi et al., Findings of ACL 2024): detect abnormal activations, then draw them into clean intervals.

Construction, on the defender's clean calibration rows:

* detection: a Gaussian per neuron of the pooled token (the first token of an encoder, the last
  real token of a decoder) after every transformer block, fitted on one half of the rows; an input's
  score (the Neuron Activation State) is the share of neurons within mean +- ``delta`` std, and the
  threshold is the ``frr`` quantile of the scores of the other half;
* purification intervals: one interval [low, up] per neuron of every block output, at every real
  token. ``intervals="optimized"`` (the paper) learns them on the rows the victim gets right: the
  clamped model's logits must stay close to the victim's (MSE) while a penalty ``c`` on the
  interval widths shrinks them, ``c`` rising while the clean accuracy holds and falling when it does
  not, the whole fit retried with a smaller ``c`` if the accuracy ends below ``interval_min_acc``.
  ``intervals="gaussian"`` takes mean +- ``delta`` std of the real tokens and learns nothing.

Inference: an input whose score falls under the threshold is classified by a copy of the victim
whose block outputs are clamped into the intervals by forward hooks (``purify="all"``: every
input is). BadActs corrects, it never rejects.

Differences from the authors' code (clearloveclearlove/BadActs): the intervals start at the clean
mean +- ``delta`` std instead of the fixed [1 - e, 1] fitted to BERT-base's scale, so the same code
serves encoders and decoders of any width (``interval_start="authors"`` starts where they do); the blocks are found by name (``layer_pattern``), not
written for ``bert``; the penalty schedule and the retry are bounded by settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from bench.config import ConfigError, added
from bench.defense import Defense, DefenseContext
from bench.engine import progress
from bench.models.training import autocast
from bench.registry import register

# the transformer blocks: BERT/RoBERTa/DeBERTa `encoder.layer.N`, Llama/Mistral/Qwen `layers.N`, GPT-2 `h.N`
BLOCK_PATTERN = r"(?:^|\.)(?:encoder\.layer|layers|h|blocks)\.\d+$"


@dataclass(frozen=True)
class BadActsConfig:
    n_calibration: int = 200  # defender's clean rows: half fit the detector, half set its threshold
    frr: float = 0.05  # false rejection rate of the detector on clean rows (sets the threshold)
    delta: float = 3.0  # a neuron is normal within mean +- delta std (the authors' scripts use 3)
    purify: Literal["flagged", "all"] = "flagged"  # flagged: the paper's detection-then-purification
    intervals: Literal["optimized", "gaussian"] = "optimized"
    interval_lr: float = 0.01  # Adam on the interval bounds (as the authors)
    interval_epochs: int = 50
    # where the intervals start: "gaussian", the clean mean +- delta std of each neuron (works at any
    # activation scale); "authors", the authors' fixed [1 - e, 1] for every neuron (set for BERT-base)
    interval_start: Literal["gaussian", "authors"] = added("gaussian", "issue 24")
    interval_penalty: float = 0.1  # c: the weight of the interval-width penalty at the start
    interval_penalty_step: float = 1.2  # c is multiplied (accuracy holds) or divided by this
    interval_keep_acc: float = 0.98  # clean accuracy (of the rows the victim gets right) c must keep
    interval_min_acc: float = 0.97  # below this at the end, the fit restarts with c halved
    interval_retries: int = 2  # at most this many restarts (the best fit is kept)
    layer_pattern: str | None = None  # regex over model.named_modules(); None: every transformer block

    def validate(self) -> None:
        if self.n_calibration < 4:
            raise ConfigError(f"badacts.n_calibration must be >= 4, got {self.n_calibration}")
        if not 0.0 < self.frr < 1.0:
            raise ConfigError(f"badacts.frr must be in (0, 1), got {self.frr}")
        if self.delta <= 0:
            raise ConfigError(f"badacts.delta must be > 0, got {self.delta}")
        if self.interval_epochs < 0 or self.interval_retries < 0 or self.interval_lr <= 0:
            raise ConfigError("badacts: interval_epochs, interval_retries must be >= 0 and interval_lr > 0")
        if self.interval_penalty < 0 or self.interval_penalty_step < 1:
            raise ConfigError("badacts: interval_penalty must be >= 0 and interval_penalty_step >= 1")
        if self.layer_pattern is not None:
            try:
                re.compile(self.layer_pattern)
            except re.error as e:
                raise ConfigError(f"badacts.layer_pattern {self.layer_pattern!r} is not a regex ({e})") from None


class _Hooks:
    """Forward hooks on the chosen modules of a model, active only inside ``with``.

    A pre-hook on the whole model keeps the batch's attention mask, so only real tokens are clamped
    and counted. Modes: ``off`` (pass through), ``record`` (keep the pooled token of every module,
    and with ``collect_tokens`` the per-neuron sums over real tokens), ``clamp`` (clamp the real
    tokens into [up - exp(margin), up], per neuron)."""

    def __init__(self, model: Any, modules: list[tuple[str, Any]], decoder: bool):
        self.model, self.modules, self.decoder = model, modules, decoder
        self.mode = "off"
        self.collect_tokens = False
        self.mask: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.pooled: list[torch.Tensor] = []
        self.sums: list[list[torch.Tensor]] = []  # per module: [count, sum, sum of squares]
        self.up: list[torch.Tensor] = []
        self.margin: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "_Hooks":
        self._handles.append(self.model.register_forward_pre_hook(self._pre, with_kwargs=True))
        for i, (_, m) in enumerate(self.modules):
            self._handles.append(m.register_forward_hook(self._make(i)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.mask = self.pos = None
        self.mode = "off"

    def _pre(self, module: Any, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None:
            ref = kwargs.get("input_ids", args[0] if args else None)
            if ref is None:
                ref = kwargs["inputs_embeds"][..., 0]
            mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
        mask = mask.long()
        self.mask = mask.bool()
        if self.decoder:  # the last real token, whichever side the padding is on
            self.pos = mask.shape[1] - 1 - mask.flip(1).argmax(1)
        else:  # the first real token ([CLS] / <s>)
            self.pos = mask.argmax(1)
        self.pooled = []

    def _make(self, i: int):
        def hook(module: Any, args: tuple, output: Any) -> Any:
            if self.mode == "off":
                return None
            h = output[0] if isinstance(output, tuple) else output
            mask = self.mask
            if mask is None or tuple(mask.shape) != tuple(h.shape[:2]):
                mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
            if self.mode == "record":
                pos = self.pos if self.pos is not None and len(self.pos) == h.shape[0] else torch.zeros(
                    h.shape[0], dtype=torch.long, device=h.device)
                self.pooled.append(h[torch.arange(h.shape[0], device=h.device), pos].detach().float().cpu())
                if self.collect_tokens:
                    real = h.detach()[mask].double().cpu()
                    s = self.sums[i]
                    s[0] += real.shape[0]
                    s[1] += real.sum(0)
                    s[2] += (real * real).sum(0)
                return None
            up = self.up[i].to(h.dtype)
            low = (self.up[i] - torch.exp(self.margin[i])).to(h.dtype)
            clamped = torch.minimum(torch.maximum(h, low), up)
            h = torch.where(mask.unsqueeze(-1), clamped, h)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        return hook


def find_blocks(model: Any, pattern: str | None) -> list[tuple[str, Any]]:
    """The modules to watch: names matching ``pattern`` (default: every transformer block), in
    forward order; works through wrappers such as PEFT (their names only gain a prefix)."""
    rx = re.compile(pattern or BLOCK_PATTERN)
    found = [(n, m) for n, m in model.named_modules() if n and rx.search(n)]
    if not found:
        raise ConfigError(
            f"badacts: no module of this {getattr(model.config, 'model_type', '?')} model matches "
            f"{(pattern or BLOCK_PATTERN)!r}; set badacts.layer_pattern to a regex over model.named_modules()"
        )
    return found


@register("defense", "badacts")
class BadActs(Defense):
    """BadActs: flags inputs with abnormal neuron activations and clamps them into clean intervals (Yi et al., 2024)."""

    Config = BadActsConfig
    # the interval fit is most of the cost. SST-2 BadNets, MiniLM, 2 CPU cores, 200 rows (victim ASR
    # 0.99): 50 epochs take 220 s (ASR 0.66), 12 epochs 51 s (ASR 0.71); 20 epochs missed
    # interval_min_acc and restarted twice (260 s, ASR 0.76), hence 12 under the cpu profile
    profile_defaults = {"smoke": {"n_calibration": 48, "interval_epochs": 2}, "cpu": {"interval_epochs": 12}}

    # --- passes over texts -----------------------------------------------------------------
    def _pass(self, enc: Any, indices: list[int] | np.ndarray, mode: str, collect_tokens: bool = False,
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, pooled activations or None) of the rows ``indices`` of ``enc``, in that order."""
        hooks, model = self._hooks, self._victim.model
        indices = np.asarray(indices, dtype=np.int64)
        n = len(indices)
        logits = np.zeros((n, self._victim.num_labels), dtype=np.float32)
        pooled = None
        order = np.argsort([len(enc.features[i]["input_ids"]) for i in indices], kind="stable")
        hooks.mode, hooks.collect_tokens = mode, collect_tokens
        try:
            for start in range(0, n, self._eval_batch):
                pos = order[start:start + self._eval_batch]
                batch = enc.batch(indices[pos], self._victim.device)
                with torch.no_grad(), autocast(self._victim.device, self._precision):
                    z = model(**batch).logits
                logits[pos] = z.float().cpu().numpy()
                if mode == "record":
                    feats = torch.cat(hooks.pooled, dim=1).numpy()
                    if pooled is None:
                        pooled = np.zeros((n, feats.shape[1]), dtype=np.float32)
                    pooled[pos] = feats
        finally:
            hooks.mode, hooks.collect_tokens = "off", False
        return logits, pooled

    def nas(self, pooled: np.ndarray) -> np.ndarray:
        """Neuron Activation State: the share of neurons inside mean +- delta std (low: abnormal)."""
        inside = np.abs(pooled - self._mu) <= self.config.delta * self._sigma + 1e-6
        return inside.mean(1)

    # --- after training --------------------------------------------------------------------
    def calibrate(self, victim: Any, ctx: DefenseContext) -> None:
        from bench.models.backbones import DECODER_TYPES

        c = self.config
        rows = ctx.clean(c.n_calibration)
        texts, labels = list(rows["text"]), np.asarray(rows["label"], dtype=np.int64)
        self._victim = victim.copy()
        model = self._victim.model
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self._precision = getattr(ctx.profile, "precision", "fp32")
        self._eval_batch = int(getattr(ctx.profile, "eval_batch_size", 64))
        blocks = find_blocks(model, c.layer_pattern)
        decoder = getattr(model.config, "model_type", "") in DECODER_TYPES
        self._hooks = _Hooks(model, blocks, decoder)
        self._seen, self._flagged = 0, 0
        device = self._victim.device

        enc = self._victim.encode(texts)
        with self._hooks as hooks:
            hooks.sums = [[0, 0.0, 0.0] for _ in blocks]
            logits, pooled = self._pass(enc, np.arange(len(texts)), "record", collect_tokens=True)

            # detection: Gaussians on one half, threshold on the other
            perm = ctx.rng("badacts-split").permutation(len(texts))
            fit, held = perm[: len(texts) // 2], perm[len(texts) // 2:]
            self._mu = pooled[fit].mean(0)
            self._sigma = pooled[fit].std(0)
            held_scores = self.nas(pooled[held])
            self._threshold = float(np.quantile(held_scores, c.frr))

            # purification intervals: start at the clean mean +- delta std of the real tokens, or at the
            # authors' [1 - e, 1] (up 1, log-width 1) for every neuron
            up, margin = [], []
            for count, s1, s2 in hooks.sums:
                mean = s1 / max(count, 1)
                if c.interval_start == "authors":
                    up.append(torch.ones_like(mean).float().to(device))
                    margin.append(torch.ones_like(mean).float().to(device))
                    continue
                std = torch.sqrt(torch.clamp(s2 / max(count, 1) - mean * mean, min=0.0))
                width = torch.clamp(2 * c.delta * std, min=1e-6)
                up.append((mean + c.delta * std).float().to(device))
                margin.append(torch.log(width).float().to(device))
            hooks.sums = []
            correct = np.flatnonzero(logits.argmax(-1) == labels)
            stats: dict[str, Any] = {}
            if c.intervals == "optimized" and c.interval_epochs > 0 and len(correct):
                up, margin, stats = self._optimize(enc, correct, labels, logits, up, margin, ctx)
            hooks.up, hooks.margin = up, margin
            held_flagged = float((held_scores < self._threshold).mean())
        width = torch.cat([torch.exp(m).detach().cpu() for m in margin])
        ctx.log(
            badacts_layers=[n for n, _ in blocks],
            badacts_threshold=self._threshold,
            badacts_calibration_flagged_share=held_flagged,
            badacts_interval_width_mean=float(width.mean()),
            badacts_interval_rows=int(len(correct)),
            **stats,
        )

    def _optimize(self, enc: Any, correct: np.ndarray, labels: np.ndarray, logits: np.ndarray,
                  up0: list[torch.Tensor], margin0: list[torch.Tensor], ctx: DefenseContext,
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor], dict]:
        """The paper's interval learning: keep the clamped logits close to the victim's on the rows it
        gets right while shrinking the intervals; a penalty weight that adapts to the clean accuracy."""
        c = self.config
        hooks, model, device = self._hooks, self._victim.model, self._victim.device
        ref = torch.tensor(logits[correct], dtype=torch.float32, device=device)
        gold = labels[correct]
        batch_size = int(ctx.profile.batch_size)
        gen = ctx.torch_generator("badacts-intervals")
        best: tuple[float, list, list, float] | None = None
        penalty = c.interval_penalty
        attempts = 0
        for attempt in range(c.interval_retries + 1):
            attempts += 1
            up = [u.clone().requires_grad_(True) for u in up0]
            margin = [m.clone().requires_grad_(True) for m in margin0]
            hooks.up, hooks.margin = up, margin
            opt = torch.optim.Adam(up + margin, lr=c.interval_lr)
            weight = penalty
            acc = 1.0
            for epoch in progress.iterate(range(c.interval_epochs), f"BadActs: intervals (attempt {attempt + 1})",
                                          "epoch"):
                hooks.mode = "clamp"
                try:
                    for b in torch.randperm(len(correct), generator=gen).split(batch_size):
                        b = b.numpy()
                        batch = enc.batch(correct[b], device)
                        opt.zero_grad(set_to_none=True)
                        with autocast(device, self._precision):
                            out = model(**batch).logits.float()
                        width = torch.sqrt(sum((torch.exp(m) ** 2).sum() for m in margin))
                        loss = torch.nn.functional.mse_loss(out, ref[b]) + weight * width
                        loss.backward()
                        opt.step()
                finally:
                    hooks.mode = "off"
                adapt = epoch > 10 and epoch % 5 == 0
                if adapt or epoch == c.interval_epochs - 1:
                    z, _ = self._pass(enc, correct, "clamp")
                    acc = float((z.argmax(-1) == gold).mean())
                    if adapt:
                        weight = weight * c.interval_penalty_step if acc >= c.interval_keep_acc \
                            else weight / c.interval_penalty_step
            fit = ([u.detach() for u in up], [m.detach() for m in margin])
            if best is None or acc > best[0]:
                best = (acc, fit[0], fit[1], weight)
            if acc >= c.interval_min_acc:
                break
            penalty /= 2
        assert best is not None
        acc, up, margin, weight = best
        return up, margin, {
            "badacts_interval_acc": acc, "badacts_interval_penalty": weight,
            "badacts_interval_attempts": attempts,
        }

    def predict(self, texts: list[str], victim: Any, ctx: DefenseContext) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros(0, dtype=np.int64)
        enc = self._victim.encode(texts)
        with self._hooks:
            logits, pooled = self._pass(enc, np.arange(len(texts)), "record")
            flagged = self.nas(pooled) < self._threshold
            purify = np.ones(len(texts), dtype=bool) if self.config.purify == "all" else flagged
            if purify.any():
                idx = np.flatnonzero(purify)
                logits[idx], _ = self._pass(enc, idx, "clamp")
        self._seen += len(texts)
        self._flagged += int(flagged.sum())
        ctx.log(badacts_flagged_share=self._flagged / self._seen)
        return logits.argmax(-1).astype(np.int64)
