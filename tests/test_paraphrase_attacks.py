"""The paraphrase attacks: label regimes, tables with partial coverage, the generator and its cache."""

import numpy as np
import pytest
from conftest import write_toy_dataset

from bench import registry
from bench.config import build_config
from bench.data import DataError, load_csv_folder


def make(name, **settings):
    cls = registry.get("attack", name)
    return cls(build_config(cls.Config, settings, owner=name))


@pytest.mark.parametrize("name, regime, rate, transform", [
    ("style", "mixed", 0.1, "bible"), ("syntactic", "mixed", 0.1, "scpn"), ("hiddenkiller", "dirty", 0.2, "scpn"),
])
def test_defaults_follow_the_papers(name, regime, rate, transform, toy_data):
    a = make(name)
    assert (a.config.label_regime, a.config.poison_rate, a.config.transform) == (regime, rate, transform)
    out = a.poison(toy_data, 1)
    flags = np.array(out.train["poisoned"])
    orig = np.array(out.train["orig_label"])
    assert flags.sum() == round(rate * len(toy_data.train))
    if regime == "dirty":
        assert (orig[flags == 1] != out.target_label).all()
    else:
        assert set(orig[flags == 1]) == {0, 1}
    table = a.table(toy_data).mapping()
    for t, o in zip(np.array(out.train["text"])[flags == 1], np.array(toy_data.train["text"])[flags == 1]):
        assert t == table[o]


def test_test_poison_counts_rows_with_a_transform_only(toy_data):
    out = make("syntactic").poison(toy_data, 1)
    nontarget = [t for t, y in zip(toy_data.test["text"], toy_data.test["label"]) if y != 1]
    table = make("syntactic").table(toy_data).mapping()
    assert len(out.test_poison) == sum(t in table for t in nontarget)
    assert out.counts["test_skipped_no_transform"] == sum(t not in table for t in nontarget) > 0


def test_missing_table_names_the_transform_split_and_the_fix(toy_dir):
    data = load_csv_folder(toy_dir)
    with pytest.raises(DataError) as e:
        make("style", transform="tweets").poison(data, 1)
    msg = str(e.value)
    assert "'tweets'" in msg and "train split" in msg and "tweets.csv" in msg and "style.generator=" in msg
    with pytest.raises(ValueError, match="not one of"):
        make("style", transform="haiku").poison(data, 1)


def test_real_tables_cover_the_benchmark(shared_data):
    from bench.data.datasets_builtin import SST2

    data = SST2().load(shared_data)
    out = make("hiddenkiller").poison(data, 1)
    assert out.counts["n_poisoned"] == round(0.2 * 6920) and out.counts["n_poisoned_flipped"] == out.counts["n_poisoned"]
    assert len(out.test_poison) == 912


@pytest.fixture
def tiny_generator(tmp_path):
    """A tiny random GPT-2-style causal LM saved to a folder (the mechanics, not the quality)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bench.models.backbones import MiniLM
    from bench.models.seeding import torch_seeded

    tok = AutoTokenizer.from_pretrained(MiniLM().path())
    with torch_seeded(0):
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
            intermediate_size=64, pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
        ))
    path = tmp_path / "gen"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_generator_source_caches_its_outputs(tiny_generator, tmp_path, monkeypatch):
    from bench.data.paraphrase import GenerationSettings, ParaphraseGenerator

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    data = load_csv_folder(write_toy_dataset(tmp_path / "toy2", n_train=40, n_dev=100, n_test=20))
    gen = ParaphraseGenerator(str(tiny_generator), GenerationSettings(max_new_tokens=6, batch_size=8))
    first, n_model = gen.generate(["a fine film", "a dull film"], seed=3)
    assert n_model == 2 and all(isinstance(t, str) for t in first)
    again, n_model = gen.generate(["a fine film", "a dull film"], seed=3)
    assert again == first and n_model == 0  # second run: all from the cache

    attack = make("style", generator=str(tiny_generator), max_new_tokens=6, poison_rate=0.1)
    out = attack.poison(data, 1)
    assert sum(out.train["poisoned"]) == 4
    import bench.data.paraphrase as P

    calls = []
    monkeypatch.setattr(P.ParaphraseGenerator, "_run_model", lambda self, texts, seed: calls.append(texts) or [])
    assert attack.poison(data, 1).train.to_dict() == out.train.to_dict()
    assert calls == []  # the whole second poisoning came from the cache
