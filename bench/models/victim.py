"""The trained victim: one classifier, with what defenses need of it, and its on-disk cache.

A :class:`Victim` wraps a trained model and its tokenizer: logits, probabilities and labels for a
list of texts (batched, length-sorted), pooled hidden states of any layer, the input embedding
matrix, and :meth:`Victim.copy` for a defense that modifies a model.

:class:`VictimStore` keeps victims on disk (``$BENCH_CACHE_DIR/victims/<key>/``: ``model.safetensors``
and ``victim.json``, written atomically) keyed by content: the training rows, the selection rows,
the training-side identity of the defense, the backbone, the profile fields that affect training and
the seed. A victim is trained once and reused across cells, runs and processes: its training is
claimed like a cell (``victims/claims/<key>.json``, :mod:`bench.engine.claims`), so a second process that
wants it meanwhile waits for the first to store it and loads it (a stale claim is taken over).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .backbones import cache_dir
from .training import Encoded, autocast, predict_logits

VICTIM_FORMAT = 1
WAIT_POLL = 2.0  # seconds between looks at a victim another process is training


@dataclass
class Victim:
    model: Any
    tokenizer: Any
    settings: Any  # the profile (max_length, eval_batch_size, precision)
    device: torch.device
    key: str = ""
    info: dict = field(default_factory=dict)  # training history, how it was made

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def encode(self, texts: list[str]) -> Encoded:
        return Encoded(self.tokenizer, list(texts), None, self.settings.max_length)

    def logits(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.num_labels), dtype=np.float32)
        return predict_logits(self.model, self.encode(texts), self.settings.eval_batch_size, self.device,
                              self.settings.precision)

    def probs(self, texts: list[str]) -> np.ndarray:
        z = self.logits(texts)
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    def predict(self, texts: list[str]) -> np.ndarray:
        return self.logits(texts).argmax(-1).astype(np.int64) if len(texts) else np.zeros(0, dtype=np.int64)

    @torch.no_grad()
    def hidden_states(self, texts: list[str], layer: int = -1) -> np.ndarray:
        """The pooled hidden state of ``layer`` (0 = embeddings output, -1 = last layer) per text:
        the first token for encoders, the last non-padding token for decoder LLMs."""
        enc = self.encode(texts)
        out = None
        order = np.argsort([len(f["input_ids"]) for f in enc.features], kind="stable")
        was = self.model.training
        self.model.eval()
        decoder = self.model.config.model_type in _decoder_types()
        for start in range(0, len(order), self.settings.eval_batch_size):
            idx = order[start:start + self.settings.eval_batch_size]
            batch = enc.batch(idx, self.device)
            with autocast(self.device, self.settings.precision):
                h = self.model(**batch, output_hidden_states=True).hidden_states[layer].float()
            if decoder:
                last = batch["attention_mask"].sum(1) - 1
                pooled = h[torch.arange(len(idx)), last]
            else:
                pooled = h[:, 0]
            pooled = pooled.cpu().numpy()
            if out is None:
                out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            out[idx] = pooled
        self.model.train(was)
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)

    def input_embeddings(self) -> torch.nn.Embedding:
        return self.model.get_input_embeddings()

    def copy(self) -> "Victim":
        """A deep copy a defense may modify; the cached victim stays as it was."""
        return Victim(copy.deepcopy(self.model), self.tokenizer, self.settings, self.device, self.key,
                      dict(self.info))


def _decoder_types() -> set[str]:
    from .backbones import DECODER_TYPES

    return DECODER_TYPES


class VictimStore:
    """Victims on disk under ``root`` (default ``$BENCH_CACHE_DIR/victims``), the last few in memory.

    ``trainings`` counts the victims this store trained (not loaded) in this process.
    """

    def __init__(self, root: str | Path | None = None, keep_in_memory: int = 2):
        self.root = Path(root) if root is not None else cache_dir() / "victims"
        self.keep = keep_in_memory
        self._mem: dict[str, Victim] = {}
        self.trainings = 0
        self.loads = 0

    def folder(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str, build: Callable[[], Any], train: Callable[[Any, Any], dict], settings: Any,
            device: torch.device, identity: dict) -> tuple[Victim, bool]:
        """(victim, trained_now). ``build()`` returns (model, tokenizer): the untrained model structure
        (the defense's prepared model); ``train(model, tokenizer)`` trains it in place and returns the
        JSON-able info to store. A stored victim is loaded into a freshly built structure."""
        if key in self._mem:
            return self._mem[key], False
        model, tokenizer = build()
        claim = None if self._stored(key) else self._claim(key, str(identity.get("label", "")))
        try:
            return self._get(key, model, tokenizer, claim, train, settings, device, identity)
        finally:
            if claim is not None:
                claim.release()

    def _stored(self, key: str) -> bool:
        folder = self.folder(key)
        return (folder / "victim.json").is_file() and (folder / "model.safetensors").is_file()

    def _claim(self, key: str, label: str):
        """Claim the training of victim ``key`` as a cell is claimed, or wait while another live process
        trains it; None once it is stored (then it is loaded)."""
        from ..engine import progress
        from ..engine.claims import try_claim

        said = False
        while True:
            claim = try_claim(self.root, key, label)
            if claim is not None or self._stored(key):
                return claim
            if not said:
                progress.note(f"victim {key} is being trained by another process ({self.root}/claims/{key}.json): "
                              "waiting to load it from the cache")
                said = True
            time.sleep(WAIT_POLL)

    def _get(self, key, model, tokenizer, claim, train, settings, device, identity) -> tuple[Victim, bool]:
        from ..engine.claims import beating

        folder = self.folder(key)
        if self._stored(key):
            from safetensors.torch import load_model

            load_model(model, str(folder / "model.safetensors"), strict=True, device="cpu")
            info = json.loads((folder / "victim.json").read_text())["info"]
            model.to(device).eval()
            self.loads += 1
            from ..engine import progress

            progress.note(f"victim {key} loaded from the cache ({info.get('trained_by', '')})")
            victim, trained = Victim(model, tokenizer, settings, device, key, info), False
        else:
            with beating(claim):
                info = train(model, tokenizer)
            self.trainings += 1
            model.to(device).eval()
            self._save(key, model, identity, info)
            victim, trained = Victim(model, tokenizer, settings, device, key, info), True
        self._mem.pop(key, None)
        self._mem[key] = victim
        while len(self._mem) > self.keep:
            self._mem.pop(next(iter(self._mem)))
        return victim, trained

    def _save(self, key: str, model: Any, identity: dict, info: dict) -> None:
        from safetensors.torch import save_model

        folder = self.folder(key)
        tmp = folder.with_name(f"{key}.tmp-{time.time_ns()}")
        tmp.mkdir(parents=True, exist_ok=True)
        save_model(model, str(tmp / "model.safetensors"))
        meta = {"format": VICTIM_FORMAT, "key": key, "identity": identity, "info": info,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / "victim.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        try:
            tmp.rename(folder)
        except OSError:  # another process stored the same victim first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)

    def mark_used(self, key: str, record: str) -> None:
        """Remember that a record used this victim (shown by ``bench cache list``)."""
        folder = self.folder(key)
        if not folder.is_dir():
            return
        with open(folder / "used_by.txt", "a") as f:
            f.write(record + "\n")

    # --- inspection (bench cache) ------------------------------------------------------------
    def entries(self) -> list[dict]:
        out = []
        for folder in sorted(self.root.glob("*")) if self.root.is_dir() else []:
            meta_path = folder / "victim.json"
            if not folder.is_dir() or not meta_path.is_file():
                continue
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError:
                meta = {}
            used = (folder / "used_by.txt").read_text().split() if (folder / "used_by.txt").is_file() else []
            size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            ident = meta.get("identity", {})
            out.append({
                "key": folder.name, "bytes": size, "created": meta.get("created", ""),
                "what": ident.get("label", ""), "defense": (ident.get("defense") or {}).get("name", "plain"),
                "used_by": sorted(set(used)),
            })
        return out

    def clear(self, keys: list[str] | None = None) -> int:
        n = 0
        for e in self.entries():
            if keys is None or e["key"] in keys:
                shutil.rmtree(self.folder(e["key"]), ignore_errors=True)
                n += 1
        for tmp in self.root.glob("*.tmp-*") if self.root.is_dir() else []:
            shutil.rmtree(tmp, ignore_errors=True)
        self._mem.clear()
        return n
