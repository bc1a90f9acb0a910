"""The cost of gradient alignment: seconds per step of each MuScleLoRA variant against lora (``bench cost``)."""

from __future__ import annotations

import pandas as pd


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
