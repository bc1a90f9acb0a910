"""bench: backdoor attacks and defenses for text classifiers; CACC/ASR leaderboards.

Start with `bench list` (what is registered), then `bench run --main` (the main job), `bench run --all` (every attack x
every defense) or one cell:
`bench run -a badnets -d lora --dataset sst2 -b minilm`. Every command has --help."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import registry
from .cli_shared import USER_ERRORS, DataDirOpt, PluginsOpt, add_registered_commands
from .cli_shared import command_line as _command_line
from .cli_shared import fail as _fail
from .cli_shared import load_plugins as _load_plugins
from .config import ConfigError, parse_assignments, parse_sweeps
from .data import DataError
from .engine.profiles import MAIN_JOB, PROFILES, get_profile
from .reporting.results import ResultsError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command("list")
def list_cmd(
    profile: Optional[str] = typer.Option(None, "--profile", "-p", metavar="NAME",
                                help=f"Show the settings a profile gives: {', '.join(PROFILES)}."),
    plugins: Optional[List[Path]] = PluginsOpt,
) -> None:
    """Show every registered attack, defense, dataset and backbone, and the profiles."""
    from tabulate import tabulate

    try:
        _load_plugins(plugins)
        prof = get_profile(profile or "cpu")
    except USER_ERRORS as e:
        _fail(e)
    for kind in registry.PLUGIN_KINDS:
        rows = [(e.name, _describe(e, prof.name)) for e in registry.entries(kind)]
        rows += sorted(registry.unavailable(kind).items())
        typer.echo(f"\n{kind}s:")
        typer.echo(tabulate(rows, tablefmt="plain"))
    typer.echo("\nprofiles:")
    typer.echo(tabulate([(p.name, p.description) for p in PROFILES.values()], tablefmt="plain"))
    typer.echo(f"\nmain job (bench run --main): {MAIN_JOB.describe()}; writes {MAIN_JOB.out}/")
    from .engine.presets import PRESETS

    typer.echo("\npresets (bench run --preset NAME; the settings of docs/usage.md, 'Paper presets'):")
    for p in PRESETS.values():
        typer.echo(f"{p.name}  {p.description}\n    paper: {p.paper}\n    code: {p.code}")
    typer.echo("\nA backbone may also be any Hugging Face hub id or local model folder; a dataset, a folder of "
               "train/dev/test CSV files (text,label).")


def _with_preset(name: Optional[str], given: dict) -> tuple[dict, set]:
    """``given`` (the --set assignments) over the preset's settings, ``{plugin: {key: value}}``, and the
    (plugin, key) pairs whose value is the preset's."""
    if not name:
        return {p: dict(v) for p, v in given.items()}, set()
    from .engine.presets import get_preset

    base = get_preset(name).assignments()
    merged = {p: {**base.get(p, {}), **given.get(p, {})} for p in {*base, *given}}
    return merged, {(p, k) for p, values in base.items() for k in values if k not in given.get(p, {})}


def _describe(entry: registry.Entry, profile: str = "cpu") -> str:
    """A plugin's one-line description; for defenses the stage it acts at and the settings the
    profile gives it where they differ from the class defaults (what a run actually uses)."""
    if entry.kind != "defense":
        return entry.description
    from .config import build_config, changed_settings

    cls = entry.obj
    stage = "trains its own victim" if cls.acts_in_training() else "after training (shares the plain victim)"
    overrides = getattr(cls, "profile_defaults", {}).get(profile, {})
    given = changed_settings(entry.name, build_config(cls.Config, overrides), cls.Config()) if overrides else []
    under = f"; {profile} profile: {', '.join(given)}" if given else ""
    return f"{entry.description} [{stage}{'; may reject inputs' if cls.rejects() else ''}{under}]"


@app.command()
def run(
    ctx: typer.Context,
    all_: bool = typer.Option(False, "--all", help="Every registered attack x every registered defense."),
    main_job: bool = typer.Option(False, "--main", help=f"The main job: {MAIN_JOB.describe()} (under an hour on 2 CPU "
                              f"cores); options given beside it replace its parts."),
    attack: Optional[List[str]] = typer.Option(None, "--attack", "-a", metavar="NAME", help="Attack name (repeatable)."),
    defense: Optional[List[str]] = typer.Option(None, "--defense", "-d", metavar="NAME", help="Defense name (repeatable)."),
    dataset: Optional[List[str]] = typer.Option(None, "--dataset", metavar="NAME|FOLDER", help="Dataset name or CSV folder (repeatable)."),
    backbone: Optional[List[str]] = typer.Option(None, "--backbone", "-b", metavar="NAME|FOLDER|HUB_ID", help="Backbone name, hub id or folder."),
    seed: Optional[List[int]] = typer.Option(None, "--seed", "-s", metavar="N", help="Seed (repeatable; default 1)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", metavar="N", help="Seeds 1..N (shorthand for --seed 1 ... --seed N)."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", metavar="NAME", help=f"Run profile: {', '.join(PROFILES)} (default cpu)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FOLDER", help="Results folder (default results/<profile>)."),
    poison_rate: Optional[float] = typer.Option(None, "--poison-rate", metavar="RATE", help="Poison rate for every attack."),
    label_regime: Optional[str] = typer.Option(None, "--label-regime", metavar="REGIME", help="clean-label, dirty or mixed."),
    target_label: Optional[int] = typer.Option(None, "--target-label", metavar="LABEL", help="Target label for every attack."),
    set_: Optional[List[str]] = typer.Option(
        None, "--set", metavar="PLUGIN.KEY=VALUE", help="PLUGIN.KEY=VALUE for a plugin's or the profile's settings, e.g. lora.r=16, profile.epochs=1."
    ),
    preset: Optional[str] = typer.Option(
        None, "--preset", metavar="NAME", help="A paper's settings (bench list shows the presets), applied as --set "
                                               "assignments; an explicit --set or --sweep wins. The rows record it."),
    force: bool = typer.Option(False, "--force", help="Recompute cells already recorded. Trained victims are "
                               "still reused from the victim cache; to retrain them too, remove them first with "
                               "`bench cache clear` (`bench cache list` shows them)."),
    reuse: Optional[List[Path]] = typer.Option(
        None, "--reuse", metavar="FOLDER", help="Another results folder: cells recorded there with the same key are copied, not rerun."
    ),
    no_progress: bool = typer.Option(
        False, "--no-progress", help="No bars: plain lines per cell and epoch, with elapsed time and what remains."),
    keep_going: bool = typer.Option(
        False, "--keep-going", help="A cell that fails is logged in runs.jsonl and skipped; the others still run "
                                    "(exit status 1 at the end). Default: the first failure stops the run."),
    executor: str = typer.Option("local", "--executor", metavar="local|ray",
                                 help="Where cells run: local (this process, one after the other) or ray (Ray tasks; "
                                      "pip install 'bench\\[ray]')."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", metavar="ADDRESS", help="With --executor ray: join a running cluster ('auto', or "
                                                       "ray://HOST:PORT); default: start a local one for the run."),
    ray_cpus: Optional[float] = typer.Option(
        None, "--ray-cpus", metavar="N", help="With --executor ray: CPUs per cell when the cluster has no GPU (default "
                                              "1; with GPUs each cell takes one GPU)."),
    sweep: Optional[List[str]] = typer.Option(
        None, "--sweep", metavar="PLUGIN.KEY=V1,V2,...",
        help="Cross a setting over several values, each value its own cell (repeatable; sweeps cross each other "
             "and -a/-d/--seed), e.g. --sweep badnets.num_triggers=1,4 --sweep profile.train_size=1500,6920."),
    data_dir: Optional[Path] = DataDirOpt,
    plugins: Optional[List[Path]] = PluginsOpt,
) -> None:
    """Run cells (dataset x backbone x attack x defense x seed, x each --sweep value) and write the leaderboard."""
    from .engine.executors import make_executor
    from .runner import plan, run_grid

    command = _command_line(ctx)
    try:
        _load_plugins(plugins)
        runs_on = make_executor(executor, ray_address, ray_cpus, plugins)  # a missing ray package fails now
        if main_job and all_:
            raise ConfigError("--main and --all select different grids; pass one of them")
        if seeds is not None:
            if seed:
                raise ConfigError(f"--seeds {seeds} and --seed {' --seed '.join(map(str, seed))} both choose seeds; "
                                  "pass one of them")
            if seeds < 1:
                raise ConfigError(f"--seeds {seeds}: give a number of seeds >= 1 (seeds 1..N are run)")
            seed = list(range(1, seeds + 1))
        given = parse_assignments(set_ or [])
        settings, from_preset = _with_preset(preset, given)
        profile_settings = settings.pop("profile", {})
        if main_job:
            profile_settings = {**dict(MAIN_JOB.profile_settings), **profile_settings}
            profile = profile or MAIN_JOB.profile
            attack, dataset, backbone = (attack or list(MAIN_JOB.attacks), dataset or list(MAIN_JOB.datasets),
                                         backbone or list(MAIN_JOB.backbones))
            seed, out = seed or list(MAIN_JOB.seeds), out or Path(MAIN_JOB.out)
        prof = get_profile(profile or "cpu", profile_settings)
        if all_ or main_job:
            attacks = attack or _generating_attacks()
            defenses = defense or registry.names("defense")
        else:
            if not attack or not defense:
                raise ConfigError("name at least one --attack and one --defense, or pass --main (the main job) or "
                                  "--all (every attack x every defense)")
            attacks, defenses = attack, defense
        # a plugin the preset names but the run does not select is left out (a --set of it still errors)
        settings = {p: v for p, v in settings.items() if p in given or p in attacks or p in defenses}
        common = {k: v for k, v in (("poison_rate", poison_rate), ("label_regime", label_regime),
                                    ("target_label", target_label)) if v is not None}
        for a in attacks:
            settings.setdefault(a, {}).update({k: str(v) for k, v in common.items()})
            from_preset -= {(a, k) for k in common}
        # a --sweep may replace a value the preset gave, not one given on the command line
        fixed = {p: {k: v for k, v in values.items() if (p, k) not in from_preset}
                 for p, values in {**settings, "profile": profile_settings}.items()}
        cells = []
        for combo in parse_sweeps(sweep or [], fixed):
            chosen = {p: {**settings.get(p, {}), **combo.get(p, {})} for p in {*settings, *combo} if p != "profile"}
            swept = get_profile(profile or "cpu", {**profile_settings, **combo["profile"]}) if "profile" in combo else prof
            cells += plan(
                list(dataset or swept.datasets), list(backbone or swept.backbones), list(attacks), list(defenses),
                list(seed or [1]), swept, chosen, preset=preset or "",
            )
        out_dir = out or Path("results") / prof.name
        summary = run_grid(cells, out_dir, data_dir=data_dir, command=command,
                           progress="lines" if no_progress else "auto", force=force, reuse=reuse,
                           executor=runs_on, keep_going=keep_going)
    except USER_ERRORS as e:
        _fail(e)
    elsewhere = f", {summary['claimed_elsewhere']} left to a concurrent run" if summary["claimed_elsewhere"] else ""
    typer.echo(
        f"{summary['ran']} cells run, {summary['skipped']} already recorded, {summary['copied']} copied{elsewhere}, "
        f"{summary['wall_seconds'] / 60:.1f} min; leaderboard: {out_dir / 'leaderboard.csv'} and .md"
    )
    if summary.get("failed"):
        typer.echo(f"{len(summary['failed'])} cell(s) failed (--keep-going; errors and tracebacks in "
                   f"{out_dir / 'runs.jsonl'}):", err=True)
        for f in summary["failed"]:
            typer.echo(f"  {f['cell']}: {f['error']}", err=True)
        raise typer.Exit(1)


@app.command()
def leaderboard(
    out: Path = typer.Option(Path("results") / "cpu", "--out", "-o", metavar="FOLDER", help="Results folder."),
) -> None:
    """Rebuild the leaderboard from the stored records and print it (Markdown)."""
    from .reporting.results import write_leaderboard

    if not (out / "records").is_dir():
        _fail(ResultsError(f"{out}: no records/ folder; run `bench run --out {out}` first"))
    try:
        write_leaderboard(out)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo((out / "leaderboard.md").read_text())


@app.command()
def compare(
    a: Path = typer.Argument(..., help="Leaderboard CSV before."),
    b: Path = typer.Argument(..., help="Leaderboard CSV after."),
    fail_on_regression: Optional[float] = typer.Option(
        None, "--fail-on-regression", metavar="POINTS",
        help="Exit 1 if a cell loses more than this many CACC points or gains as many ASR points "
             "(and if the files share no cell: a gate that compared nothing fails)."
    ),
    across_seeds: bool = typer.Option(
        False, "--across-seeds", help="Average each cell over its seeds in each file and join without the seed "
                                     "(compares runs made with different seeds)."),
) -> None:
    """Join two leaderboard CSVs on the cell key and show the CACC and ASR deltas (points)."""
    from tabulate import tabulate

    import pandas as pd

    from .reporting.results import compare as do_compare
    from .reporting.results import read_leaderboard_csv, regressions

    try:
        if fail_on_regression is not None and fail_on_regression < 0:
            raise ConfigError(f"--fail-on-regression {fail_on_regression}: give a threshold >= 0 (points)")
        both, only_a, only_b = do_compare(read_leaderboard_csv(a), read_leaderboard_csv(b), across_seeds=across_seeds)
    except USER_ERRORS as e:
        _fail(e)
    ids = ["dataset", "backbone", "attack", "defense"] + ([] if across_seeds else ["seed"])
    seeds = ["n_seeds_a", "n_seeds_b"] if across_seeds else []
    noise = ["noise_cacc", "noise_asr"] if across_seeds else []
    shown = both[ids + seeds + ["cacc_a", "cacc_b", "d_cacc", "asr_a", "asr_b", "d_asr"] + noise].copy()
    for col in ("cacc_a", "cacc_b", "asr_a", "asr_b"):
        shown[col] = shown[col].map(lambda v: f"{v:.2f}")
    for col in ("d_cacc", "d_asr"):
        shown[col] = shown[col].map(lambda v: f"{v:+.2f}")
    for m in ("cacc", "asr") if across_seeds else ():
        shown[f"noise_{m}"] = [n if pd.isna(p) else f"{n} (p={p:.3f})" for n, p in zip(both[f"noise_{m}"], both[f"p_{m}"])]
    what = "cells (mean over seeds)" if across_seeds else "cells"
    typer.echo(f"{len(both)} {what} in both files (CACC and ASR in percent; d = B - A):")
    typer.echo(tabulate(shown, headers="keys", tablefmt="github", showindex=False, disable_numparse=True))
    for label, frame in ((f"only in {a}", only_a), (f"only in {b}", only_b)):
        if len(frame):
            typer.echo(f"\n{len(frame)} cells {label}:")
            typer.echo(tabulate(frame, headers="keys", tablefmt="github", showindex=False))
    if not len(both) and not across_seeds and len(only_a) and len(only_b):
        typer.echo("\nthe files share no cell; if they differ only by seed, compare with --across-seeds")
    if fail_on_regression is not None:
        if not len(both):
            typer.echo(f"\nerror: {a} and {b} share no cell, so nothing was compared; a regression gate that "
                       "compared nothing fails. Compare leaderboards of the same cells"
                       + ("" if across_seeds else " (or pass --across-seeds when only the seeds differ)"), err=True)
            raise typer.Exit(1)
        bad = regressions(both, fail_on_regression)
        if len(bad):
            typer.echo(f"\n{len(bad)} cells regress by more than {fail_on_regression} points"
                       + (" beyond seed noise (or untested: one seed)" if across_seeds else "") + ":", err=True)
            for _, row in bad.iterrows():
                name = "/".join(str(row[c]) for c in ids[:4]) + ("" if across_seeds else f" seed {row['seed']}")
                if isinstance(row.get("settings"), str) and row["settings"]:
                    name += f" ({row['settings']})"
                typer.echo(f"  {name}: CACC {row['d_cacc']:+.2f}, ASR {row['d_asr']:+.2f} points", err=True)
            raise typer.Exit(1)
        typer.echo(f"\nno cell regresses by more than {fail_on_regression} points")


@app.command()
def plot(
    out: Path = typer.Option(Path("results") / "cpu", "--out", "-o", metavar="FOLDER", help="Results folder."),
) -> None:
    """Write the ASR-vs-CACC scatter and the attack x defense ASR heatmaps (PNG) into FOLDER/plots/."""
    from .reporting.report import write_plots

    try:
        paths = write_plots(out)
    except USER_ERRORS as e:
        _fail(e)
    for p in paths:
        typer.echo(f"wrote {p}")


@app.command()
def report(
    results: Path = typer.Argument(..., metavar="RESULTS_DIR", help="Results folder (what `bench run --out` wrote)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FOLDER",
                                       help="Where to write index.html (default RESULTS_DIR/report)."),
) -> None:
    """One self-contained HTML page of a results folder (summary, clean-data controls, cells, plots,
    provenance); open it in a browser, no server needed. The plots also land in RESULTS_DIR/plots/."""
    from .reporting.report import write_report

    try:
        page = write_report(results, out)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(f"wrote {page}")


def _generating_attacks() -> list[str]:
    """The attacks `--all` runs: every registered one that poisons data itself (not `file`, which imports it)."""
    return [n for n in registry.names("attack") if not getattr(registry.get("attack", n), "imported", False)]


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    attack: str = typer.Option(..., "--attack", "-a", metavar="NAME", help="Attack name."),
    dataset: str = typer.Option("sst2", "--dataset", metavar="NAME|FOLDER", help="Dataset name or CSV folder."),
    seed: int = typer.Option(1, "--seed", "-s", metavar="N", help="Seed."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", metavar="NAME",
                                          help="Profile whose train_size/test_size slices are exported (default cpu)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="FOLDER", help="Output folder (new, empty, or an earlier export)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="PLUGIN.KEY=VALUE",
                                             help="The attack's or the profile's settings, e.g. badnets.poison_rate=0.2."),
    data_dir: Optional[Path] = DataDirOpt,
    plugins: Optional[List[Path]] = PluginsOpt,
) -> None:
    """Write an attack's poisoned data for a dataset and seed (train with poison flags, dev/test clean, dev/test
    poison) in OpenBackdoor's CSV layout and as a Hugging Face datasets folder, with manifest.json;
    `bench run -a file --set file.folder=FOLDER` imports it again."""
    from .data.export import export, export_cell

    try:
        _load_plugins(plugins)
        settings = parse_assignments(set_ or [])
        prof = get_profile(profile or "cpu", settings.pop("profile", {}))
        manifest = export(export_cell(attack, dataset, seed, prof, settings), out, data_dir=data_dir,
                          command=_command_line(ctx))
    except USER_ERRORS as e:
        _fail(e)
    c = manifest["counts"]
    typer.echo(f"wrote {out}: {c['n_train']} training rows ({c['n_poisoned']} poisoned), {c['n_test_clean']} clean and "
               f"{c['n_test_poison']} poisoned test rows; OpenBackdoor CSVs, hf/, manifest.json\n"
               f"import again: {manifest['import_with']}")


cache_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="The victim cache: trained models shared by cells, runs and processes.")
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
def cache_list() -> None:
    """Each cached victim: key, what it is, size, and which records used it."""
    from tabulate import tabulate

    from .models.victim import VictimStore

    store = VictimStore()
    entries = store.entries()
    total = sum(e["bytes"] for e in entries)
    typer.echo(f"{store.root}: {len(entries)} victims, {total / 2**20:.1f} MiB")
    rows = [(e["key"], e["what"], f"{e['bytes'] / 2**20:.1f} MiB", e["created"], len(e["used_by"]),
             " ".join(e["used_by"][:4]) + (" ..." if len(e["used_by"]) > 4 else "")) for e in entries]
    if rows:
        typer.echo(tabulate(rows, headers=["key", "victim", "size", "created", "records", "used by (record keys)"],
                            tablefmt="github"))


@cache_app.command("clear")
def cache_clear(
    key: Optional[List[str]] = typer.Argument(None, help="Victim keys to remove (default: all)."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask."),
) -> None:
    """Remove cached victims (all, or the given keys); records already written are kept."""
    from .models.victim import VictimStore

    store = VictimStore()
    known = {e["key"] for e in store.entries()}
    unknown = [k for k in key or [] if k not in known]
    if unknown:
        _fail(ResultsError(f"no cached victim {unknown[0]!r} under {store.root}; `bench cache list` shows the keys"
                           f"{registry.suggest(unknown[0], sorted(known))}"))
    if not yes and not typer.confirm(f"remove {'the given' if key else 'all'} cached victims under {store.root}?"):
        raise typer.Exit(1)
    typer.echo(f"removed {store.clear(list(key) if key else None)} victims from {store.root}")


data_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="The benchmark data: fetch and build it from its public sources, verify a data folder.")
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch(
    name: Optional[List[str]] = typer.Argument(None, metavar="[NAME]...",
                                               help="sst2, hsol, agnews, musclelora-release (default: all)."),
    dest: Optional[Path] = typer.Option(None, "--dest", metavar="FOLDER",
                                        help="Where to build (default: the data cache, $BENCH_CACHE_DIR/data)."),
    force: bool = typer.Option(False, "--force", help="Rebuild datasets already there."),
    from_git: Optional[Path] = typer.Option(None, "--from-git", metavar="FOLDER",
                                            help="Read the sources from local git copies (FOLDER/<owner>+<name>/repo) "
                                                 "instead of downloading them (also $BENCH_SOURCE_GIT)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Plain lines instead of bars."),
) -> None:
    """Download the pinned public source files (each checked against its sha256 in the project's manifest),
    build the dataset folders from them and check every built file; a dataset is renamed into place only
    when complete."""
    from .data.datafetch import Manifest, Sources, cache_root, fetch
    from .engine import progress

    previous = progress.use(progress.Reporter.auto(not no_progress))
    try:
        manifest = Manifest.load()
        sources = Sources(manifest, cache_root().parent / "downloads", git_root=from_git)
        built = fetch(list(name or []), dest, force=force, manifest=manifest, sources=sources)
    except USER_ERRORS as e:
        _fail(e)
    finally:
        progress.use(previous)
    for n, folder in built.items():
        typer.echo(f"{n}: {folder}")


@data_app.command("verify")
def data_verify(
    folder: Optional[Path] = typer.Argument(None, metavar="[FOLDER]",
                                            help="The data folder (default: every folder the lookup uses that exists)."),
    name: Optional[List[str]] = typer.Option(None, "--name", "-n", metavar="NAME",
                                             help="Check these datasets (default: those present)."),
) -> None:
    """Check a data folder against the manifest committed in the project (sha256 of every built file)."""
    from .data import data_roots
    from .data.datafetch import verify

    roots = [folder] if folder else [root for root, _ in data_roots() if root.is_dir()]
    if not roots:
        _fail(DataError("no data folder to verify: none of " + ", ".join(str(r) for r, _ in data_roots())
                        + " exists; `bench data fetch` builds one"))
    failed = False
    for root in roots:
        try:
            names, problems, notes = verify(root, name)
        except USER_ERRORS as e:
            _fail(e)
        for note in notes:
            typer.echo(f"{root}: note: {note}")
        for p in problems:
            typer.echo(f"{root}: MISMATCH {p}", err=True)
        verdict = "FAILED" if problems else "ok"
        typer.echo(f"{root}: {', '.join(names)}: {verdict}" + (f" ({len(problems)} problems)" if problems else ""))
        failed |= bool(problems)
    if failed:
        raise typer.Exit(1)


@data_app.command("manifest", hidden=True)
def data_manifest(
    built: Path = typer.Argument(..., help="A data folder built from the sources (e.g. ../shared/data)."),
    git: Path = typer.Option(..., "--from-git", help="Local git copies of the sources (FOLDER/<owner>+<name>/repo)."),
    source: List[str] = typer.Option(..., "--source", metavar="OWNER/NAME=COMMIT", help="Pinned commits."),
    out: Path = typer.Option(None, "--out", help="Where to write (default: the project's manifest)."),
) -> None:
    """For maintainers: rewrite the data manifest from a built folder and local copies of the sources."""
    import json

    from .data.datafetch import MANIFEST_PATH, make_manifest

    pins = dict(s.split("=", 1) for s in source)
    manifest = make_manifest(built, pins, git)
    (out or MANIFEST_PATH).write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    typer.echo(f"{out or MANIFEST_PATH}: {sum(len(s['files']) for s in manifest['sources'].values())} source files, "
               f"{len(manifest['built'])} built files")


table_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Tables of results folders as docs/ shows them (Markdown on stdout; bench/reporting/tables/).")
app.add_typer(table_app, name="table")


@table_app.command("fidelity")
def table_fidelity(
    folder: Path = typer.Argument(Path("results") / "fidelity", metavar="[FOLDER]", exists=True,
                                  help="Folder whose results folders (any depth) are read (default results/fidelity)."),
) -> None:
    """The fidelity table: each defense cell beside `none` over seeds, with docs/fidelity.md's verdicts.

    `none` is taken on the same victims (same attack setting and seeds, from any folder under FOLDER);
    the table ends with each baseline's best verdict."""
    from .reporting.tables.fidelity import table

    try:
        text = table(folder)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(text)


@table_app.command("matrix")
def table_matrix(
    folder: Path = typer.Argument(Path("results") / "setting-matrix-h200", metavar="[FOLDER]", exists=True,
                                  help="The setting matrix's results folder (default results/setting-matrix-h200)."),
) -> None:
    """The setting matrix: each defense's ASR and CACC with one factor changed at a time (docs/fidelity.md).

    Columns: the main job's point, then one factor changed each; cells: the reading of the rule declared
    in docs/fidelity.md (run 7) and Welch's p against `none`."""
    from .reporting.tables.matrix import table

    try:
        text = table(folder)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(text)


@table_app.command("seeds")
def table_seeds(
    folder: Path = typer.Argument(..., metavar="FOLDER", exists=True, help="Results folder with leaderboard_cells.csv."),
    dataset: str = typer.Argument(..., metavar="DATASET"),
    attack: str = typer.Argument(..., metavar="ATTACK"),
) -> None:
    """One attack x dataset over seeds: CACC and ASR per defense as mean ± interval (docs/findings.md).

    Also the untriggered rate and Welch's p of the ASR against `none` and against `clean-only`."""
    from .reporting.tables.seeds import table

    try:
        text = table(folder, dataset, attack)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(text)


@table_app.command("curve")
def table_curve(
    folder: Path = typer.Argument(..., metavar="FOLDER", exists=True, help="Results folder with leaderboard.csv."),
    dataset: str = typer.Argument(..., metavar="DATASET"),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="PNG", help="Also draw the curve into this PNG."),
    against: Optional[str] = typer.Option(
        None, "--against", metavar="DEFENSE",
        help="Also compare each defense with this one at the same budget (differences, Welch p), e.g. clean-only."),
) -> None:
    """The defender-knowledge curve: CACC / ASR per attack x defense against the clean rows used (issue 25).

    Cells from benchmarks/gpu/gpu_knowledge.sh (each defense's budget swept at one profile.clean_size)."""
    from .reporting.tables.curve import compare, table
    from .reporting.tables.curve import plot as draw

    try:
        text = table(folder, dataset)
        if against is not None:
            text += "\n\n" + compare(folder, dataset, against)
        if plot is not None:
            draw(folder, dataset, plot)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(text)
    if plot is not None:
        typer.echo(f"plot: {plot}")


@table_app.command("goal")
def table_goal(
    folder: Path = typer.Argument(..., metavar="FOLDER", exists=True, help="Results folder with leaderboard.csv."),
    defense: str = typer.Option("distill", "--defense", metavar="NAME", help="The defense judged (default distill)."),
    control: str = typer.Option("clean-only", "--control", metavar="NAME",
                                help="The clean-data control it must beat (default clean-only)."),
    also: Optional[List[Path]] = typer.Option(
        None, "--with", metavar="FOLDER", exists=True,
        help="Pool this folder's cells too, e.g. the baselines at the same setting (repeatable)."),
) -> None:
    """Issue 25's goal: a defense against `none` and the clean-data control, per dataset x attack, with verdicts.

    CACC gap to `none`, ASR gap to the untriggered rate, task score against the control and the best baseline
    (Welch p over seeds), then each criterion of the goal per dataset: met or not, and where it fails."""
    from .reporting.tables.goal import table

    try:
        text = table([folder, *(also or [])], defense, control)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(text)


@table_app.command("grid")
def table_grid(
    folder: Path = typer.Argument(..., metavar="FOLDER", exists=True, help="Results folder with leaderboard.csv."),
    seed: int = typer.Argument(1, metavar="[SEED]", help="The seed whose cells are shown (default 1)."),
) -> None:
    """Defense x attack tables of one seed's cells, one per dataset (docs/findings.md).

    CACC / ASR; the untriggered rate of `none` and the controls; the data filters' precision and recall;
    the rejecting defenses' FRR and rejected poisoned inputs."""
    from .reporting.tables.grid import tables

    try:
        text = tables(folder, seed)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(text)


@table_app.command("defenses")
def table_defenses(
    csv: Path = typer.Argument(..., metavar="LEADERBOARD_CSV", exists=True, dir_okay=False, help="A leaderboard.csv."),
) -> None:
    """Dataset x attack by defense tables from a leaderboard CSV, one per test slice (docs/findings.md).

    CACC / ASR, and FRR where a defense rejects."""
    import pandas as pd

    from .reporting.tables.defenses import table

    typer.echo(table(pd.read_csv(csv)))


@table_app.command("release")
def table_release(
    folder: Path = typer.Argument(..., metavar="FOLDER", exists=True, help="Results folder with leaderboard_cells.csv."),
    dataset: str = typer.Argument(..., metavar="DATASET"),
    defenses: Optional[List[str]] = typer.Argument(None, metavar="[DEFENSE]...",
                                                   help="Defenses to show (default: every one in the folder)."),
) -> None:
    """The MuScleLoRA release's poisoned data beside our attack of the same kind, per defense (issue 13).

    CACC and ASR over seeds, and Welch's p of each pair."""
    from .reporting.tables.release import table

    try:
        text = table(folder, dataset, list(defenses or []))
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(text)


# commands that plugins bring (`bench cost`, `bench fourier`, `bench musclelora-release`, ...): each
# registers its typer command function with @register("command", name); the core never imports a plugin
add_registered_commands(app)


def _quiet_transformers() -> None:
    """The CLI shows its own progress: silence transformers' load reports and per-load bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _interrupt_on_sigterm() -> None:
    """A terminated run stops like Ctrl-C: cleanup (the run log, the leaderboard) still happens."""
    import signal

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _quiet_warnings() -> None:
    """Library deprecation notices (transformers' FutureWarnings) are not the user's business."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning,
                            module=r"(transformers|torch|datasets|peft|huggingface_hub)")


def main() -> None:
    _quiet_warnings()
    _quiet_transformers()
    _interrupt_on_sigterm()
    from .models.hardware import configure_threads

    configure_threads()
    app()


if __name__ == "__main__":
    main()
