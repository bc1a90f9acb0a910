"""BTU: Backdoor Token Unlearning (Jiang et al., AAAI 2025).

"Backdoor Token Unlearning: Exposing and Defending Backdoors in Pretrained Language Models" (code:
XDJPH/Backdoor-Token-Unlearning). Two findings: when *only the word-embedding layer* is trained on a
poisoned set, the embeddings of trigger tokens move much further than those of clean tokens (a trigger
token alone decides the label of every poisoned row, so every update pushes its row the same way); and
the backdoor of a fully fine-tuned model lives mostly in those rows. BTU therefore

1. *exposes* suspect tokens: short embedding-only trainings on the poisoned training rows, each ranking
   the vocabulary by how far (L2) each token's embedding moved and taking the top ``suspect_fraction``
   of the vocabulary; the authors' code runs three such rounds and takes the union:
   ``pooled`` -- a bag-of-embeddings classifier (embeddings, mean over the sentence, a fresh linear
   head; embeddings and head train, 1 epoch, batch 256); ``pooled-again`` -- the same on the rows with
   the first round's suspects removed, to expose triggers the first round's top list crowded out;
   ``full`` -- the whole classifier with everything frozen except the word embeddings (its random head
   too), 1 epoch at the profile's batch size (the authors': 64 on SST-2). Special tokens are never
   suspects.
2. trains the model normally (full fine-tuning on every training row);
3. *unlearns* (after training, "dimensional fine-grained unlearning"): with ``c = ||E - E0||_F / V``
   (the fine-tuned embedding matrix ``E`` against the pretrained ``E0``, over the ``V`` vocabulary rows),
   every dimension of a suspect's row that moved by more than ``c`` is reset to the pretrained
   *padding* token's value in that dimension; the rest of the row keeps its fine-tuned value. (A decoder
   tokenizer without a padding token pads with its end-of-sequence token, so there that token's
   embedding is the one used.)

Where each step runs here. The exposure rounds run in :meth:`BTU.select_train`, which the runner calls
after ``prepare_model`` has built the model and before the first training step; it sees exactly the
training rows (text and label), keeps them all, and writes the suspects into the model's
``btu_suspects`` buffer (so a victim loaded from the cache carries them) and into the record
(``training_stats.btu_suspects``). The unlearning runs in :meth:`BTU.calibrate`, on a copy of the
trained victim (the pretrained ``E0`` comes from ``ctx.backbone()``); ``predict`` uses that copy. As in
the authors' pipeline, the epoch kept is chosen on clean dev before the unlearning.

``--set btu.unlearn=before`` instead neutralises before training, as a defense that cannot touch the
model afterwards would: the suspects' rows are replaced by the pretrained padding embedding and kept
frozen through training (their gradient rows zeroed), and the victim predicts as trained.

Defaults and deviations: ``suspect_fraction`` 0.0005 of the vocabulary per round (the authors' code
takes ``int(0.0005 x 35022)`` = 17 for BERT; we take 0.0005 of the actual vocabulary, 15 for
BERT/MiniLM); exposure learning rate = the profile's full fine-tuning rate (the authors' 2e-5 is theirs);
the ``pooled`` rounds use the word embeddings only (the authors' BERT version also trains position and
segment embeddings and the embedding LayerNorm) and average over real tokens only (theirs averages
over the padding to length 128 too), and ``pooled-again`` masks the first round's suspect tokens out of
the rows (theirs deletes the decoded token's text with a string replace). The authors' pipeline ends with
one epoch of fine-tuning on clean held-out rows after the unlearning; that step is left out here (it
would make BTU a defense that takes clean rows; none of the other training-time defenses here does).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import ConfigError
from bench.defense import Defense, DefenseContext, StepState
from bench.models.backbones import LoadedModel
from bench.models.seeding import torch_seeded
from bench.models.training import Encoded, autocast, epoch_batches
from bench.registry import register

ROUNDS = ("pooled", "pooled-again", "full")
BUFFER = "btu_suspects"


# --- ranking and unlearning (pure functions, tested on their own) ---------------------------------

def most_moved(before: torch.Tensor, after: torch.Tensor, k: int, exclude: list[int] | set[int] = ()) -> list[int]:
    """The ``k`` rows whose L2 distance between ``before`` and ``after`` is largest (largest first),
    never one of ``exclude``."""
    dist = (after.float() - before.float()).norm(dim=1)
    if len(exclude):
        dist[torch.as_tensor(sorted(set(exclude)), dtype=torch.long)] = -1.0
    k = min(k, int((dist >= 0).sum()))
    return [int(i) for i in torch.topk(dist, k).indices.tolist()]


def unlearn_rows(trained: torch.Tensor, pretrained: torch.Tensor, suspects: list[int], pad_id: int) -> torch.Tensor:
    """BTU's dimensional fine-grained unlearning: in each suspect row of ``trained``, every dimension
    that moved from ``pretrained`` by more than ``c = ||trained - pretrained||_F / V`` takes the value
    of the pretrained padding embedding there. Returns the new matrix (the input is left alone)."""
    out = trained.detach().clone()
    if not suspects:
        return out
    delta = (trained.float() - pretrained.float())
    c = delta.norm() / trained.shape[0]
    idx = torch.as_tensor(suspects, dtype=torch.long)
    moved = delta[idx].abs() > c
    pad = pretrained[pad_id].to(out.dtype).expand(len(suspects), -1)
    out[idx] = torch.where(moved, pad, out[idx])
    return out


# --- the exposure rounds --------------------------------------------------------------------------

def _pooled_round(weight: torch.Tensor, enc: Encoded, num_labels: int, hidden_ids: set[int], lr: float, epochs: int,
                  batch_size: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """Train a bag-of-embeddings classifier (mean of the word embeddings of the real tokens, a fresh linear
    head); returns the trained embedding matrix."""
    emb = torch.nn.Parameter(weight.detach().clone().float().to(device))
    head = torch.nn.Linear(emb.shape[1], num_labels)
    with torch.no_grad():
        torch.nn.init.kaiming_uniform_(head.weight, a=math.sqrt(5), generator=gen)
        head.bias.zero_()
    head.to(device)
    opt = torch.optim.AdamW([emb, *head.parameters()], lr=lr, weight_decay=0.0)
    hidden = torch.as_tensor(sorted(hidden_ids), dtype=torch.long, device=device) if hidden_ids else None
    for _ in range(epochs):
        for idx in epoch_batches(enc, batch_size, False, gen):
            b = enc.batch(idx, device)
            ids, mask = b["input_ids"], b["attention_mask"].float()
            if hidden is not None:
                mask = mask * (~torch.isin(ids, hidden)).float()
            vec = F.embedding(ids, emb)
            pooled = (vec * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
            loss = F.cross_entropy(head(pooled), b["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return emb.detach()


def _full_round(model: torch.nn.Module, enc: Encoded, lr: float, epochs: int, batch_size: int, device: torch.device,
                precision: str, gen: torch.Generator) -> torch.Tensor:
    """Train only the word embeddings of a copy of the whole classifier; returns the trained matrix."""
    probe = copy.deepcopy(model).to(device)
    for p in probe.parameters():
        p.requires_grad_(False)
    emb = probe.get_input_embeddings().weight
    emb.requires_grad_(True)
    opt = torch.optim.AdamW([emb], lr=lr, weight_decay=0.0)
    probe.train()
    for _ in range(epochs):
        for idx in epoch_batches(enc, batch_size, False, gen):
            with autocast(device, precision):
                loss = probe(**enc.batch(idx, device)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return emb.detach().float().cpu()


@dataclass(frozen=True)
class BTUConfig:
    rounds: tuple[str, ...] = ROUNDS
    suspect_fraction: float = 0.0005  # of the vocabulary, per round
    exposure_lr: float | None = None  # None: the profile's learning_rate
    exposure_epochs: int = 1
    pooled_batch_size: int = 256
    unlearn: Literal["after", "before"] = "after"

    def validate(self) -> None:
        bad = [r for r in self.rounds if r not in ROUNDS]
        if bad or not self.rounds:
            raise ConfigError(f"btu.rounds={list(self.rounds)}: each round is one of {', '.join(ROUNDS)} "
                              f"(e.g. --set btu.rounds=pooled,full)")
        if "pooled-again" in self.rounds and "pooled" not in self.rounds:
            raise ConfigError("btu.rounds: pooled-again removes the pooled round's suspects, so it needs pooled too "
                              "(--set btu.rounds=pooled,pooled-again,full)")
        if not 0 < self.suspect_fraction < 0.1:
            raise ConfigError(f"btu.suspect_fraction={self.suspect_fraction}: must be in (0, 0.1) (the authors': "
                              "--set btu.suspect_fraction=0.0005)")
        if self.exposure_lr is not None and self.exposure_lr <= 0:
            raise ConfigError(f"btu.exposure_lr={self.exposure_lr}: must be > 0 (or None for the profile's learning_rate)")
        if self.exposure_epochs < 1 or self.pooled_batch_size < 1:
            raise ConfigError(f"btu.exposure_epochs={self.exposure_epochs}, btu.pooled_batch_size="
                              f"{self.pooled_batch_size}: both must be >= 1 (the authors': 1 and 256)")


@register("defense", "btu")
class BTU(Defense):
    """BTU: embedding-only training exposes trigger tokens; full fine-tuning; their embeddings reset to [PAD]'s."""

    Config = BTUConfig

    def per_round(self, vocab: int) -> int:
        return max(1, int(self.config.suspect_fraction * vocab))

    def prepare_model(self, loaded: LoadedModel, ctx: DefenseContext):
        model = loaded.model
        vocab = model.get_input_embeddings().num_embeddings
        slots = len(self.config.rounds) * self.per_round(vocab)
        # the suspects travel with the model (state dict, victim cache); -1 marks an empty slot
        model.register_buffer(BUFFER, torch.full((slots,), -1, dtype=torch.long))
        self._model, self._tokenizer = model, loaded.tokenizer
        return model

    # --- 1. exposure, before the first training step ------------------------------------------
    def select_train(self, rows, ctx: DefenseContext) -> np.ndarray | None:
        c = self.config
        model, tok = self._model, self._tokenizer
        prof = ctx.profile
        lr = c.exposure_lr if c.exposure_lr is not None else prof.learning_rate
        enc = Encoded(tok, list(rows["text"]), [int(x) for x in rows["label"]], prof.max_length)
        weight = model.get_input_embeddings().weight.detach().float().cpu().clone()
        k = self.per_round(weight.shape[0])
        special = set(int(i) for i in tok.all_special_ids)
        found: dict[str, list[int]] = {}
        with torch_seeded(ctx.seed):  # dropout in the full round; the caller's random state is left alone
            for name in c.rounds:
                gen = ctx.torch_generator(f"btu-{name}")
                if name == "full":
                    trained = _full_round(model, enc, lr, c.exposure_epochs, prof.batch_size, ctx.device,
                                          prof.precision, gen)
                else:
                    hidden = set(found.get("pooled", [])) if name == "pooled-again" else set()
                    trained = _pooled_round(weight, enc, ctx.num_labels, hidden, lr, c.exposure_epochs,
                                            c.pooled_batch_size, ctx.device, gen).cpu()
                found[name] = most_moved(weight, trained, k, special | (hidden if name == "pooled-again" else set()))
        suspects = sorted(set(i for ids in found.values() for i in ids))
        buf = getattr(model, BUFFER)
        buf.fill_(-1)
        buf[: len(suspects)] = torch.as_tensor(suspects, dtype=torch.long)
        if c.unlearn == "before":
            self._neutralise(model, suspects, tok.pad_token_id)
        ctx.log(btu_suspects=tok.convert_ids_to_tokens(suspects),
                btu_rounds={n: tok.convert_ids_to_tokens(ids) for n, ids in found.items()})
        return None  # every row is kept

    @staticmethod
    def _neutralise(model: Any, suspects: list[int], pad_id: int) -> None:
        emb = model.get_input_embeddings().weight
        with torch.no_grad():
            emb[torch.as_tensor(suspects, dtype=torch.long)] = emb[pad_id].clone()

    # --- 2. training (plain, or with the neutralised rows frozen) -----------------------------
    def backward(self, state: StepState) -> float:
        loss = super().backward(state)
        if self.config.unlearn == "before":
            ids = suspects_of(state.model)
            grad = state.model.get_input_embeddings().weight.grad
            if ids and grad is not None:
                grad[torch.as_tensor(ids, dtype=torch.long, device=grad.device)] = 0
        return loss

    # --- 3. unlearning, after training ---------------------------------------------------------
    def calibrate(self, victim, ctx: DefenseContext) -> None:
        if self.config.unlearn != "after":
            return
        ids = suspects_of(victim.model)
        clean = victim.copy()
        emb = clean.model.get_input_embeddings().weight
        pretrained = ctx.backbone()
        e0 = pretrained.model.get_input_embeddings().weight.detach()
        with torch.no_grad():
            emb.copy_(unlearn_rows(emb.detach().cpu(), e0.cpu(), ids, pretrained.tokenizer.pad_token_id).to(emb.device))
        self._unlearned = clean
        ctx.log(btu_unlearned=len(ids))

    def predict(self, texts: list[str], victim, ctx: DefenseContext) -> np.ndarray:
        if self.config.unlearn == "after":
            if getattr(self, "_unlearned", None) is None:
                self.calibrate(victim, ctx)
            return self._unlearned.predict(texts)
        return victim.predict(texts)


def suspects_of(model: Any) -> list[int]:
    buf = getattr(model, BUFFER, None)
    if buf is None:
        raise RuntimeError("this model was not prepared by btu (no btu_suspects buffer)")
    return [int(i) for i in buf.tolist() if i >= 0]
