"""RAP (Yang et al., EMNLP 2021): robustness-aware perturbations reject inputs that a rare word cannot move.

A rare word (``mb``) is put in front of the sentence and only its input-embedding row(s) are
trained, on a copy of the victim, so that the protected label's probability of a clean input drops
by ``prob_lower``..``prob_upper`` when the word is added. A backdoored input predicted as the
protected label holds on to it (the trigger dominates), so its drop is small: an input the victim
predicts as the protected label whose drop falls under the ``frr`` quantile of the clean drops is
rejected (-1).

Which label is protected. The authors' code takes the target label as an argument, and OpenBackdoor's
port reads it from the poisoned data: both know what the defender cannot. Here (version 2) the
default protects every label: the word's embedding is trained once per label (each time from the
original row, on that label's correctly classified clean rows, with its own threshold), and an input
is judged by the RAP of the label the victim predicts, so nothing depends on knowing the target.
``protected_label=N`` protects one label only (version 1 protected label 1 by default, which is the
target of SST-2 and HSOL: an oracle there, and the wrong label on AG News).

Other differences from the authors' code (lancopku/RAP): the clean rows are the defender's
calibration rows; the word is ``mb`` by default (``cf`` is a BadNets trigger word here); the default
step size and epochs are larger (see ``RapConfig``), for the much smaller construction set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.config import ConfigError
from bench.defense import Defense, DefenseContext
from bench.engine import progress
from bench.models.training import autocast
from bench.registry import register


@dataclass(frozen=True)
class RapConfig:
    word: str = "mb"  # the RAP word, put in front of every sentence
    # the label RAP protects (a defender's choice, never read from the data); None: every label, each
    # with its own trained word embedding and threshold
    protected_label: int | None = None
    n_calibration: int = 200  # defender's clean rows; the protected-label rows the victim gets right train RAP
    prob_lower: float = 0.1  # wanted drop of the protected-label probability on clean inputs: at least
    prob_upper: float = 0.3  # ... and at most
    scale: float = 1.0  # weight of the "drop too small" term of the RAP loss (lambda in the paper)
    # step size and epochs of the gradient steps on the word's embedding row(s). The paper's 1e-2 x 5
    # epochs was meant for a construction set of thousands of rows; on 200 calibration rows (about 100
    # of the protected label: 3 steps an epoch) it barely moves the word (6% of the clean drops in
    # range on SST-2/MiniLM), 0.1 x 20 epochs meets the objective (89% in range)
    rap_lr: float = 0.1
    rap_epochs: int = 20
    # the authors' code never clears the gradient between steps ("faster convergence", as in embedding
    # poisoning): every step follows the sum of all gradients so far. False: plain gradient descent.
    accumulate_grad: bool = True
    frr: float = 0.05  # false rejection rate allowed on the clean calibration rows (sets the threshold)

    def validate(self) -> None:
        if not self.word.strip():
            raise ConfigError("rap.word must be a non-empty word")
        if self.protected_label is not None and self.protected_label < 0:
            raise ConfigError(f"rap.protected_label must be >= 0, got {self.protected_label}")
        if not 0.0 <= self.prob_lower < self.prob_upper <= 1.0:
            raise ConfigError(
                f"rap: need 0 <= prob_lower < prob_upper <= 1, got {self.prob_lower} and {self.prob_upper}"
            )
        if not 0.0 < self.frr < 1.0:
            raise ConfigError(f"rap.frr must be in (0, 1), got {self.frr}")
        if self.rap_epochs < 1 or self.rap_lr <= 0 or self.scale < 0:
            raise ConfigError("rap: rap_epochs must be >= 1, rap_lr > 0 and scale >= 0")
        if self.n_calibration < 1:
            raise ConfigError(f"rap.n_calibration must be >= 1, got {self.n_calibration}")


@register("defense", "rap")
class RAP(Defense):
    """RAP: a trained rare-word perturbation; rejects protected-label inputs it barely moves (Yang et al., 2021)."""

    Config = RapConfig
    version = 2  # protects every label by default (version 1: label 1, the target of SST-2 and HSOL)
    profile_defaults = {"smoke": {"n_calibration": 48, "rap_epochs": 2}}

    @classmethod
    def rejects(cls) -> bool:
        return True

    # --- helpers ---------------------------------------------------------------------------
    def perturb(self, texts: list[str]) -> list[str]:
        """The RAP word in front of every sentence."""
        return [f"{self.config.word} {t}".strip() for t in texts]

    def word_ids(self, tokenizer: Any) -> list[int]:
        ids = list(dict.fromkeys(tokenizer(self.config.word, add_special_tokens=False)["input_ids"]))
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        if not ids or any(i in special for i in ids):
            raise ConfigError(
                f"rap.word={self.config.word!r} maps to no token or to a special/unknown token of this "
                f"backbone's tokenizer (ids {ids}); choose another rare word"
            )
        return ids

    def drops(self, texts: list[str], p_label: np.ndarray, k: int) -> np.ndarray:
        """How much label ``k``'s probability (``p_label``: the victim's, without the word) falls when
        the word, as trained for label ``k``, is added; measured on the RAP copy."""
        if not texts:
            return np.zeros(0, dtype=np.float64)
        self._use_rows(k)
        return p_label - self._rap.probs(self.perturb(texts))[:, k]

    def _use_rows(self, k: int) -> None:
        """Put label ``k``'s trained word embedding into the copy."""
        with torch.no_grad():
            weight = self._rap.model.get_input_embeddings().weight
            weight[self._idx] = self._rows[k].to(weight.device, weight.dtype)

    # --- after training --------------------------------------------------------------------
    def calibrate(self, victim: Any, ctx: DefenseContext) -> None:
        c = self.config
        if c.protected_label is not None and not 0 <= c.protected_label < ctx.num_labels:
            raise ConfigError(
                f"rap.protected_label={c.protected_label} is out of range: this dataset has {ctx.num_labels} "
                f"labels (0..{ctx.num_labels - 1}); set it with --set rap.protected_label=N, or leave it unset "
                "to protect every label"
            )
        protected = [c.protected_label] if c.protected_label is not None else list(range(ctx.num_labels))
        rows = ctx.clean(c.n_calibration)
        texts, labels = list(rows["text"]), np.asarray(rows["label"], dtype=np.int64)
        self._rap = victim.copy()
        self._seen, self._rejected = 0, 0
        ids = self.word_ids(self._rap.tokenizer)
        self._idx = torch.tensor(ids, device=self._rap.model.get_input_embeddings().weight.device)
        original = self._rap.model.get_input_embeddings().weight.detach()[self._idx].clone()
        probs = victim.probs(texts)
        self._rows, self._threshold = {}, {}
        per_label = {}
        for k in protected:
            self._rows[k] = original
            self._use_rows(k)  # each label's word starts from the original embedding
            per_label[k] = self._calibrate_label(k, texts, labels, probs, ids, ctx)
        if c.protected_label is not None:
            ctx.log(rap_protected_label=c.protected_label, rap_token_ids=ids, **per_label[c.protected_label])
        else:
            ctx.log(rap_protected_label="every", rap_token_ids=ids,
                    rap_per_label={str(k): v for k, v in per_label.items()})

    def _calibrate_label(self, k: int, texts, labels, probs, ids, ctx) -> dict:
        """Train the word for label ``k`` on its correctly classified clean rows and set its threshold."""
        c = self.config
        keep = (labels == k) & (probs.argmax(-1) == k)
        train_texts = [t for t, m in zip(texts, keep) if m]
        p0 = probs[keep, k]
        if not train_texts:
            # nothing to construct RAP on: reject nothing for this label rather than guess a threshold
            self._threshold[k] = None
            return {"rap_rows": 0, "rap_threshold": None, "rap_clean_drop_mean": None, "rap_in_range_share": None,
                    "rap_note": f"no calibration row of label {k} is classified correctly"}
        losses = self._construct(train_texts, p0, ids, ctx, k)
        with torch.no_grad():
            self._rows[k] = self._rap.model.get_input_embeddings().weight.detach()[self._idx].clone()
        drop = self.drops(train_texts, p0, k)
        self._threshold[k] = float(np.quantile(drop, c.frr))
        in_range = (drop >= c.prob_lower) & (drop <= c.prob_upper)
        return {"rap_rows": len(train_texts), "rap_threshold": self._threshold[k],
                "rap_clean_drop_mean": float(drop.mean()), "rap_in_range_share": float(in_range.mean()),
                "rap_loss_per_epoch": [round(x, 6) for x in losses]}

    def _construct(self, texts: list[str], p0: np.ndarray, ids: list[int], ctx: DefenseContext, k: int) -> list[float]:
        """Train the RAP word's embedding row(s) of the copy for label ``k``; every other weight stays as it was."""
        c = self.config
        model = self._rap.model
        device = self._rap.device
        precision = getattr(ctx.profile, "precision", "fp32")
        batch_size = int(ctx.profile.batch_size)
        model.eval()  # no dropout: RAP is deterministic and leaves the global random state alone
        for p in model.parameters():
            p.requires_grad_(False)
        weight = model.get_input_embeddings().weight
        weight.requires_grad_(True)
        idx = torch.tensor(ids, device=weight.device)
        row_mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        row_mask[idx] = 1.0
        handle = weight.register_hook(lambda g: g * row_mask)  # only the RAP rows get a gradient
        norms = weight.detach()[idx].norm(dim=1, keepdim=True)
        enc = self._rap.encode(self.perturb(texts))
        target = torch.tensor(p0, dtype=torch.float32, device=device)
        losses = []
        try:
            weight.grad = None
            for _ in progress.iterate(range(c.rap_epochs), "RAP: trigger embedding", "epoch"):
                total = 0.0
                for start in range(0, len(texts), batch_size):
                    b = list(range(start, min(start + batch_size, len(texts))))
                    batch = enc.batch(b, device)
                    with autocast(device, precision):
                        logits = model(**batch).logits
                    p_rap = torch.softmax(logits.float(), dim=-1)[:, k]
                    drop = target[b] - p_rap
                    loss = c.scale * torch.relu(c.prob_lower - drop).mean() + torch.relu(drop - c.prob_upper).mean()
                    if not c.accumulate_grad:
                        weight.grad = None
                    loss.backward()
                    with torch.no_grad():
                        rows = weight[idx] - c.rap_lr * weight.grad[idx]
                        # keep each row's norm, as the authors do
                        rows = rows * (norms / rows.norm(dim=1, keepdim=True).clamp_min(1e-12))
                        weight[idx] = rows.to(weight.dtype)
                    total += float(loss.detach()) * len(b)
                losses.append(total / len(texts))
        finally:
            handle.remove()
            weight.grad = None
            weight.requires_grad_(False)
        return losses

    def predict(self, texts: list[str], victim: Any, ctx: DefenseContext) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros(0, dtype=np.int64)
        probs = victim.probs(texts)
        pred = probs.argmax(-1).astype(np.int64)
        out = pred.copy()
        for k, threshold in self._threshold.items():  # each input is judged by its predicted label's RAP
            candidates = np.flatnonzero(pred == k)
            if threshold is not None and len(candidates):
                drop = self.drops([texts[i] for i in candidates], probs[candidates, k], k)
                out[candidates[drop < threshold]] = -1
        self._seen += len(texts)
        self._rejected += int((out == -1).sum())
        ctx.log(rap_rejected_share=self._rejected / self._seen)
        return out
