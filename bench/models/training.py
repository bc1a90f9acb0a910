"""Fine-tuning and prediction: AdamW, linear decay, gradient clipping, dynamic padding, per-epoch
evaluation, and the kept model chosen by clean dev accuracy only.

All randomness (shuffling, dropout, reference batches) comes from the ``seed`` argument; the global
torch random state is forked, so callers see it untouched.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..defense import Defense, StepState
from ..engine import progress
from .seeding import torch_seeded


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; a device this machine lacks is a ConfigError."""
    from ..config import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"profile.device={name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"profile.device={name!r}, but torch sees no CUDA device here (torch "
                          f"{torch.__version__}); use --set profile.device=auto (or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"profile.device={name!r}, but this machine has {torch.cuda.device_count()} CUDA "
                          "device(s); use --set profile.device=cuda:0 (or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"profile.device={name!r}, but MPS is not available here; use --set profile.device=auto")
    return device


def autocast(device: torch.device, precision: str):
    """bf16 autocast only when asked for (`precision=bf16`); `auto` and `fp32` compute in fp32 on every device.

    bf16 changes the numerics; its 3-seed check on the main job's cell (results/bf16-check) found no shift beyond
    seed noise, but fp32 stays the default so that records compare across machines (docs/cost.md).
    """
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Encoded:
    """Sentences tokenised once (no padding); batches are padded dynamically."""

    def __init__(self, tokenizer: Any, texts: list[str], labels: list[int] | None, max_length: int):
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.features = [{k: enc[k][i] for k in enc.keys()} for i in range(len(texts))]
        self.labels = None if labels is None else list(labels)
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, indices: list[int] | np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        feats = [self.features[i] for i in indices]
        out = self.tokenizer.pad(feats, return_tensors="pt")
        if self.labels is not None:
            out["labels"] = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        return {k: v.to(device) for k, v in out.items()}


@torch.no_grad()
def predict_logits(model: Any, enc: Encoded, batch_size: int, device: torch.device, precision: str = "auto") -> np.ndarray:
    """Logits for every sentence, in input order (batches sorted by length for speed)."""
    was_training = model.training
    model.eval()
    order = np.argsort([len(f["input_ids"]) for f in enc.features], kind="stable")
    out = np.zeros((len(enc), model.config.num_labels), dtype=np.float32)
    with progress.stage("classifying", len(enc), "sent") as bar:  # speaks only when it runs long (STRIP)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = enc.batch(idx, device)
            batch.pop("labels", None)
            with autocast(device, precision):
                logits = model(**batch).logits
            out[idx] = logits.float().cpu().numpy()
            bar.update(len(idx))
    model.train(was_training)
    return out


def make_classifier(model: Any, tokenizer: Any, settings: Any, device: torch.device) -> Callable[[list[str]], np.ndarray]:
    def classify(texts: list[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros(0, dtype=np.int64)
        enc = Encoded(tokenizer, texts, None, settings.max_length)
        return predict_logits(model, enc, settings.eval_batch_size, device, settings.precision).argmax(-1)

    return classify


@dataclass
class TrainResult:
    best_epoch: int
    best_dev_acc: float
    dev_acc_per_epoch: list[float]
    loss_per_epoch: list[float]
    steps: int
    train_seconds: float
    seconds_per_step: float
    trainable_params: int
    total_params: int
    history: list[dict] = field(default_factory=list)
    defense_stats: dict = field(default_factory=dict)
    kept_epoch_stats: dict = field(default_factory=dict)  # defense_stats as at the end of the kept epoch


REFERENCE_CHUNK = 8  # rows per chunk of a reference batch


def length_chunks(enc: Encoded, indices: list[int], chunk: int, device: torch.device
                  ) -> list[tuple[dict[str, torch.Tensor], float]]:
    """The rows ``indices`` sorted by length and cut into chunks of ``chunk`` rows, each padded on its
    own, with its share of the rows as weight. A random batch of 32 SST-2 sentences padded as one is
    48 % padding; in chunks of 8 sorted rows it is a few percent, for the same mean loss."""
    order = sorted(indices, key=lambda i: len(enc.features[i]["input_ids"]))
    return [(enc.batch(order[i:i + chunk], device), len(order[i:i + chunk]) / len(order))
            for i in range(0, len(order), chunk)]


def epoch_batches(enc: Encoded, batch_size: int, group_by_length: bool, gen: torch.Generator) -> list[list[int]]:
    """One epoch's batches in a random order drawn from ``gen``.

    With ``group_by_length``, rows are shuffled, cut into mega-batches of 50 batches, sorted by length
    inside each, split into batches, and the batches shuffled: much less padding (about half the
    tokens on SST-2), and still a random order each epoch.
    """
    order = torch.randperm(len(enc), generator=gen).tolist()
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    lengths = [len(f["input_ids"]) for f in enc.features]
    mega = batch_size * 50
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def trainable_parameters(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight", "norm.weight")


def decay_groups(params: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW parameter groups: biases and normalisation weights never decay (the usual BERT recipe,
    and the MuScleLoRA authors'); everything else at ``weight_decay``."""
    skip = [p for n, p in params if n.endswith(NO_DECAY)]
    rest = [p for n, p in params if not n.endswith(NO_DECAY)]
    return [g for g in ({"params": rest, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0})
            if g["params"]]


def train(
    model: Any,
    tokenizer: Any,
    train_texts: list[str],
    train_labels: list[int],
    dev_texts: list[str],
    dev_labels: list[int],
    settings: Any,
    defense: Defense,
    seed: int,
    device: torch.device,
    reference: tuple[list[str], list[int]] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_eval: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place; at the end it holds the weights of the best epoch on clean dev."""
    lr, epochs = defense.schedule(settings)
    train_enc = Encoded(tokenizer, train_texts, train_labels, settings.max_length)
    dev_enc = Encoded(tokenizer, dev_texts, dev_labels, settings.max_length)
    ref_enc = Encoded(tokenizer, reference[0], reference[1], settings.max_length) if reference else None

    params = trainable_parameters(model)
    if not params:
        raise RuntimeError(f"defense {defense.name!r} left no parameter trainable")
    optimizer = torch.optim.AdamW(decay_groups(params, settings.weight_decay), lr=lr)
    steps_per_epoch = (len(train_enc) + settings.batch_size - 1) // settings.batch_size
    total_steps = steps_per_epoch * epochs
    warmup = int(settings.warmup_ratio * total_steps)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    best_state: dict[str, torch.Tensor] | None = None
    best_acc, best_epoch = -1.0, -1
    dev_accs, losses, history = [], [], []
    step = 0
    t_train = 0.0
    memory: dict = {}
    epoch_stats: list[dict] = []  # the defense's statistics as they stood at the end of each epoch
    with torch_seeded(seed), progress.stage(
            f"training ({defense.name})" if defense.acts_in_training() else "training", total_steps, "step") as bar:
        gen = torch.Generator().manual_seed(seed)
        ref_gen = torch.Generator().manual_seed(seed + 1)

        def reference_batch() -> list[tuple[dict[str, torch.Tensor], float]]:
            assert ref_enc is not None
            n = min(settings.batch_size, len(ref_enc))
            idx = torch.randperm(len(ref_enc), generator=ref_gen)[:n].tolist()
            return length_chunks(ref_enc, idx, REFERENCE_CHUNK, device)

        model.to(device)
        for epoch in range(epochs):
            model.train()
            t0 = time.perf_counter()
            epoch_loss = 0.0
            for b, indices in enumerate(epoch_batches(train_enc, settings.batch_size, settings.group_by_length, gen)):
                batch = train_enc.batch(indices, device)
                state = StepState(model, batch, epoch, epochs, step, reference_batch if ref_enc else None, memory)
                with autocast(device, settings.precision):
                    loss = defense.backward(state)
                torch.nn.utils.clip_grad_norm_([p for _, p in params], settings.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                epoch_loss += loss
                step += 1
                bar.advance_to(step)
                if on_step:
                    on_step(step, total_steps)
            t_train += time.perf_counter() - t0
            preds = predict_logits(model, dev_enc, settings.eval_batch_size, device, settings.precision).argmax(-1)
            acc = float((preds == np.asarray(dev_labels)).mean())
            dev_accs.append(acc)
            losses.append(epoch_loss / steps_per_epoch)
            record = {"epoch": epoch, "dev_acc": acc, "train_loss": losses[-1]}
            epoch_stats.append(copy.deepcopy(memory.get("stats", {})))
            progress.note(f"epoch {epoch + 1}/{epochs}: clean dev acc {acc:.4f}, train loss {losses[-1]:.4f}")
            history.append(record)
            if on_eval:
                on_eval(record)
            if acc > best_acc:
                best_acc, best_epoch = acc, epoch
                best_state = {n: p.detach().clone() for n, p in params}
    if best_state is not None:
        with torch.no_grad():
            for n, p in params:
                p.copy_(best_state[n])
    return TrainResult(
        best_epoch=best_epoch,
        best_dev_acc=best_acc,
        dev_acc_per_epoch=dev_accs,
        loss_per_epoch=losses,
        steps=step,
        train_seconds=t_train,
        seconds_per_step=t_train / max(1, step),
        trainable_params=sum(p.numel() for _, p in params),
        total_params=sum(p.numel() for p in model.parameters()),
        history=history,
        defense_stats=memory.get("stats", {}),
        kept_epoch_stats=epoch_stats[best_epoch] if 0 <= best_epoch < len(epoch_stats) else {},
    )
