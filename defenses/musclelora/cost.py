"""The cost of gradient alignment: seconds per step of each MuScleLoRA variant against lora (``bench cost``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import pandas as pd
import typer

from bench.cli_shared import USER_ERRORS, DataDirOpt, command_line, fail
from bench.registry import register


def cost_table(records: list[dict], command: str) -> str:
    """Seconds per training step of each defense variant, relative to lora, with CACC and ASR."""
    from tabulate import tabulate

    rows = []
    for r in records:
        row = r["row"]
        refresh = r["config"]["defense"]["config"].get("refresh_every")
        rows.append({
            "attack": row["attack"], "defense": row["defense"], "refresh_every": refresh if refresh else "",
            "sec_per_step": row["sec_per_step"], "cacc": row["cacc"], "asr": row["asr"],
            "modes": r["training"].get("defense_stats", {}).get("alignment_modes", ""),
        })
    df = pd.DataFrame(rows).sort_values(["attack", "defense", "refresh_every"], key=lambda c: c.astype(str))
    base = df[df.defense == "lora"].set_index("attack")["sec_per_step"]
    df["x_lora"] = [s / base.get(a, float("nan")) for a, s in zip(df.attack, df.sec_per_step)]
    df["cacc"] = (100 * df["cacc"]).round(2)
    df["asr"] = (100 * df["asr"]).round(2)
    return (
        "# Cost of gradient alignment\n\n"
        f"Made by `{command}`; the cells' records are in `records/`. `x_lora`: seconds per training step "
        "relative to lora (same data, same machine, same run). `modes`: steps that used the aligned, mixed and "
        "raw gradient.\n\n" + tabulate(df, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f") + "\n"
    )


@register("command", "cost")
def cost(
    ctx: typer.Context,
    refresh: List[int] = typer.Option([1, 4], "--refresh", metavar="K", help="musclelora.refresh_every values to measure."),
    attack: List[str] = typer.Option(["badnets"], "--attack", "-a", metavar="NAME", help="Attacks."),
    dataset: str = typer.Option("sst2", "--dataset", metavar="NAME|FOLDER", help="Dataset."),
    backbone: str = typer.Option("minilm", "--backbone", "-b", metavar="NAME|FOLDER|HUB_ID", help="Backbone."),
    seed: int = typer.Option(1, "--seed", "-s", metavar="N", help="Seed."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", metavar="NAME", help="Run profile."),
    out: Path = typer.Option(Path("results") / "cost", "--out", "-o", metavar="FOLDER", help="Output folder."),
    reuse: Optional[List[Path]] = typer.Option(None, "--reuse", metavar="FOLDER", help="Results folders whose matching cells are copied."),
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Per-step cost of musclelora against lora, and what refreshing the reference gradient every k
    steps does to time, CACC and ASR (writes OUT/cost.md from the cell records)."""
    from bench.engine.profiles import get_profile
    from bench.reporting.results import load_records
    from bench.runner import plan, run_grid

    command = command_line(ctx)
    try:
        prof = get_profile(profile or "cpu")
        cells = plan([dataset], [backbone], attack, ["lora"], [seed], prof)
        for k in refresh:
            cells += plan([dataset], [backbone], attack, ["musclelora"], [seed], prof,
                          {"musclelora": {"refresh_every": str(k)}})
        run_grid(cells, out, data_dir=data_dir, command=command, reuse=reuse)
    except USER_ERRORS as e:
        fail(e)
    text = cost_table(load_records(out), command)
    (out / "cost.md").write_text(text)
    typer.echo(text)
