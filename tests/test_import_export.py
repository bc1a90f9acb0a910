"""Imported poisoned data (the attack `file`), `bench export`, and paraphrase tables with partial coverage.

The toy dataset (conftest) has 240 training rows; BadNets at rate 0.1 poisons 24 of them. Files are
written the way OpenBackdoor writes them: clean rows first, poisoned rows appended (so an importer
cannot rely on row alignment with the clean split).
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from bench import registry
from bench.attack import AttackError
from bench.config import build_config
from bench.data import load_csv_folder
from bench.engine.profiles import get_profile
from bench.runner import DataCache, _digest, _filter_stats, plan, prepare, run_cell, victim_identity

from attacks.imported import folder_files, musclelora_release, read_rows


def make(name, **settings):
    cls = registry.get("attack", name)
    return cls(build_config(cls.Config, settings, owner=name))


def write_ob(path, texts, labels, flags=None, index=True, header=True):
    """A CSV as OpenBackdoor writes it (pandas: header ,0,1,2 with the index column)."""
    cols = [list(texts), [int(v) for v in labels]] + ([[int(v) for v in flags]] if flags is not None else [])
    pd.DataFrame({i: c for i, c in enumerate(cols)}).to_csv(path, index=index, header=header)
    return path


def poisoned_folder(tmp_path, data, regime="clean-label", flags=True, clean=True, name=None):
    """A folder in OpenBackdoor's layout made from BadNets on the toy data: (folder, the attack's output)."""
    p = make("badnets", label_regime=regime, poison_rate=0.1).poison(data, 1)
    f = np.array(p.train["poisoned"])
    order = np.argsort(f, kind="stable")  # clean rows first, then the poisoned ones (as OpenBackdoor)
    folder = tmp_path / (name or f"pois-{regime}-{int(flags)}{int(clean)}")
    folder.mkdir()
    write_ob(folder / "train-poison.csv", np.array(p.train["text"])[order], np.array(p.train["label"])[order],
             f[order] if flags else None)
    if clean:
        write_ob(folder / "train-clean.csv", data.train["text"], data.train["label"], [0] * len(data.train))
    write_ob(folder / "test-poison.csv", p.test_poison["text"], p.test_poison["label"], [1] * len(p.test_poison))
    return folder, p


# --- parsing --------------------------------------------------------------------------------------

ROWS = (["a fine, quiet film", 'he said "no" twice', "12", "cf the plot mn"], [1, 0, 1, 1], [0, 0, 0, 1])


@pytest.mark.parametrize("variant", ["index+header", "header", "index", "bare", "named", "named-poison_label"])
def test_openbackdoor_csv_variants_read_the_same(variant, tmp_path):
    texts, labels, flags = ROWS
    path = tmp_path / "f.csv"
    if variant.startswith("named"):
        col = "poisoned" if variant == "named" else "poison_label"
        pd.DataFrame({"text": texts, "label": labels, col: flags}).to_csv(path, index=False)
    else:
        write_ob(path, texts, labels, flags, index="index" in variant, header="header" in variant)
    if variant == "index+header":
        assert path.read_text().splitlines()[0] == ",0,1,2"
    rows, fmt = read_rows(path)
    assert rows["text"].tolist() == texts and rows["label"].tolist() == labels
    assert rows["poisoned"].tolist() == flags, fmt


def test_files_without_flags_read_as_text_and_label(tmp_path):
    texts, labels, _ = ROWS
    for index, header in ((True, True), (False, True), (True, False), (False, False)):
        path = write_ob(tmp_path / f"f{index}{header}.csv", texts, labels, index=index, header=header)
        rows, fmt = read_rows(path)
        assert rows["text"].tolist() == texts and rows["label"].tolist() == labels, fmt
        assert "poisoned" not in rows
    path = tmp_path / "plain.csv"
    path.write_text("text,label\nfine film,1\ndull film,0\n")
    assert read_rows(path)[0]["label"].tolist() == [1, 0]


@pytest.mark.parametrize("content, words", [
    (",0,1,2\n0,a film,x,0\n", ["data row 1", "label 'x'", "integer", "header naming"]),
    (",0,1,2\n0,a film,1,0\n1,b film,1,2\n", ["data row 2", "poisoned '2'", "0 or 1"]),
    ("", ["empty"]),
    ("a,b,c,d,e\n1,2,3,4,5\n", ["5 columns", "OpenBackdoor"]),
    ("text,poisoned\na,1\n", ["no label column"]),
])
def test_bad_files_name_the_file_the_problem_and_the_fix(content, words, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(AttackError) as e:
        read_rows(path, "train")
    msg = str(e.value)
    assert str(path) in msg and "file.train" in msg
    for w in words:
        assert w in msg, msg


def test_settings_fail_before_any_training_with_the_fix(tmp_path):
    with pytest.raises(AttackError, match="file.folder=DIR"):
        make("file")
    with pytest.raises(AttackError, match="does not exist"):
        make("file", train=str(tmp_path / "no.csv"), test_poison=str(tmp_path / "no.csv"))
    (tmp_path / "t.csv").write_text("text,label\na,1\n")
    with pytest.raises(AttackError, match="no poisoned test set"):
        make("file", train=str(tmp_path / "t.csv"))
    with pytest.raises(Exception, match="unknown setting 'poison_rate'"):
        make("file", folder=str(tmp_path), poison_rate=0.1)  # the file decides the rate


# --- what the record states --------------------------------------------------------------------

@pytest.mark.parametrize("regime", ["clean-label", "dirty", "mixed"])
def test_import_with_flags_states_the_real_count_rate_and_regime(regime, toy_data, tmp_path):
    folder, original = poisoned_folder(tmp_path, toy_data, regime)
    attack = make("file", folder=str(folder))
    out = attack.poison(toy_data, 1)
    c = out.counts
    assert c["n_train"] == 240 and c["n_poisoned"] == 24 and c["poison_rate"] == 0.1
    assert c["label_regime"] == regime  # derived from the clean rows missing from the file
    assert c["n_poisoned_flipped"] == original.counts["n_poisoned_flipped"]
    assert c["poison_flags"] == "file" and c["train_sampling"] == "whole" and out.target_label == 1
    assert attack.stated(out) == {"poison_rate": 0.1, "label_regime": regime, "trigger_count": None}
    assert sorted(out.train["text"]) == sorted(original.train["text"])
    assert out.test_poison["text"] == original.test_poison["text"]
    assert out.test_clean["text"] == toy_data.test["text"]  # clean test (and dev) from the dataset
    orig_labels = np.array(original.train["orig_label"])[np.array(original.train["poisoned"]) == 1]
    expected = {str(k): int(v) for k, v in zip(*np.unique(orig_labels, return_counts=True))}
    assert c["imported"]["poisoned_from_labels"] == expected


def test_import_with_flags_but_no_clean_split_leaves_the_regime_unknown(toy_data, tmp_path):
    folder, _ = poisoned_folder(tmp_path, toy_data, "mixed", clean=False)
    out = make("file", folder=str(folder)).poison(toy_data, 1)
    assert out.counts["n_poisoned"] == 24 and out.counts["poison_rate"] == 0.1
    assert out.counts["label_regime"] is None and out.counts["n_poisoned_flipped"] is None


def test_import_without_flags(toy_data, toy_dir, tmp_path):
    folder, original = poisoned_folder(tmp_path, toy_data, "mixed", flags=False, clean=False)
    train, test = str(folder / "train-poison.csv"), str(folder / "test-poison.csv")
    # nothing to derive from: unknown, never 0
    out = make("file", train=train, test_poison=test).poison(toy_data, 1)
    c = out.counts
    assert c["n_poisoned"] is None and c["poison_rate"] is None and c["label_regime"] is None
    assert c["n_poisoned_flipped"] is None and c["poison_flags"] == "unknown" and c["n_train"] == 240
    assert set(out.train["poisoned"]) == {-1}
    flags = np.asarray(out.train["poisoned"])
    assert _filter_stats(np.ones(240, bool), flags) == {"n_removed": 0, "filter_precision": None, "filter_recall": None}
    # against the clean split it was made from (a file, or the dataset's own training split)
    clean = write_ob(tmp_path / "clean.csv", toy_data.train["text"], toy_data.train["label"])
    for source in (str(clean), "dataset"):
        out = make("file", train=train, test_poison=test, clean_train=source).poison(toy_data, 1)
        c = out.counts
        assert c["n_poisoned"] == 24 and c["poison_rate"] == 0.1 and c["label_regime"] == "mixed"
        assert c["n_poisoned_flipped"] == original.counts["n_poisoned_flipped"]
        assert c["poison_flags"].startswith("derived")


def test_target_label_comes_from_the_poisoned_test_set_and_a_disagreement_fails(toy_data, tmp_path):
    folder, _ = poisoned_folder(tmp_path, toy_data)
    assert make("file", folder=str(folder), target_label=1).poison(toy_data, 1).target_label == 1
    with pytest.raises(AttackError, match="disagree"):
        make("file", folder=str(folder), target_label=0).poison(toy_data, 1)
    mixed = write_ob(tmp_path / "tp.csv", ["a cf film", "b mn film"], [1, 0], [1, 1])
    with pytest.raises(AttackError, match="several"):
        make("file", train=str(folder / "train-poison.csv"), test_poison=str(mixed)).poison(toy_data, 1)
    bad = write_ob(tmp_path / "tr.csv", ["a cf film", "b film"], [0, 1], [1, 0])
    with pytest.raises(AttackError, match="flagged poisoned but labelled 0"):
        make("file", train=str(bad), test_poison=str(folder / "test-poison.csv")).poison(toy_data, 1)


def test_no_silent_subsampling(toy_data, tmp_path):
    folder, _ = poisoned_folder(tmp_path, toy_data, "mixed")
    attack = make("file", folder=str(folder))
    with pytest.warns(UserWarning, match="sampled stratified by poison flag"):
        rows = attack.training_rows(toy_data, 100, seed=3)
    out = attack.poison(toy_data, 3, train=rows)
    c = out.counts
    assert c["n_train"] == 100 and c["n_poisoned"] == 10 and c["poison_rate"] == 0.1  # the share kept: 24/240
    assert c["train_sampling"] == "stratified-by-poison-flag" and c["n_train_file"] == 240
    assert c["label_regime"] == "mixed"  # a property of the file
    # through the runner, with the profile's slice
    prof = get_profile("smoke", {"train_size": "100"})
    cell = plan([str(toy_data.root)], ["tiny-bert"], ["file"], ["none"], [3], prof,
                {"file": {"folder": str(folder)}})[0]
    prep = prepare(cell, toy_data)
    assert prep.poisoned.counts["n_poisoned"] == 10 and prep.poisoned.counts["train_sampling"] != "whole"
    # a file no larger than the slice, or keep_whole: the whole file
    rows = attack.training_rows(toy_data, 256, 1)
    assert attack.poison(toy_data, 1, train=rows).counts["train_sampling"] == "whole"
    whole = make("file", folder=str(folder), keep_whole=True)
    assert len(whole.training_rows(toy_data, 100, 3)) == 240
    # flags unknown: stratified by label, and it says so
    nf, _ = poisoned_folder(tmp_path, toy_data, "mixed", flags=False, clean=False, name="noflags")
    a = make("file", train=str(nf / "train-poison.csv"), test_poison=str(nf / "test-poison.csv"))
    with pytest.warns(UserWarning, match="stratified by label"):
        rows = a.training_rows(toy_data, 100, 1)
    out = a.poison(toy_data, 1, train=rows)
    assert out.counts["train_sampling"] == "stratified-by-label" and out.counts["n_poisoned"] is None


def test_musclelora_layout_and_the_dev_equals_test_warning(toy_data, tmp_path):
    folder, _ = poisoned_folder(tmp_path, toy_data, "clean-label", name="badnets")
    (folder / "clean" / "0.1").mkdir(parents=True)
    (folder / "train-poison.csv").rename(folder / "clean" / "0.1" / "train-poison.csv")
    write_ob(folder / "train-poison.csv", ["every row poisoned cf"] * 3, [1, 1, 1], [1, 1, 1])  # the release's
    (folder / "clean" / "0.2.backup").mkdir()
    (folder / "clean" / "0.2.backup" / "train-poison.csv").write_text(",0,1,2\n")
    for name in ("dev-clean.csv", "test-clean.csv"):  # as the HSOL release: dev and test are one file
        write_ob(folder / name, toy_data.test["text"], toy_data.test["label"], [0] * len(toy_data.test))
    files = folder_files(folder)
    assert files["train"] == folder / "clean" / "0.1" / "train-poison.csv"
    assert files["test_poison"] == folder / "test-poison.csv" and files["clean_train"] == folder / "train-clean.csv"
    assert folder_files(folder / "clean" / "0.1")["test_poison"] == folder / "test-poison.csv"
    with pytest.warns(UserWarning, match="never reads that dev file"):
        out = make("file", folder=str(folder)).poison(toy_data, 1)
    assert out.counts["n_poisoned"] == 24 and out.counts["label_regime"] == "clean-label"
    assert out.counts["imported"]["release_dev_test_overlap"] == len(toy_data.test)
    (folder / "mix" / "0.1").mkdir(parents=True)
    (folder / "mix" / "0.1" / "train-poison.csv").write_text(",0,1,2\n0,a,1,1\n")
    with pytest.raises(AttackError, match="several poisoned training mixtures"):
        make("file", folder=str(folder))


def test_training_rows_in_the_dev_split_are_counted_and_can_be_dropped(toy_data, tmp_path):
    folder, _ = poisoned_folder(tmp_path, toy_data, "mixed")
    df = pd.read_csv(folder / "train-poison.csv", index_col=0)
    extra = pd.DataFrame({"0": toy_data.dev["text"][:5], "1": toy_data.dev["label"][:5], "2": [0] * 5})
    pd.concat([df, extra], ignore_index=True).to_csv(folder / "train-poison.csv")
    with pytest.warns(UserWarning, match="dev split"):
        out = make("file", folder=str(folder)).poison(toy_data, 1)
    dev = set(toy_data.dev["text"])
    n_in_dev = sum(t in dev for t in out.train["text"])
    assert out.counts["n_train_in_dev"] == out.counts["imported"]["n_file_rows_in_dev"] == n_in_dev >= 5
    assert out.counts["n_train"] == 245
    out = make("file", folder=str(folder), drop_dev_overlap=True).poison(toy_data, 1)
    assert not any(t in dev for t in out.train["text"]) and out.counts["n_poisoned"] == 24
    assert out.counts["imported"]["n_train_dropped_dev_overlap"] == n_in_dev


@pytest.mark.skipif(not (SHARED_DATA / "published" / "musclelora").is_dir(), reason="no MuScleLoRA release")
def test_the_musclelora_release_imports_with_true_numbers(shared_data):
    from bench.data.datasets_builtin import HSOL, SST2

    sst2 = SST2().load(shared_data)
    folders = dict(musclelora_release(shared_data, "sst2"))
    assert list(folders) == ["badnets", "addsent", "stylebkd", "synbkd"]
    for attack, regime in (("badnets", "clean-label"), ("addsent", "mixed")):
        out = make("file", folder=str(folders[attack])).poison(sst2, 1)
        c = out.counts
        assert (c["n_train"], c["n_poisoned"], c["poison_rate"], out.target_label) == (6920, 692, 0.1, 1), attack
        assert c["label_regime"] == regime and len(out.test_poison) == 912
    hsol = HSOL().load(shared_data)
    with pytest.warns(UserWarning) as caught:
        out = make("file", folder=str(dict(musclelora_release(shared_data, "hsol"))["badnets"])).poison(hsol, 1)
    text = " ".join(str(w.message) for w in caught)
    assert "never reads that dev file" in text  # the release's HSOL dev is its test
    assert out.counts["n_train"] == 5823 and out.counts["n_poisoned"] == 582 and len(out.test_poison) == 1242
    with pytest.raises(AttackError, match="sst2, hsol"):
        musclelora_release(shared_data, "agnews")


# --- export and the round trip -------------------------------------------------------------------

def test_export_then_import_gives_the_same_rows_and_numbers(toy_dir, tmp_path):
    from datasets import load_from_disk

    from bench.data.export import export, export_cell
    from bench.models.victim import VictimStore

    # slices on both splits (a train slice and a declared test slice); one epoch keeps the two trainings short
    prof = get_profile("smoke", {"train_size": "200", "test_size": "60", "epochs": "1"})
    out = tmp_path / "exported"
    manifest = export(export_cell("badnets", str(toy_dir), 1, prof), out)
    for name in ("train-poison.csv", "train-clean.csv", "dev-clean.csv", "dev-poison.csv", "test-clean.csv",
                 "test-poison.csv"):
        assert (out / name).read_text().splitlines()[0] == ",0,1,2", name
    hf = load_from_disk(str(out / "hf"))
    assert len(hf["train"]) == 200 and sum(hf["train"]["poisoned"]) == 20
    written = json.loads((out / "manifest.json").read_text())
    assert written["counts"]["n_poisoned"] == 20 == manifest["counts"]["n_poisoned"]

    data = DataCache().get(str(toy_dir))
    original = plan([str(toy_dir)], ["tiny-bert"], ["badnets"], ["none"], [1], prof)[0]
    imported = plan([str(toy_dir)], ["tiny-bert"], ["file"], ["none"], [1], prof, {"file": {"folder": str(out)}})[0]
    a, b = prepare(original, data), prepare(imported, data)
    pa, pb = a.poisoned, b.poisoned
    assert pb.counts["train_sampling"] == "whole"
    assert pa.train["text"] == pb.train["text"] and pa.train["label"] == pb.train["label"]
    assert pa.train["poisoned"] == pb.train["poisoned"]
    assert pa.test_clean["text"] == pb.test_clean["text"] and pa.test_clean["label"] == pb.test_clean["label"]
    assert pa.test_poison["text"] == pb.test_poison["text"] and pa.target_label == pb.target_label
    assert victim_identity(original, a, None) == victim_identity(imported, b, None)  # same victim key
    assert original.attack.stated(pa) == {**imported.attack.stated(pb), "trigger_count": 4}
    assert manifest["row_digests"]["train"] == _digest(pb.train["text"], pb.train["label"], pb.train["poisoned"])

    # the same numbers on a tiny cell: the imported cell finds the original's victim (same training rows,
    # same key) and measures it on its own test rows
    store = VictimStore(tmp_path / "victims")
    ra = run_cell(original, data, store=store)["row"]
    rb = run_cell(imported, data, store=store)["row"]
    assert ra["victim"] == rb["victim"] and store.trainings == 1 and not rb["victim_trained_here"]
    for k in ("cacc", "asr", "clean_to_target", "n_poisoned", "n_train", "poison_rate", "label_regime", "target_label"):
        assert ra[k] == rb[k], k
    assert rb["attack"] == "file" and rb["trigger_count"] is None


def test_a_hand_made_file_without_flags_runs_and_the_record_says_unknown(toy_data, toy_dir, tmp_path):
    from bench.models.victim import VictimStore
    from bench.reporting.results import load_records
    from bench.runner import run_grid

    folder, _ = poisoned_folder(tmp_path, toy_data, "mixed", flags=False, clean=False, name="hand")
    cells = plan([str(toy_dir)], ["tiny-bert"], ["file"], ["none"], [1], get_profile("smoke"),
                 {"file": {"train": str(folder / "train-poison.csv"), "test_poison": str(folder / "test-poison.csv"),
                           "label": "hand"}})
    run_grid(cells, tmp_path / "res", progress="off", store=VictimStore(tmp_path / "v"))
    (rec,) = load_records(tmp_path / "res")
    row = rec["row"]
    assert row["attack"] == "file:hand" and row["settings"].startswith("file.")
    assert row["n_poisoned"] is None and row["poison_rate"] is None and row["label_regime"] is None
    assert row["filter_precision"] is None and row["ppl_increase"] is None and row["n_train"] == 240
    assert rec["counts"]["train_sampling"] == "whole" and rec["counts"]["poison_flags"] == "unknown"
    md = (tmp_path / "res" / "leaderboard.md").read_text()
    assert "file:hand" in md
    # the Markdown tables say "unknown" where the record holds null (a blank or "nan" reads as missing data)
    for table in ("## Cells over their seeds", "## Every seed"):
        head, row_line = [ln for ln in md.split(table, 1)[1].splitlines() if ln.startswith("| ")][:2]
        cols = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row_line.split("|")]))
        rate = cols.get("poison rate", cols.get("poison_rate"))
        regime = cols.get("label regime", cols.get("label_regime"))
        assert rate == "unknown" and regime == "unknown", (table, cols)


def test_cli_export_and_the_release_helper(toy_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import bench.runner
    from bench.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["export", "-a", "addsent", "--dataset", str(toy_dir), "--profile", "smoke", "--out",
                            str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    assert "import again: bench run -a file --set file.folder=" in r.output
    r = runner.invoke(app, ["export", "-a", "addsent", "--dataset", str(toy_dir), "--out", str(toy_dir)])
    assert r.exit_code == 2 and "other files" in r.output  # never writes into a folder holding other files
    if not (SHARED_DATA / "published" / "musclelora").is_dir():
        return
    seen = {}

    def fake(cells, out_dir, **kw):
        seen.update(cells=cells, out=out_dir)
        return {"ran": 0, "skipped": 0, "copied": 0, "claimed_elsewhere": 0, "wall_seconds": 0.0}

    monkeypatch.setattr(bench.runner, "run_grid", fake)
    r = runner.invoke(app, ["musclelora-release", "--dataset", "sst2", "-d", "none", "-d", "lora",
                            "--data-dir", str(SHARED_DATA)])
    assert r.exit_code == 0, r.output
    names = sorted({c.attack.name for c in seen["cells"]})
    assert names == [f"file:musclelora-{a}" for a in ("addsent", "badnets", "stylebkd", "synbkd")]
    assert len(seen["cells"]) == 8 and str(seen["out"]) == "results/imported"
    # model selection never sees a training row: the release's dev-split sentences are dropped by default
    assert all(c.attack.config.drop_dev_overlap for c in seen["cells"])
    r = runner.invoke(app, ["musclelora-release", "--dataset", "sst2", "-a", "badnets", "-d", "none", "--set",
                            "file.drop_dev_overlap=false", "--data-dir", str(SHARED_DATA)])
    assert r.exit_code == 0 and not any(c.attack.config.drop_dev_overlap for c in seen["cells"])


# --- paraphrase tables ------------------------------------------------------------------------------

def _test_only_table(tmp_path):
    from conftest import write_toy_dataset

    folder = write_toy_dataset(tmp_path / "t")
    data = load_csv_folder(folder)
    rows = ["text,paraphrase"] + [f'{t},"when it is so , {t} ."' for t in data.test["text"]]
    (folder / "paraphrases" / "scpn.csv").write_text("\n".join(rows) + "\n")
    return folder, load_csv_folder(folder)


def test_a_table_covering_only_test_rows_builds_the_poisoned_test_set(tmp_path):
    folder, data = _test_only_table(tmp_path)
    out = make("syntactic", poison_rate=0.0).poison(data, 1)
    assert len(out.test_poison) == sum(y != 1 for y in data.test["label"]) and out.counts["n_poisoned"] == 0
    assert len(out.dev_poison) == 0 and out.counts["dev_skipped_no_transform"] > 0
    with pytest.raises(AttackError) as e:
        make("syntactic").poison(data, 1)
    msg = str(e.value)
    for w in ("train split", "have no transform", "training rows 0, 1, 2", "scpn.csv", "lower --poison-rate"):
        assert w in msg, msg


def test_imported_training_data_with_a_test_set_built_from_a_table(tmp_path):
    folder, data = _test_only_table(tmp_path)
    pois, _ = poisoned_folder(tmp_path, data, "mixed", name="hk")
    attack = make("file", train=str(pois / "train-poison.csv"), test_attack="syntactic")
    out = attack.poison(data, 1)
    assert out.counts["test_poison_from"].startswith("attack syntactic") and out.counts["n_poisoned"] == 24
    assert len(out.test_poison) == sum(y != 1 for y in data.test["label"])
    assert "orig_text" in out.test_poison.column_names  # built here, so stealthiness can be measured
    assert "test_attack" in attack.source_identity(data)


def test_any_table_in_paraphrases_is_a_style_transform(toy_dir):
    rows = ["text,paraphrase"]
    data = load_csv_folder(toy_dir)
    for t in list(data.train["text"]) + list(data.test["text"]):
        rows.append(f'{t},"formally, {t}"')
    (toy_dir / "paraphrases" / "formal.csv").write_text("\n".join(rows) + "\n")
    out = make("style", transform="formal").poison(data, 1)
    assert all(t.startswith("formally, ") for t in out.test_poison["text"]) and out.counts["n_poisoned"] == 24
    with pytest.raises(AttackError) as e:
        make("style", transform="haiku").poison(data, 1)
    assert "not one of" in str(e.value) and "formal" in str(e.value) and "bible" in str(e.value)
    with pytest.raises(AttackError, match="not a table name"):
        make("style", transform="../formal").poison(data, 1)
    with pytest.raises(AttackError, match="not one of"):  # the syntactic attacks keep their template
        make("syntactic", transform="formal").poison(data, 1)
