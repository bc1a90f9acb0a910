"""Plots and the HTML report (bench.reporting.report) from a results folder of synthetic records, and the page
as a browser renders it (headless Chromium, skipped where none is installed)."""

import base64
import html
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.reporting.report import write_plots, write_report
from bench.reporting.results import ResultsError, load_records, records_frame, record_path, write_json_atomic
from bench.reporting.scores import MIN_SEEDS, aggregate, summary

PNG = b"\x89PNG\r\n\x1a\n"
WEIRD = '<b>gd&"tune"</b>'  # a defense name full of HTML special characters (uses clean rows)
COMMIT = "0123456789abcdef0123456789abcdef01234567"
COMMAND = "bench run -a badnets -a addsent -d none -d clean-only --out results/synthetic"

# (defense, CACC, ASR, uses clean rows) of the synthetic cells
DEFENSES = [("none", 0.90, 0.95, False), ("clean-only", 0.80, 0.10, True), (WEIRD, 0.88, 0.20, True)]


def _record(dataset, attack, defense, cacc, asr, uses_clean, seed):
    slug = re.sub(r'\W+', '_', defense)
    key = f"{dataset}-{attack}-{slug}-{seed}"
    jitter = 0.01 * (seed - 2)
    row = {
        "dataset": dataset, "backbone": "minilm", "attack": attack, "defense": defense, "seed": seed,
        "cacc": cacc + jitter, "asr": min(1.0, asr + jitter), "clean_to_target": 0.1, "poison_rate": 0.1,
        "label_regime": "dirty", "target_label": 1, "trigger_count": 1, "uses_clean": uses_clean,
        "n_clean_used": 384 if uses_clean else 0, "profile": "cpu", "settings": "", "key": key,
    }
    prov = {"command": COMMAND, "git": {"commit": COMMIT, "dirty": True},
            "packages": {"python": "3.11.7", "torch": "2.13.0+cpu"},
            "machine": {"platform": "Linux-test", "cpu_count": 2, "cuda": None},
            "wall_seconds": 60.0, "started": f"2026-01-0{seed}T10:00:00+00:00"}
    return {"key": key, "row": row, "config": {"seed": seed}, "provenance": prov}


@pytest.fixture
def results_dir(tmp_path):
    """2 datasets x 2 attacks x 3 defenses; sst2 over 3 seeds, hsol over 1 (2 for none)."""
    out = tmp_path / "results"
    for dataset in ("sst2", "hsol"):
        for attack in ("badnets", "addsent"):
            for defense, cacc, asr, clean in DEFENSES:
                seeds = [1, 2, 3] if dataset == "sst2" else ([1, 2] if defense == "none" else [1])
                for seed in seeds:
                    rec = _record(dataset, attack, defense, cacc, asr, clean, seed)
                    write_json_atomic(record_path(out, rec["key"]), rec)
    return out


def test_plots_are_png_files(results_dir):
    paths = write_plots(results_dir)
    names = sorted(p.name for p in paths)
    assert names == ["asr_vs_cacc.png", "heatmap_hsol_minilm.png", "heatmap_sst2_minilm.png"]
    for p in paths:
        assert p.parent == results_dir / "plots"
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, p


def _section(page, table_id):
    m = re.search(rf'<table[^>]*id="{table_id}".*?</table>', page, re.S)
    assert m, f"no table {table_id}"
    return m.group(0)


def _first_column(table_html):
    return [html.unescape(re.search(r"<td>(.*?)</td>", tr, re.S).group(1))
            for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", table_html.split("<tbody>", 1)[1], re.S)]


def test_report_is_one_self_contained_page(results_dir, tmp_path):
    page_path = write_report(results_dir, tmp_path / "site")
    assert page_path == tmp_path / "site" / "index.html"
    page = page_path.read_text()
    df = records_frame(load_records(results_dir))

    # the summary: one row per defense, best score first, names escaped
    summ = summary(df)
    assert _first_column(_section(page, "summary-table")) == list(summ["defense"])
    assert html.escape(WEIRD) in page and WEIRD not in page

    # the cells: every cell, the ones with fewer than MIN_SEEDS seeds marked
    cells = aggregate(df)
    table = _section(page, "cells-table")
    assert table.count("<tr") == len(cells) + 1
    few = int((cells["n_seeds"] < MIN_SEEDS).sum())
    assert 0 < few < len(cells) and table.count('<tr class="few">') == few
    assert "±" in table  # the 3-seed cells carry an interval

    # the clean-data controls beside the defenses that use clean rows, per dataset x attack
    controls = re.findall(r'<table[^>]*id="controls-\d+".*?</table>', page, re.S)
    assert len(controls) == 4
    for t in controls:
        assert _first_column(t) == ["none", "clean-only", WEIRD]
        assert "control: the clean rows alone" in t and "384" in t

    # the plots, inline
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert not re.search(r'(src|href)="(https?:|//)', page) and "<link" not in page

    # the provenance
    prov = page.split('id="provenance"', 1)[1]
    for text in (COMMIT, "dirty (uncommitted changes)", html.escape(COMMAND), "2.13.0+cpu", "1, 2, 3",
                 f"{len(df) * 60 / 60:.1f} min"):
        assert text in prov, text


def test_cli_plot_and_report(results_dir, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["plot", "--out", str(results_dir)], catch_exceptions=False)
    assert r.exit_code == 0 and "asr_vs_cacc.png" in r.output
    r = runner.invoke(app, ["report", str(results_dir)], catch_exceptions=False)
    assert r.exit_code == 0 and (results_dir / "report" / "index.html").is_file()
    dest = tmp_path / "elsewhere"
    r = runner.invoke(app, ["report", str(results_dir), "--out", str(dest)], catch_exceptions=False)
    assert r.exit_code == 0 and (dest / "index.html").is_file()


@pytest.mark.parametrize("command", [["plot", "--out"], ["report"]])
def test_a_folder_without_records_is_a_clear_error(tmp_path, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(app, [*command, str(empty)])
    assert r.exit_code == 2, r.output
    assert str(empty) in r.output and f"bench run --out {empty}" in r.output and "Traceback" not in r.output
    with pytest.raises(ResultsError, match="no such results folder"):
        write_report(tmp_path / "missing")


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install chromium; "
                                                 ".ci/run installs it)")
def test_report_renders_in_headless_chromium(results_dir, tmp_path):
    page = write_report(results_dir, tmp_path / "site")
    # open it sorted by the score column, ascending (the page's own hash link), and dump the rendered DOM
    url = page.resolve().as_uri() + "#sort=summary-table,1"
    done = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180)
    dom = done.stdout
    assert done.returncode == 0 and "<table" in dom, done.stderr[-2000:]

    # the script ran over every table, and the tables kept their rows
    assert dom.count('data-sortable="ready"') == dom.count('class="sortable"') > 0
    summ = summary(records_frame(load_records(results_dir)))
    shown = _first_column(_section(dom, "summary-table"))
    assert shown == list(summ.sort_values("task_score")["defense"])  # sorted ascending by the script
    assert shown != list(summ["defense"])
    assert _section(dom, "cells-table").count("<tr") == len(aggregate(records_frame(load_records(results_dir)))) + 1
    # the plots are in the rendered page
    assert len(re.findall(r'<img src="data:image/png;base64,', dom)) == 3
