"""`bench data fetch / verify` and the data lookup, offline: a local HTTP server (standard library, in a
thread) serves small source files laid out as the two source repositories are; the builder, the
checksums, a truncated download and a failed build are checked on them. The real sources are built and
checked against the committed manifest in a slow test, from local git copies where they exist."""

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import random
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.data import DataError, load_csv_folder, resolve_data_dir
from bench.data import databuild, datafetch
from bench.data.databuild import MUSCLE, STYLEATTACK, align
from bench.data.datafetch import FetchError, Manifest, Sources, fetch, sha256, verify
from conftest import FILLER, NEG, POS, SHARED_DATA

runner = CliRunner()


# --- a small copy of the two source repositories --------------------------------------------------

def _rows(n: int, rng: random.Random) -> list[tuple[str, int]]:
    out = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 9))]
        words.insert(rng.randint(0, len(words)), rng.choice(POS if i % 2 else NEG))
        out.append((" ".join(words) + f" {i}", i % 2))  # the number keeps texts apart across splits
    return out


def _tsv(rows) -> bytes:
    return ("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows)).encode()


def _release_csv(rows, poison: bool) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["", "0", "1", "2"])
    w.writerows((i, t, l, int(poison)) for i, (t, l) in enumerate(rows))
    return buf.getvalue().encode()


def fake_sources(sizes=(240, 160, 80), seed=0) -> dict[tuple[str, str], bytes]:
    """Every file the sst2 recipe reads (and the release's files), small; one style file drops a row."""
    rng = random.Random(seed)
    splits = dict(zip(databuild.SPLITS, (_rows(n, rng) for n in sizes)))
    splits["dev"] = [(f"dev {t}", l) for t, l in splits["dev"]]
    splits["test"] = [(f"test {t}", l) for t, l in splits["test"]]
    files = {}
    for s, rows in splits.items():
        files[(MUSCLE, f"datasets/SentimentAnalysis/SST-2/{s}.tsv")] = _tsv(rows)
        files[(STYLEATTACK, f"data/clean/sst-2/{s}.tsv")] = _tsv(rows)
        for style in databuild.STYLES[1:]:
            other = [(f"{t} , {style} wise", l) for t, l in rows]
            if s == "train" and style == "poetry":
                del other[17]  # a failed transfer: the pairing must realign
            files[(STYLEATTACK, f"data/transfer/{style}/sst-2/{s}.tsv")] = _tsv(other)
    for attack, make in (("synbkd", lambda t: f"when it is so , {t} ."), ("stylebkd", lambda t: f"verily {t}")):
        base = f"poison_data/sst-2/1/{attack}"
        for s, rows in splits.items():
            files[(MUSCLE, f"{base}/{s}-clean.csv")] = _release_csv(rows, False)
            chosen = rows if s == "train" else [r for r in rows if r[1] != 1]
            files[(MUSCLE, f"{base}/{s}-poison.csv")] = _release_csv([(make(t), 1) for t, _ in chosen], True)
    return files


def manifest_for(files: dict, built: dict | None = None) -> Manifest:
    sources = {}
    for (repo, path), data in files.items():
        s = sources.setdefault(repo, {"commit": "c0ffee" + repo[:3].lower(), "files": {}})
        s["files"][path] = {"sha256": sha256(data), "size": len(data)}
    return Manifest(sources, built or {})


class SourceServer:
    """Serves ``files`` at /<owner>/<name>/<commit>/<path>; ``truncate`` and ``corrupt`` hold paths
    to damage (half the body under the full Content-Length; same length, other bytes)."""

    def __init__(self, files: dict, manifest: Manifest):
        self.by_url = {f"/{repo}/{manifest.sources[repo]['commit']}/{path}": data for (repo, path), data in files.items()}
        self.truncate, self.corrupt, self.hits = set(), set(), []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                owner.hits.append(self.path)
                data = owner.by_url.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                path = self.path.split("/", 4)[-1]
                body = bytes(reversed(data)) if path in owner.corrupt else data
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if path in owner.truncate else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    files = fake_sources()
    manifest = manifest_for(files)
    server = SourceServer(files, manifest)
    yield files, manifest, server
    server.close()


def _sources(manifest, server, tmp_path, **kw):
    return Sources(manifest, tmp_path / "downloads", base_url=server.url, retries=0, **kw)


# --- download, build, verify --------------------------------------------------------------------

def test_fetch_downloads_checks_and_builds(served, tmp_path):
    files, manifest, server = served
    out = fetch(["sst2"], tmp_path / "data", manifest=manifest, sources=_sources(manifest, server, tmp_path))
    data = load_csv_folder(out["sst2"])
    assert (len(data.train), len(data.dev), len(data.test)) == (240, 160, 80)
    tables = {p.stem for p in (out["sst2"] / "paraphrases").glob("*.csv")}
    assert tables == {"scpn", "bible", "shakespeare", "lyrics", "poetry", "tweets"}
    with open(out["sst2"] / "paraphrases" / "poetry.csv", newline="") as f:
        poetry = dict(list(csv.reader(f))[1:])
    dropped = _rows(240, random.Random(0))[17][0]
    assert dropped not in poetry and len(poetry) == 240 + 160 + 80 - 1  # realigned: one row lost, none mispaired
    assert all(p == f"{t} , poetry wise" for t, p in poetry.items())
    assert not list((tmp_path / "data").glob(".partial-*"))
    # everything came from the server once; a second fetch is a no-op
    n = len(server.hits)
    assert n == len(manifest.needs("sst2"))
    fetch(["sst2"], tmp_path / "data", manifest=manifest, sources=_sources(manifest, server, tmp_path))
    assert len(server.hits) == n


def test_a_truncated_download_is_an_error_and_leaves_no_dataset(served, tmp_path):
    files, manifest, server = served
    server.truncate.add("data/clean/sst-2/train.tsv")
    with pytest.raises(FetchError, match=r"train\.tsv: got \d+ bytes, expected \d+"):
        fetch(["sst2"], tmp_path / "data", manifest=manifest, sources=_sources(manifest, server, tmp_path))
    assert not (tmp_path / "data" / "sst2").exists() and not list((tmp_path / "data").glob(".partial-*"))


def test_a_checksum_mismatch_names_the_file_and_both_hashes(served, tmp_path):
    files, manifest, server = served
    path = "datasets/SentimentAnalysis/SST-2/dev.tsv"
    server.corrupt.add(path)
    with pytest.raises(FetchError) as e:
        fetch(["sst2"], tmp_path / "data", manifest=manifest, sources=_sources(manifest, server, tmp_path))
    expected = manifest.sources[MUSCLE]["files"][path]["sha256"]
    got = sha256(bytes(reversed(files[(MUSCLE, path)])))
    assert path in str(e.value) and expected in str(e.value) and got in str(e.value)
    assert not (tmp_path / "data" / "sst2").exists()
    assert not list((tmp_path / "downloads").rglob("dev.tsv"))  # nothing bad is kept


def test_a_missing_source_file_is_an_error_naming_its_address(served, tmp_path):
    files, manifest, server = served
    del server.by_url[next(u for u in server.by_url if u.endswith("tweets/sst-2/test.tsv"))]
    with pytest.raises(FetchError, match=r"tweets/sst-2/test\.tsv: HTTP 404"):
        fetch(["sst2"], tmp_path / "data", manifest=manifest, sources=_sources(manifest, server, tmp_path))


def test_built_files_are_checked_against_the_manifest_before_they_land(served, tmp_path):
    files, manifest, server = served
    first = fetch(["sst2"], tmp_path / "a", manifest=manifest, sources=_sources(manifest, server, tmp_path))["sst2"]
    built = {f"sst2/{p.relative_to(first).as_posix()}": {"sha256": sha256(p.read_bytes()), "size": p.stat().st_size}
             for p in first.rglob("*") if p.is_file()}
    good = Manifest(manifest.sources, built)
    # the same sources build the same bytes, and verify agrees
    again = fetch(["sst2"], tmp_path / "b", manifest=good, sources=_sources(good, server, tmp_path))["sst2"]
    assert verify(again.parent, manifest=good)[1] == []
    bad = Manifest(manifest.sources, {**built, "sst2/dev.csv": {"sha256": "0" * 64, "size": 1}})
    with pytest.raises(DataError, match=r"sst2/dev\.csv: sha256 [0-9a-f]{64}, manifest 0{64}"):
        fetch(["sst2"], tmp_path / "c", manifest=bad, sources=_sources(bad, server, tmp_path))
    assert not (tmp_path / "c" / "sst2").exists() and not list((tmp_path / "c").glob(".partial-*"))
    # verify reports a changed file, a missing one, and notes files it does not know
    (again / "dev.csv").write_text("text,label\nchanged,0\n")
    (again / "paraphrases" / "scpn.csv").unlink()
    (again / "notes.txt").write_text("mine")
    names, problems, notes = verify(again.parent, manifest=good)
    assert names == ["sst2"]
    assert any("sst2/dev.csv: sha256" in p for p in problems) and any("scpn.csv: missing" in p for p in problems)
    assert any("notes.txt" in n for n in notes)


def test_unknown_fetch_name_suggests(tmp_path):
    with pytest.raises(DataError, match="Did you mean 'hsol'"):
        fetch(["hsoll"], tmp_path)


def test_the_committed_manifest_pins_every_file_the_recipes_read_and_build():
    m = Manifest.load()
    assert set(m.sources) == {MUSCLE, STYLEATTACK}
    for name in datafetch.NAMES:
        needed = m.needs(name)
        assert needed and all(p in m.sources[r]["files"] for r, p in needed)
        assert m.built_under(databuild.FOLDERS[name])
    assert all(len(s["commit"]) == 40 for s in m.sources.values())
    assert len(m.built_under("published/musclelora")) == len(m.needs("musclelora-release"))


def test_verify_the_shared_data_against_the_committed_manifest(shared_data):
    names, problems, _ = verify(shared_data)
    assert set(names) == set(datafetch.NAMES) and problems == []
    r = runner.invoke(app, ["data", "verify", str(shared_data)])
    assert r.exit_code == 0 and "ok" in r.output


def test_verify_cli_fails_on_a_changed_file(tmp_path, shared_data):
    (tmp_path / "hsol").mkdir()
    for f in ("train.csv", "dev.csv", "test.csv"):
        (tmp_path / "hsol" / f).write_bytes((shared_data / "hsol" / f).read_bytes())
    (tmp_path / "hsol" / "test.csv").write_bytes(b"text,label\nx,0\n")
    r = runner.invoke(app, ["data", "verify", str(tmp_path)])
    assert r.exit_code == 1
    assert "hsol/test.csv: sha256" in r.output and "hsol/paraphrases/scpn.csv: missing" in r.output


# --- the pairing --------------------------------------------------------------------------------

def _align_by_dict(clean, other, labels_must_match, band, floor):
    """The same alignment written the plain way (a dict per cell): what the vectorised one must equal."""
    import re

    def words(t):
        return set(re.findall(r"[a-z0-9']+", t.lower()))

    n, m = len(clean), len(other)
    cw, ow = [words(c[0]) for c in clean], [words(o[0]) for o in other]
    score, back = {(0, 0): 0.0}, {}
    for i in range(n + 1):
        centre = int(i * m / max(1, n))
        for j in range(max(0, centre - band), min(m, centre + band) + 1):
            if (i, j) == (0, 0):
                continue
            options = []
            if i > 0 and (i - 1, j) in score:
                options.append((score[(i - 1, j)], (i - 1, j, False)))
            if j > 0 and (i, j - 1) in score:
                options.append((score[(i, j - 1)], (i, j - 1, False)))
            if i > 0 and j > 0 and (i - 1, j - 1) in score:
                a, b = cw[i - 1], ow[j - 1]
                s = len(a & b) / max(1, len(a | b))
                if s >= floor and (not labels_must_match or clean[i - 1][1] == other[j - 1][1]):
                    options.append((score[(i - 1, j - 1)] + s, (i - 1, j - 1, True)))
            best = None
            for value, arg in options:  # the first of equal scores wins
                if best is None or value > best[0]:
                    best = (value, arg)
            if best is not None:
                score[(i, j)], back[(i, j)] = best
    if (n, m) not in score:
        return []
    pairs, cur = [], (n, m)
    while cur != (0, 0):
        i, j, matched = back[cur]
        if matched:
            pairs.append((clean[i][0], other[j][0]))
        cur = (i, j)
    return pairs[::-1]


@pytest.mark.parametrize("seed", range(6))
def test_the_vectorised_alignment_equals_the_plain_one(seed):
    rng = random.Random(seed)
    clean = [(t, l) for t, l in _rows(rng.randint(20, 60), rng)]
    other = []
    for t, l in clean:
        r = rng.random()
        if r < 0.15:
            continue  # dropped by the generator
        if r < 0.2:
            other.append(("something else entirely", l))  # an unrelated row
        words = t.split()
        rng.shuffle(words)
        other.append((" ".join(words[: max(1, len(words) - rng.randint(0, 3))]), l if rng.random() > 0.1 else 1 - l))
    for labels in (False, True):
        for band in (3, 400):
            assert align(clean, other, labels, band=band) == _align_by_dict(clean, other, labels, band, 0.12)


def test_alignment_skips_dropped_rows_and_matches_the_rest():
    clean = [("the cat sat on the mat", 0), ("a dog ran in the park", 1), ("birds sing at dawn", 0)]
    other = [("the cat sat upon the mat", 0), ("birds sing loudly at dawn", 0)]
    assert align(clean, other, True) == [(clean[0][0], other[0][0]), (clean[2][0], other[1][0])]


def test_hsol_dev_is_a_stratified_held_out_share():
    rows = [(f"t{i}", int(i % 3 == 0)) for i in range(100)]
    rest, held = databuild.stratified_holdout(rows, 0.1, 13)
    assert len(held) == 10 and sum(l for _, l in held) == round(34 * 0.1)
    assert sorted(rest + held) == sorted(rows) and rest == [r for r in rows if r not in held]
    assert databuild.stratified_holdout(rows, 0.1, 13) == (rest, held)


# --- the lookup: --data-dir, $BENCH_DATA_DIR, the cache, ../shared/data, then a fetch ------------

def _write_split_folder(root: Path, name: str, tag: str) -> None:
    from conftest import write_toy_dataset

    write_toy_dataset(root / name)
    (root / name / "tag").write_text(tag)


@pytest.fixture
def roots(tmp_path, monkeypatch):
    cache, shared = tmp_path / "cache" / "data", tmp_path / "shared" / "data"
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("bench.data.SHARED_DATA", shared)
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    return cache, shared


def test_lookup_order(roots, tmp_path, monkeypatch):
    cache, shared = roots
    _write_split_folder(shared, "sst2", "shared")
    assert resolve_data_dir(need="sst2") == shared
    _write_split_folder(cache, "sst2", "cache")
    assert resolve_data_dir(need="sst2") == cache  # the cache before ../shared/data
    assert resolve_data_dir(need="sst2", fetch=False) == cache
    env = tmp_path / "env"
    _write_split_folder(env, "sst2", "env")
    monkeypatch.setenv("BENCH_DATA_DIR", str(env))
    assert resolve_data_dir(need="sst2") == env
    explicit = tmp_path / "explicit"
    _write_split_folder(explicit, "sst2", "explicit")
    assert resolve_data_dir(explicit, need="sst2") == explicit
    with pytest.raises(DataError, match="has no hsol/.*bench data fetch --dest"):
        resolve_data_dir(explicit, need="hsol")


def test_without_network_the_error_names_every_way_out(roots, monkeypatch):
    monkeypatch.setenv("BENCH_DATA_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(DataError) as e:
        resolve_data_dir(need="hsol")
    msg = str(e.value)
    assert "bench data fetch hsol" in msg and "--data-dir" in msg and "BENCH_DATA_DIR" in msg
    assert "hsol" in msg and not (roots[0] / "hsol").exists()


@pytest.fixture
def network(roots, served, tmp_path, monkeypatch):
    """The local server stands in for the network: the environment points bench at it and its manifest."""
    files, manifest, server = served
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"sources": manifest.sources, "built": {}}))
    monkeypatch.setenv("BENCH_DATA_MANIFEST", str(path))
    monkeypatch.setenv("BENCH_DATA_URL", server.url)
    return server


def test_a_missing_dataset_is_fetched_on_first_use_with_a_line_saying_so(roots, network):
    from bench.engine import progress
    from bench.runner import DataCache

    stream = io.StringIO()
    previous = progress.use(progress.Reporter("lines", stream))
    try:
        data = DataCache().get("sst2")
    finally:
        progress.use(previous)
    assert data.root == roots[0] / "sst2" and len(data.train) == 240
    assert "sst2: not in" in stream.getvalue() and "fetching it from its public sources" in stream.getvalue()


# --- end to end, and the real sources -------------------------------------------------------------

@pytest.mark.slow
def test_fresh_clone_fetches_then_runs_a_smoke_cell(roots, network, tmp_path):
    """No ../shared and no cache: `bench data fetch` from the (local) network, then a smoke-sized run."""
    r = runner.invoke(app, ["data", "fetch", "sst2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (roots[0] / "sst2" / "train.csv").is_file()
    out = tmp_path / "out"
    r = runner.invoke(app, ["run", "-a", "badnets", "-d", "none", "--dataset", "sst2", "--profile", "smoke",
                            "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    record = json.loads(next((out / "records").glob("*.json")).read_text())
    assert record["row"]["dataset"] == "sst2" and record["row"]["cacc"] > 0.6  # the toy task is learnt


def _git_copies() -> Path | None:
    for root in (os.environ.get(datafetch.GIT_ENV), "/work/.mirror"):
        if root and all((Path(root) / r.replace("/", "+") / "repo").is_dir() for r in (MUSCLE, STYLEATTACK)):
            return Path(root)
    return None


@pytest.mark.slow
def test_the_real_sources_build_the_manifest_byte_for_byte(tmp_path):
    git = _git_copies()
    if git is None:
        pytest.skip(f"no local git copies of {MUSCLE} and {STYLEATTACK} (set {datafetch.GIT_ENV})")
    manifest = Manifest.load()
    sources = Sources(manifest, tmp_path / "downloads", git_root=git)
    fetch(["sst2", "hsol", "musclelora-release"], tmp_path / "data", manifest=manifest, sources=sources)
    names, problems, _ = verify(tmp_path / "data", manifest=manifest)
    assert problems == [] and set(names) == {"sst2", "hsol", "musclelora-release"}
