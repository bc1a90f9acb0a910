"""Cell claims: several ``bench run`` processes (or machines on a shared folder) split one grid.

Before a process runs a cell it creates ``OUT/claims/<key>.json`` with ``O_EXCL`` (atomic: one
process wins), holding its pid, host and start time; it refreshes the file's modification time while
it works (a heartbeat) and removes it once the record is written. A claim is stale, and is taken
over, when its process is gone (same host, pid not alive) or its heartbeat is older than
``STALE_AFTER`` seconds (a process on another machine that died). A cell claimed by a live process
is left to it. Taking over is one atomic step: the right to remove a stale claim is a token file
named after that very claim, created with ``O_EXCL``, so of several processes that found the same
dead claim exactly one replaces it. Trained victims are claimed the same way (:mod:`bench.models.victim`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import threading
import time
import uuid
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
    def __init__(self, path: Path, nonce: str = ""):
        self.path = path
        self.nonce = nonce  # tells this claim from a later one at the same path
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
            if owner.get("pid") == os.getpid() and owner.get("host") == platform.node() \
                    and owner.get("nonce", "") == self.nonce:
                self.path.unlink()
        except (OSError, ValueError):
            pass


@contextlib.contextmanager
def beating(claim: Claim | None):
    """Refresh ``claim``'s heartbeat from a background thread while the block runs (a long training
    that reports no steps)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_EVERY):
            try:
                os.utime(claim.path)
            except OSError:
                pass

    thread = threading.Thread(target=beat, daemon=True) if claim is not None else None
    if thread is not None:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join()


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


def _identity(path: Path) -> str | None:
    """What tells the claim at ``path`` from a later one there: its nonce (a digest of older claims)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        nonce = json.loads(raw).get("nonce")
    except (ValueError, AttributeError):
        nonce = None
    return str(nonce) if nonce else hashlib.sha1(raw).hexdigest()[:16]


def _take_over(folder: Path, key: str, path: Path, me: dict) -> bool:
    """Remove the stale claim at ``path`` so that, of processes racing for it, exactly one does: the
    right to remove it is the token ``<key>.takeover-<claim identity>-<n>``, created with ``O_EXCL``;
    its holder removes the claim only if it is still that same stale claim. A token left by a process
    that died holding it is stale like a claim, and the next ``n`` is tried. False: another process is
    taking the claim over."""
    ident = _identity(path)
    if ident is None:
        return True  # gone meanwhile
    for n in range(20):
        token = folder / f"{key}.takeover-{ident}-{n}"
        try:
            fd = os.open(token, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if is_stale(token):
                continue
            return False
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            if _identity(path) == ident and is_stale(path):  # nobody else may remove it while we hold the token
                path.unlink(missing_ok=True)
            return True
        finally:
            token.unlink(missing_ok=True)
    return False


def try_claim(out_dir: Path, key: str, label: str = "") -> Claim | None:
    """Claim the cell ``key`` for this process; None when a live process holds it."""
    folder = Path(out_dir) / "claims"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    me = {"pid": os.getpid(), "host": platform.node(), "cell": label,
          "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "nonce": uuid.uuid4().hex}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not is_stale(path) or not _take_over(folder, key, path, me):
                return None
            continue  # the stale claim is gone: try to create ours again (O_EXCL: still one winner)
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return Claim(path, me["nonce"])
    return None
