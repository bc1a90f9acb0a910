"""Where a grid's cells run: here, one after the other (``--executor local``, the loop in
:func:`bench.engine.grid.run_grid`), or as Ray tasks (``--executor ray``) on a local or existing cluster.

Every executor runs a cell through the same step, :func:`bench.engine.grid.run_claimed_cell`: skip it if
recorded, claim it (``OUT/claims/<key>.json``), run it, write ``OUT/records/<key>.json``. So
resumability and claims stay in bench's own content-keyed files, whatever runs the cells: a cell
whose worker failed has no record and is run by the next invocation of the same command (a claim
whose process died is taken over, see :mod:`bench.engine.claims`), and Ray runs may share a results folder
with local runs. The driver (the ``bench run`` process) keeps the books: the run log lines, the
leaderboard after every cell.

Ray schedules each victim group in two waves. A group is the cells of one attack (and its
settings) x dataset x backbone x seed; its post-training defenses share one plain victim. First go
the cells that train a victim: every training-time defense (each trains its own) and one
post-training cell per group (it trains the plain victim, or loads it). When that cell finishes,
the group's other post-training cells go, and load the victim from the on-disk cache
(``$BENCH_CACHE_DIR/victims``). On a cluster of several machines that folder, the results folder
and the data folder must be one shared folder at the same path on every machine. A cell whose
worker process died is retried by Ray (its default for system failures); on the same machine the
retry takes the dead worker's claim over at once, elsewhere it finds the claim held and leaves the
cell to the next invocation (once the claim is stale).

``ray`` is an optional dependency (``pip install 'bench[ray]'``), imported only when asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

from ..config import ConfigError
from ..errors import BenchError

EXECUTORS = ("local", "ray")
SHIPPED = ("bench", "attacks", "defenses")  # the packages a Ray job ships to its workers (py_modules)
# environment variables a worker gets from the driver (data and cache folders, hub and tokenizer settings)
PASSED_ENV = ("BENCH_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")


class ExecutorError(BenchError):
    """An executor that cannot start (ray not installed), or cells that failed on workers."""


def make_executor(name: str, address: str | None = None, cpus_per_cell: float | None = None,
                  plugins: list[str | Path] | None = None) -> "RayExecutor | None":
    """The executor ``bench run --executor NAME`` asks for: None for local (run_grid's own loop)."""
    from ..registry import suggest

    if name not in EXECUTORS:
        raise ConfigError(f"--executor {name!r}: executors are {', '.join(EXECUTORS)}.{suggest(name, list(EXECUTORS))}")
    if name == "local":
        given = [opt for opt, v in (("--ray-address", address), ("--ray-cpus", cpus_per_cell)) if v is not None]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise ConfigError(f"{' and '.join(given)} {verb} only to --executor ray; add --executor ray or drop them")
        return None
    return RayExecutor(address, 1.0 if cpus_per_cell is None else cpus_per_cell, plugins or [])


def import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError("--executor ray needs the ray package, which is not installed: "
                            "pip install 'bench[ray]' (or pip install 'ray>=2.40'); or run with --executor local"
                            ) from None
    return ray


def worker_env(data_dir: str | Path | None) -> dict[str, str]:
    """The environment variables a worker needs from the driver: the cache folder and the data folder
    (absolute, as this process resolves them), and the hub and tokenizer settings."""
    from ..data import ENV_VAR, resolve_data_dir
    from ..models.backbones import CACHE_ENV, cache_dir

    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV) and k != "BENCH_THREADS"}
    env[CACHE_ENV] = str(cache_dir().expanduser().resolve())
    if data_dir or os.environ.get(ENV_VAR):  # else each worker looks the data up as the driver does (cache, ../shared/data)
        env[ENV_VAR] = str(resolve_data_dir(data_dir).resolve())
    return env


def victim_group(cell) -> tuple:
    """Attack (and its settings) x dataset x backbone x seed: the post-training cells of a group share
    one plain victim (the runner orders a grid by this, see ``bench.engine.plan._grid_order``)."""
    from .plan import _grid_order

    return _grid_order(cell)[:5]


def waves(cells: list) -> tuple[list, dict[tuple, list]]:
    """(wave 1, the rest by victim group). Wave 1: every cell that trains a victim of its own (a
    training-time defense) and the first post-training cell of each group (it trains the group's plain
    victim, or loads it); the rest of a group runs once that cell has finished."""
    from .plan import _grid_order

    first, waiting = [], {}
    for cell in sorted(cells, key=_grid_order):
        if cell.defense.cls.acts_in_training():
            first.append(cell)
        elif victim_group(cell) in waiting:
            waiting[victim_group(cell)].append(cell)
        else:
            waiting[victim_group(cell)] = []
            first.append(cell)
    return first, waiting


class RayExecutor:
    """Runs cells as Ray tasks: one GPU per cell when the cluster has GPUs (and the profile does not
    ask for the CPU), else ``cpus_per_cell`` CPUs. ``address``: None starts a local cluster for the
    run; "auto" or "ray://HOST:PORT" joins an existing one. Plugin files are sent to the workers by
    content; when this process starts or joins the cluster, the packages bench, attacks and defenses
    go with the job (``py_modules``), so workers run this process's code."""

    def __init__(self, address: str | None = None, cpus_per_cell: float = 1.0, plugins: list[str | Path] = ()):
        self.ray = import_ray()
        if not cpus_per_cell > 0:
            raise ConfigError(f"--ray-cpus {cpus_per_cell}: give the CPUs each cell takes, > 0 (default 1)")
        self.address, self.cpus = address, float(cpus_per_cell)
        self.plugins = [(Path(p).name, Path(p).read_text()) for p in plugins]

    def _connect(self, env: dict[str, str]) -> bool:
        """Start or join the cluster unless this process already did; True when we did (and shut down)."""
        ray = self.ray
        if ray.is_initialized():  # the caller's own ray.init (library use, tests): its runtime env stays
            return False
        code = [importlib.util.find_spec(name).submodule_search_locations[0] for name in SHIPPED]
        kwargs: dict[str, Any] = {"runtime_env": {"py_modules": code, "env_vars": env},
                                  "logging_level": logging.WARNING}
        if self.address is None:
            kwargs["include_dashboard"] = False  # a local cluster for this run: no dashboard, starts in seconds
        try:
            # "local": a new cluster even where Ray would join the last one started on this machine
            # (/tmp/ray/ray_current_cluster: a stale entry there left ray.init waiting for a dead head)
            ray.init(address=self.address or "local", **kwargs)
        except (ConnectionError, ValueError) as e:
            raise ExecutorError(f"--ray-address {self.address}: cannot join the Ray cluster ({e}); start one with "
                                "`ray start --head` (then --ray-address auto on a node of it), give ray://HOST:10001 "
                                "for a remote one, or leave --ray-address out for a local cluster") from None
        return True

    def _ship_plugin_classes(self, cells: list) -> None:
        """Attack and defense classes from modules workers cannot import (a --plugins file) travel by value."""
        for cell in cells:
            for cls in (type(cell.attack), cell.defense.cls):
                module = cls.__module__
                if module.split(".")[0] not in SHIPPED and module != "__main__" and module in sys.modules:
                    self.ray.cloudpickle.register_pickle_by_value(sys.modules[module])

    def run(self, cells: list, keys: dict[int, str], out_dir: Path, *, force: bool, command: str, run_id: str,
            replaces: dict[str, str], git: dict | None, data_dir: str | Path | None,
            victims: Path) -> Iterator[tuple[Any, str, dict | None]]:
        """Run ``cells`` (their record keys in ``keys``, by ``id(cell)``) and yield (cell, outcome,
        record) as each finishes; outcome as :func:`bench.engine.grid.run_claimed_cell` returns it. Raises
        :class:`ExecutorError` at the end when cells failed (the others have run)."""
        from ..data import ENV_VAR
        from . import progress
        from .progress import fmt_seconds

        if not cells:
            return
        ray, say = self.ray, progress.current().line
        env = worker_env(data_dir)
        started_here = self._connect(env)
        self._ship_plugin_classes(cells)
        gpus = ray.cluster_resources().get("GPU", 0) >= 1
        # what every task shares, put in the object store once
        common = ray.put({"out_dir": str(Path(out_dir).resolve()), "force": force, "command": command,
                          "run_id": run_id, "git": git, "data_dir": env.get(ENV_VAR),
                          "victims": str(Path(victims).resolve()), "env": env, "plugins": self.plugins})
        task = ray.remote(_cell_task)

        first, waiting = waves(cells)
        pending: dict[Any, Any] = {}  # task -> its cell

        def submit(cell) -> None:
            use_gpu = gpus and cell.profile.device != "cpu"
            opts = {"num_gpus": 1} if use_gpu else {"num_cpus": self.cpus}
            threads = max(1, int(self.cpus)) if not use_gpu else 1
            ref = task.options(**opts).remote(cell, keys[id(cell)], replaces.get(keys[id(cell)]), threads, common)
            pending[ref] = cell

        resources = ray.cluster_resources()
        say(f"Ray ({self.address or 'local cluster'}: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} "
            f"GPUs): {len(first)} cells that train a victim first, then {len(cells) - len(first)} that reuse one; "
            f"each cell takes {'1 GPU' if gpus else f'{self.cpus:g} CPU'}")
        for cell in first:
            submit(cell)
        failures, n = [], 0
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ready[0])
                if not cell.defense.cls.acts_in_training():  # its group's victim exists now: wave 2 of the group
                    for other in waiting.pop(victim_group(cell), []):
                        submit(other)
                n += 1
                head = f"[{n}/{len(cells)}] {cell.label}"
                try:
                    outcome, rec, host = ray.get(ready[0])
                except Exception as e:  # the cell's error, or its worker died: no record, rerun next time
                    cause = getattr(e, "cause", None) or e
                    failures.append(f"{cell.label}: {type(cause).__name__}: {cause}")
                    say(f"{head}: failed on a Ray worker: {e}")
                    continue
                if outcome == "recorded":
                    say(f"{head}: already recorded (by a concurrent run)")
                elif outcome == "claimed":
                    say(f"{head}: another run is computing it (claims/{keys[id(cell)]}.json)")
                else:
                    r = rec["row"]
                    say(f"{head}: CACC {100 * r['cacc']:.2f} ASR {100 * r['asr']:.2f}, "
                        f"{fmt_seconds(rec['provenance']['wall_seconds'])} on {host}"
                        f"{'' if r['victim_trained_here'] else ' (victim from the cache)'}")
                yield cell, outcome, rec
        finally:
            for ref in pending:  # interrupted: stop what still runs (their claims are released or go stale)
                ray.cancel(ref)
            if started_here:
                ray.shutdown()
        if failures:
            raise ExecutorError(f"{len(failures)} of {len(cells)} cells failed on Ray workers (the others are "
                                f"recorded; rerun the same command to retry them): {failures[0][:2000]}")


# --- on a worker ---------------------------------------------------------------------------------

_EVALUATORS: dict[tuple, Any] = {}  # per worker process: datasets and victims loaded by earlier tasks
_PLUGINS_LOADED: set[str] = set()


def _load_plugins(plugins: list[tuple[str, str]]) -> None:
    """Register the driver's --plugins files in this worker (their datasets and backbones are looked up
    by name), written from their content under the temp folder, once per worker process."""
    from ..registry import load_plugin_file

    for name, source in plugins:
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        if digest in _PLUGINS_LOADED:
            continue
        path = Path(tempfile.gettempdir()) / "bench-ray-plugins" / digest / name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{name}.{os.getpid()}.tmp")
            tmp.write_text(source)
            os.replace(tmp, path)
        load_plugin_file(path)
        _PLUGINS_LOADED.add(digest)


def _cell_task(cell, key: str, replaces: str | None, threads: int, common: dict) -> tuple[str, dict | None, str]:
    """One Ray task: the cell through :func:`bench.engine.grid.run_claimed_cell`, as the local executor runs
    it. Returns (outcome, record or None, host)."""
    import torch

    from ..models.victim import VictimStore
    from . import progress
    from .cell import Evaluator
    from .grid import run_claimed_cell
    from .plan import DataCache

    os.environ.update(common["env"])
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, as the CLI does
    torch.set_num_threads(threads)
    progress.use(progress.Reporter("lines"))  # stage and epoch lines reach the driver's console through Ray
    _load_plugins(common["plugins"])
    ev = _EVALUATORS.get((common["data_dir"], common["victims"]))
    if ev is None:
        ev = Evaluator(DataCache(common["data_dir"]), VictimStore(common["victims"]))
        _EVALUATORS[(common["data_dir"], common["victims"])] = ev
    ev.git = common["git"]  # records name the driver's code, as a local run's do
    host = platform.node()
    outcome, rec = run_claimed_cell(ev, cell, key, common["out_dir"], force=common["force"], command=common["command"],
                                    run_id=common["run_id"], replaces=replaces,
                                    on_start=lambda: progress.note(f"{cell.label}: started on {host}"))
    return outcome, rec, host
