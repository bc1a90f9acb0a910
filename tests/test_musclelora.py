"""MuScleLoRA's parts: the multi-scale layer, what trains, the alignment, the reference split."""

import math

import pytest
import torch

from conftest import make_ctx
from defenses.musclelora.alignment import AlignmentSettings, aligned_backward, project, raw_ratio
from defenses.musclelora.layers import MultiScaleLowRank

from bench import registry
from bench.defense import StepState
from bench.engine.profiles import get_profile
from bench.models.backbones import resolve_backbone
from bench.runner import DataCache, plan, run_cell, split_dev


def test_multiscale_output_is_frozen_layer_plus_scaled_low_rank_term():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    layer = MultiScaleLowRank(base, scales=[1, 4, 8], rank=2, alpha=6.0, generator=torch.Generator().manual_seed(1))
    assert layer.L.shape == (6, 6) and layer.R.shape == (5, 6)
    assert torch.equal(layer.K, torch.tensor([1.0, 1, 4, 4, 8, 8]))
    assert layer.scaling == 3.0
    x = torch.randn(3, 6)
    expected = base(x) + 3.0 * x @ (layer.R @ torch.diag(layer.K) @ layer.L).T
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert not torch.allclose(layer(x), base(x))  # non-zero at step 0 (Kaiming init of both factors)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    bound = 1 / math.sqrt(6)
    assert layer.L.abs().max() <= bound + 1e-6


def _prepared(defense, backbone="tiny-bert"):
    loaded = resolve_backbone(backbone).load(2, seed=0)
    d = registry.get("defense", defense)()
    model = d.prepare_model(loaded, make_ctx())
    return model, [n for n, p in model.named_parameters() if p.requires_grad]


def test_musclelora_trains_only_lora_and_the_multiscale_factors():
    model, names = _prepared("musclelora")
    assert names, "nothing trains"
    for n in names:
        assert "lora_" in n or n.endswith("pooler.dense.L") or n.endswith("pooler.dense.R"), n
    assert any(n.endswith(".L") for n in names) and any(n.endswith(".R") for n in names)
    assert any("query" in n for n in names) and any("value" in n for n in names)
    assert not any("classifier" in n for n in names)


@pytest.mark.parametrize("backbone, suffix", [("tiny-roberta", "classifier.dense"), ("tiny-llama", "score.dense")])
def test_musclelora_wraps_the_pre_classifier_layer(backbone, suffix):
    model, names = _prepared("musclelora", backbone)
    mslr = [n for n in names if n.endswith((".L", ".R"))]
    assert mslr and all(n[:-2].endswith(suffix) for n in mslr), mslr
    assert all("lora_" in n or n in mslr for n in names)
    if backbone == "tiny-llama":
        head = [m for n, m in model.named_modules() if n.endswith("score.out_proj")][0]
        assert head.out_features == 2 and head.in_features == 16 and head.bias is None


def test_ablations_train_what_they_say():
    _, ga = _prepared("ga")
    assert any("classifier" in n for n in ga) and any("embeddings" in n for n in ga)  # full fine-tuning
    _, mslr = _prepared("mslr")
    assert any(n.endswith(".L") for n in mslr) and any("lora_" in n for n in mslr)
    _, galora = _prepared("ga-lora")
    assert galora and all("lora_" in n for n in galora)
    assert registry.get("defense", "mslr")().reference_size(resolve_backbone("tiny-bert").load(2, 0)) == 0
    assert registry.get("defense", "ga-lora")().reference_size(resolve_backbone("tiny-bert").load(2, 0)) == 96


def test_projection_is_parallel_to_r_with_the_projected_magnitude():
    g = torch.tensor([3.0, -1.0, 2.0])
    r = torch.tensor([1.0, 2.0, -2.0])
    a = project(g, r)
    dot = float(g @ r)  # -3
    assert torch.allclose(a, abs(dot) / float(r @ r) * r)
    assert torch.allclose(torch.linalg.cross(a, r), torch.zeros(3))
    assert float(a @ r) > 0  # points along +r even when <g, r> < 0
    assert torch.isclose(a.norm(), torch.tensor(abs(dot)) / r.norm())
    assert torch.equal(project(g, torch.zeros(3)), torch.zeros(3))


def _step(model, batch, ref_batch, epoch=0, memory=None):
    return StepState(model, batch, epoch, 3, 0, lambda: [(ref_batch, 1.0)], {} if memory is None else memory)


def test_aligned_backward_replaces_each_gradient_by_its_projection():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    model.config = None

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = model

        def forward(self, x, labels):
            logits = self.lin(x)
            return type("Out", (), {"loss": torch.nn.functional.cross_entropy(logits, labels)})()

    m = Wrap()
    batch = {"x": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,))}
    ref = {"x": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,))}
    raw = torch.autograd.grad(m(**batch).loss, list(m.parameters()))
    refg = torch.autograd.grad(m(**ref).loss, list(m.parameters()))
    s = AlignmentSettings(min_ref_loss=0.0)
    aligned_backward(_step(m, batch, ref), s)
    for p, g, r in zip(m.parameters(), raw, refg):
        assert torch.allclose(p.grad, project(g, r), atol=1e-6)
    # when the reference loss is below the threshold in epoch 0, the raw gradient is kept
    for p in m.parameters():
        p.grad = None
    mem = {}
    aligned_backward(_step(m, batch, ref, memory=mem), AlignmentSettings(min_ref_loss=100.0))
    for p, g in zip(m.parameters(), raw):
        assert torch.allclose(p.grad, g, atol=1e-6)
    assert mem["stats"]["alignment_modes"] == {"aligned": 0, "mixed": 0, "raw": 1}


def test_raw_ratio_follows_the_authors_schedule():
    # rho = max * (epoch - ga_epoch) / (epochs - ga_epoch): over 10 epochs from ga_epoch 1 it ends at 0.08,
    # from ga_epoch 0 at 0.09 (the former divisor, epochs - 1 - ga_epoch, reached 0.1)
    s = AlignmentSettings(max_raw_ratio=0.1, ga_epoch=1)
    assert [round(raw_ratio(e, 5, s), 4) for e in range(5)] == [0.0, 0.0, 0.025, 0.05, 0.075]
    assert round(raw_ratio(9, 10, AlignmentSettings(max_raw_ratio=0.1, ga_epoch=0)), 4) == 0.09


class _Lin(torch.nn.Module):
    """Two tensors; the reference batch only reaches the first (``x2`` is zero there)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(4, 2, bias=False)
        self.b = torch.nn.Linear(3, 2, bias=False)
        self.config = None

    def forward(self, x, x2, labels):
        logits = self.a(x) + self.b(x2)
        return type("Out", (), {"loss": torch.nn.functional.cross_entropy(logits, labels)})()


def _batches():
    g = torch.Generator().manual_seed(1)
    batch = {"x": torch.randn(8, 4, generator=g), "x2": torch.randn(8, 3, generator=g),
             "labels": torch.randint(0, 2, (8,), generator=g)}
    ref = {"x": torch.randn(8, 4, generator=g), "x2": torch.zeros(8, 3), "labels": torch.randint(0, 2, (8,), generator=g)}
    return batch, ref


def test_mixed_mode_value_and_a_zero_reference_gradient_keeps_the_raw_one():
    m = _Lin()
    batch, ref = _batches()
    raw = torch.autograd.grad(m(**batch).loss, list(m.parameters()))
    refg = torch.autograd.grad(m(**ref).loss, list(m.parameters()))
    assert not refg[1].any()  # the reference batch gives tensor b no direction
    # reference loss below the bar from ga_epoch on: mixed, rho = 0.1 * (2 - 0) / (4 - 0) = 0.05
    mem = {}
    state = StepState(m, batch, 2, 4, 0, lambda: [(ref, 1.0)], mem)
    aligned_backward(state, AlignmentSettings(min_ref_loss=100.0, max_raw_ratio=0.1, ga_epoch=0))
    assert mem["stats"]["alignment_modes"]["mixed"] == 1
    assert torch.allclose(m.a.weight.grad, 0.95 * project(raw[0], refg[0]) + 0.05 * raw[0], atol=1e-6)
    assert torch.allclose(m.b.weight.grad, raw[1], atol=1e-6)  # kept raw, not zeroed
    assert mem["stats"]["alignment_modes_per_epoch"][2] == {"aligned": 0, "mixed": 1, "raw": 0}
    assert mem["stats"]["steps_with_raw_gradient"] == 1


def test_the_optimizer_receives_the_aligned_gradient(monkeypatch):
    """Through the real training loop: what AdamW steps with is the projection (after clipping)."""
    from bench.models.training import train

    seen = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        seen.append({id(p): p.grad.detach().clone() for g in self.param_groups for p in g["params"]})
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    loaded = resolve_backbone("tiny-bert").load(2, seed=0)
    d = registry.get("defense", "ga")(registry.get("defense", "ga").Config(min_ref_loss=0.0, reference_size=8))
    model = d.prepare_model(loaded, make_ctx())
    texts, labels = ["good film", "bad film", "fine cf movie", "awful"], [1, 0, 1, 0]
    prof = get_profile("smoke", {"epochs": "1", "batch_size": "4", "grad_clip": "1000"})
    # the expected gradient, from the same weights and the same batches, before training moves them
    from bench.models.training import Encoded
    enc, ref_enc = Encoded(loaded.tokenizer, texts, labels, 32), Encoded(loaded.tokenizer, texts[::-1], labels[::-1], 32)
    model.eval()  # dropout off on both sides (tiny-bert's dropout would make the two passes differ)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.autograd.grad(model(**enc.batch([0, 1, 2, 3], torch.device("cpu"))).loss, params)
    r = torch.autograd.grad(model(**ref_enc.batch([0, 1, 2, 3], torch.device("cpu"))).loss, params)
    expected = {id(p): project(a, b) if b.any() else a for p, a, b in zip(params, g, r)}
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    train(model, loaded.tokenizer, texts, labels, texts, labels, prof, d, 0, torch.device("cpu"),
          reference=(texts[::-1], labels[::-1]))
    assert len(seen) == 1 and seen[0].keys() == expected.keys()
    for k, want in expected.items():
        assert torch.allclose(seen[0][k], want, atol=1e-6, rtol=1e-4)


def test_decoder_defaults_follow_the_authors_decoder_setting():
    from bench.models.backbones import DECODER_TYPES

    model, _ = _prepared("musclelora", "tiny-llama")
    assert model.config.model_type in DECODER_TYPES
    head = [m for n, m in model.named_modules() if n.endswith("score")][0]
    assert isinstance(head.dropout, torch.nn.Dropout) and head.dropout.p == 0.1
    # decoders: no raw gradient is ever mixed back in (max_raw_ratio 0), from epoch 0
    m = _Lin()
    m.config = type("C", (), {"model_type": "llama"})()
    batch, ref = _batches()
    mem = {}
    d = registry.get("defense", "musclelora")()
    d.backward(StepState(m, batch, 0, 3, 0, lambda: [(ref, 1.0)], mem))
    assert mem["stats"]["alignment_modes"]["aligned"] == 1  # min_ref_loss 0 for decoders: always aligned


def test_lora_freezes_the_head_like_the_authors_baseline_and_adamw_skips_biases_and_norms():
    from bench.models.training import decay_groups

    model, names = _prepared("lora")
    assert names and all("lora_" in n for n in names), names
    loaded = resolve_backbone("tiny-bert").load(2, seed=0)
    head_variant = registry.get("defense", "lora")(registry.get("defense", "lora").Config(train_head=True))
    trained = [n for n, p in head_variant.prepare_model(loaded, make_ctx()).named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in trained)
    params = list(resolve_backbone("tiny-bert").load(2, seed=0).model.named_parameters())
    groups = decay_groups(params, 0.01)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for n, p in params:
        assert (id(p) in no_decay) == (n.endswith("bias") or "LayerNorm" in n), n


def test_reference_samples_never_appear_in_the_selection_dev_set(toy_dir):
    data = DataCache().get(str(toy_dir))
    dev = data.dev.add_column("row", list(range(len(data.dev))))
    rest, ref = split_dev(dev, 96, 16, seed=3)
    assert len(ref) == 96 and len(rest) == len(dev) - 96
    assert not set(ref["row"]) & set(rest["row"])
    _, ref2 = split_dev(dev, 96, 16, seed=3)
    assert ref2["row"] == ref["row"]
    cell = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["musclelora"], [1], get_profile("smoke"))[0]
    rec = run_cell(cell, data)
    assert rec["row"]["uses_clean"] and rec["row"]["n_reference"] == 96 == rec["row"]["n_clean_used"]
    # every defense selects on the same rows: dev less the profile's whole clean budget
    assert rec["counts"]["n_dev_selection"] == len(data.dev) - get_profile("smoke").clean_size
    assert sum(rec["training"]["defense_stats"]["alignment_modes"].values()) == rec["training"]["steps"]
