"""ONION (Qi et al., EMNLP 2021): remove the words whose deletion makes a sentence much more fluent.

"ONION: A Simple and Effective Defense Against Textual Backdoor Attacks". An inserted trigger word
(``cf``, ``mn``, a rare token, an out-of-place sentence piece) usually breaks the fluency of the
sentence it sits in. ONION scores every word of a test sentence by how much the sentence's
perplexity under a causal language model drops when that one word is left out,

    f_i = PPL(sentence) - PPL(sentence without word i),

removes the words with ``f_i > threshold`` and lets the victim classify what is left. It acts only at
inference time and never rejects an input; it uses neither the training data nor the target label.

The threshold is either fixed (``mode=fixed``; the reference implementation's bar is 0) or, by
default, set on clean calibration rows so that a chosen share of clean words would be removed
(``mode=quantile``), which makes it comparable across scorers whose perplexities live on different
scales.

Word scores depend only on the sentence and the scorer (not on the victim), so they are kept in a
small SQLite file under ``$BENCH_CACHE_DIR/onion/`` and in memory: the clean test set of a dataset is
scored once for every attack, seed and backbone.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bench.config import ConfigError
from bench.defense import CleanBudgetError, Defense, DefenseContext
from bench.engine import progress
from bench.registry import register

SCORE_FORMAT = "onion-word-scores-v1"  # bump when the meaning of a stored score changes
_MEMORY: dict[str, np.ndarray] = {}  # process-wide: key -> word scores (float64)
_MEMORY_LIMIT = 500_000
_GROUP = 128  # sentences scored (and written to the cache) together


@dataclass(frozen=True)
class OnionConfig:
    mode: Literal["quantile", "fixed"] = "quantile"
    # quantile mode: the threshold removes this share of the words of the clean calibration rows
    clean_word_removal: float = 0.05
    threshold: float = 0.0  # fixed mode: remove words with f_i > threshold (the reference bar is 0)
    n_calibration: int = 200  # clean calibration rows (quantile mode only)
    scorer: str | None = None  # causal LM; None: the profile's scorer_lm

    def validate(self) -> None:
        if not 0.0 <= self.clean_word_removal < 1.0:
            raise ConfigError(f"onion.clean_word_removal must be in [0, 1), got {self.clean_word_removal}")
        if math.isnan(self.threshold):
            raise ConfigError("onion.threshold must be a number, got nan")
        if self.n_calibration < 1:
            raise ConfigError(f"onion.n_calibration must be >= 1, got {self.n_calibration}")


def split_words(text: str) -> list[str]:
    return str(text).split()


def leave_one_out(words: list[str]) -> list[str]:
    """The sentence, then the sentence without word i for every i."""
    return [" ".join(words)] + [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]


def word_scores_from_ppl(ppl: np.ndarray) -> np.ndarray:
    """``ppl`` = [PPL(sentence), PPL(without word 0), ...] -> f_i = PPL(sentence) - PPL(without word i)."""
    ppl = np.asarray(ppl, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ppl[0] - ppl[1:]


def clean_sentence(words: list[str], scores: np.ndarray, threshold: float) -> tuple[str, int]:
    """(the sentence without the words scoring above ``threshold``, how many words were removed)."""
    keep = [w for w, f in zip(words, scores) if not f > threshold]  # nan never removes a word
    return " ".join(keep), len(words) - len(keep)


class ScoreCache:
    """Word scores by (scorer identity, sentence): a process-wide dict in front of a SQLite file."""

    def __init__(self, scorer: Any):
        identity = scorer.identity() if hasattr(scorer, "identity") else repr(scorer)
        self.prefix = json.dumps(
            {"format": SCORE_FORMAT, "scorer": identity, "max_length": getattr(scorer, "max_length", None)},
            sort_keys=True, default=str,
        )

    def key(self, sentence: str) -> str:
        return hashlib.sha256(f"{self.prefix}\n{sentence}".encode()).hexdigest()

    @staticmethod
    def path():
        from bench.models.backbones import cache_dir

        return cache_dir() / "onion" / "word_scores.sqlite"

    def _connect(self):
        import sqlite3

        path = self.path()
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(path), timeout=120)
        con.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, scores BLOB NOT NULL)")
        return con

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        found = {k: _MEMORY[k] for k in keys if k in _MEMORY}
        missing = [k for k in keys if k not in found]
        if missing:
            con = self._connect()
            try:
                for start in range(0, len(missing), 500):
                    part = missing[start:start + 500]
                    rows = con.execute(
                        f"SELECT key, scores FROM scores WHERE key IN ({','.join('?' * len(part))})", part
                    ).fetchall()
                    for k, blob in rows:
                        found[k] = np.frombuffer(blob, dtype=np.float64).copy()
            finally:
                con.close()
            self._remember({k: found[k] for k in missing if k in found})
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        if not items:
            return
        self._remember(items)
        con = self._connect()
        try:
            with con:
                con.executemany(
                    "INSERT OR REPLACE INTO scores (key, scores) VALUES (?, ?)",
                    [(k, np.asarray(v, dtype=np.float64).tobytes()) for k, v in items.items()],
                )
        finally:
            con.close()

    @staticmethod
    def _remember(items: dict[str, np.ndarray]) -> None:
        if len(_MEMORY) + len(items) > _MEMORY_LIMIT:
            _MEMORY.clear()
        _MEMORY.update(items)


def score_sentences(sentences: list[str], scorer: Any) -> tuple[dict[str, np.ndarray], dict]:
    """Word scores of every distinct multi-word sentence (normalised to single spaces) in
    ``sentences``, from the cache where there, else from ``scorer``; and statistics of the work."""
    wanted = sorted({" ".join(split_words(s)) for s in sentences if len(split_words(s)) > 1})
    cache = ScoreCache(scorer)
    keys = {s: cache.key(s) for s in wanted}
    cached = cache.get_many(list(keys.values()))
    out = {s: cached[keys[s]] for s in wanted if keys[s] in cached}
    todo = [s for s in wanted if s not in out]
    start = time.perf_counter()
    with progress.stage("ONION: word scores", len(todo), "sent") as bar:
        _score_groups(todo, scorer, keys, cache, out, bar)
    seconds = time.perf_counter() - start
    stats = {
        "sentences_scored": len(todo),
        "sentences_from_cache": len(wanted) - len(todo),
        "scoring_seconds": round(seconds, 3),
        "seconds_per_sentence": round(seconds / len(todo), 5) if todo else None,
    }
    return out, stats


def _score_groups(todo: list[str], scorer: Any, keys: dict, cache: "ScoreCache", out: dict, bar: Any) -> None:
    for g in range(0, len(todo), _GROUP):
        group = todo[g:g + _GROUP]
        if hasattr(scorer, "leave_one_out_perplexity"):  # the same numbers, each shared prefix run once
            ppls = scorer.leave_one_out_perplexity([split_words(s) for s in group])
            fresh = {s: word_scores_from_ppl(p) for s, p in zip(group, ppls)}
        else:
            variants, spans = [], []
            for s in group:
                v = leave_one_out(split_words(s))
                spans.append((len(variants), len(variants) + len(v)))
                variants.extend(v)
            ppl = np.asarray(scorer.perplexity(variants), dtype=np.float64)
            fresh = {s: word_scores_from_ppl(ppl[a:b]) for s, (a, b) in zip(group, spans)}
        out.update(fresh)
        cache.put_many({keys[s]: f for s, f in fresh.items()})
        bar.update(len(group))


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


@register("defense", "onion")
class Onion(Defense):
    """ONION: drop the words whose removal lowers the LM perplexity most (threshold: 5% of clean words)."""

    Config = OnionConfig

    def _scorer(self, ctx: DefenseContext):
        return ctx.scorer(self.config.scorer)

    def calibrate(self, victim, ctx: DefenseContext) -> None:
        c = self.config
        if c.mode == "fixed":
            self.threshold = float(c.threshold)
            ctx.log(threshold=_json_float(self.threshold), threshold_mode="fixed")
            return
        rows = ctx.clean(c.n_calibration, strict=False)  # at most n_calibration rows
        texts = list(rows["text"])
        if not texts:
            raise CleanBudgetError("onion (mode=quantile) needs clean calibration rows but the defender budget is "
                                   "empty; raise it with --set profile.clean_size=200, or use --set onion.mode=fixed")
        scores, stats = score_sentences(texts, self._scorer(ctx))
        # every word of every multi-word calibration row (a repeated row counts each time)
        per_row = [scores[" ".join(split_words(t))] for t in texts if len(split_words(t)) > 1]
        pooled = np.concatenate(per_row) if per_row else np.zeros(0)
        pooled = pooled[np.isfinite(pooled)]
        # no multi-word calibration sentence: nothing to calibrate on, so remove nothing
        self.threshold = float(np.quantile(pooled, 1.0 - c.clean_word_removal)) if len(pooled) else math.inf
        ctx.log(threshold=_json_float(self.threshold), threshold_mode="quantile",
                calibration_words=int(len(pooled)),
                **{f"calibration_{k}": v for k, v in stats.items()})

    def predict(self, texts: list[str], victim, ctx: DefenseContext) -> np.ndarray:
        threshold = getattr(self, "threshold", None)
        if threshold is None:
            if self.config.mode != "fixed":
                raise RuntimeError("onion: calibrate() must run before predict() in quantile mode")
            threshold = float(self.config.threshold)
        texts = list(texts)
        scores, stats = score_sentences(texts, self._scorer(ctx))
        cleaned, removed = [], []
        for text in texts:
            words = split_words(text)
            if len(words) <= 1:
                cleaned.append(text)
                removed.append(0)
                continue
            sentence, n = clean_sentence(words, scores[" ".join(words)], threshold)
            cleaned.append(sentence if n else text)
            removed.append(n)
        ctx.log(**stats, mean_words_removed=float(np.mean(removed)) if removed else 0.0,
                share_changed=float(np.mean([n > 0 for n in removed])) if removed else 0.0)
        return np.asarray(victim.predict(cleaned), dtype=np.int64)
