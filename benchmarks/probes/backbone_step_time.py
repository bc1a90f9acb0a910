"""Seconds per optimizer step of one backbone: full fine-tuning at batch 8 (issue 27, "Backbones").

    OMP_NUM_THREADS=2 python benchmarks/probes/backbone_step_time.py --backbone minilm [--steps 5] [--warmup 1]

The same SST-2 training sentences for every backbone (the first (warmup + steps) x batch rows, in order,
batches of consecutive rows, no length grouping), tokenized by the backbone's tokenizer with the profile's
``max_length`` and dynamic padding, as ``bench.models.training`` does; the model in training mode; each
step is forward, backward, AdamW over what requires grad (the backbone's own set-up: qwen2.5-coder-0.5b
freezes its input embeddings; ``--train-embeddings`` trains them too). Prints one Markdown table row:
backbone, parameters, trainable parameters, mean padded tokens per row, mean and min seconds per timed
step, peak resident memory of the process (one backbone per process, so the peak is this backbone's).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from bench.engine.profiles import get_profile
from bench.models.backbones import resolve_backbone
from bench.models.hardware import configure_threads
from bench.models.training import Encoded, autocast, decay_groups, trainable_parameters
from bench.runner import DataCache


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    ap.add_argument("--train-embeddings", action="store_true", help="train the input embeddings as well")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: the forward under bf16 autocast, as profile.precision=bf16 runs it (default fp32)")
    args = ap.parse_args(argv)
    threads = configure_threads()["threads"]
    prof = get_profile(args.profile)
    data = DataCache().get(args.dataset)
    n = args.batch * (args.warmup + args.steps)
    rows = data.train.select(range(n))
    loaded = resolve_backbone(args.backbone).load(data.num_labels, seed=1)
    model = loaded.model
    if args.train_embeddings:
        model.get_input_embeddings().weight.requires_grad_(True)
    enc = Encoded(loaded.tokenizer, list(rows["text"]), [int(x) for x in rows["label"]], prof.max_length)
    params = trainable_parameters(model)
    opt = torch.optim.AdamW(decay_groups(params, prof.weight_decay), lr=prof.learning_rate)
    model.train()
    times, tokens = [], []
    for i in range(0, n, args.batch):
        batch = enc.batch(list(range(i, i + args.batch)), torch.device("cpu"))
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), args.precision):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        tokens.append(batch["input_ids"].shape[1])
    timed = times[args.warmup:]
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for _, p in params)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    name = args.backbone + (" (+embeddings)" if args.train_embeddings else "") + (", bf16" if args.precision == "bf16" else "")
    row = (f"| {name} | {total / 1e6:.1f}M | {trained / 1e6:.1f}M | {statistics.mean(tokens):.1f} | "
           f"{statistics.mean(timed):.2f} | {min(timed):.2f} | {peak_gb:.1f} GB | {threads} |")
    print(row, flush=True)
    return row


if __name__ == "__main__":
    main()
