"""Cell claims: several ``bench run`` processes (or machines on a shared folder) split one grid.

Before a process runs a cell it creates ``OUT/claims/<key>.json`` with ``O_EXCL`` (atomic: one
process wins), holding its pid, host and start time; it refreshes the file's modification time while
it works (a heartbeat) and removes it once the record is written. A claim is stale, and is taken
over, when its process is gone (same host, pid not alive) or its heartbeat is older than
``STALE_AFTER`` seconds (a process on another machine that died). A cell claimed by a live process
is left to it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

STALE_AFTER = 20 * 60  # seconds without a heartbeat
HEARTBEAT_EVERY = 30.0


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class Claim:
    def __init__(self, path: Path):
        self.path = path
        self.last_beat = time.monotonic()

    def heartbeat(self) -> None:
        if time.monotonic() - self.last_beat >= HEARTBEAT_EVERY:
            self.last_beat = time.monotonic()
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
            if owner.get("pid") == os.getpid() and owner.get("host") == platform.node():
                self.path.unlink()
        except (OSError, ValueError):
            pass


def _owner(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_stale(path: Path) -> bool:
    owner = _owner(path)
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False  # gone: not ours to judge
    if owner is None:  # unreadable or half-written: stale only once old
        return age > STALE_AFTER
    if owner.get("host") == platform.node():
        return not pid_alive(int(owner.get("pid", 0) or 0)) or age > STALE_AFTER
    return age > STALE_AFTER


def try_claim(out_dir: Path, key: str, label: str = "") -> Claim | None:
    """Claim the cell ``key`` for this process; None when a live process holds it."""
    folder = Path(out_dir) / "claims"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    me = {"pid": os.getpid(), "host": platform.node(), "cell": label,
          "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not is_stale(path):
                return None
            # take over: move the stale claim aside under a name only we use (rename is atomic, one
            # process wins), then try to create ours again
            try:
                os.rename(path, folder / f"{key}.stale.{os.getpid()}")
                os.unlink(folder / f"{key}.stale.{os.getpid()}")
            except OSError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return Claim(path)
    return None
