import math

import pandas as pd
import torch
from typer.testing import CliRunner

from bench.cli import app
from defenses.musclelora.fourier import kernels, relative_errors


def test_kernel_rows_sum_to_one_and_errors_vanish_for_a_perfect_model():
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    (g_small, g_big) = kernels(x, [0.01, 100.0])
    assert torch.allclose(g_small.sum(1), torch.ones(12, dtype=torch.float64))
    assert torch.allclose(g_small, torch.eye(12, dtype=torch.float64), atol=1e-6)  # tiny delta: identity
    assert torch.allclose(g_big, torch.full((12, 12), 1 / 12, dtype=torch.float64), atol=1e-2)  # huge: mean
    y = torch.nn.functional.one_hot(torch.arange(12) % 2, 2).double()
    g = kernels(x, [1.0])[0]
    assert relative_errors(g, y, y) == (0.0, 0.0)
    lo, hi = relative_errors(g, y, torch.full_like(y, 0.5))
    assert lo > 0 and hi > 0.99  # a constant prediction has no high-frequency part at all
    # constant labels (a poisoned set): no high-frequency part, so RE_high is undefined
    lo, hi = relative_errors(g, torch.ones(12, 1).double(), torch.ones(12, 1).double())
    assert lo == 0.0 and math.isnan(hi)


def test_fourier_command_writes_csv_plot_and_summary(toy_dir, tmp_path):
    out = tmp_path / "f"
    r = CliRunner().invoke(app, [
        "fourier", "--dataset", str(toy_dir), "--backbone", "tiny-bert", "--profile", "smoke",
        "--set", "profile.train_size=None", "--set", "profile.epochs=1", "--samples", "32", "--every", "5",
        "--out", str(out),
    ], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "fourier.csv")
    assert set(df.defense) == {"none", "musclelora"} and set(df.split) == {"clean", "poison"}
    # recorded before training (step 0), every 5 steps, and at the last step (15 = 240 rows / 16)
    assert sorted(set(df.step)) == [0, 5, 10, 15]
    assert df[df.split == "poison"].re_high.isna().all() and df[df.split == "clean"].re_high.notna().all()
    assert (out / "fourier.png").stat().st_size > 10_000
    assert "re_low_start" in (out / "fourier.md").read_text()
