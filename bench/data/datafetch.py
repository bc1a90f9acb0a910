"""The benchmark data from its public sources: fetch, build, verify.

The manifest committed beside this file (``data_manifest.json``) pins each source repository to a
commit and holds the sha256 and size of every source file the recipes read (``sources``) and of every
file they build (``built``). :func:`fetch` downloads the source files (or reads them from a local
git copy), checks each against the manifest, builds the dataset folder with :mod:`bench.data.databuild` in
a temporary folder, checks the built files, and only then renames the folder into place: a failed or
interrupted fetch never leaves a half-built dataset. :func:`verify` checks any data folder.

Environment: ``BENCH_DATA_URL`` (base address of a mirror of the source files, laid out as
``BASE/<owner>/<name>/<commit>/<path>``), ``BENCH_SOURCE_GIT`` (a folder holding
``<owner>+<name>/repo`` git directories to read the sources from instead of downloading),
``BENCH_DATA_MANIFEST`` (another manifest: tests, other sources).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..engine import progress
from ..registry import suggest
from . import DataError
from . import databuild

MANIFEST_PATH = Path(__file__).with_name("data_manifest.json")
MANIFEST_ENV = "BENCH_DATA_MANIFEST"
URL_ENV = "BENCH_DATA_URL"
GIT_ENV = "BENCH_SOURCE_GIT"
DEFAULT_URL = "https://raw.githubusercontent.com"
NAMES = tuple(databuild.FOLDERS)
NETWORK_ERRORS = (http.client.HTTPException, OSError)  # OSError covers URLError, timeouts, refused connections


class FetchError(DataError):
    """A download that failed or did not match its checksum."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Manifest:
    sources: dict  # repository -> {"commit": ..., "files": {path: {"sha256", "size"}}}
    built: dict  # path under the data root -> {"sha256", "size"}
    path: Path | None = None

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Manifest":
        path = Path(path or os.environ.get(MANIFEST_ENV) or MANIFEST_PATH)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"data manifest {path}: cannot be read ({e})") from None
        return cls(raw.get("sources", {}), raw.get("built", {}), path)

    def source_files(self) -> dict[str, list[str]]:
        return {repo: sorted(s["files"]) for repo, s in self.sources.items()}

    def needs(self, name: str) -> list[tuple[str, str]]:
        return databuild.needs(name, self.source_files())

    def built_under(self, folder: str) -> dict:
        return {p: e for p, e in self.built.items() if p.startswith(folder + "/")}


def check_names(names: list[str]) -> list[str]:
    for n in names:
        if n not in NAMES:
            raise DataError(f"no dataset {n!r} to fetch{suggest(n, list(NAMES))}; the names are {', '.join(NAMES)}")
    return list(dict.fromkeys(names)) or list(NAMES)


def cache_root() -> Path:
    from ..models.backbones import cache_dir

    return cache_dir() / "data"


class Sources:
    """The pinned source files, each checked against the manifest: from the download cache
    (``<cache>/downloads/<owner>+<name>/<commit>/<path>``), a local git copy, or the network."""

    def __init__(self, manifest: Manifest, downloads: Path, base_url: str | None = None,
                 git_root: str | os.PathLike | None = None, timeout: float = 30.0, retries: int = 2):
        self.manifest, self.downloads = manifest, Path(downloads)
        self.base_url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        git_root = git_root or os.environ.get(GIT_ENV)
        self.git_root = Path(git_root) if git_root else None
        self.timeout, self.retries = timeout, retries

    def entry(self, repo: str, path: str) -> tuple[str, dict]:
        source = self.manifest.sources.get(repo)
        if source is None or path not in source["files"]:
            raise DataError(f"{repo}:{path} is not pinned in the data manifest {self.manifest.path}")
        return source["commit"], source["files"][path]

    def url(self, repo: str, path: str) -> str:
        commit, _ = self.entry(repo, path)
        return f"{self.base_url}/{repo}/{commit}/{urllib.parse.quote(path)}"

    def _cached(self, repo: str, path: str) -> Path:
        commit, _ = self.entry(repo, path)
        return self.downloads / repo.replace("/", "+") / commit / path

    def _kept(self, repo: str, path: str) -> bytes | None:
        """The file's bytes from the download cache when it is there and matches the manifest."""
        f = self._cached(repo, path)
        if not f.is_file():
            return None
        data = f.read_bytes()
        return data if sha256(data) == self.entry(repo, path)[1]["sha256"] else None

    def read(self, repo: str, path: str, stage=None) -> bytes:
        """The file's bytes, checked; fetched (and kept in the download cache) if not there yet."""
        kept = self._kept(repo, path)
        if kept is not None:
            return kept
        f = self._cached(repo, path)
        if self.git_root:
            data = self._from_git(repo, path)
            if stage is not None:
                stage.update(len(data))
        else:
            data = self._download(repo, path, stage)
        self._check(repo, path, data)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.name}.{uuid.uuid4().hex}.part")
        tmp.write_bytes(data)
        os.replace(tmp, f)
        return data

    def _check(self, repo: str, path: str, data: bytes) -> None:
        _, e = self.entry(repo, path)
        where = self.url(repo, path) if not self.git_root else f"{self.git_root}/{repo}:{path}"
        if len(data) != e["size"]:
            raise FetchError(f"{where}: got {len(data)} bytes, expected {e['size']} (a truncated or changed file); "
                             "run the command again, and if it persists the source no longer matches the manifest")
        got = sha256(data)
        if got != e["sha256"]:
            raise FetchError(f"{where}: checksum mismatch: expected sha256 {e['sha256']}, got {got}; the file "
                             "differs from the pinned source (a corrupt download, or a mirror serving other data)")

    def _from_git(self, repo: str, path: str) -> bytes:
        commit, _ = self.entry(repo, path)
        git_dir = self.git_root / repo.replace("/", "+") / "repo"
        done = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{commit}:{path}"], capture_output=True)
        if done.returncode:
            raise FetchError(f"{git_dir}: cannot read {commit}:{path} ({done.stderr.decode().strip()})")
        return done.stdout

    def _download(self, repo: str, path: str, stage=None) -> bytes:
        """The file's bytes from the network, tried ``retries`` more times on a network error or a short
        read; a short read that persists is returned as it is (the size check names it)."""
        url, size = self.url(repo, path), self.entry(repo, path)[1]["size"]
        for attempt in range(self.retries + 1):
            data = bytearray()
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as r:
                    while chunk := r.read(1 << 16):
                        data += chunk
                        if stage is not None:
                            stage.update(len(chunk))
            except urllib.error.HTTPError as e:
                raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
            except http.client.IncompleteRead:
                pass  # the connection closed early: a short read
            except NETWORK_ERRORS as e:
                if attempt == self.retries:
                    raise FetchError(f"{url}: cannot download ({type(e).__name__}: {e})") from None
            if len(data) == size or attempt == self.retries:
                return bytes(data)
            if stage is not None:
                stage.update(-len(data))
            time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def prefetch(self, files: list[tuple[str, str]], what: str) -> None:
        """Bring every file into the download cache, with one progress stage over their bytes."""
        todo = [(r, p) for r, p in dict.fromkeys(files) if self._kept(r, p) is None]
        if not todo:
            return
        total = sum(self.entry(r, p)[1]["size"] for r, p in todo)
        verb = "reading from git" if self.git_root else "downloading"
        with progress.stage(f"{what}: {verb} {len(todo)} source files", total=total, unit="B") as stage:
            for repo, path in todo:
                self.read(repo, path, stage)


def _replace_dir(built: Path, final: Path) -> None:
    """Put ``built`` at ``final``; an older ``final`` is moved aside first, then removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(built, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fetch(names: list[str] | None = None, dest: str | os.PathLike | None = None, force: bool = False,
          manifest: Manifest | None = None, sources: Sources | None = None) -> dict[str, Path]:
    """Download, build and check each dataset into ``dest`` (default the data cache); returns
    name -> folder. A dataset already there is kept unless ``force``."""
    names = check_names(list(names or []))
    manifest = manifest or Manifest.load()
    dest = Path(dest) if dest else cache_root()
    sources = sources or Sources(manifest, cache_root().parent / "downloads")
    out = {}
    for name in names:
        folder = databuild.FOLDERS[name]
        final = dest / folder
        if final.is_dir() and not force:
            progress.note(f"{name}: already in {final} (--force rebuilds it)")
            out[name] = final
            continue
        t0 = time.perf_counter()
        sources.prefetch(manifest.needs(name), name)
        tmp = dest / f".partial-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with progress.stage(f"{name}: building", total=None, unit="file"):
                notes = databuild.build(name, sources.read, tmp, manifest.source_files())
            problems = check_folder(tmp, manifest.built_under(folder), prefix=folder)
            if problems:
                raise DataError(f"{name}: the built files differ from the manifest {manifest.path}: "
                                + "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
            _replace_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for n in notes:
            progress.note(f"{name}: {n}")
        progress.note(f"{name}: built in {final} ({time.perf_counter() - t0:.0f} s)")
        out[name] = final
    return out


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def check_folder(folder: Path, expected: dict, prefix: str) -> list[str]:
    """Problems of ``folder`` (the manifest's ``prefix/`` files) against ``expected``; [] when it matches."""
    problems = []
    for rel, e in sorted(expected.items()):
        f = folder / rel.removeprefix(prefix + "/")
        if not f.is_file():
            problems.append(f"{rel}: missing")
            continue
        got = sha256(f.read_bytes())
        if got != e["sha256"]:
            problems.append(f"{rel}: sha256 {got}, manifest {e['sha256']}")
    return problems


def verify(root: str | os.PathLike, names: list[str] | None = None,
           manifest: Manifest | None = None) -> tuple[list[str], list[str], list[str]]:
    """(names checked, problems, notes) for the data folder ``root``: every built file of each dataset
    present (or of each of ``names``) against the manifest; files the manifest does not list are notes."""
    manifest = manifest or Manifest.load()
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} does not exist")
    asked = check_names(list(names)) if names else [n for n in NAMES if (root / databuild.FOLDERS[n]).is_dir()]
    if not asked:
        raise DataError(f"{root} holds none of the benchmark datasets ({', '.join(databuild.FOLDERS.values())}); "
                        "is it the data folder? `bench data fetch` builds one")
    problems, notes = [], []
    for name in asked:
        folder = databuild.FOLDERS[name]
        expected = manifest.built_under(folder)
        problems += check_folder(root / folder, expected, folder)
        extra = [f for f in _files(root / folder) if f"{folder}/{f}" not in expected] if (root / folder).is_dir() else []
        if extra:
            notes.append(f"{folder}: {len(extra)} file(s) the manifest does not list (not checked): "
                         + ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
    return asked, problems, notes


def make_manifest(built_root: str | os.PathLike, sources: dict[str, str], git_root: str | os.PathLike) -> dict:
    """A manifest from a built data folder and local git copies of the sources (repository -> commit):
    for maintainers, when a source or a recipe changes."""
    built_root, git_root = Path(built_root), Path(git_root)
    # every file under poison_data/ is pinned for the release; the recipes' other files are added after
    listing = subprocess.run(["git", "--git-dir", str(git_root / databuild.MUSCLE.replace("/", "+") / "repo"),
                              "ls-tree", "-r", "--name-only", sources[databuild.MUSCLE], "poison_data/sst-2/1",
                              "poison_data/hsol/1"], capture_output=True, text=True, check=True).stdout.split()
    files = {databuild.MUSCLE: set(listing)}
    skeleton = {r: {"commit": c, "files": {p: None for p in files.get(r, ())}} for r, c in sources.items()}
    for name in NAMES:
        for repo, path in databuild.needs(name, {r: sorted(f) for r, f in files.items()}):
            skeleton[repo]["files"][path] = None
    git = Sources(Manifest(skeleton, {}), Path("/nonexistent"), git_root=git_root)
    for repo, s in skeleton.items():
        for path in list(s["files"]):
            data = git._from_git(repo, path)
            s["files"][path] = {"sha256": sha256(data), "size": len(data)}
        s["files"] = dict(sorted(s["files"].items()))
    built = {}
    for name in NAMES:
        folder = databuild.FOLDERS[name]
        for rel in _files(built_root / folder):
            data = (built_root / folder / rel).read_bytes()
            built[f"{folder}/{rel}"] = {"sha256": sha256(data), "size": len(data)}
    return {"about": "bench data: pinned source files (sha256, size) and the files `bench data fetch` builds from "
                     "them; made by `bench data manifest`",
            "sources": skeleton, "built": built}
