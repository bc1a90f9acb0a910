"""Issue 25: what MuScleLoRA's aligned step hands the optimizer lies along the clean reference gradient.

In aligned mode ``aligned_backward`` replaces each trainable tensor's batch gradient ``g`` by
``|<g, r>| / ||r||^2 * r``, ``r`` the gradient on the clean reference rows. So, whatever the (poisoned)
training batch, the gradient the optimizer receives has cosine 1 with ``r`` for every tensor whose
reference gradient is nonzero: the batch only sets one non-negative step size per tensor. These tests
pin that through the defense's own ``backward`` hook on the registered ``tiny-bert`` backbone, check
that the step size does depend on the batch, and check that a step which ignores the alignment fails
the same assertion.
"""

import random

import pytest
import torch

from conftest import FILLER, NEG, POS, make_ctx
from defenses.musclelora import alignment

from bench import registry
from bench.defense import StepState
from bench.models.backbones import resolve_backbone
from bench.models.training import Encoded, length_chunks

TOL = 1e-5
TRIGGER = "cf"


def _sentences(n, seed, trigger=False, target=None):
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(POS if label else NEG))
        if trigger:
            words.insert(rng.randint(0, len(words)), TRIGGER)
        texts.append(" ".join(words))
        labels.append(label if target is None else target)
    return texts, labels


def _setup(defense):
    loaded = resolve_backbone("tiny-bert").load(2, seed=0)
    # min_ref_loss 0: alignment is on from the first step whatever the reference loss (the property is
    # about the aligned mode; the mode actually taken is asserted below)
    d = registry.get("defense", defense)(registry.get("defense", defense).Config(min_ref_loss=0.0))
    model = d.prepare_model(loaded, make_ctx())
    model.eval()  # no dropout: the reference gradient recomputed here equals the one the hook used
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at 0, which zeroes lora_A's gradients; mid-training it is not 0
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    tok = loaded.tokenizer
    ref_texts, ref_labels = _sentences(12, seed=10)
    ref_enc = Encoded(tok, ref_texts, ref_labels, 32)
    ref_chunks = length_chunks(ref_enc, list(range(len(ref_texts))), 4, torch.device("cpu"))
    # two different poisoned batches: triggered sentences relabelled to the target class, and the
    # reference rows themselves with every label flipped (a batch gradient roughly opposed to r)
    poisoned_a = Encoded(tok, *_sentences(8, seed=20, trigger=True, target=1), 32)
    poisoned_b = Encoded(tok, ref_texts, [1 - y for y in ref_labels], 32)
    batches = [poisoned_a.batch(list(range(8)), torch.device("cpu")),
               poisoned_b.batch(list(range(len(ref_texts))), torch.device("cpu"))]
    return d, model, batches, ref_chunks


def _used_gradients(d, model, batch, ref_chunks):
    """Run the defense's backward hook on one batch; return what the optimizer would step with, the
    reference gradients the hook used, and its step statistics."""
    model.zero_grad(set_to_none=True)
    mem = {}
    d.backward(StepState(model, batch, 0, 3, 0, lambda: ref_chunks, mem))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    used = {n: p.grad.detach().clone() for n, p in params}
    ref = {n: r for (n, _), r in zip(params, mem["ref_grads"])}
    return used, ref, mem["stats"]


def _cosines(used, ref):
    out = {}
    for n, g in used.items():
        r = ref[n]
        if r is None or not bool(r.any()):
            continue
        g64, r64 = g.flatten().double(), r.flatten().double()
        # no eps clamp (torch's cosine_similarity has one): the attention key biases' gradients are
        # analytically 0 (softmax ignores a shift shared by all keys) and only rounding noise of ~1e-13
        out[n] = float(g64 @ r64 / (g64.norm() * r64.norm()))
    return out


def _not_along_reference(cosines):
    return {n: c for n, c in cosines.items() if not c >= 1 - TOL}


@pytest.mark.parametrize("defense", ["musclelora", "ga"])
def test_every_used_gradient_lies_along_the_clean_reference_gradient(defense):
    d, model, batches, ref_chunks = _setup(defense)
    params = [p for p in model.parameters() if p.requires_grad]
    # the reference gradient, computed here independently of the hook (the chunks' weighted mean loss)
    expected_ref = torch.autograd.grad(sum(w * model(**c).loss for c, w in ref_chunks), params, allow_unused=True)
    norms, raw_cosines = [], []
    for batch in batches:
        raw = torch.autograd.grad(model(**batch).loss, params, allow_unused=True)
        used, ref, stats = _used_gradients(d, model, batch, ref_chunks)
        assert stats["alignment_modes"] == {"aligned": 1, "mixed": 0, "raw": 0}
        for (n, r), want in zip(ref.items(), expected_ref):
            assert r is not None and want is not None, n
            assert torch.allclose(r, want, atol=1e-7, rtol=1e-4), n
        cos = _cosines(used, ref)
        # not vacuous: every trainable tensor has a reference direction here
        assert len(cos) == len(params) > 0
        assert not _not_along_reference(cos), _not_along_reference(cos)
        norms.append({n: float(g.norm()) for n, g in used.items()})
        raw_cosines.append(_cosines(dict(zip(ref, raw)), ref))
    # the batch matters only through the step size: it differs between the two batches for every tensor
    for n in norms[0]:
        a, b = norms[0][n], norms[1][n]
        assert abs(a - b) > 1e-3 * max(a, b), (n, a, b)
    # the label-flipped batch's raw gradient points against r on some tensors (on which |<g, r>| turns it
    # round): the poisoned gradient's direction never reaches the optimizer, only its projected length
    assert min(raw_cosines[1].values()) < -0.3, raw_cosines[1]


def test_a_step_that_ignores_the_alignment_fails_the_direction_check(monkeypatch):
    d, model, batches, ref_chunks = _setup("musclelora")
    monkeypatch.setattr(alignment, "project", lambda g, r: g.clone())  # the raw batch gradient, unchanged
    for batch in batches:
        used, ref, stats = _used_gradients(d, model, batch, ref_chunks)
        assert stats["alignment_modes"]["aligned"] == 1
        cos = _cosines(used, ref)
        bad = _not_along_reference(cos)
        print(f"raw step: {len(bad)}/{len(cos)} tensors off the reference direction, min cosine {min(cos.values()):.4f}")
        assert len(bad) == len(cos)
        assert min(cos.values()) < 0.9
