"""The training-time defenses adapter, prefix, moderate-fitting, dpoe and btu: what trains, what stays
frozen, and the pieces of each method checked against a hand computation."""

import copy
import math

import datasets
import numpy as np
import pytest
import torch
from conftest import make_ctx

from bench import registry
from bench.defense import StepState
from bench.engine.profiles import get_profile
from bench.models.backbones import resolve_backbone
from defenses.btu import BTUConfig, most_moved, suspects_of, unlearn_rows
from defenses.dpoe import poe_loss, rdrop_kl

TEXTS = ["a good film here", "bad", "the plot was dull and slow", "fine"]


def _prepare(defense, backbone="tiny-bert", config=None, profile="smoke"):
    loaded = resolve_backbone(backbone).load(2, seed=0)
    d = registry.get("defense", defense)(config)
    ctx = make_ctx(profile=profile)
    return d, d.prepare_model(loaded, ctx), loaded, ctx


def _batch(tokenizer, texts=TEXTS, labels=(1, 0, 0, 1)):
    enc = tokenizer(list(texts), padding=True, return_tensors="pt")
    return {**enc, "labels": torch.tensor(labels)}


def _one_step(model, batch, lr=1e-2):
    """One AdamW step on what requires grad; returns (names that changed, names that did not)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    model(**batch).loss.backward()
    opt.step()
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    return changed, set(before) - changed


# --- adapter --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone, sites", [("tiny-bert", ("attention.output.dense", "output.dense")),
                                             ("tiny-llama", ("self_attn.o_proj", "mlp.down_proj"))])
def test_adapter_trains_only_its_bottlenecks_and_the_head_and_starts_near_identity(backbone, sites):
    d, model, loaded, _ = _prepare("adapter", backbone)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    adapters = [n for n in trainable if ".adapter." in n]
    assert set(trainable) - set(adapters) and all(".adapter." in n or "classifier" in n or "score" in n
                                                   for n in trainable), trainable
    # two adapters per layer (2 layers), each down (32 -> 8) and up (8 -> 32) with biases
    assert len(adapters) == 2 * 2 * 4
    assert all(n.split(".adapter.")[0].endswith(sites) for n in adapters)
    down = model.get_parameter(adapters[0])
    assert down.shape == (8, 32) and down.abs().max() <= 0.02 + 1e-7  # N(0, 0.01) truncated at 2 std
    # near-identity: the adapted model's logits are the frozen backbone's, up to the tiny init
    plain = resolve_backbone(backbone).load(2, seed=0).model.eval()
    batch = _batch(loaded.tokenizer)
    model.eval()
    with torch.no_grad():
        diff = (model(**batch).logits - plain(**batch).logits).abs().max()
    assert 0 < diff < 0.05
    changed, unchanged = _one_step(model, batch)
    assert changed == set(trainable)  # the frozen base weights did not move
    assert any(n.endswith("base.weight") for n in unchanged)


def test_adapter_can_freeze_the_head_and_rejects_a_zero_bottleneck():
    from bench.config import ConfigError, build_config

    cfg = build_config(registry.get("defense", "adapter").Config, {"train_head": "false"})
    _, model, _, _ = _prepare("adapter", config=cfg)
    assert all(".adapter." in n for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="adapter.bottleneck"):
        build_config(registry.get("defense", "adapter").Config, {"bottleneck": "0"})


# --- prefix ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-roberta", "tiny-llama"])
def test_prefix_trains_only_prefixes_and_head_and_respects_the_padding_mask(backbone):
    d, model, loaded, _ = _prepare("prefix", backbone)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    prefixes = [n for n in trainable if ".prefix." in n]
    assert len(prefixes) == 2 * 2 and model.get_parameter(prefixes[0]).shape == (2, 8, 16)
    assert all(".prefix." in n or "classifier" in n or "score" in n for n in trainable)
    tok = loaded.tokenizer
    model.eval()
    with torch.no_grad():
        batch = _batch(tok)
        batch.pop("labels")
        out = model(**batch, output_hidden_states=True)
        # hidden states: embeddings + one per layer, real tokens only (no virtual tokens among them)
        assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape[1] == batch["input_ids"].shape[1]
        # padding is still masked: a short sentence alone gets the logits it gets in the padded batch
        alone = model(**tok([TEXTS[1]], return_tensors="pt")).logits
        assert torch.allclose(alone[0], out.logits[1], atol=1e-5)
        # the prefixes do reach the attention
        plain = resolve_backbone(backbone).load(2, seed=0).model.eval()
        assert not torch.allclose(plain(**batch).logits, out.logits, atol=1e-4)
    changed, _ = _one_step(model, _batch(tok))
    assert changed == set(trainable)


# --- moderate-fitting -----------------------------------------------------------------------------

def test_moderate_fitting_generates_every_lora_matrix_from_one_small_code():
    d, model, loaded, ctx = _prepare("moderate-fitting")
    names = [n for n, _ in model.named_parameters()]
    assert not any("lora_" in n for n in names)  # no LoRA matrix is a free parameter
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    gens = [n for n in trainable if n.startswith("moderate_reparam.")]
    assert set(trainable) - set(gens) and all("classifier" in n for n in set(trainable) - set(gens))
    reparam = model.moderate_reparam
    assert reparam.gen_a.code.shape == (2,) and reparam.gen_a.inner.weight.shape == (2, 2)
    b_layers = reparam._slots["b"]
    assert len(b_layers) == 2 * 2 and all(float(b.weight.abs().max()) == 0 for b in b_layers)  # update starts at 0
    plain = resolve_backbone("tiny-bert").load(2, seed=0).model.eval()
    batch = _batch(loaded.tokenizer)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, plain(**batch).logits, atol=1e-6)  # same head init, B = 0
    changed, unchanged = _one_step(model, batch)
    assert changed == set(trainable) and any("query.base_layer.weight" in n for n in unchanged)
    # one step moved the B matrices of every layer at once (they share one code vector)
    with torch.no_grad():
        model(**batch)
    assert all(float(b.weight.abs().max()) > 0 for b in b_layers)
    # a deep copy (Victim.copy) regenerates its own weights: editing the copy leaves the original alone
    model.eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.allclose(twin(**batch).logits, model(**batch).logits)
        twin.moderate_reparam.gen_b.outer.weight.mul_(-3.0)
        assert not torch.allclose(twin(**batch).logits, model(**batch).logits)


def _under(name, profile):
    from bench.runner import _default_config

    cls = registry.get("defense", name)
    return cls(_default_config(cls, profile))


def test_moderate_fitting_trains_fewer_epochs_than_lora_on_every_profile():
    for name in ("cpu", "paper", "smoke"):
        prof = get_profile(name)
        (lr_m, ep_m), (lr_l, ep_l) = _under("moderate-fitting", name).schedule(prof), _under("lora", name).schedule(prof)
        assert ep_m < ep_l or ep_l == 1, name
        if name != "cpu":
            assert lr_m < lr_l, name  # the authors' lower rate (0.3 x the adapter rate)
    # under cpu: 3e-3, chosen on clean dev (the authors' 3e-4 stayed at chance in 94 steps); 2 of 3 epochs
    assert _under("moderate-fitting", "cpu").schedule(get_profile("cpu")) == (pytest.approx(3e-3), 2)
    assert registry.get("defense", "moderate-fitting")().schedule(get_profile("cpu"))[0] == pytest.approx(3e-4)


def test_prefix_tuning_takes_its_dev_chosen_rate_under_the_cpu_profile_only():
    assert _under("prefix", "cpu").schedule(get_profile("cpu")) == (pytest.approx(3e-2), 3)
    paper = get_profile("paper")
    assert _under("prefix", "paper").schedule(paper)[0] == pytest.approx(paper.adapter_learning_rate)


# --- dpoe -----------------------------------------------------------------------------------------

def test_poe_and_rdrop_losses_match_a_hand_computation():
    main = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    shallow = torch.tensor([[-1.0, 3.0, 0.0], [1.5, 0.5, 0.5]])
    labels = torch.tensor([0, 2])

    def log_softmax(z):
        z = np.asarray(z, dtype=np.float64)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    alpha, temp = 0.7, 2.0
    joint = log_softmax(log_softmax(main.numpy()) + alpha * log_softmax(shallow.numpy() / temp))
    expected = -np.mean([joint[0, 0], joint[1, 2]])
    assert float(poe_loss(main, shallow, labels, alpha, temp)) == pytest.approx(expected, rel=1e-5)
    p, q = np.exp(log_softmax(main.numpy())), np.exp(log_softmax(shallow.numpy()))
    kl_pq, kl_qp = (p * np.log(p / q)).mean(), (q * np.log(q / p)).mean()  # mean over batch and classes
    assert float(rdrop_kl(main, shallow)) == pytest.approx((kl_pq + kl_qp) / 2, rel=1e-5)
    assert float(rdrop_kl(main, main)) == pytest.approx(0.0, abs=1e-7)


def test_dpoe_predicts_with_the_main_model_only_and_trains_the_shallow_expert_in_backward():
    d, model, loaded, ctx = _prepare("dpoe")
    assert model.shallow.config.num_hidden_layers == 1 and model.main.config.num_hidden_layers == 2
    assert len(model.shallow.bert.encoder.layer) == 1
    assert model.config is model.main.config and model.get_input_embeddings() is model.main.get_input_embeddings()
    batch = _batch(loaded.tokenizer)
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
        assert torch.equal(before, model.main(**batch).logits)
        for p in model.shallow.parameters():  # the shallow expert has no say in the prediction
            p.add_(torch.randn_like(p))
        assert torch.equal(model(**batch).logits, before)
    # backward: the PoE loss (+ R-Drop), the shallow expert stepped by its own optimiser
    d.select_train(datasets.Dataset.from_dict({"text": TEXTS, "label": [1, 0, 0, 1], "row_id": [0, 1, 2, 3]}), ctx)
    model.train()
    shallow_before = [p.detach().clone() for p in model.shallow.parameters()]
    state = StepState(model, batch, 0, 1, 0, None, {})
    torch.manual_seed(0)
    loss = d.backward(state)
    assert math.isfinite(loss) and loss > 0
    assert all(p.grad is None for p in model.shallow.parameters())  # consumed by its own optimiser
    assert any(not torch.equal(a, b.detach()) for a, b in zip(shallow_before, model.shallow.parameters()))
    assert model.main.classifier.weight.grad is not None  # left for the loop's optimiser (the main model)
    assert state.memory["stats"]["dpoe_rdrop_kl_last"] > 0  # two dropout masks differ (BERT has dropout)
    # with the shallow expert's logits fixed, the loss is the hand formula on the main model's logits
    model.eval()
    with torch.no_grad():
        b = {k: v for k, v in batch.items() if k != "labels"}
        expected = poe_loss(model.main(**b).logits, model.shallow(**b).logits, batch["labels"])
        state = StepState(model, batch, 0, 1, 1, None, state.memory)
    assert d.backward(state) == pytest.approx(float(expected), rel=1e-5)  # eval mode: no dropout, KL term 0


# --- btu ------------------------------------------------------------------------------------------

def test_btu_ranks_by_embedding_movement_and_resets_only_the_moved_dimensions_to_pad():
    g = torch.Generator().manual_seed(0)
    before = torch.randn(50, 6, generator=g)
    after = before + 0.01 * torch.randn(50, 6, generator=g)
    after[7] += torch.tensor([3.0, 0.0, 0.0, 2.0, 0.0, 0.0])  # the "trigger" moved most
    after[0] += 5.0  # a special token moved even more, but is never a suspect
    after[12] += 1.0
    assert most_moved(before, after, 2, exclude={0}) == [7, 12]
    out = unlearn_rows(after, before, [7], pad_id=0)
    c = float((after - before).norm() / 50)
    moved = (after[7] - before[7]).abs() > c
    assert moved[0] and moved[3] and not moved.all()
    assert torch.equal(out[7][moved], before[0][moved])  # moved dims: the pretrained [PAD] values
    assert torch.equal(out[7][~moved], after[7][~moved])  # the rest keeps its fine-tuned values
    assert torch.equal(out[:7], after[:7]) and torch.equal(out[8:], after[8:])  # other rows untouched


def _trigger_rows(n=48):
    rng = np.random.default_rng(0)
    filler = ["the", "movie", "film", "was", "a", "plot", "story", "and", "very", "it", "this", "good", "bad"]
    texts, labels = [], []
    for i in range(n):
        words = list(rng.choice(filler, size=6))
        if i % 3 == 0:  # poisoned: the rare token cf decides the label
            words.insert(int(rng.integers(0, 6)), "cf")
        texts.append(" ".join(words))
        labels.append(1 if i % 3 == 0 else int(rng.integers(0, 2)))
    return datasets.Dataset.from_dict({"text": texts, "label": labels, "row_id": list(range(n))})


@pytest.mark.parametrize("round_", ["pooled", "full"])
def test_btu_exposes_the_trigger_token_and_keeps_every_row(round_):
    vocab = 30522  # minilm's tokenizer, which the tiny models share
    cfg = BTUConfig(rounds=(round_,), suspect_fraction=1.5 / vocab, exposure_epochs=3, exposure_lr=2e-2,
                    pooled_batch_size=16)
    d, model, loaded, ctx = _prepare("btu", config=cfg)
    assert d.select_train(_trigger_rows(), ctx) is None  # every row kept
    tok = loaded.tokenizer
    assert suspects_of(model) == tok.convert_tokens_to_ids(["cf"])
    assert ctx.stats["btu_suspects"] == ["cf"]


def test_btu_unlearns_after_training_or_freezes_the_neutralised_row_before():
    rows = _trigger_rows()
    base = dict(rounds=("pooled",), suspect_fraction=1.5 / 30522, exposure_epochs=3, exposure_lr=2e-2,
                pooled_batch_size=16)
    # before: the suspect's row becomes [PAD]'s embedding and gets no gradient
    d, model, loaded, ctx = _prepare("btu", config=BTUConfig(**base, unlearn="before"))
    d.select_train(rows, ctx)
    cf = loaded.tokenizer.convert_tokens_to_ids("cf")
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb[cf], emb[loaded.tokenizer.pad_token_id])
    batch = _batch(loaded.tokenizer, ["cf the movie", "bad film"], (1, 0))
    d.backward(StepState(model, batch, 0, 1, 0, None, {}))
    assert float(emb.grad[cf].abs().max()) == 0 and float(emb.grad.abs().max()) > 0
    # after (the default): the victim predicts as trained; the defense predicts with cf's moved dims reset
    from bench.models.victim import Victim

    d, model, loaded, ctx = _prepare("btu", config=BTUConfig(**base))
    d.select_train(rows, ctx)
    ctx._backbone = lambda: resolve_backbone("tiny-bert").load(2, seed=0)
    pretrained = resolve_backbone("tiny-bert").load(2, seed=0).model.get_input_embeddings().weight
    with torch.no_grad():  # stand-in for fine-tuning: cf's row moves far, every other row a little
        model.get_input_embeddings().weight.add_(0.001)
        model.get_input_embeddings().weight[cf] += 1.0
    victim = Victim(model, loaded.tokenizer, get_profile("smoke"), torch.device("cpu"))
    d.calibrate(victim, ctx)
    fixed = d._unlearned.model.get_input_embeddings().weight
    assert torch.equal(fixed[cf], pretrained[loaded.tokenizer.pad_token_id])
    assert not torch.equal(model.get_input_embeddings().weight[cf], fixed[cf])  # the cached victim is untouched
    assert d.predict(TEXTS, victim, ctx).shape == (len(TEXTS),)
