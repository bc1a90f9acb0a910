"""Does ``torch.compile`` pay back its compile time within a cell? (issue 10, one of the levers)

    python benchmarks/probes/compile_probe.py --backbone minilm --profile cpu [--steps 30] [--out results/perf/compile]

Plain full fine-tuning (the recipe of `none` and of every post-training defense's victim), on the first
``train_size`` rows of the dataset's training split (not the runner's stratified slice: the same sentence
lengths for timing, no poisoning), in length-grouped batches as ``bench.models.training.train`` draws them, and one model reset to the same initial weights before each run:

* eager: ``--steps`` timed steps (forward, backward, AdamW), after ``--warmup`` untimed ones;
* compiled: the same model through ``torch.compile(model, dynamic=True)`` (dynamic: the batches have many
  sequence lengths, and a static graph would recompile for each), the first steps timed separately as
  the compile cost, then the same ``--steps`` timed steps.

Break-even = compile seconds / (eager s/step - compiled s/step), against the steps of one cell
(epochs x batches per epoch). Writes ``OUT/compile.json`` and ``OUT/compile.md`` with provenance. Speed
only: a compiled model's numerics differ in rounding, so keeping it would also need the 3-seed check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.engine.profiles import get_profile
from bench.models.backbones import resolve_backbone
from bench.models.hardware import configure_threads
from bench.models.training import Encoded, epoch_batches
from bench.reporting.results import provenance, write_json_atomic
from bench.runner import DataCache


def steps(model, enc: Encoded, batches: list[list[int]], opt, device) -> list[float]:
    out = []
    model.train()
    for idx in batches:
        t0 = time.perf_counter()
        batch = enc.batch(idx, device)
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per run (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="eager warm-up steps, and compiled steps counted as compile")
    ap.add_argument("--out", default="results/perf/compile")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    threads = configure_threads()
    prof = get_profile(args.profile)
    device = torch.device("cpu")
    data = DataCache().get(args.dataset)
    rows = data.train.select(range(min(len(data.train), prof.train_size or len(data.train))))
    loaded = resolve_backbone(args.backbone).load(data.num_labels, seed=1)
    model, tok = loaded.model.to(device), loaded.tokenizer
    enc = Encoded(tok, list(rows["text"]), [int(x) for x in rows["label"]], prof.max_length)
    gen = torch.Generator().manual_seed(1)
    batches = epoch_batches(enc, prof.batch_size, prof.group_by_length, gen)
    per_epoch = len(batches)
    need = args.warmup + args.steps
    batches = (batches * (need // len(batches) + 1))[:need]
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def fresh_opt(m):
        return torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=prof.learning_rate)

    model.load_state_dict(init)
    eager = steps(model, enc, batches, fresh_opt(model), device)
    model.load_state_dict(init)
    compiled_model = torch.compile(model, dynamic=True)
    t0 = time.perf_counter()
    compiled = steps(compiled_model, enc, batches, fresh_opt(model), device)
    compiled_total = time.perf_counter() - t0
    lengths = [max(len(enc.features[i]["input_ids"]) for i in b) for b in batches]
    e = statistics.median(eager[args.warmup:])
    c = statistics.median(compiled[args.warmup:])
    compile_s = sum(compiled[:args.warmup]) - args.warmup * c
    cell_steps = per_epoch * prof.epochs
    saving = e - c
    result = {
        "backbone": args.backbone, "profile": args.profile, "dataset": args.dataset, "threads": threads,
        "torch": torch.__version__, "timed_steps": args.steps, "warmup_steps": args.warmup,
        "padded_lengths_timed": sorted(set(lengths[args.warmup:])),
        "eager_s_per_step_median": round(e, 4), "compiled_s_per_step_median": round(c, 4),
        "speedup": round(e / c, 3) if c > 0 else None,
        "compile_seconds": round(compile_s, 1), "compiled_first_steps_seconds": [round(x, 2) for x in compiled[:args.warmup]],
        "recompiles_after_warmup": sum(1 for x in compiled[args.warmup:] if x > 5 * c),
        "steps_per_cell": cell_steps,
        "break_even_steps": round(compile_s / saving) if saving > 0 else None,
        "pays_within_a_cell": bool(saving > 0 and compile_s / saving < cell_steps),
        "compiled_run_seconds": round(compiled_total, 1),
    }
    rep = {"result": result, "provenance": provenance(
        "python benchmarks/probes/compile_probe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        time.perf_counter() - start)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "compile.json", rep)
    lines = ["# torch.compile on plain fine-tuning: does it pay within a cell?", "",
             f"`{rep['provenance']['command']}` at {rep['provenance']['git'].get('commit', '?')[:7]}"
             f"{' (dirty)' if rep['provenance']['git'].get('dirty') else ''}; {threads} threads; torch {torch.__version__}.", "",
             "| | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result.items()]
    (out / "compile.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=1))
    return rep


if __name__ == "__main__":
    main()
