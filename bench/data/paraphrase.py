"""Sentence-level transforms for the paraphrase attacks, from a published table or a generator model.

* :class:`ParaphraseTable`: ``<data>/<dataset>/paraphrases/<transform>.csv`` (columns
  text,paraphrase), keyed by the original sentence. Coverage is partial; a sentence without a row
  has no transform.
* :class:`ParaphraseGenerator`: a Hugging Face causal or seq2seq model (local folder or hub id),
  batched, nucleus sampling, with every output cached on disk under a key made of the model's
  identity, the generation settings, the seed and the sentence, so a second run costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..attack import Attack, AttackConfig, AttackError
from ..engine import progress
from ..models.backbones import cache_dir
from . import DataError, TextDataset


class ParaphraseTable:
    """Original sentence -> transformed sentence, from one CSV file."""

    _loaded: dict[tuple[str, int, int], dict[str, str]] = {}  # (path, size, mtime) -> mapping

    def __init__(self, path: Path):
        self.path = Path(path)

    def mapping(self) -> dict[str, str]:
        st = self.path.stat()
        key = (str(self.path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._loaded:
            try:
                df = pd.read_csv(self.path, keep_default_na=False, dtype=str)
            except (pd.errors.ParserError, UnicodeDecodeError) as e:
                raise DataError(f"{self.path}: cannot be read as a CSV ({e})") from None
            missing = [c for c in ("text", "paraphrase") if c not in df.columns]
            if missing:
                raise DataError(f"{self.path}: missing column(s) {', '.join(missing)}; a paraphrase table has "
                                "the columns text,paraphrase")
            df = df[df["paraphrase"].str.strip() != ""].drop_duplicates("text", keep="first")
            self._loaded[key] = dict(zip(df["text"], df["paraphrase"]))
        return self._loaded[key]

    def fingerprint(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class GenerationSettings:
    top_p: float = 0.6
    temperature: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 16
    prompt: str = "{text}"  # causal models: the text to continue; the output is what follows


class ParaphraseGenerator:
    """Paraphrases from a causal or seq2seq model, cached on disk (SQLite) per sentence."""

    def __init__(self, model: str, settings: GenerationSettings):
        self.model_name = model
        self.settings = settings

    def identity(self) -> str:
        p = Path(self.model_name)
        ident = {"model": self.model_name, "settings": asdict(self.settings)}
        if (p / "config.json").is_file():
            weights = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
            ident["files"] = [(w.name, w.stat().st_size) for w in weights]
            ident["config"] = hashlib.sha256((p / "config.json").read_bytes()).hexdigest()[:16]
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def _db(self) -> sqlite3.Connection:
        path = cache_dir() / "paraphrases.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE IF NOT EXISTS out (key TEXT PRIMARY KEY, paraphrase TEXT)")
        return con

    def _key(self, ident: str, seed: int, text: str) -> str:
        return hashlib.sha256(f"{ident}\x00{seed}\x00{text}".encode()).hexdigest()

    def generate(self, texts: list[str], seed: int) -> tuple[list[str], int]:
        """(paraphrases, how many came from the model rather than the cache)."""
        ident = self.identity()
        keys = [self._key(ident, seed, t) for t in texts]
        con = self._db()
        try:
            found: dict[str, str] = {}
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = f"SELECT key, paraphrase FROM out WHERE key IN ({','.join('?' * len(chunk))})"
                found.update(dict(con.execute(q, chunk).fetchall()))
            todo = sorted({t for t, k in zip(texts, keys) if k not in found})
            if todo:
                outputs = self._run_model(todo, seed)
                rows = [(self._key(ident, seed, t), o) for t, o in zip(todo, outputs)]
                con.executemany("INSERT OR REPLACE INTO out VALUES (?, ?)", rows)
                con.commit()
                found.update(dict(rows))
        finally:
            con.close()
        return [found[k] for k in keys], len(todo)

    def _run_model(self, texts: list[str], seed: int) -> list[str]:
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

        from ..models.seeding import torch_seeded

        s = self.settings
        try:
            cfg = AutoConfig.from_pretrained(self.model_name)
            tok = AutoTokenizer.from_pretrained(self.model_name)
        except OSError as e:
            raise DataError(f"cannot load paraphrase generator {self.model_name!r} ({e.__class__.__name__}); give a "
                            "local model folder, or a hub id when a network exists") from None
        seq2seq = bool(getattr(cfg, "is_encoder_decoder", False))
        if seq2seq:
            model = AutoModelForSeq2SeqLM.from_pretrained(self.model_name).eval()
        else:  # the one causal-LM loader, shared with the stealth scores and ONION
            from ..models.lm import load_causal_lm

            model, tok = load_causal_lm(self.model_name)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        tok.padding_side = "left" if not seq2seq else tok.padding_side
        out: list[str] = []
        with torch_seeded(seed), torch.no_grad(), progress.stage(
                f"paraphrasing with {self.model_name}", len(texts), "sent") as bar:
            for i in range(0, len(texts), s.batch_size):
                prompts = [s.prompt.format(text=t) for t in texts[i:i + s.batch_size]]
                enc = tok(prompts, return_tensors="pt", padding=True, truncation=True, max_length=256)
                enc.pop("token_type_ids", None)
                gen = model.generate(
                    **enc, do_sample=True, top_p=s.top_p, temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                )
                if not seq2seq:
                    gen = gen[:, enc["input_ids"].shape[1]:]
                out += [t.strip() for t in tok.batch_decode(gen, skip_special_tokens=True)]
                bar.update(len(prompts))
        return out


def generator_from_config(cfg: Any) -> ParaphraseGenerator:
    return ParaphraseGenerator(cfg.generator, GenerationSettings(
        top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.generation_batch_size, prompt=cfg.prompt,
    ))


# --- the attack base ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParaphraseConfig(AttackConfig):
    transform: str = ""  # the table's name: <data>/<dataset>/paraphrases/<transform>.csv
    generator: str | None = None  # a model folder or hub id; used when set (tables are the default source)
    top_p: float = 0.6  # nucleus sampling, as StyleBkd
    max_new_tokens: int = 64
    generation_batch_size: int = 16
    prompt: str = "{text}"


class ParaphraseAttack(Attack):
    """Base of attacks whose trigger is a sentence-level transform (a style, a syntactic template)."""

    Config = ParaphraseConfig
    transforms: tuple[str, ...] = ()  # the transforms this attack names (its paper's)
    any_table: bool = False  # True: any table <dataset>/paraphrases/<name>.csv is a usable transform name too

    def _check_transform(self, data: TextDataset) -> None:
        name = self.config.transform
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise AttackError(f"{self.name}: transform {name!r} is not a table name; give the file name of a "
                              "table in <dataset>/paraphrases/ without .csv, e.g. bible")
        if not self.transforms or name in self.transforms:
            return
        if self.any_table and (self.config.generator or self.table(data) is not None):
            return
        folder = data.root / "paraphrases" if data.root else None
        found = sorted(p.stem for p in folder.glob("*.csv")) if folder and folder.is_dir() else []
        nor = (f" nor a table in {folder} (found: {', '.join(found) or 'none'})" if self.any_table and folder else "")
        raise AttackError(f"{self.name}: transform {name!r} is not one of {', '.join(self.transforms)}{nor}")

    def table(self, data: TextDataset) -> ParaphraseTable | None:
        if data.root is None:
            return None
        path = data.root / "paraphrases" / f"{self.config.transform}.csv"
        return ParaphraseTable(path) if path.is_file() else None

    def _missing(self, data: TextDataset, split: str, why: str) -> DataError:
        root = data.root / "paraphrases" if data.root else Path("<dataset folder>/paraphrases")
        return DataError(
            f"{self.name}: no '{self.config.transform}' transform for the {split} split of {data.name} ({why}). "
            f"Supply a table {root / (self.config.transform + '.csv')} (columns text,paraphrase; text = the "
            f"original sentence) or a generator model: --set {self.name}.generator=PATH_OR_HUB_ID"
        )

    def _generated(self, texts: list[str], split: str, data: TextDataset) -> list[str]:
        seed = int(hashlib.sha256(f"{data.fingerprint}/{split}".encode()).hexdigest()[:8], 16)
        out, _ = generator_from_config(self.config).generate(list(texts), seed)
        return out

    def available(self, texts, split, data):
        self._check_transform(data)
        if self.config.generator:
            out = self._generated(texts, split, data)
            return np.array([bool(o.strip()) and o.strip() != t.strip() for o, t in zip(out, texts)], dtype=bool)
        table = self.table(data)
        if table is None:
            raise self._missing(data, split, "no table and no generator")
        # Partial coverage is fine (a table may cover only the test rows): rows without a transform are
        # never poisoned and are counted; too few training candidates fail in `poison` with the rows
        # named, and a test split with none in the runner's ASR check.
        mapping = table.mapping()
        return np.array([t in mapping for t in texts], dtype=bool)

    def unavailable_hint(self, data: TextDataset) -> str:
        root = data.root / "paraphrases" if data.root else Path("<dataset folder>/paraphrases")
        return (f"; add those sentences to {root / (self.config.transform + '.csv')} or set "
                f"--set {self.name}.generator=PATH_OR_HUB_ID")

    def apply(self, texts, split, data, rng):
        if self.config.generator:
            return self._generated(texts, split, data)
        mapping = self.table(data).mapping()
        return [mapping[t] for t in texts]

    def source_identity(self, data: TextDataset) -> dict:
        """What the result key records of the transform source (content, not a name)."""
        if self.config.generator:
            return {"generator": generator_from_config(self.config).identity()}
        table = self.table(data)
        return {"table": table.fingerprint() if table else None}
