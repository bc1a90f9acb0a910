"""Running a grid: :func:`run_grid` plans nothing (see :mod:`bench.engine.plan`) and trains nothing itself (see
:mod:`bench.engine.cell`); it sorts the cells against the results folder, runs the rest here or through an
executor (:mod:`bench.engine.executors`), each through :func:`run_claimed_cell` (skip if recorded, claim,
run, write the record, release), and tells its observers what happens, in this order of events:

- ``started(cell)``: the cell's claim is held and it starts;
- ``step(cell, done, total)``: a training step of its victim;
- ``finished(cell, record)``: its record is written;
- ``failed(cell, error, trace)``: it raised and ``keep_going`` lets the grid go on;
- ``skipped(cell, reason)``: recorded meanwhile by another run ("recorded"), or claimed by a live one
  ("claimed");
- ``end(event, wall)``: once, with the run's end ({"event": "finished" | "interrupted" | "failed"}).

The observers: :class:`Tally` (the counts and the summary), :class:`RunLog` (``runs.jsonl``),
:class:`Leaderboard` (rebuilt after each cell) and, for the local executor, :class:`Progress` (lines or
a bar with the time estimate). An executor reports its own cells, so it gets no :class:`Progress`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError
from .cell import Evaluator
from .claims import try_claim
from .plan import Cell, DataCache, GridClock, Scan, estimate, scan
from .progress import Reporter, fmt_seconds
from ..reporting.results import (ResultsError, append_run, git_state, load_records, record_path, write_json_atomic,
                      write_leaderboard)
from ..models.victim import VictimStore


def run_grid(
    cells: list[Cell], out_dir: str | Path, data_dir: str | Path | None = None, command: str = "",
    progress: str | bool = "auto", force: bool = False, reuse: list[str | Path] | None = None,
    store: VictimStore | None = None, executor: Any = None, keep_going: bool = False,
) -> dict:
    """Run every cell not yet recorded in ``out_dir``; rebuild the leaderboard after each one.

    A cell recorded with the same key in one of the ``reuse`` folders is copied, not recomputed
    (its record says where it came from). ``force`` recomputes recorded cells. Each cell is claimed
    before it runs (``OUT/claims``), so several processes on one folder split the work. The run
    writes a "started" line to ``runs.jsonl`` and an end line (finished, interrupted, failed).
    ``progress``: "auto" or True (bars on a terminal, else plain lines), "lines", "bar", "off" or False.
    ``executor``: None runs the cells here, one after the other; else an object from
    :mod:`bench.engine.executors` (e.g. Ray) whose ``run`` runs them elsewhere through :func:`run_claimed_cell`.
    ``keep_going`` (local executor): a cell that raises is written to ``runs.jsonl`` ("cell_failed", with
    its error), its claim released, and the grid goes on; the summary's ``failed`` lists those cells.
    """
    from .progress import use

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ResultsError(f"--out {out_dir} is a file; give a folder for the results (it is created if missing)")
    for d in reuse or []:
        if not (Path(d) / "records").is_dir():
            raise ResultsError(f"--reuse {d}: {'no such folder' if not Path(d).exists() else 'no records/ folder in it'}"
                               "; give a results folder that a previous `bench run --out` wrote")
    mode = {True: "auto", False: "off"}.get(progress, progress) if isinstance(progress, bool) else progress
    reporter = Reporter.auto(True) if mode == "auto" else Reporter(mode)
    previous = use(reporter)
    try:
        if keep_going and executor is not None:
            raise ConfigError("--keep-going works with the local executor only; leave it out with --executor ray "
                              "(a failed Ray task stops the run; rerun it to resume)")
        return _run_grid(cells, out_dir, data_dir, command, reporter, force, reuse, store, executor, keep_going)
    finally:
        use(previous)


def run_claimed_cell(ev: Evaluator, cell: Cell, key: str, out_dir: str | Path, *, force: bool = False,
                     command: str = "", run_id: str = "", replaces: str | None = None,
                     on_start: Callable[[], None] | None = None,
                     on_step: Callable[[int, int], None] | None = None) -> tuple[str, dict | None]:
    """One cell of a grid, as every executor runs it (the local loop, a Ray task): skip it if recorded,
    claim it, run it, write its record, release the claim.

    Returns ("recorded", None) when ``OUT/records/<key>.json`` exists (unless ``force``), ("claimed",
    None) when a live run holds the cell's claim, else ("ran", record). ``replaces``: the key the cell
    was recorded under before (a ``--force`` rerun of an older key; removed once the new record is
    written). ``on_start`` is called once the claim is held; ``on_step`` at each training step."""
    out_dir = Path(out_dir)
    if not force and record_path(out_dir, key).is_file():
        return "recorded", None
    claim = try_claim(out_dir, key, cell.label)
    if claim is None:
        return "claimed", None
    try:
        if on_start is not None:
            on_start()

        def step(done: int, total: int) -> None:
            claim.heartbeat()
            if on_step is not None:
                on_step(done, total)

        rec = ev.run_cell(cell, on_step=step)
        rec["provenance"]["command"] = command
        rec["provenance"]["run_id"] = run_id
        if replaces and replaces != rec["key"]:
            record_path(out_dir, replaces).unlink(missing_ok=True)
        write_json_atomic(record_path(out_dir, rec["key"]), rec)
    finally:
        claim.release()
    return "ran", rec



@dataclass
class Run:
    """What a grid run's observers share."""

    run_id: str
    command: str
    out_dir: Path
    git: dict
    threads: dict  # torch's threads as last (re)checked: the run log's end line states them
    scan: Scan


def _run_grid(cells, out_dir, data_dir, command, reporter, force, reuse, store, executor=None,
              keep_going=False) -> dict:
    from ..models.hardware import configure_threads

    threads = configure_threads()
    git = git_state()  # the code this process runs is the code as it was when it started
    ev = Evaluator(DataCache(data_dir), store, git)
    t0 = time.perf_counter()
    found = scan(cells, ev.data, out_dir, reuse, force)
    clock = estimate(found.todo, ev.data, found.known)
    run_id = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(2).hex()}"
    run = Run(run_id, command, out_dir, git, threads, found)
    tally = Tally(found, ev.store, remote=executor is not None)
    log = RunLog(run, tally)
    log.begin()
    reporter.line(_planned_line(run))
    observers = Observers([tally, log, Leaderboard(out_dir)])
    if executor is None:  # an executor reports its cells as lines
        observers.append(Progress(run, reporter, clock))
    end = {"event": "finished"}
    try:
        if executor is not None:  # the cells run elsewhere (bench.engine.executors); this process keeps the books
            _run_elsewhere(executor, ev, run, force, data_dir, observers)
        else:
            _run_here(ev, run, force, keep_going, reporter, observers)
    except KeyboardInterrupt:
        end = {"event": "interrupted", "error": "interrupted (Ctrl-C or SIGTERM)"}
        raise
    except BaseException as e:
        end = {"event": "failed", "error": f"{type(e).__name__}: {str(e)[:300]}"}
        raise
    finally:
        wall = time.perf_counter() - t0
        observers.emit("end", end, wall)
    return tally.summary(wall)


def _planned_line(run: Run) -> str:
    s, threads = run.scan, run.threads
    return (f"{len(s.cells)} cells planned: {len(s.todo)} to run, {s.skipped} already recorded in {run.out_dir}, "
            f"{s.copied} copied; torch uses {threads['threads']} threads ({threads['threads_from']}"
            f"{'' if threads['threads_from'].startswith('$') else '; re-checked before each cell'}; "
            "BENCH_THREADS=N fixes the count)")


def _run_here(ev: Evaluator, run: Run, force: bool, keep_going: bool, reporter: Reporter,
              observers: "Observers") -> None:
    """The local executor: the cells one after the other in this process; with ``keep_going`` a cell
    that raises is reported ``failed`` and the grid goes on, else the error ends the grid."""
    for cell in run.scan.todo:
        key = run.scan.keys[id(cell)]
        _recheck_threads(run, reporter)
        try:
            outcome, rec = run_claimed_cell(
                ev, cell, key, run.out_dir, force=force, command=run.command, run_id=run.run_id,
                replaces=run.scan.done.get(key), on_start=lambda cell=cell: observers.emit("started", cell),
                on_step=lambda step, total, cell=cell: observers.emit("step", cell, step, total))
        except Exception as e:
            if not keep_going:
                raise
            observers.emit("failed", cell, f"{type(e).__name__}: {str(e)[:300]}", traceback.format_exc()[-4000:])
            continue
        if outcome == "ran":
            observers.emit("finished", cell, rec)
        else:  # "recorded": a concurrent run finished it meanwhile; "claimed": a live run is computing it
            observers.emit("skipped", cell, outcome)


def _recheck_threads(run: Run, reporter: Reporter) -> None:
    """Torch's thread count before each cell: another job may have started or ended meanwhile."""
    from ..models.hardware import configure_threads

    now = configure_threads(recheck=True)
    if now["threads"] != run.threads["threads"]:
        reporter.line(f"torch threads {run.threads['threads']} -> {now['threads']} ({now['threads_from']}; "
                      "BENCH_THREADS=N fixes the count)")
    run.threads = now


def _run_elsewhere(executor: Any, ev: Evaluator, run: Run, force: bool, data_dir, observers: "Observers") -> None:
    """The cells through ``executor.run`` (e.g. Ray tasks), each reported as it comes back."""
    with contextlib.closing(executor.run(run.scan.todo, run.scan.keys, run.out_dir, force=force, command=run.command,
                                         run_id=run.run_id, replaces=run.scan.done, git=run.git, data_dir=data_dir,
                                         victims=ev.store.root)) as finished:
        for cell, outcome, rec in finished:
            if outcome == "ran":
                observers.emit("finished", cell, rec)
            else:
                observers.emit("skipped", cell, outcome)


# --- observers ----------------------------------------------------------------------------------

class Observer:
    """Does nothing on every event; an observer overrides the events it cares about."""

    def started(self, cell: Cell) -> None: ...

    def step(self, cell: Cell, done: int, total: int) -> None: ...

    def finished(self, cell: Cell, record: dict) -> None: ...

    def failed(self, cell: Cell, error: str, trace: str) -> None: ...

    def skipped(self, cell: Cell, reason: str) -> None: ...

    def end(self, event: dict, wall: float) -> None: ...


class Observers(list):
    """The observers of a grid, told each event in their order."""

    def emit(self, event: str, *args) -> None:
        for observer in self:
            getattr(observer, event)(*args)


class Tally(Observer):
    """The counts of a run: its end line in ``runs.jsonl`` and the summary :func:`run_grid` returns."""

    def __init__(self, found: Scan, store: VictimStore, remote: bool = False):
        self.found, self.store, self.remote = found, store, remote
        self.trainings0 = store.trainings
        self.ran, self.n_skipped, self.claimed_elsewhere, self.trained_elsewhere = 0, found.skipped, 0, 0
        self.failures: list[dict] = []

    def finished(self, cell: Cell, record: dict) -> None:
        self.ran += 1
        if self.remote:  # a worker trained it (the store here counts the victims trained here)
            self.trained_elsewhere += bool(record["row"]["victim_trained_here"])

    def failed(self, cell: Cell, error: str, trace: str) -> None:
        self.failures.append({"cell": cell.label, "key": self.found.keys[id(cell)], "error": error})

    def skipped(self, cell: Cell, reason: str) -> None:
        if reason == "recorded":
            self.n_skipped += 1
        elif reason == "claimed":
            self.claimed_elsewhere += 1

    @property
    def victims_trained(self) -> int:
        return self.store.trainings - self.trainings0 + self.trained_elsewhere  # here and on workers

    def summary(self, wall: float) -> dict:
        return {"ran": self.ran, "skipped": self.n_skipped, "copied": self.found.copied, "wall_seconds": wall,
                "claimed_elsewhere": self.claimed_elsewhere, "victims_trained": self.victims_trained,
                "failed": self.failures}


class RunLog(Observer):
    """``runs.jsonl``: a "started" line, a "cell_failed" line per failed cell, an end line (finished,
    interrupted, failed); none when there is nothing to run."""

    def __init__(self, run: Run, tally: Tally):
        self.run, self.tally = run, tally

    def begin(self) -> None:
        run, s = self.run, self.run.scan
        if s.todo:
            append_run(run.out_dir, {"event": "started", "run_id": run.run_id, "command": run.command,
                                     "pid": os.getpid(), "host": platform.node(), "cells_planned": len(s.cells),
                                     "cells_to_run": len(s.todo), "started": _now(), "git": run.git, **run.threads})

    def failed(self, cell: Cell, error: str, trace: str) -> None:
        append_run(self.run.out_dir, {"event": "cell_failed", "run_id": self.run.run_id, "cell": cell.label,
                                      "key": self.run.scan.keys[id(cell)], "error": error, "traceback": trace})

    def end(self, event: dict, wall: float) -> None:
        run, t = self.run, self.tally
        if run.scan.todo:
            append_run(run.out_dir, {
                **event, "run_id": run.run_id, "command": run.command, "cells_run": t.ran,
                "cells_skipped": t.n_skipped, "cells_copied": run.scan.copied,
                "cells_claimed_elsewhere": t.claimed_elsewhere, "cells_planned": len(run.scan.cells),
                "victims_trained": t.victims_trained, "cells_failed": len(t.failures),
                "wall_seconds": round(wall, 1), "git": run.git, **run.threads, "finished": _now(),
            })


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Leaderboard(Observer):
    """``leaderboard.*`` rebuilt after each recorded cell and at the end (when there is anything to show)."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def finished(self, cell: Cell, record: dict) -> None:
        write_leaderboard(self.out_dir)

    def end(self, event: dict, wall: float) -> None:
        if load_records(self.out_dir) or (self.out_dir / "leaderboard.csv").is_file():
            write_leaderboard(self.out_dir)


class Progress(Observer):
    """A line per cell (or a bar, ``progress="bar"``) with the grid's time estimate, fed by the
    measured costs of the cells (:class:`bench.engine.plan.GridClock`)."""

    def __init__(self, run: Run, reporter: Reporter, clock: GridClock):
        self.run, self.reporter, self.clock = run, reporter, clock
        self.index = {id(cell): i for i, cell in enumerate(run.scan.todo, 1)}
        self.c0, self.steps_t0 = time.perf_counter(), None
        self.bar = None
        if reporter.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(run.scan.todo), desc="cells", unit="cell", position=0, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def eta(self) -> str:
        left = self.clock.remaining()
        return "ETA after the first training steps" if left is None else f"~{fmt_seconds(left)} left"

    def at(self, cell: Cell) -> str:
        return f"[{self.index[id(cell)]}/{len(self.run.scan.todo)}] {cell.label}"

    def started(self, cell: Cell) -> None:
        self.c0, self.steps_t0 = time.perf_counter(), None
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.eta()} | {cell.label}")
        else:
            self.reporter.line(f"{self.at(cell)}: started ({self.eta()} for the grid)")

    def step(self, cell: Cell, done: int, total: int) -> None:
        if self.steps_t0 is None:
            self.steps_t0 = time.perf_counter()
        self.clock.current = (id(cell), done)
        if done == total or done % 20 == 0:
            if done > 1:
                self.clock.live[self.clock.trainer(cell)] = [time.perf_counter() - self.steps_t0, done - 1]
            if self.bar is not None:
                self.bar.set_postfix_str(f"{self.eta()} | {cell.label}")

    def finished(self, cell: Cell, record: dict) -> None:
        self.clock.live.pop(self.clock.trainer(cell), None)
        self.clock.observe_record(record)
        self.clock.observe_cell(cell)
        r = record["row"]
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self.eta())
        self.reporter.line(f"{self.at(cell)}: CACC {100 * r['cacc']:.2f} ASR {100 * r['asr']:.2f}, "
                           f"{fmt_seconds(time.perf_counter() - self.c0)}"
                           f"{'' if r['victim_trained_here'] else ' (victim from the cache)'}; {self.eta()}")

    def failed(self, cell: Cell, error: str, trace: str) -> None:
        self.reporter.line(f"{self.at(cell)}: FAILED ({error}); --keep-going: on to the next cell "
                           f"(traceback in {self.run.out_dir / 'runs.jsonl'})")
        self.clock.observe_cell(cell)

    def skipped(self, cell: Cell, reason: str) -> None:
        if reason == "claimed":
            self.reporter.line(f"{self.at(cell)}: another run is computing it "
                               f"(claims/{self.run.scan.keys[id(cell)]}.json)")
        self.clock.observe_cell(cell)

    def end(self, event: dict, wall: float) -> None:
        if self.bar is not None:
            self.bar.close()
