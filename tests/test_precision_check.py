"""The fp32-vs-bf16 check (benchmarks/precision_check.py): a bf16 cell joins the fp32 cell it repeats."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

spec = importlib.util.spec_from_file_location(
    "precision_check", Path(__file__).resolve().parents[1] / "benchmarks" / "precision_check.py")
pc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pc)

BASE = dict(dataset="sst2", backbone="minilm", attack="badnets", poison_rate=0.1, label_regime="clean-label",
            target_label=1, trigger_count=4, profile="cpu")


def _folder(path: Path, rows: list[dict]) -> Path:
    path.mkdir()
    pd.DataFrame(rows).to_csv(path / "leaderboard.csv", index=False)
    return path


def test_without_setting_keeps_the_others():
    assert pc.without_setting("profile.train_size=1500; profile.precision=bf16", "profile.precision=bf16") \
        == "profile.train_size=1500"
    assert pc.without_setting("profile.precision=bf16", "profile.precision=bf16") == ""


def test_bf16_cells_join_their_fp32_twins_and_the_delta_is_tested(tmp_path):
    s = "profile.train_size=1500"
    fp32 = [dict(BASE, defense="none", seed=k, cacc=0.84, asr=a, settings=s) for k, a in [(1, .98), (2, .97), (3, .99)]]
    bf16 = [dict(BASE, defense="none", seed=k, cacc=0.84, asr=a, settings=s + "; profile.precision=bf16")
            for k, a in [(1, .50), (2, .52), (3, .51)]]
    bf16.append(dict(BASE, defense="lora", seed=1, cacc=0.8, asr=0.2, settings=s + "; profile.precision=bf16"))
    text = pc.check(_folder(tmp_path / "a", fp32), _folder(tmp_path / "b", bf16))
    assert "1 cells in both, 1 bf16 cells without an fp32 twin" in text
    row = [line for line in text.splitlines() if line.startswith("| sst2")]
    assert len(row) == 1 and "| none | 3, 3 |" in row[0] and "| -47.0 |" in row[0] and "< 0.001" in row[0]


def test_a_folder_without_the_setting_is_refused(tmp_path):
    rows = [dict(BASE, defense="none", seed=1, cacc=0.84, asr=0.9, settings="")]
    with pytest.raises(SystemExit, match="no cell carries"):
        pc.check(_folder(tmp_path / "a", rows), _folder(tmp_path / "b", rows))
