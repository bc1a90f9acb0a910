"""benchmarks/perf.py (issue 10): a tiny run writes perf.json and perf.md with the fields and positive ratios."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys

import pytest

from bench.data import PROJECT_ROOT


def _load_perf():
    spec = importlib.util.spec_from_file_location("perf_benchmark", PROJECT_ROOT / "benchmarks" / "perf.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_perf_benchmark_tiny(tmp_path, shared_data):
    perf = _load_perf()
    out = tmp_path / "perf"
    perf.main(["--backbone", "tiny-bert", "--profile", "smoke", "--data-dir", str(shared_data),
               "--defense", "none", "--defense", "lora", "--defense", "musclelora", "--defense", "onion",
               "--steps", "2", "--warmup", "1", "--repeats", "2", "--peak-size", "256", "--peak-seconds", "0.02",
               "--onion-sentences", "2", "--eval-rows", "48", "--eval-repeats", "1", "--out", str(out)])
    rep = json.loads((out / "perf.json").read_text())
    md = (out / "perf.md").read_text()
    assert "python benchmarks/perf.py --backbone tiny-bert" in md and "Other processes may have shared" in md
    for key in ("command", "threads", "torch_threads", "cpu", "loadavg_start", "loadavg_end", "peak", "recipes",
                "defenses", "goals", "provenance"):
        assert key in rep, key
    assert rep["provenance"]["git"]["commit"] and rep["threads"]["threads"] >= 1
    for dtype in ("fp32", "bf16"):
        assert _positive(rep["peak"][dtype]["flops_per_s"])
    assert set(rep["recipes"]) == {"none", "lora", "musclelora"}  # onion trains no victim of its own
    for name, r in rep["recipes"].items():
        assert _positive(r["framework"]["sec_per_step_median"]) and _positive(r["bare"]["sec_per_step_median"])
        assert _positive(r["framework_over_bare"]), name
        assert _positive(r["flops"]["per_step"]) and _positive(r["flops"]["share_of_peak_fp32"])
        assert _positive(r["tokens"]["train_nonpad_tokens_per_s"])
        assert 0 < r["evaluation"]["share_of_cell"] < 1
        parts = r["breakdown"]["seconds_per_step"]
        assert _positive(parts["forward"]) and _positive(parts["backward"]) and _positive(parts["optimizer"])
        assert _positive(r["train_check"]["over_replica"])
        # same model init and batches: the framework's first loss is the bare loop's
        assert math.isclose(r["framework"]["first_loss"], r["bare"]["first_loss"], rel_tol=1e-4)
    assert rep["recipes"]["musclelora"]["aligned"] and _positive(
        rep["recipes"]["musclelora"]["breakdown"]["seconds_per_step"]["align_ref_forward"])
    for name in ("none", "lora"):
        assert _positive(rep["recipes"][name]["bf16"]["speedup_vs_fp32"])
    for name, d in rep["defenses"].items():
        assert _positive(d["vs_none"]) and _positive(d["vs_lora"]), name
    assert rep["defenses"]["onion"]["recipe"] == "none"
    onion = rep["defenses"]["onion"]["inference"]
    assert _positive(onion["scoring_sec_per_sentence"]) and _positive(onion["victim_predict_sec_per_sentence"])
    assert _positive(rep["goals"]["musclelora_over_lora"])
    _assert_counts_and_ratios(rep, steps=2, warmup=1, repeats=2)
    _assert_flops_are_the_analytic_count(rep)


def _assert_counts_and_ratios(rep: dict, steps: int, warmup: int, repeats: int) -> None:
    """What the benchmark counts and divides agrees with what it ran (a bug in its bookkeeping fails here)."""
    s = rep["settings"]
    batch, max_len = s["batch_size"], s["max_length"]
    for name, r in rep["recipes"].items():
        fw, bare = r["framework"]["per_repeat"], r["bare"]["per_repeat"]
        assert len(fw) == len(bare) == repeats and all(_positive(x) for x in fw + bare), name
        assert r["framework"]["sec_per_step_median"] == pytest.approx(statistics.median(fw), rel=1e-3)  # report rounds
        # paired ratios of the same repeat, their median the headline; the same steps, so a sane ratio
        paired = [a / b for a, b in zip(fw, bare)]
        assert r["framework_over_bare_per_repeat"] == pytest.approx(paired, rel=1e-3)
        assert r["framework_over_bare"] == pytest.approx(statistics.median(paired), rel=1e-3)
        assert 0.2 < r["framework_over_bare"] < 5, name
        # one epoch's batches over the training rows; the timed tokens fit the padded batch
        assert r["steps_per_epoch"] == r["epoch_batches"]["batches"] == math.ceil(s["train_rows"] / batch)
        t = r["tokens"]
        assert 0 < t["train_nonpad_per_step"] <= t["train_padded_per_step"] <= batch * max_len, name
        assert t["train_pad_share"] == pytest.approx(1 - t["train_nonpad_per_step"] / t["train_padded_per_step"],
                                                     abs=1e-5)
        assert r["flops"]["per_nonpad_train_token"] == pytest.approx(
            r["flops"]["per_step"] / t["train_nonpad_per_step"], rel=1e-4)
        # train() over the rows of the warm-up + timed batches: one step per batch of them
        tc = r["train_check"]
        assert 0 < tc["rows"] <= (steps + warmup) * batch and tc["steps"] == math.ceil(tc["rows"] / batch), name
        assert 0 < tc["train_seconds"] <= tc["wall_seconds"]
        assert r["trainable_params"] <= r["total_params"]
    assert rep["recipes"]["none"]["trainable_params"] == rep["recipes"]["none"]["total_params"]
    for name in ("lora", "musclelora"):
        assert rep["recipes"][name]["trainable_params"] < rep["recipes"]["none"]["total_params"] / 10, name
    base = rep["recipes"]["none"]["framework"]["sec_per_step_median"]
    for name, d in rep["defenses"].items():
        assert d["vs_none"] == pytest.approx(d["sec_per_step"] / base, rel=1e-3), name


def _assert_flops_are_the_analytic_count(rep: dict) -> None:
    """Plain fine-tuning of tiny-bert: every matmul's FLOPs, forward (2 per multiply-add) and backward (twice
    the forward: the gradients of both operands, everything trains), counted by hand from the config."""
    from bench.models.backbones import resolve_backbone

    cfg = resolve_backbone("tiny-bert").load(2, seed=0).model.config
    h, inter, layers, labels = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_labels
    r = rep["recipes"]["none"]
    batch = rep["settings"]["batch_size"]
    tokens = r["tokens"]["train_padded_per_step"]
    length = tokens / batch  # the timed batches here are full batches padded to max_length (asserted below)
    assert tokens == batch * rep["settings"]["max_length"], "the timed batches are no longer uniform: count per batch"
    per_token = layers * (4 * h * h + 2 * h * inter)  # Q, K, V, output; FFN in and out
    attention = layers * 2 * length * length * h  # Q K^T and the weighted sum of V, per sequence
    head = h * h + h * labels  # pooler and classifier, per sequence
    forward = 2 * (per_token * tokens + (attention + head) * batch)
    assert r["flops"]["per_step"] == pytest.approx(3 * forward, rel=1e-3)
    # LoRA freezes the weights: no weight gradients, so fewer FLOPs than plain fine-tuning on the same batches
    assert rep["recipes"]["lora"]["flops"]["per_step"] < r["flops"]["per_step"]
