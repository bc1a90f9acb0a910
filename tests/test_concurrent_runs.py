"""Two `bench run` processes on one results folder, and a run killed with SIGKILL: no cell computed
twice, no cell lost, the leaderboard complete, the dead run named in the run log (smoke path)."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from bench.reporting.results import read_runs

pytestmark = pytest.mark.slow

DEFENSES = ["none", "lora", "ga-lora", "mslr"]  # four cells, each trains its own victim


def bench_run(toy_dir, out, *extra):
    cmd = [sys.executable, "-m", "bench.cli", "run", "-a", "badnets", *sum((["-d", d] for d in DEFENSES), []),
           "--dataset", str(toy_dir), "-b", "tiny-bert", "--profile", "smoke", "--out", str(out), "--no-progress",
           *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def records(out):
    return [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]


def test_two_concurrent_runs_split_the_grid(toy_dir, tmp_path):
    out = tmp_path / "out"
    procs = [bench_run(toy_dir, out), bench_run(toy_dir, out)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    recs = records(out)
    assert len(recs) == len(DEFENSES)
    ended = [r for r in read_runs(out) if r["status"] == "finished"]
    assert sum(r["cells_run"] for r in ended) == len(DEFENSES), ended  # each cell computed exactly once
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board["defense"]) == sorted(DEFENSES)
    assert not list((out / "claims").glob("*.json"))  # every claim released


def test_a_killed_run_loses_no_finished_cell_and_is_named_in_the_log(toy_dir, tmp_path):
    out = tmp_path / "out"
    proc = bench_run(toy_dir, out)
    deadline = time.time() + 600
    while time.time() < deadline and not list((out / "records").glob("*.json")):
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    finished = {p.name for p in (out / "records").glob("*.json")}
    assert 1 <= len(finished) < len(DEFENSES)
    runs = read_runs(out)
    assert runs[-1]["status"].startswith("died")
    again = bench_run(toy_dir, out)  # takes over the dead run's claim and finishes the grid
    text = again.communicate(timeout=600)[0]
    assert again.returncode == 0, text
    assert f"{len(finished)} already recorded" in text
    assert len(records(out)) == len(DEFENSES)
    assert not list((out / "records").glob("*.tmp"))
    assert len(pd.read_csv(out / "leaderboard.csv")) == len(DEFENSES)


def test_two_processes_wanting_one_victim_train_it_once(tmp_path, monkeypatch):
    """Issue 23: victims are claimed like cells; the second process waits, then loads the stored one."""
    import threading

    import torch

    from bench.engine.profiles import get_profile
    from bench.models import victim as victim_mod

    monkeypatch.setattr(victim_mod, "WAIT_POLL", 0.05)
    stores = [victim_mod.VictimStore(tmp_path / "victims"), victim_mod.VictimStore(tmp_path / "victims")]
    started = threading.Event()

    def train(model, tokenizer):
        started.set()
        time.sleep(1.0)  # long enough for the other process to ask for the same victim meanwhile
        with torch.no_grad():
            model.weight.fill_(0.5)
        return {"trained_by": "first"}

    got = {}

    def want(i):
        if i == 1:
            started.wait(10)
        got[i] = stores[i].get("k", lambda: (torch.nn.Linear(2, 2), None), train, get_profile("smoke"),
                                torch.device("cpu"), {"label": "toy"})

    threads = [threading.Thread(target=want, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[0].trainings + stores[1].trainings == 1
    assert got[0][1] is True and got[1][1] is False and stores[1].loads == 1
    assert torch.all(got[1][0].model.weight == 0.5)  # the second loaded what the first trained
    assert not list((tmp_path / "victims" / "claims").glob("*.json"))  # the claim is released
    # a stale victim claim (its process died) is taken over: the victim is trained, not waited for
    dead = {"pid": 2 ** 22 + 12345, "host": os.uname().nodename, "cell": "x", "since": "then"}
    (tmp_path / "victims" / "claims" / "k2.json").write_text(json.dumps(dead))
    v, trained = stores[0].get("k2", lambda: (torch.nn.Linear(2, 2), None), lambda m, t: {}, get_profile("smoke"),
                               torch.device("cpu"), {})
    assert trained
