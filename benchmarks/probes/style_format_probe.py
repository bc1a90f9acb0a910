"""Is SST-2's StyleBkd trigger a style or a format? (issue 25, found while reading distill's style cells)

    python benchmarks/probes/style_format_probe.py --seeds 1 2 3 --out results/probes/style-format

SST-2's rows are lower-cased and tokenized ("the film , sadly , is dull ."); the published Bible-style
paraphrases (thunlp/StyleAttack) are not ("The film, sadly, is dull"): capitals, punctuation attached to
words, no final " .". The probe measures, on the training texts, how often each of these surface marks
occurs in clean rows and in the poison; then it trains the plain `none` victim of the main job's style
cell (SST-2, MiniLM, mixed label, rate 0.1, target 1, cpu profile on 1,500 rows; the victim cache is used)
and reads its target-label rate on the non-target test rows under five inputs:

- `clean`: the rows as they are (the untriggered rate);
- `styled`: the attack's own poisoned test rows (the ASR of the style cells);
- `styled+format-undone`: the same paraphrases lower-cased, punctuation split off, " ." appended: the style
  kept, SST-2's format restored;
- `clean+format-only`: the clean rows with the paraphrases' format (first letter capital, punctuation
  attached, no final " ."): the format without the style;
- `clean-no-final-period`: the clean rows with only the final " ." removed (the one format mark an uncased
  tokenizer still sees).

No number here chooses a setting; the probe says what the style attack's trigger is made of on this data.
Writes ``OUT/probe.json`` (every number, with provenance) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from bench.models.hardware import configure_threads
from bench.reporting.results import provenance, write_text_atomic
from main_job_cell import MainJobCells

PUNCT = r"[,.;:!?]"


def undo_format(text: str) -> str:
    """SST-2's own format: lower case, punctuation split off by spaces, a final " ."."""
    t = re.sub(rf"\s*({PUNCT})", r" \1", text.lower()).strip()
    t = re.sub(r"\s+", " ", t)
    return t if t.endswith(" .") or t.endswith(" !") or t.endswith(" ?") else t.rstrip(" ,;:") + " ."


def apply_format(text: str) -> str:
    """The paraphrases' format on an SST-2 row: punctuation attached, no final " .", first letter capital."""
    t = re.sub(r"\s+\.$", "", text.strip())
    t = re.sub(rf"\s+({PUNCT})", r"\1", t)
    return t[:1].upper() + t[1:]


def drop_final_period(text: str) -> str:
    return re.sub(r"\s+\.$", "", text.strip())


def surface(texts: list[str]) -> dict:
    s = [str(t) for t in texts]
    n = max(1, len(s))
    return {"rows": len(s),
            "has_capital": round(sum(bool(re.search(r"[A-Z]", t)) for t in s) / n, 4),
            "attached_punctuation": round(sum(bool(re.search(rf"\w{PUNCT}", t)) for t in s) / n, 4),
            "ends_with_space_period": round(sum(t.endswith(" .") for t in s) / n, 4)}


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", type=Path, default=Path("results/probes/style-format"))
    ap.add_argument("--backbone", default="minilm")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    threads = configure_threads()["threads"]
    cells = MainJobCells("sst2", args.backbone)
    per_seed = []
    for seed in args.seeds:
        cell, prep, ctx = cells.cell("style", "none", seed)
        p = prep.poisoned
        flags = np.asarray(p.train["poisoned"]) == 1  # the style attack knows its poisoned rows (an analysis, not a defense)
        texts = np.asarray(p.train["text"], dtype=object)
        marks = {"clean_training_rows": surface(list(texts[~flags])), "poisoned_training_rows": surface(list(texts[flags]))}
        victim, _ = cells.evaluator.victim(cell, prep, None, ctx)
        target = p.target_label
        nontarget = [t for t, y in zip(p.test_clean["text"], p.test_clean["label"]) if y != target]
        styled = list(p.test_poison["text"])
        inputs = {"clean": nontarget, "styled": styled, "styled+format-undone": [undo_format(t) for t in styled],
                  "clean+format-only": [apply_format(t) for t in nontarget],
                  "clean-no-final-period": [drop_final_period(t) for t in nontarget]}
        rates = {k: round(float((victim.predict(v) == target).mean()), 4) for k, v in inputs.items()}
        per_seed.append({"seed": seed, "target_label": target, "n_nontarget": len(nontarget), "n_styled": len(styled),
                         "target_rate": rates, "surface": marks, "victim": victim.key,
                         "examples": {k: v[0] for k, v in inputs.items()}})
        print(f"seed {seed}: {rates}", flush=True)
    command = "python benchmarks/probes/style_format_probe.py --seeds " + " ".join(map(str, args.seeds)) + \
              f" --out {args.out}" + ("" if args.backbone == "minilm" else f" --backbone {args.backbone}")
    result = {"setting": {**cells.setting(), "attack": "style (bible, mixed label, rate 0.1, target 1)"},
              "seeds": per_seed, "threads": threads,
              "provenance": provenance(command, time.perf_counter() - t0)}
    write_text_atomic(args.out / "probe.json", json.dumps(result, indent=1) + "\n")
    keys = list(per_seed[0]["target_rate"])
    lines = ["| input | " + " | ".join(f"seed {r['seed']}" for r in per_seed) + " | mean |",
             "|---|" + "---|" * (len(per_seed) + 1)]
    for k in keys:
        vals = [100 * r["target_rate"][k] for r in per_seed]
        lines.append(f"| {k} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {np.mean(vals):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
