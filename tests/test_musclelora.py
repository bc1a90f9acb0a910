"""MuScleLoRA's parts: the multi-scale layer, what trains, the alignment, the reference split."""

import math

import pytest
import torch

from conftest import make_ctx
from defenses.musclelora.alignment import AlignmentSettings, aligned_backward, project, raw_ratio
from defenses.musclelora.layers import MultiScaleLowRank

from bench import registry
from bench.backbones import resolve_backbone
from bench.defense import StepState
from bench.profiles import get_profile
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


def test_raw_ratio_rises_linearly_to_the_maximum():
    s = AlignmentSettings(max_raw_ratio=0.1, ga_epoch=1)
    assert [round(raw_ratio(e, 5, s), 4) for e in range(5)] == [0.0, 0.0, 0.0333, 0.0667, 0.1]


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
