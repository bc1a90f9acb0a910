"""Plots and a self-contained HTML report of a results folder.

Both are derived from the records (``records/*.json``) through the same frames as the leaderboard:
``results.records_frame`` (one row per seed) and ``scores.aggregate`` / ``scores.summary`` (cells over
their seeds, and one row per defense).

- ``write_plots(out_dir)`` writes PNG files into ``out_dir/plots/``: ``asr_vs_cacc.png`` (one point per
  defense x attack cell, coloured by defense, marker by attack, bars for the 95 % interval over seeds,
  one panel per dataset and backbone) and ``heatmap_<dataset>_<backbone>.png`` (attack x defense, mean
  ASR in percent).
- ``write_report(out_dir, dest_dir)`` writes ``dest_dir/index.html``: one page with everything inline
  (plots as base64 data URIs, a few lines of JavaScript to sort a table by clicking a header, no
  external file, no server): the per-defense summary, the clean-data controls beside the defenses
  that use clean rows, the cells over their seeds, the plots and the provenance of the records.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .results import ResultsError, load_records, read_runs, records_frame, write_text_atomic
from .scores import CELL, CONFIDENCE, MIN_SEEDS, aggregate, interval_text, summary

# the clean-data controls (defenses/clean_controls.py): what a defense that uses clean rows must beat
CONTROLS = {"clean-only": "control: the clean rows alone", "none+clean": "control: poisoned set + the clean rows"}
FEW = f"fewer than {MIN_SEEDS} seeds"


# ----------------------------------------------------------------------------------------------- data

def _load(out_dir: Path) -> tuple[list[dict], pd.DataFrame, pd.DataFrame]:
    """(records, per-seed frame, cells over their seeds); a folder without records is a user error."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ResultsError(f"{out_dir}: no such results folder; give the folder `bench run --out FOLDER` wrote")
    records = load_records(out_dir)
    if not records:
        raise ResultsError(f"{out_dir}: no records (no {out_dir / 'records'}/*.json) to plot or report; "
                           f"run `bench run --out {out_dir}` first")
    df = records_frame(records)
    return records, df, aggregate(df)


def _slug(text: object) -> str:
    """A file-name-safe form of a dataset or backbone name (which may be a folder or a hub id)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def _defense_order(names) -> list[str]:
    """``none`` first, the other defenses by name, the clean-data controls last."""
    names = sorted(set(names))
    return ([n for n in names if n == "none"] + [n for n in names if n != "none" and n not in CONTROLS]
            + [n for n in names if n in CONTROLS])


def _panels(cells: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(dataset, backbone, its cells) in a stable order."""
    return [(ds, bb, g) for (ds, bb), g in cells.groupby(["dataset", "backbone"], sort=True)]


def _num(v: object) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


# ---------------------------------------------------------------------------------------------- plots

def write_plots(out_dir: Path, plots_dir: Path | None = None) -> list[Path]:
    """Write the ASR-vs-CACC scatter and one attack x defense ASR heatmap per dataset x backbone
    (PNG) into ``plots_dir`` (default ``out_dir/plots``); returns their paths."""
    _, _, cells = _load(out_dir)
    folder = Path(plots_dir) if plots_dir else Path(out_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    return [_scatter(cells, folder / "asr_vs_cacc.png")] + _heatmaps(cells, folder)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar(mean: object, lo: object, hi: object) -> list[list[float]]:
    """Error-bar lengths below and above a mean, in percent points (0 where a bound is missing)."""
    m, lo, hi = _num(mean), _num(lo), _num(hi)
    return [[100 * max(0.0, m - lo) if math.isfinite(lo) else 0.0],
            [100 * max(0.0, hi - m) if math.isfinite(hi) else 0.0]]


def _scatter(cells: pd.DataFrame, path: Path) -> Path:
    """One panel per dataset x backbone: a point per defense x attack cell at (CACC, ASR) with its
    interval over seeds; hollow markers for cells with fewer than MIN_SEEDS seeds."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    panels = _panels(cells)
    defenses = _defense_order(cells["defense"])
    attacks = sorted(set(cells["attack"]))
    cmap = plt.get_cmap("tab20" if len(defenses) > 10 else "tab10")
    colour = {d: cmap(i % cmap.N) for i, d in enumerate(defenses)}
    shapes = "osD^vP*Xh<>p"
    marker = {a: shapes[i % len(shapes)] for i, a in enumerate(attacks)}
    several_backbones = cells["backbone"].nunique() > 1

    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 5.2 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (ds, bb, g) in zip(axes.flat, panels):
        for r in g.itertuples(index=False):
            x, y = 100 * _num(r.cacc), 100 * _num(r.asr)
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            # no bar from one seed (as in the tables), even where a cell holds two records of that seed
            xerr, yerr = ((_bar(r.cacc, r.cacc_lo, r.cacc_hi), _bar(r.asr, r.asr_lo, r.asr_hi))
                          if r.n_seeds >= 2 else (None, None))
            c = colour[r.defense]
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker[r.attack], color=c, ms=7, capsize=2,
                        elinewidth=1, alpha=0.85, mec=c, mfc=c if r.n_seeds >= MIN_SEEDS else "white")
        ax.set_title(f"{ds} ({bb})" if several_backbones else str(ds))
        ax.set_xlabel("CACC (%)  higher is better")
        ax.set_ylabel("ASR (%)  lower is better")
        ax.set_ylim(-4, 104)
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], ls="", marker="o", color=colour[d], label=d) for d in defenses]
    handles.append(Line2D([], [], ls="", label=" "))
    handles += [Line2D([], [], ls="", marker=marker[a], color="0.3", label=f"attack: {a}") for a in attacks]
    handles.append(Line2D([], [], ls="", marker="o", color="0.3", mfc="white", label=f"hollow: {FEW}"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False,
               ncol=1 + len(handles) // 30)
    fig.suptitle(f"ASR against CACC per cell (bars: {round(100 * CONFIDENCE)} % interval over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _heatmaps(cells: pd.DataFrame, folder: Path) -> list[Path]:
    """One attack x defense heatmap of mean ASR per dataset x backbone, values in percent; a † marks a
    square with fewer than MIN_SEEDS seeds."""
    import numpy as np

    plt = _pyplot()
    paths, used = [], set()
    for ds, bb, g in _panels(cells):
        defenses = _defense_order(g["defense"])
        attacks = sorted(set(g["attack"]))
        asr = g.assign(asr=pd.to_numeric(g["asr"], errors="coerce")).groupby(["attack", "defense"])["asr"].mean()
        seeds = g.groupby(["attack", "defense"])["n_seeds"].min()
        values = np.array([[100 * asr.get((a, d), math.nan) for d in defenses] for a in attacks], dtype=float)
        fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 0.62 * len(defenses)), max(2.4, 1.4 + 0.45 * len(attacks))))
        cmap = plt.get_cmap("Reds").with_extremes(bad="#eeeeee")
        im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto")
        for i, a in enumerate(attacks):
            for j, d in enumerate(defenses):
                v = values[i, j]
                if math.isfinite(v):
                    mark = "†" if seeds.get((a, d), MIN_SEEDS) < MIN_SEEDS else ""
                    ax.text(j, i, f"{v:.0f}{mark}", ha="center", va="center", fontsize=8,
                            color="white" if v > 60 else "black")
        ax.set_xticks(range(len(defenses)), labels=defenses, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(attacks)), labels=attacks, fontsize=8)
        ax.set_title(f"mean ASR (%), {ds}, {bb}" + (f"; †: {FEW}" if (seeds < MIN_SEEDS).any() else ""), fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02).set_label("ASR (%)")
        name = f"heatmap_{_slug(ds)}_{_slug(bb)}"
        while name in used:  # two names that differ only in characters a file name cannot hold
            name += "_"
        used.add(name)
        path = folder / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------- report

def _esc(v: object) -> str:
    return html.escape("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))


def _pct(v: object) -> str:
    f = _num(v)
    return f"{100 * f:.1f}" if math.isfinite(f) else ""


def _fixed(v: object, digits: int) -> str:
    f = _num(v)
    return f"{f:.{digits}f}" if math.isfinite(f) else ""


def _table(table_id: str, headers: list[str], rows: list[list[object]], few: list[bool] | None = None) -> str:
    """A sortable HTML table; every header and value is escaped here. ``few`` marks rows (class few)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="few"' if few and few[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>")
    return (f'<table class="sortable" id="{_esc(table_id)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _summary_section(df: pd.DataFrame) -> str:
    s = summary(df)
    rows = [[r.defense, _pct(r.task_score), _fixed(r.der, 3), _fixed(r.mean_rank, 1), _pct(r.cacc), _pct(r.asr),
             _pct(r.excess_asr), f"{r.worst_attack} ({_pct(r.worst_asr)})" if r.worst_attack else "",
             r.n_cells, r.min_seeds, "yes" if r.uses_clean else "no"] for r in s.itertuples(index=False)]
    headers = ["defense", "score", "DER", "mean rank", "CACC", "ASR", "ASR - untriggered", "worst attack (ASR)",
               "cells", "min seeds", "uses clean rows"]
    return (
        '<h2 id="summary">Summary per defense</h2>'
        "<p>Means over the cells each defense ran, best score first; click a header to sort. Percent. "
        "score: the Anti-BAD task score sqrt(CACC x (100 - ASR)), higher is better. DER: BackdoorBench's rating "
        "against <code>none</code> on the same cell, [max(0, dASR) - max(0, dCACC) + 1] / 2 (0.5: no change; 1: "
        "backdoor gone at no clean cost). mean rank: by score among the defenses of each cell (1 = best). "
        "ASR - untriggered: the backdoor beyond the model's own bias to the target. "
        f"Shaded rows: {_esc(FEW)} in some cell, so an ordering against a neighbour may be noise.</p>"
        + _table("summary-table", headers, rows, [r.min_seeds < MIN_SEEDS for r in s.itertuples(index=False)])
    )


def _clean_used(df: pd.DataFrame) -> dict[tuple, object]:
    """Per cell (scores.CELL, normalised as aggregate does), the most clean rows a seed used."""
    norm = df.copy()
    for c in CELL:
        norm[c] = norm[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
    used = pd.to_numeric(norm["n_clean_used"], errors="coerce")
    return {k: v for k, v in used.groupby([norm[c] for c in CELL], dropna=False).max().items()}


def _role(defense: str, uses_clean: bool) -> str:
    if defense == "none":
        return "undefended"
    return CONTROLS.get(defense, "defense using clean rows" if uses_clean else "defense")


def _controls_section(df: pd.DataFrame, cells: pd.DataFrame) -> str:
    """Per dataset x backbone x attack: ``none``, the clean-data controls and the defenses that used
    the defender's clean rows, side by side."""
    used = _clean_used(df)
    parts = ['<h2 id="controls">Clean-data controls</h2>'
             "<p>A defense that takes the defender's clean rows should beat what those rows give by themselves: "
             "<code>clean-only</code> (train on the clean rows alone) and <code>none+clean</code> (the poisoned set "
             "plus the clean rows). Per attack, the undefended model, the controls and every defense that used "
             "clean rows. Percent.</p>"]
    shown = 0
    for (ds, bb, atk), g in cells.groupby(["dataset", "backbone", "attack"], sort=True):
        keep = g[(g["defense"] == "none") | g["defense"].isin(list(CONTROLS)) | g["uses_clean"].astype(bool)]
        if not (keep["defense"].isin(list(CONTROLS)) | keep["uses_clean"].astype(bool)).any():
            continue
        order = {d: i for i, d in enumerate(["none"] + list(CONTROLS))}
        keep = keep.assign(_o=keep["defense"].map(lambda d: order.get(d, len(order)))).sort_values(["_o", "defense"])
        rows = [[r.defense, _role(r.defense, bool(r.uses_clean)),
                 _fixed(used.get(tuple(getattr(r, c) for c in CELL)), 0),
                 interval_text(r.cacc, r.cacc_lo, r.cacc_hi, r.n_seeds), interval_text(r.asr, r.asr_lo, r.asr_hi, r.n_seeds),
                 _pct(r.task_score), r.n_seeds, r.settings] for r in keep.itertuples(index=False)]
        parts.append(f"<h3>{_esc(ds)} · {_esc(bb)} · {_esc(atk)}</h3>")
        parts.append(_table(f"controls-{shown}", ["defense", "role", "clean rows used", "CACC", "ASR", "score",
                                                  "seeds", "settings"],
                            rows, [r.n_seeds < MIN_SEEDS for r in keep.itertuples(index=False)]))
        shown += 1
    if not shown:
        parts.append("<p>No cell in these records used clean rows, and no clean-data control was run.</p>")
    return "".join(parts)


def _cells_section(cells: pd.DataFrame) -> str:
    rows = [[r.dataset, r.backbone, r.attack, r.defense + (" †" if r.n_seeds < MIN_SEEDS else ""),
             interval_text(r.cacc, r.cacc_lo, r.cacc_hi, r.n_seeds), interval_text(r.asr, r.asr_lo, r.asr_hi, r.n_seeds),
             _pct(r.clean_to_target), _pct(r.task_score), _fixed(r.der, 3), r.n_seeds, r.seeds, r.poison_rate,
             r.label_regime, r.target_label, r.trigger_count, r.settings] for r in cells.itertuples(index=False)]
    headers = ["dataset", "backbone", "attack", "defense", "CACC", "ASR", "untriggered", "score", "DER", "n seeds",
               "seeds", "poison rate", "label regime", "target", "triggers", "settings"]
    return ('<h2 id="cells">Cells over their seeds</h2>'
            f"<p>Percent: mean ± half-width of the {round(100 * CONFIDENCE)} % Student-t interval over seeds (no "
            f"interval with one seed). untriggered: the ASR rate on the same rows without the trigger. Shaded, with "
            f"†: {_esc(FEW)}.</p>"
            + _table("cells-table", headers, rows, [n < MIN_SEEDS for n in cells["n_seeds"]]))


def _plots_section(paths: list[Path]) -> str:
    parts = ['<h2 id="plots">Plots</h2>']
    for p in paths:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(p.stem)}">'
                     f"<figcaption>{_esc(p.name)}</figcaption></figure>")
    return "".join(parts)


def _counted(counter: Counter) -> list[list[object]]:
    return [[k, n] for k, n in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))]


def _machine(m: dict) -> str:
    cuda = m.get("cuda") or "no CUDA"
    return f"{m.get('platform', 'unknown platform')}; {m.get('cpu_count', '?')} CPUs; {cuda}"


def _provenance_section(records: list[dict], df: pd.DataFrame, out_dir: Path) -> str:
    provs = [r.get("provenance") or {} for r in records]
    tree = {True: "dirty (uncommitted changes)", False: "clean", None: "unknown"}
    commits = Counter(((p.get("git") or {}).get("commit", "unknown"), tree.get((p.get("git") or {}).get("dirty")))
                      for p in provs)
    commands = Counter(p.get("command") or "(not recorded)" for p in provs)
    packages: dict[str, Counter] = {}
    for p in provs:
        for name, version in (p.get("packages") or {}).items():
            packages.setdefault(name, Counter())[version or "not installed"] += 1
    machines = Counter(_machine(p.get("machine") or {}) for p in provs)
    walls = [_num(p.get("wall_seconds")) for p in provs]
    wall = sum(w for w in walls if math.isfinite(w))
    started = sorted(str(p["started"]) for p in provs if p.get("started"))
    copied = sum(1 for p in provs if p.get("copied_from"))
    seeds = sorted({int(s) for s in pd.to_numeric(df["seed"], errors="coerce").dropna()})
    facts = [
        ["records", len(records)],
        ["seeds", ", ".join(map(str, seeds))],
        ["wall time of the cells (sum)", f"{wall / 60:.1f} min"],
        ["cells started", f"{started[0]} to {started[-1]}" if started else "not recorded"],
        ["records copied from another results folder", copied],
    ]
    runs = [[r.get("command", ""), r.get("status", ""), r.get("started", ""),
             f"{_num(r.get('wall_seconds')) / 60:.1f} min" if math.isfinite(_num(r.get("wall_seconds"))) else "",
             r.get("cells_run", ""), ((r.get("git") or {}).get("commit") or "")[:10]] for r in read_runs(out_dir)]
    pkg_rows = [[name, ", ".join(f"{v} ({n} records)" if len(c) > 1 else str(v) for v, n in c.most_common())]
                for name, c in sorted(packages.items())]
    return ('<h2 id="provenance">Provenance</h2>'
            + _table("provenance-facts", ["what", "value"], facts)
            + "<h3>Git commits of the records</h3>"
            + _table("provenance-commits", ["commit", "tree", "records"], [[c, t, n] for (c, t), n in
                                                                         sorted(commits.items(), key=str)])
            + "<h3>Commands</h3>" + _table("provenance-commands", ["command", "records"], _counted(commands))
            + "<h3>Package versions</h3>" + _table("provenance-packages", ["package", "version"], pkg_rows)
            + "<h3>Machines</h3>" + _table("provenance-machines", ["machine", "records"], _counted(machines))
            + "<h3>Runs (runs.jsonl)</h3>"
            + (_table("provenance-runs", ["command", "status", "started", "wall time", "cells run", "commit"], runs)
               if runs else "<p>No runs.jsonl in the folder.</p>"))


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[data-order="asc"]::after { content: " \\25B2"; }
th[data-order="desc"]::after { content: " \\25BC"; }
tr.few td { background: #fff4d6; }
figure { margin: 1em 0; }
img { max-width: 100%; border: 1px solid #ddd; }
code { background: #f4f4f4; padding: 0 0.2em; }
nav a { margin-right: 1em; }
"""

# Click a header to sort its table (numbers by value, text alphabetically; again to reverse). A page
# opened as index.html#sort=TABLE_ID,COLUMN[,desc] starts sorted that way (a link to a sorted view).
SCRIPT = """
(function () {
  function sortBy(th, asc) {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent.trim(), y = b.cells[col].textContent.trim();
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("data-order"); });
    th.setAttribute("data-order", asc ? "asc" : "desc");
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.title = "click to sort";
      th.addEventListener("click", function () { sortBy(th, th.getAttribute("data-order") !== "asc"); });
    });
    table.setAttribute("data-sortable", "ready");
  });
  var m = /^#sort=([\\w-]+),(\\d+)(,desc)?$/.exec(location.hash);
  var table = m && document.getElementById(m[1]);
  if (table && table.tHead.rows[0].cells[+m[2]]) { sortBy(table.tHead.rows[0].cells[+m[2]], !m[3]); }
})();
"""


def write_report(out_dir: Path, dest_dir: Path | None = None) -> Path:
    """Write ``dest_dir/index.html`` (default ``out_dir/report``), one self-contained page of the results
    in ``out_dir``; the plots are also written to ``out_dir/plots/`` (as ``bench plot`` does)."""
    out_dir = Path(out_dir)
    dest_dir = Path(dest_dir) if dest_dir else out_dir / "report"
    records, df, cells = _load(out_dir)
    plots = write_plots(out_dir)
    title = f"bench report: {out_dir.resolve().name}"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{_esc(title)}</h1>"
        f"<p>{len(records)} records ({len(cells)} cells over their seeds) in <code>{_esc(out_dir)}</code>; "
        f"written {_esc(now)} by <code>bench report</code>. CACC: accuracy on the clean test set. ASR: share of the "
        "non-target test rows, trigger applied, predicted as the target label.</p>"
        '<nav><a href="#summary">summary</a><a href="#controls">clean-data controls</a><a href="#cells">cells</a>'
        '<a href="#plots">plots</a><a href="#provenance">provenance</a></nav>'
        + _summary_section(df) + _controls_section(df, cells) + _cells_section(cells) + _plots_section(plots)
        + _provenance_section(records, df, out_dir)
        + f"<script>{SCRIPT}</script></body></html>\n"
    )
    path = dest_dir / "index.html"
    write_text_atomic(path, page)
    return path
