"""ONION's scoring speed against its scorer's plain forward throughput on the same machine (issue 24).

For N test sentences: (a) the plain forward, each whole sentence scored once (`perplexity`): the limit
that no ONION can beat per variant; (b) ONION as it runs (`leave_one_out_perplexity`: each whole
sentence once, each one-word deletion only after the prefix it shares); (c) ONION without the prefix
sharing (every deletion scored in full). Prints sentences per second and variants per second, with the
CPU and thread count.

    python3 benchmarks/probes/onion_throughput.py [N] [--scorer smollm2-135m]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=64)
    ap.add_argument("--scorer", default="smollm2-135m")
    args = ap.parse_args()

    from bench.models.lm import get_scorer
    from bench.runner import DataCache

    sentences = [" ".join(t.split()) for t in DataCache().get("sst2").test["text"][: args.n]]
    words = [s.split() for s in sentences]
    variants = sum(len(w) + 1 for w in words)
    scorer = get_scorer(args.scorer)
    scorer.perplexity(sentences[:4])  # warm-up

    def timed(f):
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0

    plain = timed(lambda: scorer.perplexity(sentences))
    shared = timed(lambda: scorer.leave_one_out_perplexity(words))
    full = timed(lambda: scorer.perplexity(
        [" ".join(w[:i] + w[i + 1:]) if i < len(w) else " ".join(w) for w in words for i in range(len(w) + 1)]))
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name")), "?")
    print(f"{args.n} SST-2 test sentences, {variants} ONION variants (mean {variants / args.n:.1f} per sentence); "
          f"scorer {args.scorer}; CPU {cpu}, avx512_bf16 {'avx512_bf16' in flags}, torch threads "
          f"{torch.get_num_threads()}")
    print("| what | seconds | sentences/s | variants/s |\n|---|---|---|---|")
    print(f"| plain forward (whole sentence once: the limit per text) | {plain:.1f} | {args.n / plain:.2f} | - |")
    print(f"| ONION, shared prefixes (as run) | {shared:.1f} | {args.n / shared:.2f} | {variants / shared:.1f} |")
    print(f"| ONION, every deletion in full | {full:.1f} | {args.n / full:.2f} | {variants / full:.1f} |")
    print(f"ONION as run costs {shared / plain:.1f}x the plain forward of the same sentences "
          f"({variants / args.n:.1f} texts each; {full / shared:.2f}x saved by the shared prefixes).")


if __name__ == "__main__":
    main()
