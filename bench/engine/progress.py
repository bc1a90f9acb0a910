"""Progress for long steps: bars on a terminal, plain timestamped lines otherwise, nothing when off.

One reporter per process (:func:`use`); code anywhere reports a long step with
``with progress.stage("scoring stealthiness", total=200, unit="sent") as s: ... s.update()`` and a
short event with :func:`note`. On a terminal each stage is a bar under the cells bar; without one (a
log file, ``--no-progress``) a stage prints a line when it starts, one every ``every`` seconds with
done/total, elapsed time and an estimate of what remains, and one when it ends.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO


def fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class Stage:
    def __init__(self, reporter: "Reporter", desc: str, total: int | None, unit: str, depth: int):
        self.r, self.desc, self.total, self.unit, self.depth = reporter, desc, total, unit, depth
        self.done = 0
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        self.spoke = False  # lines mode: a nested stage speaks only once it has run for `every` seconds
        if reporter.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"  {desc}", unit=unit, leave=False, position=depth,
                            file=reporter.stream, dynamic_ncols=True, delay=1.0)
        elif reporter.mode == "lines" and depth == 1:
            reporter.line(f"{desc}: started" + (f" ({total} {unit})" if total else ""), depth)
            self.spoke = True

    def set_total(self, total: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def update(self, n: int = 1) -> None:
        self.advance_to(self.done + n)

    def advance_to(self, done: int) -> None:
        step, self.done = done - self.done, done
        if self.bar is not None:
            self.bar.update(step)
        elif self.r.mode == "lines" and time.perf_counter() - self.last >= self.r.every:
            self.last = time.perf_counter()
            self.r.line(f"{self.desc}: {self.status()}", self.depth)
            self.spoke = True

    def status(self) -> str:
        elapsed = time.perf_counter() - self.t0
        text = f"{self.done}/{self.total or '?'} {self.unit}, {fmt_seconds(elapsed)} elapsed"
        if self.total and self.done:
            text += f", ~{fmt_seconds(elapsed / self.done * (self.total - self.done))} left"
        return text

    def close(self, stopped: bool = False) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.r.mode == "lines" and self.spoke:
            what = "stopped" if stopped else "done"
            count = f"{self.done}/{self.total} {self.unit} " if self.total else ""
            self.r.line(f"{self.desc}: {what}, {count}in {fmt_seconds(time.perf_counter() - self.t0)}", self.depth)


class Reporter:
    """``mode``: "bar" (terminal), "lines" (plain lines) or "off"."""

    def __init__(self, mode: str = "off", stream: TextIO | None = None, every: float = 30.0):
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"progress mode {mode!r}")
        self.mode, self.stream, self.every = mode, stream or sys.stderr, every
        self.depth = 0

    @classmethod
    def auto(cls, enabled: bool = True, stream: TextIO | None = None) -> "Reporter":
        """Bars on a terminal, lines otherwise; ``enabled=False`` (``--no-progress``): lines, never bars."""
        stream = stream or sys.stderr
        tty = hasattr(stream, "isatty") and stream.isatty()
        return cls("bar" if enabled and tty else "lines", stream)

    def line(self, msg: str, depth: int = 0) -> None:
        if self.mode == "off":
            return
        text = f"[{time.strftime('%H:%M:%S')}] {'  ' * depth}{msg}"
        if self.mode == "bar":
            from tqdm.auto import tqdm

            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    @contextmanager
    def stage(self, desc: str, total: int | None = None, unit: str = "it") -> Iterator[Stage]:
        self.depth += 1
        s = Stage(self, desc, total, unit, self.depth)
        try:
            yield s
        except BaseException:
            s.close(stopped=True)
            raise
        else:
            s.close()
        finally:
            self.depth -= 1


_reporter = Reporter("off")


def use(reporter: Reporter) -> Reporter:
    """Make ``reporter`` the process's reporter; returns the previous one."""
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous


def current() -> Reporter:
    return _reporter


def stage(desc: str, total: int | None = None, unit: str = "it"):
    return _reporter.stage(desc, total, unit)


def note(msg: str) -> None:
    """A one-line event (an epoch's dev accuracy, a cached victim loaded) under the current stage."""
    _reporter.line(msg, _reporter.depth)


def warn(msg: str) -> None:
    """A warning the user should see: a line on the reporter's stream, or a Python warning when off."""
    if _reporter.mode == "off":
        import warnings

        warnings.warn(msg, stacklevel=2)
    else:
        _reporter.line(f"warning: {msg}", 0)


def iterate(items, desc: str, unit: str = "it"):
    """``for x in iterate(xs, "what"):`` a stage over a sized iterable."""
    with stage(desc, len(items), unit) as bar:
        for x in items:
            yield x
            bar.update()
