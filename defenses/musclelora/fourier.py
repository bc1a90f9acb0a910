"""Frequency-space view of training (the MuScleLoRA paper's evidence), ``bench fourier``.

Over the embedding-layer outputs of a dev sample (zero-padded to one length and flattened), a
Gaussian filter ``G = exp(-D / (2 delta))`` on pairwise Euclidean distances ``D``, row-normalised,
splits a function on those points into a low-frequency part ``G F`` and a high-frequency part
``F - G F``. Applied to the one-hot labels ``Y`` and the model's softmax outputs ``P``, the relative
errors

    RE_low  = mean ||G P - G Y|| / mean ||G Y||
    RE_high = mean ||(P - G P) - (Y - G Y)|| / mean ||Y - G Y||

are recorded every few steps, on clean dev rows and on poisoned dev rows (non-target rows with the
trigger, labelled with the target). Poisoned dev rows all carry the target label, so their
high-frequency label part is zero and RE_high is undefined there (left empty).
The kernel uses plain (not squared) Euclidean distance, as the authors' code does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import pandas as pd
import torch
import typer

from bench.cli_shared import USER_ERRORS, DataDirOpt, PluginsOpt, command_line, fail, load_plugins
from bench.data import stratified_indices
from bench.models.training import Encoded, pick_device, predict_logits
from bench.registry import register
from bench.runner import Cell, DataCache, run_cell


@torch.no_grad()
def embed(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> torch.Tensor:
    """Embedding-layer outputs (BERT-style: word + position + type, LayerNorm), zero-padded, flattened."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, base.base_model_prefix, base)
    was = base.training
    base.eval()
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
    dev = next(base.parameters()).device
    if hasattr(inner, "embeddings"):
        kwargs = {"input_ids": enc["input_ids"].to(dev)}
        if "token_type_ids" in enc:
            kwargs["token_type_ids"] = enc["token_type_ids"].to(dev)
        out = inner.embeddings(**kwargs)
    else:
        out = base.get_input_embeddings()(enc["input_ids"].to(dev))
    base.train(was)
    out = out * enc["attention_mask"].to(dev).unsqueeze(-1)  # padding positions are zero
    return out.flatten(1).float().cpu()


def kernels(x: torch.Tensor, deltas: list[float]) -> list[torch.Tensor]:
    d = torch.cdist(x.double(), x.double())
    out = []
    for delta in deltas:
        g = torch.exp(-d / (2 * delta))
        out.append(g / g.sum(1, keepdim=True))
    return out


def relative_errors(g: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> tuple[float, float]:
    low_y, low_p = g @ y, g @ p
    high_y, high_p = y - low_y, p - low_p
    re_low = float((low_p - low_y).norm(dim=1).mean() / low_y.norm(dim=1).mean())
    denom = float(high_y.norm(dim=1).mean())
    re_high = float((high_p - high_y).norm(dim=1).mean() / denom) if denom > 1e-6 else float("nan")
    return re_low, re_high


def default_deltas(x: torch.Tensor, n: int = 9) -> list[float]:
    """Deltas scaled to the data's distances, from light smoothing (a quarter of the median
    nearest-neighbour distance) to strong smoothing (the median pairwise distance), geometric."""
    d = torch.cdist(x.double(), x.double())
    off = d + torch.diag(torch.full((len(d),), float("inf"), dtype=d.dtype))
    nn = float(off.min(1).values.median())
    med = float(d[d > 0].median())
    return [float(v) for v in np.geomspace(nn / 4, med, n)]


def analyse(
    cells: list[Cell], cache: DataCache, n_samples: int = 256, every: int = 5, deltas: list[float] | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """Train each cell, recording the frequency errors every ``every`` steps; (rows, cell records)."""
    rows, records = [], []
    for cell in cells:
        data = cache.get(cell.dataset)
        poisoned = cell.attack.poison(data, cell.seed)
        rng_seed = cell.seed
        idx_p = np.sort(np.random.default_rng(rng_seed).permutation(len(poisoned.dev_poison))[:n_samples])
        state: dict[str, Any] = {}

        def on_model(model: Any, tokenizer: Any, ctx: Any) -> None:
            # the clean sample comes from the dev rows left after any reference rows were drawn
            idx_c = stratified_indices(ctx.selection["label"], n_samples, rng_seed)
            splits = {"clean": ctx.selection.select(idx_c), "poison": poisoned.dev_poison.select(idx_p)}
            state["model"], state["tok"] = model, tokenizer
            prof = cell.profile
            for name, ds in splits.items():
                x = embed(model, tokenizer, ds["text"], prof.max_length)
                ds_deltas = deltas or default_deltas(x)
                state[name] = {
                    "enc": Encoded(tokenizer, ds["text"], None, prof.max_length),
                    "y": torch.nn.functional.one_hot(torch.tensor(ds["label"]), data.num_labels).double(),
                    "kernels": kernels(x, ds_deltas),
                    "deltas": ds_deltas,
                }
            record(0, 0)

        def record(step: int, total: int) -> None:
            if step % every and step != total:
                return
            prof = cell.profile
            steps_per_epoch = max(1, total // max(1, cell.defense.build().schedule(prof)[1])) if total else 1
            for name, s in state.items():
                if name in ("model", "tok"):
                    continue
                logits = predict_logits(state["model"], s["enc"], prof.eval_batch_size, pick_device(prof.device))
                p = torch.softmax(torch.tensor(logits, dtype=torch.float64), -1)
                for di, (delta, g) in enumerate(zip(s["deltas"], s["kernels"])):
                    lo, hi = relative_errors(g, s["y"], p)
                    rows.append({
                        "dataset": cell.dataset_name, "backbone": cell.backbone_name, "attack": cell.attack.name,
                        "defense": cell.defense.name, "seed": cell.seed, "split": name, "step": step,
                        "epoch": step / steps_per_epoch, "delta_index": di, "delta": delta,
                        "re_low": lo, "re_high": hi,
                    })

        rec = run_cell(cell, data, on_step=record, on_model=on_model)
        records.append(rec)
    return pd.DataFrame(rows), records


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    defenses = list(dict.fromkeys(df["defense"]))
    mid = int(df["delta_index"].max()) // 2
    fig, axes = plt.subplots(2, len(defenses), figsize=(5.5 * len(defenses), 7), squeeze=False, sharey="row")
    for j, d in enumerate(defenses):
        sub = df[(df.defense == d) & (df.delta_index == mid)]
        for split, style in (("clean", "-"), ("poison", "--")):
            s = sub[sub.split == split]
            axes[0, j].plot(s["epoch"], s["re_low"], style, label=f"{split} dev")
            if split == "clean":
                axes[1, j].plot(s["epoch"], s["re_high"], style, label="clean dev")
        axes[0, j].set_title(f"{d}: low-frequency relative error")
        axes[1, j].set_title(f"{d}: high-frequency relative error")
        for i in (0, 1):
            axes[i, j].set_xlabel("epoch")
            axes[i, j].legend()
            axes[i, j].grid(alpha=0.3)
    first = df.iloc[0]
    fig.suptitle(f"{first.dataset} / {first.backbone} / {first.attack}: frequency errors at the middle delta")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Per defense and split: the epoch at which RE_low first falls below 0.5 (averaged over deltas)."""
    out = []
    mean = df.groupby(["defense", "split", "step", "epoch"], as_index=False)["re_low"].mean()
    for (d, split), g in mean.groupby(["defense", "split"], sort=False):
        below = g[g.re_low < 0.5]
        out.append({
            "defense": d, "split": split, "re_low_start": float(g.re_low.iloc[0]),
            "re_low_end": float(g.re_low.iloc[-1]),
            "epoch_re_low_below_0.5": float(below.epoch.iloc[0]) if len(below) else float("nan"),
        })
    return pd.DataFrame(out)


def run(cells: list[Cell], out_dir: Path, data_dir: Any = None, n_samples: int = 256, every: int = 5,
        command: str = "") -> pd.DataFrame:
    from tabulate import tabulate

    from bench.config import ConfigError
    from bench.engine import progress
    from bench.reporting.results import ResultsError, provenance, write_json_atomic

    out_dir = Path(out_dir)
    if n_samples < 2:
        raise ConfigError(f"--samples {n_samples}: the analysis needs at least 2 clean and 2 poisoned dev rows "
                          "(e.g. --samples 256)")
    if every < 1:
        raise ConfigError(f"--every {every}: record every N >= 1 training steps (e.g. --every 5)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ResultsError(f"--out {out_dir} is a file; give a folder for the analysis (it is created if missing)")
    t0 = time.perf_counter()
    previous = progress.use(progress.Reporter.auto(True))
    try:
        df, records = analyse(cells, DataCache(data_dir), n_samples=n_samples, every=every)
    finally:
        progress.use(previous)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "fourier.csv", index=False)
    plot(df, out_dir / "fourier.png")
    summary = summarise(df)
    wall = time.perf_counter() - t0
    (out_dir / "fourier.md").write_text(
        f"# Frequency analysis\n\nMade by `{command}` in {wall / 60:.1f} min. "
        "RE_low / RE_high: relative low- / high-frequency errors (see defenses/musclelora/fourier.py), averaged over the "
        "deltas; the plot shows the middle delta.\n\n"
        + tabulate(summary, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f") + "\n\n"
        + tabulate(pd.DataFrame([r["row"] for r in records])[["defense", "cacc", "asr", "best_epoch"]],
                   headers="keys", tablefmt="github", showindex=False, floatfmt=".4f") + "\n"
    )
    write_json_atomic(out_dir / "fourier.json", {
        "records": records, "n_samples": n_samples, "every": every,
        "provenance": provenance(command, wall),
    })
    return summary


@register("command", "fourier")
def fourier(
    ctx: typer.Context,
    attack: str = typer.Option("badnets", "--attack", "-a", metavar="NAME", help="Attack name."),
    defense: Optional[List[str]] = typer.Option(None, "--defense", "-d", metavar="NAME", help="Defenses (default: none, musclelora)."),
    dataset: str = typer.Option("sst2", "--dataset", metavar="NAME|FOLDER", help="Dataset name or CSV folder."),
    backbone: str = typer.Option("minilm", "--backbone", "-b", metavar="NAME|FOLDER|HUB_ID", help="Backbone."),
    seed: int = typer.Option(1, "--seed", "-s", metavar="N", help="Seed."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", metavar="NAME", help="Run profile."),
    samples: int = typer.Option(256, "--samples", metavar="N", help="Clean and poisoned dev rows in the analysis (each)."),
    every: int = typer.Option(5, "--every", metavar="N", help="Record every N training steps."),
    out: Path = typer.Option(Path("results") / "fourier", "--out", "-o", metavar="FOLDER", help="Output folder."),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="PLUGIN.KEY=VALUE", help="PLUGIN.KEY=VALUE settings, as for run."),
    data_dir: Optional[Path] = DataDirOpt,
    plugins: Optional[List[Path]] = PluginsOpt,
) -> None:
    """Frequency-space analysis: low/high-frequency errors on clean and poisoned dev during training."""
    from tabulate import tabulate

    from bench.config import parse_assignments
    from bench.engine.profiles import get_profile
    from bench.runner import plan

    try:
        load_plugins(plugins)
        settings = parse_assignments(set_ or [])
        prof = get_profile(profile or "cpu", settings.pop("profile", {}))
        cells = plan([dataset], [backbone], [attack], list(defense or ["none", "musclelora"]), [seed], prof, settings)
        summary = run(cells, out, data_dir=data_dir, n_samples=samples, every=every, command=command_line(ctx))
    except USER_ERRORS as e:
        fail(e)
    typer.echo(tabulate(summary, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f"))
    typer.echo(f"wrote {out / 'fourier.csv'}, {out / 'fourier.png'}, {out / 'fourier.md'}")
