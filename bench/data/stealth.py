"""Stealthiness of an attack's poisoned sentences, against their originals.

* perplexity increase: mean over pairs of PPL(poisoned) - PPL(original) under an offline causal LM
  (``smollm2-135m`` by default; ``gpt2-large`` or any causal LM id/folder where a hub exists);
* similarity: mean cosine similarity of the MiniLM sentence embeddings (mean pooling, normalised)
  of each poisoned sentence and its original.

Computed on up to ``n`` poisoned test sentences drawn with the seed, and cached on disk under a
key made of the sentences themselves and the scorers' identities (never a name alone).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch

from ..models.backbones import MiniLM, cache_dir
from ..models.lm import get_scorer, lm_identity

CACHE_FORMAT = 2  # bump when the cached fields change


def perplexities(texts: list[str], lm: str) -> np.ndarray:
    """Perplexity of each text under the shared causal-LM scorer (padding masked)."""
    return get_scorer(lm).perplexity(list(texts))


@torch.no_grad()
def sentence_embeddings(texts: list[str], encoder: str = "minilm", batch_size: int = 64) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    path = str(MiniLM().path()) if encoder == "minilm" else encoder
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    embs = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=128)
        hidden = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        embs.append(torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(embs)


def stealth_scores(
    originals: list[str], poisoned: list[str], seed: int, n: int, lm: str | None, encoder: str = "minilm",
) -> dict[str, Any]:
    """{"ppl_increase", "ppl_increase_median", "similarity", "n_stealth"}; cached on disk by content."""
    if not poisoned:
        return {"ppl_increase": None, "ppl_increase_median": None, "similarity": None, "n_stealth": 0}
    idx = np.sort(np.random.default_rng(seed).permutation(len(poisoned))[:n])
    orig = [originals[i] for i in idx]
    pois = [poisoned[i] for i in idx]
    key_src = json.dumps({"format": CACHE_FORMAT, "orig": orig, "pois": pois, "lm": lm, "lm_id": lm_identity(lm), "encoder": encoder,
                          "enc_id": lm_identity(encoder)})
    path = cache_dir() / "stealth" / f"{hashlib.sha256(key_src.encode()).hexdigest()[:24]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result: dict[str, Any] = {"n_stealth": len(idx)}
    result["ppl_increase"] = result["ppl_increase_median"] = None
    if lm:
        diff = perplexities(pois, lm) - perplexities(orig, lm)
        result["ppl_increase"] = float(np.mean(diff))  # the field's delta-PPL: mean(poisoned) - mean(original)
        result["ppl_increase_median"] = float(np.median(diff))  # robust to the heavy tail of perplexities
    e = sentence_embeddings(orig + pois, encoder)
    result["similarity"] = float((e[: len(orig)] * e[len(orig):]).sum(-1).mean())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
    return result
