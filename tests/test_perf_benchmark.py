"""benchmarks/perf.py (issue 10): a tiny run writes perf.json and perf.md with the fields and positive ratios."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

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
