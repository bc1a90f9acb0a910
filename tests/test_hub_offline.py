"""Hub names as users type them (`-b org/name`, `--dataset org/name`), without a network: a Hugging Face
cache laid out as the hub lays it out, HF_HUB_OFFLINE=1, and the record keyed by the snapshot's revision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.models.backbones import HubBackbone, TinyBert

REPO = "testorg/tiny-bert"


def add_model_snapshot(hub: Path, revision: str, seed: int = 0) -> Path:
    """A tiny model saved as snapshot ``revision`` of REPO, with refs/main pointing to it."""
    folder = hub / f"models--{REPO.replace('/', '--')}"
    snap = folder / "snapshots" / revision
    loaded = TinyBert().load(2, seed)
    loaded.model.save_pretrained(snap)
    loaded.tokenizer.save_pretrained(snap)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    return snap


def add_dataset_to_cache(datasets_cache: Path, repo: str, csv_folder: Path) -> None:
    """``repo`` in the `datasets` cache as a first online load leaves it: the prepared arrow files under
    ``<namespace>___<name>/default/<version>/<hash>/``, which `load_dataset` finds offline."""
    import datasets

    files = {"train": "train.csv", "validation": "dev.csv", "test": "test.csv"}
    builder = datasets.load_dataset_builder("csv", data_files={k: str(csv_folder / v) for k, v in files.items()},
                                            cache_dir=str(datasets_cache / "_build"))
    builder.download_and_prepare()
    prepared = Path(builder.cache_dir)
    namespace, name = repo.split("/")
    dest = datasets_cache / f"{namespace}___{name}" / "default" / prepared.parent.name / prepared.name
    dest.parent.mkdir(parents=True)
    prepared.rename(dest)
    for f in dest.glob("csv-*.arrow"):
        f.rename(dest / f.name.replace("csv-", f"{name}-", 1))


def test_a_hub_id_is_keyed_by_the_cached_revision(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
    assert HubBackbone(REPO).identity() == {"name": REPO}  # not cached: the name alone
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("a" * 40)
    assert HubBackbone(REPO).identity() == {"name": REPO, "revision": "a" * 40}
    (folder / "refs" / "main").write_text("b" * 40)
    assert HubBackbone(REPO).identity()["revision"] == "b" * 40  # a new revision: a new cell


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_hub_model_and_dataset_ids_run_offline_from_the_cache(tmp_path, toy_dir):
    hub, dcache = tmp_path / "hub", tmp_path / "datasets"
    add_model_snapshot(hub, "1" * 40)
    add_dataset_to_cache(dcache, "testorg/toy", toy_dir)
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_DATASETS_CACHE": str(dcache), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "BENCH_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    args = ["run", "-a", "badnets", "-d", "none", "-b", REPO, "--dataset", "testorg/toy", "--profile", "smoke",
            "--out", str(out), "--no-progress"]
    done = _run(args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert len(records) == 1
    config = records[0]["config"]
    assert config["backbone"] == {"name": REPO, "revision": "1" * 40}
    assert config["dataset"]["name"] == "testorg/toy" and records[0]["row"]["n_train"] == 240
    # a new revision of the model is a new cell; rerunning the same revision is not
    add_model_snapshot(hub, "2" * 40, seed=1)
    done = _run(args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    revisions = sorted(json.loads(p.read_text())["config"]["backbone"]["revision"] for p in (out / "records").glob("*.json"))
    assert revisions == ["1" * 40, "2" * 40]
