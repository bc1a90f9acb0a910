"""A battery of malformed inputs (issue 9): every option and every file the CLI reads.

Each case asserts
  (a) the exit code (user errors exit 2; ``compare --fail-on-regression`` exits non-zero when the gate fails),
  (b) no Python traceback: no exception escapes the command, and "Traceback" is not printed,
  (c) the message names the problem and the fix (key words of both, matched case-insensitively; a tuple
      means "any of these"),
and, for the commands that write results (run, fourier, cost, leaderboard), that a failing command
leaves its --out folder as it found it: no record, no leaderboard, no partial output (a line in
runs.jsonl saying that the run failed is allowed).

Every case is fast: the smoke profile, the tiny-bert backbone and the toy dataset of conftest, and
inputs that should fail before any training (a few that the code accepts today train one smoke cell).

Layout of a case: (command line, files to create, expected exit code(s), expected key words).
In the command line ``{tmp}`` is the test's temporary folder, which is also the working directory, so
relative paths (``d``, ``out``, ``./nope/olid``) are inside it. Files: a relative path mapped to text,
bytes, ``TOY`` (the conftest toy dataset), ``DIR`` (an empty folder) or ``None`` (delete).
"""

from __future__ import annotations

import json
import re
import traceback
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from conftest import write_toy_dataset

# click >= 8.2 has no mix_stderr: result.output holds stdout and stderr interleaved, as a terminal shows them
runner = CliRunner()

TOY = object()  # the conftest toy dataset in this folder
DIR = object()  # an empty folder

# a smoke run on the toy dataset in ./d, one cell (badnets x none, tiny-bert by the smoke profile)
R = ["run", "--profile", "smoke", "--no-progress", "--out", "out"]
CELL = ["-a", "badnets", "-d", "none"]
DATA = ["--dataset", "d"]
TOYD = {"d": TOY}
# fourier and cost default to the minilm backbone and sst2: name the tiny ones
F = ["fourier", "--profile", "smoke", "-b", "tiny-bert", *DATA, "-d", "none"]
C = ["cost", "--profile", "smoke", "-b", "tiny-bert"]


def run(*extra, data=True):
    return [*R, *CELL, *(DATA if data else []), *extra]


def rows(labels, words=("good film", "bad film")):
    """A CSV split (text,label) with one row per label given."""
    return "text,label\n" + "".join(f"{words[i % 2]} {i},{lab}\n" for i, lab in enumerate(labels))


def toy_with(**splits):
    """The toy dataset in ./d with some split files replaced (None: removed)."""
    return {"d": TOY, **{f"d/{k}.csv": v for k, v in splits.items()}}


# A dataset whose test split holds only the target label: today it fails in the cell's data step, before
# any training. The cases that check an option which must be validated up front use it so that, until
# that check exists, they fail fast on the data instead of training cells first.
TRIPWIRE = toy_with(test=rows([1] * 80))

# --- leaderboards and records --------------------------------------------------------------------
LB_HEADER = "dataset,backbone,attack,defense,seed,poison_rate,label_regime,target_label,profile,settings,cacc,asr\n"
LB_A = LB_HEADER + "sst2,minilm,badnets,none,1,0.1,clean-label,1,cpu,,0.9,0.5\n"
LB_B_OTHER_SEED = LB_HEADER + "sst2,minilm,badnets,none,2,0.1,clean-label,1,cpu,,0.9,0.5\n"
LB_BAD_NUMBER = LB_HEADER + "sst2,minilm,badnets,none,1,0.1,clean-label,1,cpu,,high,0.5\n"
ROW = {"dataset": "sst2", "backbone": "minilm", "attack": "badnets", "defense": "none", "seed": 1, "cacc": 0.9,
       "asr": 0.5, "key": "k1"}
REC_NO_PROVENANCE = json.dumps({"key": "k1", "row": ROW, "config": {"seed": 1}})
REC_NO_CONFIG = json.dumps({"key": "k1", "row": ROW, "provenance": {"git": {"commit": "abc"}, "command": ""}})

DUP_PLUGIN = (
    "from bench import register\nfrom bench.defense import Defense\n\n"
    "@register('defense', 'lora')\nclass Mine(Defense):\n    '''Clashes with the built-in lora.'''\n"
)
EMPTY_PLUGIN = "x = 1\n"

GONE = ("does not exist", "no such")  # how a missing path is named (the issue asks "does not exist" for
# dataset and backbone paths, which must not be taken for hub ids)

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")

CASES = [
    # --- unknown names: "did you mean" -----------------------------------------------------------
    pytest.param(run("-a", "badnet"), TOYD, 2, ["badnet", "did you mean", "badnets"], id="attack-typo"),
    pytest.param(run("-d", "lor"), TOYD, 2, ["lor", "did you mean", "lora"], id="defense-typo"),
    pytest.param(run("--dataset", "sst", data=False), {}, 2, ["sst", "did you mean", "sst2"], id="dataset-typo"),
    pytest.param(run("-b", "tiny-bertt"), TOYD, 2, ["tiny-bertt", "did you mean", "tiny-bert"], id="backbone-typo"),
    # a typo in the second backbone of a grid must fail before the first cell trains
    pytest.param(run("-b", "tiny-bert", "-b", "tiny-bertt"), TOYD, 2, ["tiny-bertt", "did you mean", "tiny-bert"],
                 id="backbone-typo-in-grid-fails-before-training"),
    pytest.param(run("--profile", "gpu"), TOYD, 2, ["gpu", "did you mean", "cpu", "smoke"], id="profile-typo"),
    pytest.param(["fourier", "-a", "badnet"], {}, 2, ["badnet", "did you mean", "badnets"], id="fourier-attack-typo"),
    pytest.param(["cost", "-a", "badnet", "--profile", "smoke"], {}, 2, ["badnet", "did you mean", "badnets"],
                 id="cost-attack-typo"),
    pytest.param(run("--epochs", "3"), TOYD, 2, ["no such option", "--epochs"], id="unknown-option"),
    # --- --set -----------------------------------------------------------------------------------
    pytest.param(run("-d", "lora", "--set", "lroa.r=4"), TOYD, 2, ["lroa", "did you mean", "lora"],
                 id="set-plugin-typo"),
    pytest.param(run("--set", "lora.r=4"), TOYD, 2, ["lora", "not among the selected"], id="set-plugin-not-selected"),
    pytest.param(run("-d", "lora", "--set", "lora.rank=4"), TOYD, 2, ["rank", "valid settings", "alpha"],
                 id="set-key-unknown"),
    pytest.param(run("-d", "lora", "--set", "lora.r=abc"), TOYD, 2, ["lora.r", "abc", "integer"],
                 id="set-value-wrong-type"),
    pytest.param(run("-d", "lora", "--set", "lora.r=4.5"), TOYD, 2, ["lora.r", "4.5", "integer"],
                 id="set-value-not-integer"),
    pytest.param([*R, "-a", "badnets", "-d", "lora", *DATA, "--set", "lora.r=-1"], TOYD, 2, ["lora.r", "-1"],
                 id="set-value-negative-rank"),
    pytest.param(run("--set", "lora"), TOYD, 2, ["'lora'", "PLUGIN.KEY=VALUE"], id="set-no-equals"),
    pytest.param(run("--set", ".r=4"), TOYD, 2, [".r=4", "PLUGIN.KEY=VALUE"], id="set-empty-plugin"),
    pytest.param(run("--set", "badnets.label_regime=dirty-label"), TOYD, 2, ["dirty-label", "clean-label"],
                 id="set-literal-invalid"),
    pytest.param(run("--set", "badnets.num_triggers=0"), TOYD, 2, ["num_triggers", ">= 1"], id="set-attack-check"),
    pytest.param(run("-d", "strip", "--set", "strip.frr=1.5"), TOYD, 2, ["strip.frr", "1.5", "[0, 1)"],
                 id="set-defense-check"),
    pytest.param([*R, "-a", "style", "-d", "none", *DATA, "--set", "style.transform=klingon"], TOYD, 2,
                 ["klingon", "bible", "shakespeare"], id="set-style-transform-unknown"),
    # --- --set profile.FIELD ---------------------------------------------------------------------
    pytest.param(run("--set", "profile.nosuch=1"), TOYD, 2, ["nosuch", "valid settings", "epochs"],
                 id="profile-field-unknown"),
    pytest.param(run("--set", "profile.epochs=abc"), TOYD, 2, ["epochs", "abc", "integer"],
                 id="profile-epochs-not-integer"),
    pytest.param(run("--set", "profile.epochs=0"), TOYD, 2, ["profile.epochs", (">= 1", "at least 1", "positive")],
                 id="profile-epochs-0"),
    pytest.param(run("--set", "profile.batch_size=-1"), TOYD, 2,
                 ["profile.batch_size", "-1", (">= 1", "at least 1", "positive")], id="profile-batch-size-negative"),
    pytest.param(run("--set", "profile.test_size=1"), TOYD, 2, ["profile.test_size", (">= 2", "at least 2")],
                 id="profile-test-size-1"),
    pytest.param(run("--set", "profile.clean_size=-1"), TOYD, 2, ["profile.clean_size", "-1", (">= 0", "at least 0")],
                 id="profile-clean-size-negative"),
    pytest.param(run("--set", "profile.max_length=4"), TOYD, 2, ["profile.max_length", "4", (">= 8", "at least 8")],
                 id="profile-max-length-4"),
    pytest.param(run("--set", "profile.train_size=1"), TOYD, 2, ["profile.train_size", (">= 2", "at least 2")],
                 id="profile-train-size-1"),
    pytest.param(run("--set", "profile.learning_rate=-1"), TOYD, 2, ["profile.learning_rate", "-1"],
                 id="profile-learning-rate-negative"),
    pytest.param(run("--set", "profile.device=cuda"), TOYD, 2, ["cuda", "profile.device", ("=cpu", "=auto")],
                 id="profile-device-cuda-without-cuda", marks=NO_CUDA),
    pytest.param(run("--set", "profile.device=tpu"), TOYD, 2, ["tpu", "profile.device", ("cpu", "auto")],
                 id="profile-device-unknown"),
    pytest.param(run("--set", "profile.precision=fp8"), TOYD, 2, ["fp8", "precision", "bf16", "fp32"],
                 id="profile-precision-fp8"),
    pytest.param(run("--set", "profile.stealth_samples=10", "--set", "profile.stealth_lm=./no/such/lm"), TOYD, 2,
                 ["./no/such/lm", GONE], id="profile-stealth-lm-path-missing"),
    # a scorer name is resolved before the first cell (the tripwire data fails before training until it is)
    pytest.param([*R, "-a", "badnets", "-d", "onion", *DATA, "--set", "onion.scorer=tiny-lama"], TRIPWIRE, 2,
                 ["tiny-lama", ("did you mean", "onion.scorer")], id="set-onion-scorer-typo"),
    # --- attack options --------------------------------------------------------------------------
    pytest.param(run("--label-regime", "bogus"), TOYD, 2, ["bogus", "clean-label", "dirty", "mixed"],
                 id="label-regime-bogus"),
    # (--poison-rate 0 is accepted on purpose: a declared clean-model control, its row says 0 poisoned rows)
    pytest.param(run("--poison-rate", "nan"), TOYD, 2, ["nan", ("--poison-rate", "poison_rate"), "[0, 1]"],
                 id="poison-rate-nan"),
    pytest.param(run("--poison-rate", "1.5"), TOYD, 2, ["1.5", ("--poison-rate", "poison_rate"), "[0, 1]"],
                 id="poison-rate-above-1"),
    pytest.param(run("--poison-rate", "-0.1"), TOYD, 2, ["-0.1", ("--poison-rate", "poison_rate"), "[0, 1]"],
                 id="poison-rate-negative"),
    pytest.param(run("--poison-rate", "abc"), TOYD, 2, ["--poison-rate", "number"], id="poison-rate-not-a-number"),
    pytest.param(run("--poison-rate", "0.9"), TOYD, 2, ["0.9", "clean-label", "--poison-rate", "--label-regime"],
                 id="poison-rate-exceeds-pool"),
    pytest.param(run("--target-label", "5"), TOYD, 2, ["5", ("--target-label", "target_label"), "0..1"],
                 id="target-label-out-of-range"),
    pytest.param(run("--target-label", "-1"), TOYD, 2, ["-1", ("--target-label", "target_label"), "0..1"],
                 id="target-label-negative"),
    pytest.param(run("--seed", "-1"), TOYD, 2, ["--seed", "-1", (">= 0", "non-negative", "at least 0")],
                 id="seed-negative"),
    pytest.param(run("--seed", "one"), TOYD, 2, ["--seed", "integer"], id="seed-not-integer"),
    pytest.param([*R, *DATA], TOYD, 2, ["--attack", "--defense", "--all"], id="run-without-cells"),
    pytest.param([*R, *DATA, "-d", "none"], TOYD, 2, ["--attack", "--all"], id="run-without-attack"),
    # --- paths -----------------------------------------------------------------------------------
    pytest.param(["run", *R[1:4], *CELL, *DATA, "--out", "afile"], {**TOYD, "afile": "x"}, 2,
                 ["afile", "--out", ("is a file", "not a folder", "not a directory")], id="out-is-a-file"),
    pytest.param(run("--data-dir", "nowhere", "--dataset", "sst2", data=False), {}, 2, ["nowhere", GONE,
                 "--data-dir"], id="data-dir-missing"),
    pytest.param(run("--data-dir", "afile", "--dataset", "sst2", data=False), {"afile": "x"}, 2,
                 ["afile", "--data-dir", ("not a folder", "is a file", "not a directory", "does not exist")],
                 id="data-dir-is-a-file"),
    pytest.param(run("--dataset", "./nope/olid", data=False), {}, 2, ["./nope/olid", "does not exist"],
                 id="dataset-relative-path-missing"),
    pytest.param(run("--dataset", "{tmp}/x/olid", data=False), {}, 2, ["x/olid", "does not exist"],
                 id="dataset-absolute-path-missing"),
    pytest.param(run("--dataset", "d/train.csv", data=False), TOYD, 2,
                 ["d/train.csv", ("not a folder", "is a file", "not a directory"), "dev.csv"],
                 id="dataset-path-is-a-file"),
    pytest.param(run("-b", "./no/such/model"), TOYD, 2, ["./no/such/model", "does not exist"],
                 id="backbone-path-missing"),
    pytest.param(run("-b", "emptymodel"), {**TOYD, "emptymodel": DIR}, 2, ["emptymodel", "config.json"],
                 id="backbone-folder-without-config"),
    pytest.param(run("--reuse", "/nonexistent-bench-results"), TOYD, 2,
                 ["/nonexistent-bench-results", "--reuse", GONE], id="reuse-missing"),
    pytest.param(run("--reuse", "old"), {**TOYD, "old/records/stray.json": "{}"}, 2,
                 ["stray.json", ("delete", "remove")], id="reuse-folder-with-stray-record"),
    pytest.param(run("--plugins", "missing.py"), TOYD, 2, ["missing.py", GONE], id="plugins-missing"),
    pytest.param(run("--plugins", "p.py"), {**TOYD, "p.py": "def broken(:\n"}, 2,
                 ["p.py", "syntax error", "line 1", "fix"], id="plugins-syntax-error"),
    pytest.param(run("--plugins", "p.py"), {**TOYD, "p.py": "import nosuchmodule_xyz\n"}, 2,
                 ["p.py", "nosuchmodule_xyz", "install"], id="plugins-import-error"),
    pytest.param(run("--plugins", "p.py"), {**TOYD, "p.py": DUP_PLUGIN}, 2, ["'lora'", "registered twice", "rename"],
                 id="plugins-duplicate-name"),
    pytest.param(run("--plugins", "p.py"), {**TOYD, "p.py": EMPTY_PLUGIN}, 2, ["p.py", "registered nothing",
                 "@bench.register"], id="plugins-registers-nothing"),
    pytest.param(run("--plugins", "p.txt"), {**TOYD, "p.txt": "x = 1\n"}, 2, ["p.txt", ".py"],
                 id="plugins-not-a-py-file"),
    pytest.param(["list", "--plugins", "missing.py"], {}, 2, ["missing.py", GONE],
                 id="list-plugins-missing"),
    # --- the dataset folder's files --------------------------------------------------------------
    pytest.param(run(), toy_with(dev=None), 2, ["dev.csv", "missing", "train.csv, dev.csv and test.csv"],
                 id="dataset-dev-csv-missing"),
    pytest.param(run(), {"d": DIR}, 2, ["train.csv", "missing"], id="dataset-folder-empty"),
    pytest.param(run(), toy_with(train=""), 2, ["train.csv", ("empty", "no columns"), "text,label"],
                 id="dataset-train-csv-empty-file"),
    pytest.param(run(), toy_with(test="text,label\n"), 2, ["test.csv", "empty", ("at least one row", "header only")],
                 id="dataset-header-only"),
    pytest.param(run(), toy_with(train="text\ngood film\nbad film\n"), 2, ["train.csv", "label", "text,label"],
                 id="dataset-label-column-missing"),
    pytest.param(run(), toy_with(train="sentence,label\ngood,1\nbad,0\n"), 2, ["train.csv", "text", "text,label"],
                 id="dataset-text-column-missing"),
    pytest.param(run(), toy_with(train=rows([0.5, 1, 0, 1])), 2, ["train.csv", "row 2", "0.5", "integer"],
                 id="dataset-label-float"),
    pytest.param(run(), toy_with(train=rows(["pos", 1, 0, 1])), 2, ["train.csv", "row 2", "'pos'", "integer"],
                 id="dataset-label-string"),
    pytest.param(run(), toy_with(train="text,label\ngood film,1\nbad film\n"), 2, ["train.csv", "row 3", "integer"],
                 id="dataset-label-empty"),
    pytest.param(run(), toy_with(dev=rows([0, 1, -1, 1] * 40)), 2, ["dev.csv", "row 4", "-1", "0..1"],
                 id="dataset-label-negative"),
    pytest.param(run(), toy_with(test=rows([0, 1, 2, 1] * 20)), 2, ["test.csv", "row 4", "2", "0..1"],
                 id="dataset-test-label-beyond-train"),
    pytest.param(run(), {"d/train.csv": rows([0] * 240), "d/dev.csv": rows([0] * 160), "d/test.csv": rows([0] * 80)},
                 2, [("one class", "single class", "one label", "only label"), ("two classes", "2 classes",
                                                                               "at least two", ">= 2")],
                 id="dataset-all-rows-one-class"),
    pytest.param(run(), toy_with(train=rows([1] * 240)), 2,
                 [("train.csv", "train split", "training split"), ("one class", "single class", "one label",
                                                                   "only label")],
                 id="dataset-train-has-one-class"),
    pytest.param(run(), toy_with(test=rows([1] * 80)), 2,
                 [("test.csv", "test split"), "label 1", ("--target-label", "target_label")],
                 id="dataset-test-only-target-class"),
    pytest.param(run(), toy_with(test=rows([1, 1, 1, 0])), 2,
                 [("test.csv", "test split"), ("too few", "too small", "only 1", "at least", "larger")],
                 id="dataset-test-split-of-4-rows"),
    pytest.param(run(), toy_with(dev=rows([0, 1] * 10)), 2, ["dev", "20 rows", "profile.clean_size"],
                 id="dataset-dev-too-small-for-clean-rows"),
    pytest.param(run(), {"d": TOY, "d/train.csv": b"text,label\ncaf\xe9 good,1\nbad,0\n"}, 2, ["train.csv", "utf-8"],
                 id="dataset-not-utf8"),
    pytest.param(run(), toy_with(train="text,label\ngood film,1\nbad, really bad film,0\n"), 2,
                 ["train.csv", ("line 3", "row 3"), "quote"], id="dataset-ragged-rows"),
    # issue 23: no silent wrong data
    pytest.param(run(), toy_with(train="text,label,label\ngood film,1,0\nbad film,0,1\n"), 2,
                 ["train.csv", "'label'", "rename or drop"], id="dataset-repeated-column-name"),
    pytest.param(run(), toy_with(train=rows([0, 1] * 100 + [7])), 2,
                 ["train.csv", "row 202 has label 7", "7 (1 row)", "renumber the labels 0..k-1"],
                 id="dataset-stray-label-in-train"),
    pytest.param(run(), toy_with(train=rows([1, 2] * 100)), 2, ["train.csv", "class 0", "renumber the labels 0..k-1"],
                 id="dataset-labels-numbered-from-1"),
    pytest.param(run(), toy_with(train=rows([0, 1] * 100), test=rows([0, 1] * 40)), 2,
                 ["test.csv", "train.csv", "held out"], id="dataset-test-inside-train"),
    pytest.param(run(), toy_with(train=rows([0, 1] * 100), dev=rows([0, 1] * 100)), 2,
                 ["dev.csv", "train.csv", "held out"], id="dataset-dev-identical-to-train"),
    pytest.param([*R, "-a", "syntactic", "-d", "none", *DATA], {"d": TOY, "d/paraphrases/scpn.csv": None},
                 2, ["scpn", "paraphrases", "text,paraphrase"], id="paraphrase-table-missing"),
    pytest.param([*R, "-a", "syntactic", "-d", "none", *DATA],
                 {"d": TOY, "d/paraphrases/scpn.csv": "text,para\na,b\n"}, 2,
                 ["scpn.csv", "paraphrase", "text,paraphrase"], id="paraphrase-table-missing-column"),
    pytest.param([*R, "-a", "style", "-d", "none", *DATA, "--set", "style.generator=./no/such/model"],
                 {"d": TOY, "d/paraphrases/bible.csv": None}, 2, ["./no/such/model", GONE],
                 id="paraphrase-generator-path-missing"),
    # --- records/ ----------------------------------------------------------------------------------
    pytest.param(["leaderboard", "--out", "out"], {"out/records/bad.json": "{}"}, 2, ["bad.json", ("delete", "remove")],
                 id="leaderboard-record-empty-object"),
    pytest.param(["leaderboard", "--out", "out"], {"out/records/bad.json": "[1, 2]"}, 2,
                 ["bad.json", ("delete", "remove")], id="leaderboard-record-is-a-list"),
    pytest.param(["leaderboard", "--out", "out"], {"out/records/bad.json": "{not json"}, 2,
                 ["bad.json", "not valid JSON", "delete"], id="leaderboard-record-invalid-json"),
    pytest.param(["leaderboard", "--out", "out"], {"out/records/bad.json": REC_NO_PROVENANCE}, 2,
                 ["bad.json", "provenance", ("delete", "remove")], id="leaderboard-record-missing-provenance"),
    # tolerated by design: a line of runs.jsonl cut by a kill must not stop the leaderboard from being rebuilt
    pytest.param(["leaderboard", "--out", "out"], {"out/records": DIR, "out/runs.jsonl": "not json\n[1]\n"}, 0,
                 ["# Leaderboard"], id="leaderboard-runs-jsonl-corrupt-is-tolerated"),
    pytest.param(["leaderboard", "--out", "out"], {}, 2, ["out", "records/", "bench run --out"],
                 id="leaderboard-without-records"),
    pytest.param(run(), {**TOYD, "out/records/bad.json": "{}"}, 2, ["bad.json", ("delete", "remove")],
                 id="run-into-folder-with-empty-object-record"),
    pytest.param(run(), {**TOYD, "out/records/bad.json": "[1, 2]"}, 2, ["bad.json", ("delete", "remove")],
                 id="run-into-folder-with-list-record"),
    pytest.param(run(), {**TOYD, "out/records/bad.json": "{not json"}, 2, ["bad.json", "not valid JSON", "delete"],
                 id="run-into-folder-with-invalid-json-record"),
    pytest.param(run(), {**TOYD, "out/records/bad.json": REC_NO_CONFIG}, 2,
                 ["bad.json", "config", ("delete", "remove")], id="run-into-folder-with-record-missing-config"),
    # --- compare -----------------------------------------------------------------------------------
    pytest.param(["compare", "nope.csv", "a.csv"], {"a.csv": LB_A}, 2, ["nope.csv", "leaderboard.csv"],
                 id="compare-file-missing"),
    pytest.param(["compare", "a.csv", "img.csv"], {"a.csv": LB_A, "img.csv": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00"},
                 2, ["img.csv", ("cannot be read", "not a csv")], id="compare-not-a-csv"),
    pytest.param(["compare", "a.csv", "e.csv"], {"a.csv": LB_A, "e.csv": ""}, 2, ["e.csv", "cannot be read"],
                 id="compare-empty-file"),
    pytest.param(["compare", "a.csv", "x.csv"], {"a.csv": LB_A, "x.csv": "a,b\n1,2\n"}, 2,
                 ["x.csv", "missing column", "leaderboard.csv"], id="compare-missing-columns"),
    pytest.param(["compare", "a.csv", "dup.csv"], {"a.csv": LB_A, "dup.csv": LB_A + LB_A.splitlines()[1] + "\n"}, 2,
                 ["dup.csv", "duplicate"], id="compare-duplicate-cells"),
    pytest.param(["compare", "a.csv", "n.csv"], {"a.csv": LB_A, "n.csv": LB_BAD_NUMBER}, 2,
                 ["n.csv", "cacc", ("number", "numeric")], id="compare-non-numeric-metric"),
    pytest.param(["compare", "a.csv", "out"], {"a.csv": LB_A, "out": DIR}, 2, ["out", "leaderboard.csv"],
                 id="compare-a-folder"),
    pytest.param(["compare", "a.csv", "b.csv", "--fail-on-regression", "1"], {"a.csv": LB_A, "b.csv": LB_B_OTHER_SEED},
                 (1, 2), [("no cell in common", "share no", "no common", "compared nothing", "nothing to compare")],
                 id="compare-gate-with-no-shared-cell-fails"),
    pytest.param(["compare", "a.csv", "a.csv", "--fail-on-regression", "-1"], {"a.csv": LB_A}, 2,
                 ["--fail-on-regression", "-1", (">= 0", "non-negative", "at least 0")],
                 id="compare-negative-threshold"),
    pytest.param(["compare", "a.csv", "a.csv", "--fail-on-regression", "lots"], {"a.csv": LB_A}, 2,
                 ["--fail-on-regression", "number"], id="compare-threshold-not-a-number"),
    pytest.param(["compare", "a.csv"], {"a.csv": LB_A}, 2, ["missing argument", "B"], id="compare-one-file"),
    # --- cache ---------------------------------------------------------------------------------------
    pytest.param(["cache", "clear", "NOSUCHKEY", "--yes"], {}, 2, ["NOSUCHKEY", "bench cache list"],
                 id="cache-clear-unknown-key"),
    # --- fourier and cost ----------------------------------------------------------------------------
    pytest.param([*F, "--out", "fout", "--samples", "0"], TOYD, 2,
                 ["--samples", "0", (">= 1", "at least 1", "at least 2", "positive")], id="fourier-samples-0"),
    pytest.param([*F, "--out", "fout", "--samples", "-5"], TOYD, 2,
                 ["--samples", "-5"], id="fourier-samples-negative"),
    pytest.param([*F, "--out", "fout", "--every", "0"], TOYD, 2,
                 ["--every", "0", (">= 1", "at least 1", "positive")], id="fourier-every-0"),
    pytest.param([*F, "--out", "afile"], {**TRIPWIRE, "afile": "x"}, 2,
                 ["afile", "--out", ("is a file", "not a folder", "not a directory")], id="fourier-out-is-a-file"),
    pytest.param([*F, "--out", "fout", "--set", "profile.epochs=0"],
                 TOYD, 2, ["profile.epochs", (">= 1", "at least 1")], id="fourier-profile-epochs-0"),
    pytest.param([*C, *DATA, "--out", "cout", "--refresh", "0"], TOYD, 2,
                 [("--refresh", "refresh_every"), ">= 1"], id="cost-refresh-0"),
    pytest.param([*C, *DATA, "--out", "cout", "--refresh", "1", "--reuse",
                  "/nonexistent-bench-results"], TRIPWIRE, 2,
                 ["/nonexistent-bench-results", "--reuse", GONE], id="cost-reuse-missing"),
    pytest.param([*C, "--dataset", "./nope/olid", "--out", "cout"], {}, 2,
                 ["./nope/olid", "does not exist"], id="cost-dataset-path-missing"),
]


def _make(tmp: Path, files: dict) -> None:
    for rel, content in files.items():
        p = tmp / rel
        if content is TOY:
            write_toy_dataset(p)
        elif content is DIR:
            p.mkdir(parents=True, exist_ok=True)
        elif content is None:
            p.unlink()
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)


@pytest.fixture(autouse=True)
def _fresh_reporter():
    """Each case starts with the process's default (silent) progress reporter, so that a command which
    leaves its reporter behind fails test_a_failed_run_leaves_no_reporter_behind, not every later case."""
    try:
        from bench.engine import progress
    except ImportError:  # before progress reporting existed
        yield
        return
    previous = progress.use(progress.Reporter("off"))
    yield
    progress.use(previous)


def _out_dir(args: list[str], tmp: Path) -> Path | None:
    """The folder a run, fourier, cost or leaderboard command writes into (its --out)."""
    if args[0] not in ("run", "fourier", "cost", "leaderboard"):
        return None
    for flag in ("--out", "-o"):
        if flag in args:
            return tmp / args[args.index(flag) + 1]
    return None


def _snapshot(folder: Path | None) -> dict:
    if folder is None or not folder.exists():
        return {}
    if folder.is_file():
        return {folder: folder.read_bytes()}
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _plain(output: str) -> str:
    """The output as one line of words: typer's boxed errors wrap at 80 columns, mid-phrase."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", output).split()).lower()


def _has(output: str, expected) -> bool:
    alternatives = expected if isinstance(expected, tuple) else (expected,)
    return any(" ".join(a.lower().split()) in _plain(output) for a in alternatives)


def check(args, files, exit_code, expected, tmp_path, monkeypatch, env=None):
    monkeypatch.chdir(tmp_path)
    _make(tmp_path, files)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out_dir = _out_dir(args, tmp_path)
    before = _snapshot(out_dir)
    r = runner.invoke(app, args, env=env)
    shown = r.output[-1500:]
    # (b) no traceback: nothing escaped the command (CliRunner catches it and would not print it), none printed
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        tb = "".join(traceback.format_exception(type(r.exception), r.exception, r.exception.__traceback__)[-3:])
        pytest.fail(f"uncaught {type(r.exception).__name__} (a traceback for the user):\n{tb}\noutput:\n{shown}")
    assert "Traceback" not in r.output, shown
    # (a) the exit code
    codes = exit_code if isinstance(exit_code, tuple) else (exit_code,)
    assert r.exit_code in codes, f"exit {r.exit_code}, expected {exit_code}; output:\n{shown}"
    # (c) the problem and the fix are named
    missing = [e for e in expected if not _has(r.output, e)]
    assert not missing, f"message lacks {missing}; output:\n{shown}"
    for raw in ("np.float64(", "np.int64(", "PosixPath("):  # values shown as the user wrote them
        assert raw not in r.output, shown
    # a command that failed wrote nothing into its results folder (no record, no leaderboard, no partial
    # output); a line in runs.jsonl saying that the run failed is allowed
    if r.exit_code != 0:
        after = _snapshot(out_dir)
        new = sorted(str(p.relative_to(tmp_path)) for p in after
                     if before.get(p) != after[p] and p.name != "runs.jsonl")
        assert not new, f"a failed command wrote {new}; output:\n{shown}"
    return r


@pytest.mark.parametrize("args, files, exit_code, expected", CASES)
def test_malformed_input(args, files, exit_code, expected, tmp_path, monkeypatch):
    check(args, files, exit_code, expected, tmp_path, monkeypatch)


def test_data_dir_from_the_environment_that_does_not_exist(tmp_path, monkeypatch):
    check(run("--dataset", "sst2", data=False), {}, 2, ["nowhere", GONE, "BENCH_DATA_DIR"], tmp_path,
          monkeypatch, env={"BENCH_DATA_DIR": str(tmp_path / "nowhere")})


def test_a_failed_run_leaves_no_reporter_behind(tmp_path, monkeypatch):
    """A run installs a progress reporter on the CLI's stream; when the run fails it must put the previous
    one back, or the next command in the same process prints to a closed stream (a traceback)."""
    progress = pytest.importorskip("bench.engine.progress")
    before = progress.current()
    check(run(), toy_with(train=rows(["pos", 1, 0, 1])), 2, ["'pos'"], tmp_path, monkeypatch)
    assert progress.current() is before, "bench run left its progress reporter installed after failing"


def test_the_battery_is_large_enough():
    assert len(CASES) + 1 >= 60
