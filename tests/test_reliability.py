"""Issue 9's defects, each pinned: --force, content keys for folders and weights, claims, the run log,
threads, progress lines, compare across seeds."""

import json
import os
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.runner import cell_config, plan, run_grid
from bench.engine.profiles import get_profile
from bench.reporting.results import config_key, read_runs

runner = CliRunner()
SMOKE = ["--profile", "smoke", "-b", "tiny-bert", "--no-progress"]


def run_cli(*args):
    return runner.invoke(app, ["run", *args], catch_exceptions=False)


def test_force_recomputes_a_recorded_cell(toy_dir, tmp_path):
    out = tmp_path / "out"
    args = ["-a", "badnets", "-d", "none", "--dataset", str(toy_dir), *SMOKE, "--out", str(out)]
    assert run_cli(*args).exit_code == 0
    rec_file = next((out / "records").glob("*.json"))
    first_run = json.loads(rec_file.read_text())["provenance"]["run_id"]
    again = run_cli(*args)
    assert "0 cells run, 1 already recorded" in again.output
    assert json.loads(rec_file.read_text())["provenance"]["run_id"] == first_run
    forced = run_cli(*args, "--force")
    assert "1 cells run, 0 already recorded" in forced.output, forced.output
    assert len(list((out / "records").glob("*.json"))) == 1
    assert json.loads(rec_file.read_text())["provenance"]["run_id"] != first_run  # the record was recomputed


def test_a_dataset_folder_has_one_key_however_its_path_is_typed(toy_dir, tmp_path, monkeypatch):
    prof = get_profile("smoke")
    monkeypatch.chdir(toy_dir.parent)
    spellings = [str(toy_dir), toy_dir.name, f"./{toy_dir.name}", f"{toy_dir}/", f"{toy_dir}/../{toy_dir.name}"]
    from bench.data import load_csv_folder

    data = load_csv_folder(toy_dir)
    keys, names = set(), set()
    for spelling in spellings:
        cell = plan([spelling], ["tiny-bert"], ["badnets"], ["none"], [1], prof)[0]
        keys.add(config_key(cell_config(cell, data)))
        names.add(cell.dataset_name)
    assert len(keys) == 1 and names == {toy_dir.name}
    # a copy of the folder elsewhere (same content, same name) is the same dataset too
    copy = tmp_path / "elsewhere" / toy_dir.name
    shutil.copytree(toy_dir, copy)
    cell = plan([str(copy)], ["tiny-bert"], ["badnets"], ["none"], [1], prof)[0]
    assert config_key(cell_config(cell, load_csv_folder(copy))) in keys


def test_a_local_backbone_is_keyed_by_the_content_of_its_weights(tmp_path, monkeypatch):
    from bench.models.backbones import HubBackbone, TinyBert

    folder = tmp_path / "my-model"
    loaded = TinyBert().load(2, seed=0)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    first = HubBackbone(str(folder)).identity()
    monkeypatch.chdir(tmp_path)
    assert HubBackbone("./my-model").identity() == first == HubBackbone(f"{folder}/").identity()
    retrained = TinyBert().load(2, seed=1)  # other weights saved into the same folder
    retrained.model.save_pretrained(folder)
    assert HubBackbone(str(folder)).identity() != first
    assert first["name"] == "my-model"


def test_the_released_minilm_keeps_its_key_and_other_weights_do_not(tmp_path, monkeypatch):
    from bench.models import backbones

    ident = backbones.MiniLM().identity()
    assert ident == {"name": "minilm", "weights_bytes": 90868376}  # the records made before content hashes
    fake = tmp_path / "model"
    shutil.copytree(backbones.MiniLM().path(), fake, ignore=shutil.ignore_patterns("model.safetensors"))
    (fake / "model.safetensors").write_bytes(b"x" * 90868376)  # same size, other bytes
    monkeypatch.setattr(backbones.MiniLM, "path", lambda self: fake)
    assert backbones.MiniLM().identity() != ident


def test_a_missing_backbone_folder_fails_at_once_and_says_so(toy_dir, tmp_path):
    import time

    t0 = time.perf_counter()
    r = runner.invoke(app, ["run", "-a", "badnets", "-d", "none", "--dataset", str(toy_dir), "--profile", "smoke",
                            "-b", "tiny-bert", "-b", "./no/such/model", "--out", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 2 and "does not exist" in r.output
    assert time.perf_counter() - t0 < 20
    assert not (tmp_path / "o").exists()  # a run that fails before any cell leaves no leaderboard behind


def test_claims_split_the_work_and_stale_claims_are_taken_over(tmp_path):
    from bench.engine import claims

    c = claims.try_claim(tmp_path, "k1", "cell")
    assert c is not None and claims.try_claim(tmp_path, "k1") is None  # held by a live process: left to it
    c.release()
    assert not (tmp_path / "claims" / "k1.json").exists()
    # a claim of a dead process on this host is stale
    dead = {"pid": 2 ** 22 + 12345, "host": os.uname().nodename, "cell": "x", "since": "then"}
    (tmp_path / "claims" / "k2.json").write_text(json.dumps(dead))
    taken = claims.try_claim(tmp_path, "k2")
    assert taken is not None and json.loads((tmp_path / "claims" / "k2.json").read_text())["pid"] == os.getpid()
    # a claim from another machine is respected until its heartbeat is old
    other = {"pid": 1, "host": "another-machine", "cell": "x", "since": "then"}
    path = tmp_path / "claims" / "k3.json"
    path.write_text(json.dumps(other))
    assert claims.try_claim(tmp_path, "k3") is None
    old = os.path.getmtime(path) - claims.STALE_AFTER - 60
    os.utime(path, (old, old))
    assert claims.try_claim(tmp_path, "k3") is not None


def test_racing_takeovers_of_one_stale_claim_have_exactly_one_winner(tmp_path, monkeypatch):
    """Issue 23: check-then-rename let two processes both take the same dead claim."""
    import threading

    from bench.engine import claims

    judge, seen = claims.is_stale, threading.local()
    n = 6
    barrier = threading.Barrier(n)

    def slow_is_stale(path):  # every racer judges the dead claim stale before any acts on it
        stale = judge(path)
        if not getattr(seen, "done", False):
            seen.done = True
            barrier.wait(timeout=10)
        return stale

    monkeypatch.setattr(claims, "is_stale", slow_is_stale)
    for round_ in range(10):
        key = f"k{round_}"
        (tmp_path / "claims").mkdir(exist_ok=True)
        dead = {"pid": 2 ** 22 + 12345, "host": os.uname().nodename, "cell": "x", "since": "then"}
        (tmp_path / "claims" / f"{key}.json").write_text(json.dumps(dead))
        won = []

        def race():
            seen.done = False
            c = claims.try_claim(tmp_path, key)
            if c is not None:
                won.append(c)

        threads = [threading.Thread(target=race) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        barrier.reset()
        assert len(won) == 1, f"round {round_}: {len(won)} racers took the same stale claim"
        assert json.loads((tmp_path / "claims" / f"{key}.json").read_text())["nonce"] == won[0].nonce
        assert not list((tmp_path / "claims").glob(f"{key}.takeover-*"))  # tokens are removed


def test_a_cell_claimed_by_another_live_run_is_left_to_it(toy_dir, tmp_path):
    from bench.engine import claims

    prof = get_profile("smoke")
    cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none", "strip"], [1], prof)
    from bench.data import load_csv_folder

    data = load_csv_folder(toy_dir)
    held = config_key(cell_config(cells[1], data))
    out = tmp_path / "out"
    (out / "claims").mkdir(parents=True)
    (out / "claims" / f"{held}.json").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    summary = run_grid(cells, out, progress=False)
    assert summary["ran"] == 1 and summary["claimed_elsewhere"] == 1
    assert not (out / "records" / f"{held}.json").exists()
    runs = read_runs(out)
    assert runs[-1]["status"] == "finished" and runs[-1]["cells_claimed_elsewhere"] == 1


def test_the_run_log_says_when_a_run_died(tmp_path):
    from bench.reporting.results import append_run, run_notes

    append_run(tmp_path, {"event": "started", "run_id": "r1", "command": "bench run x", "pid": 2 ** 22 + 54321,
                          "host": os.uname().nodename, "started": "2026-01-01T00:00:00+00:00"})
    append_run(tmp_path, {"event": "started", "run_id": "r2", "command": "bench run y", "pid": os.getpid(),
                          "host": os.uname().nodename})
    append_run(tmp_path, {"event": "interrupted", "run_id": "r2", "cells_run": 3, "error": "interrupted"})
    (tmp_path / "runs.jsonl").open("a").write('{"event": "fin')  # a line cut by a kill
    status = {r["run_id"]: r["status"] for r in read_runs(tmp_path)}
    assert status == {"r1": "died (killed, or its machine stopped)", "r2": "interrupted"}
    assert any("bench run x" in n and "no end line" in n for n in run_notes(tmp_path))


def test_a_rendered_run_line_does_not_depend_on_which_processes_are_alive(tmp_path):
    """A folder committed while a run wrote it re-rendered differently in CI (the run was `running` on the
    machine that wrote leaderboard.md, `died` on the one that re-rendered it): rendered files say the same
    for a live and a dead run without an end line."""
    from bench.reporting.results import NO_END_LINE, append_run, run_notes

    lines = {}
    for name, pid in (("alive", os.getpid()), ("dead", 2 ** 22 + 54321)):
        folder = tmp_path / name
        append_run(folder, {"event": "started", "run_id": "r1", "command": "bench run x", "pid": pid,
                            "host": os.uname().nodename, "started": "2026-01-01T00:00:00+00:00"})
        assert read_runs(folder)[0]["status"] == ("running" if name == "alive" else "died (killed, or its machine stopped)")
        lines[name] = run_notes(folder)
    assert lines["alive"] == lines["dead"] and NO_END_LINE in lines["alive"][0]


def test_a_failing_cell_leaves_a_failed_line_and_no_reporter(toy_dir, tmp_path, monkeypatch):
    from bench.engine import progress
    from bench import runner as runner_mod

    prof = get_profile("smoke")
    cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none"], [1], prof)

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner_mod.Evaluator, "run_cell", boom)
    before = progress.current()
    with pytest.raises(RuntimeError):
        run_grid(cells, tmp_path / "out", progress="lines")
    assert progress.current() is before
    runs = read_runs(tmp_path / "out")
    assert runs[-1]["status"] == "failed" and "boom" in runs[-1]["error"]
    assert not (tmp_path / "out" / "leaderboard.csv").exists()


def test_thread_count_respects_the_environment_and_affinity(monkeypatch):
    from bench.models import hardware

    monkeypatch.delenv("BENCH_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert hardware.thread_count() == (1, "$OMP_NUM_THREADS")
    monkeypatch.setenv("BENCH_THREADS", "3")
    assert hardware.thread_count() == (3, "$BENCH_THREADS")
    monkeypatch.delenv("BENCH_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert hardware.thread_count()[0] == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(hardware.Path, "read_text", lambda self: "max 100000")
    monkeypatch.setattr(hardware, "busy_elsewhere", lambda: 0.0)
    assert hardware.thread_count()[0] == 4
    monkeypatch.setattr(hardware, "busy_elsewhere", lambda: 2.0)  # another process is busy on two cores
    assert hardware.thread_count()[0] == 2


def test_records_carry_the_cpu_model_and_its_bf16_flags(monkeypatch):
    """Timings from sessions on different CPUs (bf16 emulated without avx512_bf16/AMX) must be told apart."""
    from bench.models import hardware
    from bench.reporting.results import machine

    cpuinfo = "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n"
    monkeypatch.setattr(hardware.Path, "read_text", lambda self: cpuinfo)
    m = machine()
    assert m["cpu_model"] == "Test CPU 9000"
    assert m["cpu_flags"]["avx512_bf16"] is True and m["cpu_flags"]["amx_bf16"] is False

    def absent(self):
        raise OSError("no /proc here")
    monkeypatch.setattr(hardware.Path, "read_text", absent)
    assert hardware.cpu_identity()["cpu_flags"] is None  # unknown, not "has none"


def test_the_thread_count_is_decided_per_cell_and_says_how_to_fix_it(toy_dir, tmp_path, monkeypatch, capsys):
    """Issue 23: a run started while another job was busy kept one thread after that job ended."""
    import torch

    from bench.models import hardware

    before = torch.get_num_threads()
    monkeypatch.delenv("BENCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware, "_CHOSEN", None)
    answers = iter([(2, "idle cores (2 of 2 available; 0 busy elsewhere)")]  # (2 -> 1 keeps the test cheap)
                   + [(1, "idle cores (1 of 2 available; 1 busy elsewhere)")] * 5)
    monkeypatch.setattr(hardware, "thread_count", lambda: next(answers))
    cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none", "strip"], [1], get_profile("smoke"))
    try:
        run_grid(cells, tmp_path / "out", progress="lines")
        assert torch.get_num_threads() == 1  # another job started: the next cell left it a core
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert "torch uses 2 threads (idle cores" in err and "re-checked before each cell" in err
    assert "torch threads 2 -> 1 (idle cores (1 of 2" in err and err.count("BENCH_THREADS=N") == 2
    assert err.count("torch threads") == 1  # logged when it changes, not before every cell
    # an explicit count is never second-guessed
    monkeypatch.setenv("BENCH_THREADS", "1")
    monkeypatch.setattr(hardware, "_CHOSEN", None)
    monkeypatch.setattr(hardware, "thread_count", lambda: (1, "$BENCH_THREADS"))
    assert hardware.configure_threads()["threads"] == 1
    monkeypatch.setattr(hardware, "thread_count", lambda: (2, "idle cores"))
    assert hardware.configure_threads(recheck=True) == {"threads": 1, "threads_from": "$BENCH_THREADS",
                                                         "available_cores": hardware.available_cores()}


def test_lines_mode_prints_a_line_per_cell_and_epoch_with_what_remains(toy_dir, tmp_path):
    r = run_cli("-a", "badnets", "-d", "none", "-d", "strip", "--dataset", str(toy_dir), *SMOKE,
                "--set", "profile.epochs=2", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    out = r.output
    assert "[1/2]" in out and "[2/2]" in out and "epoch 1/2" in out and "epoch 2/2" in out
    assert "left" in out and "CACC" in out and "victim from the cache" in out


def test_compare_across_seeds_and_signs_only_on_deltas(tmp_path):
    cols = ["dataset", "backbone", "attack", "defense", "seed", "poison_rate", "label_regime", "target_label",
            "profile", "settings", "cacc", "asr"]
    a = pd.DataFrame([["d", "b", "x", "none", s, 0.1, "dirty", 1, "cpu", "", 0.80, 0.9] for s in (1, 2)], columns=cols)
    b = pd.DataFrame([["d", "b", "x", "none", s, 0.1, "dirty", 1, "cpu", "", 0.82, 0.5] for s in (3, 4, 5)],
                     columns=cols)
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    plain = runner.invoke(app, ["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--fail-on-regression",
                                "1"])
    assert plain.exit_code == 1 and "share no cell" in plain.output and "--across-seeds" in plain.output
    seeds = runner.invoke(app, ["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--across-seeds",
                                "--fail-on-regression", "1"])
    assert seeds.exit_code == 0, seeds.output
    assert "80.00" in seeds.output and "+80.00" not in seeds.output and "-40.00" in seeds.output
    assert "+2.00" in seeds.output


def test_list_shows_the_settings_the_profile_gives(tmp_path):
    r = runner.invoke(app, ["list"])
    assert "reference_size=384" in r.output  # the cpu profile's MuScleLoRA reference rows, not the class default
    paper = runner.invoke(app, ["list", "--profile", "paper"])
    assert "reference_size=384" not in paper.output


def test_the_grid_estimate_comes_from_measured_step_costs(toy_dir):
    from bench.data import load_csv_folder
    from bench.runner import GridClock, _expected_steps

    prof = get_profile("smoke")
    cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets", "addsent"], ["none", "strip", "lora"], [1], prof)
    data = load_csv_folder(toy_dir)
    steps = {id(c): _expected_steps(c, data) for c in cells}
    assert GridClock(cells, steps).remaining() is None  # nothing measured: no made-up estimate
    known = {"row": {"defense": "none", "sec_per_step": 0.5, "train_seconds": 30.0, "victim_trained_here": True},
             "training": {"steps": 60}, "provenance": {"wall_seconds": 40.0}}
    clock = GridClock(cells, steps, known=[known])
    # every cell trains here (60 steps at 0.5 s: lora has no rate of its own yet, so the measured mean)
    # plus 10 s of evaluation each (the one measured evaluation stands in for the others)
    assert clock.remaining() == pytest.approx(6 * 60 * 0.5 + 6 * 10.0)
    lora = {"row": {"defense": "lora", "sec_per_step": 0.1, "train_seconds": 6.0, "victim_trained_here": True},
            "training": {"steps": 60}, "provenance": {"wall_seconds": 6.0}}
    clock.observe_record(lora)
    for c in cells[:4]:
        clock.observe_cell(c)
    left = [c for c in cells[4:]]
    # strip, not measured yet: the median of the measured post-training defenses (none), not the mean
    # over all (lora's 0 s evaluation says nothing about an inference-time defense)
    evaluation = {"none": 10.0, "lora": 0.0, "strip": 10.0}
    assert clock.remaining() == pytest.approx(
        sum(steps[id(c)] * (0.1 if c.defense.name == "lora" else 0.5) + evaluation[c.defense.name] for c in left))
    # one slow inference-time defense is not charged to the others: with onion measured at 600 s and
    # none and rap at 10 s, strip's prior is their median (10 s, where the mean would be 207 s), and
    # lora keeps its own 0 s
    for name, wall in (("onion", 600.0), ("rap", 10.0)):
        clock.observe_record({"row": {"defense": name, "victim_trained_here": False},
                              "provenance": {"wall_seconds": wall}})
    assert clock._eval_estimate("strip") == 10.0 and clock._eval_estimate("lora") == 0.0


def test_the_estimate_charges_an_inference_defense_per_test_input(toy_dir):
    """ONION measured on 450 inputs costs six times as much on 2,700 (the held-out dataset of issue 24,
    where the estimate said 22 min and ONION alone took 45)."""
    from bench.data import load_csv_folder
    from bench.runner import GridClock, _expected_inputs

    prof = get_profile("smoke")
    cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["onion", "strip"], [1], prof)
    data = load_csv_folder(toy_dir)
    assert _expected_inputs(cells[0], data) == 80 + 40  # 80 clean test rows, 40 of them not of the target
    onion = {"row": {"defense": "onion", "victim_trained_here": False, "n_test_clean": 300, "n_test_poison": 150},
             "provenance": {"wall_seconds": 450.0}}
    clock = GridClock(cells, {id(c): 0 for c in cells}, known=[onion], inputs={id(c): 2700 for c in cells})
    assert clock._eval_estimate("onion") == pytest.approx(1.0)
    # strip has no rate yet: the median over measured post-training defenses (onion's 1 s per input)
    assert clock.remaining() == pytest.approx(2700 * 1.0 * 2)
    clock.observe_cell(cells[0])
    assert clock.remaining() == pytest.approx(2700.0)


def test_keep_going_logs_a_failing_cell_and_runs_the_others(toy_dir, tmp_path, monkeypatch):
    from bench import runner as runner_mod

    prof = get_profile("smoke")
    cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none", "lora"], [1], prof)
    real = runner_mod.Evaluator.run_cell

    def lora_breaks(self, cell, **k):
        if cell.defense.name == "lora":
            raise RuntimeError("lora broke")
        return real(self, cell, **k)

    monkeypatch.setattr(runner_mod.Evaluator, "run_cell", lora_breaks)
    out = tmp_path / "out"
    summary = run_grid(cells, out, progress=False, keep_going=True)
    assert summary["ran"] == 1 and [f["error"] for f in summary["failed"]] == ["RuntimeError: lora broke"]
    assert [r["row"]["defense"] for r in runner_mod.load_records(out)] == ["none"]
    assert not any((out / "claims").glob("*.json"))  # the failed cell's claim was released: a rerun retries it
    lines = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    failed = [x for x in lines if x["event"] == "cell_failed"]
    assert len(failed) == 1 and "lora broke" in failed[0]["traceback"] and lines[-1]["cells_failed"] == 1
    with pytest.raises(RuntimeError, match="lora broke"):  # without --keep-going the first failure stops the run
        run_grid(cells, tmp_path / "out2", progress=False)


def test_a_copied_tree_states_the_commit_it_came_from(monkeypatch, tmp_path):
    from bench.reporting import results

    monkeypatch.setenv("BENCH_SOURCE_COMMIT", "abc123")  # wins over this checkout's own git
    monkeypatch.setenv("BENCH_SOURCE_DIRTY", "1")
    assert results.git_state() == {"commit": "abc123", "dirty": True, "from": "BENCH_SOURCE_COMMIT"}
    monkeypatch.setattr(results, "PROJECT_ROOT", tmp_path)  # no git checkout here
    monkeypatch.setenv("BENCH_SOURCE_DIRTY", "0")
    assert results.git_state() == {"commit": "abc123", "dirty": False, "from": "BENCH_SOURCE_COMMIT"}
    monkeypatch.delenv("BENCH_SOURCE_COMMIT")
    assert results.git_state()["commit"] == "unknown"


def test_runs_of_one_command_are_one_line_of_the_leaderboard(tmp_path):
    from bench.reporting.results import append_run, run_notes

    for i in range(3):  # three processes sharing the folder
        append_run(tmp_path, {"event": "started", "run_id": f"r{i}", "command": "bench run x", "pid": os.getpid(),
                              "host": os.uname().nodename, "git": {"commit": "abc"}})
        append_run(tmp_path, {"event": "finished", "run_id": f"r{i}", "command": "bench run x", "cells_run": i + 1,
                              "wall_seconds": 60.0 * (i + 1), "git": {"commit": "abc"}})
    append_run(tmp_path, {"event": "started", "run_id": "other", "command": "bench run y", "pid": os.getpid(),
                          "host": os.uname().nodename, "git": {"commit": "abc"}})
    append_run(tmp_path, {"event": "finished", "run_id": "other", "command": "bench run y", "cells_run": 1,
                          "git": {"commit": "abc"}})
    notes = run_notes(tmp_path)
    assert len(notes) == 2
    assert notes[0].startswith("`bench run x` ran 3 times") and "6 cells run in all" in notes[0]
    assert "3 finished" in notes[0] and "the longest run 3.0 min" in notes[0]
    assert notes[1].startswith("run `bench run y`: 1 cells run")


def test_cells_run_in_all_counts_the_records_of_killed_runs(tmp_path):
    """Issue 23: killed runs write no end line; the leaderboard said 4 cells run where 8 were computed."""
    from bench.reporting.results import append_run, run_notes, write_json_atomic

    for i in range(4):  # two killed runs, two finished ones, of one command
        append_run(tmp_path, {"event": "started", "run_id": f"r{i}", "command": "bench run x",
                              "pid": 2 ** 22 + 12345, "host": os.uname().nodename, "git": {"commit": "abc"}})
        if i >= 2:
            append_run(tmp_path, {"event": "finished", "run_id": f"r{i}", "command": "bench run x", "cells_run": 2,
                                  "git": {"commit": "abc"}})
        for j in range(2):
            write_json_atomic(tmp_path / "records" / f"c{i}{j}.json",
                              {"key": f"c{i}{j}", "row": {}, "config": {}, "provenance": {"run_id": f"r{i}"}})
    notes = run_notes(tmp_path)
    assert "8 cells run in all" in notes[0], notes
    (tmp_path / "runs.jsonl").write_text("\n".join((tmp_path / "runs.jsonl").read_text().splitlines()[:1]) + "\n")
    assert "no end line (running when this was written, or killed) after 2 cells" in run_notes(tmp_path)[0]


def test_precision_auto_is_fp32_on_every_device_and_bf16_only_when_asked():
    """fp32 is the default so that records compare across machines (docs/cost.md): `auto` must never
    switch bf16 on, not even on a GPU."""
    import contextlib

    import torch

    from bench.models.training import autocast

    for kind in ("cpu", "cuda", "mps"):
        for precision in ("auto", "fp32"):
            assert isinstance(autocast(torch.device(kind), precision), contextlib.nullcontext), (kind, precision)
    ctx = autocast(torch.device("cpu"), "bf16")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


def test_the_estimate_charges_clean_only_one_training_per_dataset_and_seed(toy_dir):
    """clean-only's victim serves every attack (it keeps no poisoned row): three attacks, one training each
    seed; lora trains once per attack."""
    from bench.runner import DataCache, estimate

    cells = plan([str(toy_dir)], ["tiny-bert"], ["badnets", "addsent", "style"], ["clean-only", "lora"], [1, 2],
                 get_profile("smoke"))
    clock = estimate(cells, DataCache(), [])
    trained = {(c.defense.name, c.attack.name, c.seed) for c in cells if clock.steps[id(c)] > 0}
    assert {(d, s) for d, _, s in trained if d == "clean-only"} == {("clean-only", 1), ("clean-only", 2)}
    assert len([t for t in trained if t[0] == "clean-only"]) == 2 and len([t for t in trained if t[0] == "lora"]) == 6
