"""Telling a local path from a Hugging Face hub id, and failing at once when the hub is out of reach.

Without this a typo (``tiny-bertt``) or a missing folder costs ~50 s of hub retries, and in a grid
it surfaces only after earlier cells trained. Names are checked before the first cell.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

_NETWORK: bool | None = None


def looks_like_path(name: str) -> bool:
    """True for what can only be meant as a local path (a hub id is ``name`` or ``owner/name``)."""
    if name.startswith(("/", ".", "~")) or "\\" in name or name.endswith("/") or name.count("/") > 1:
        return True
    if "/" in name:  # owner/name, unless owner is a folder here (data/olid)
        return Path(name.split("/", 1)[0]).expanduser().is_dir()
    return False


def offline_by_setting() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def network_available(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection (probed once per process)."""
    global _NETWORK
    if _NETWORK is None:
        host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            _NETWORK = True
        except OSError:
            _NETWORK = False
    return _NETWORK


def cached_revision(repo_id: str, kind: str = "model") -> str | None:
    """The commit the hub cache's ``main`` points to for ``repo_id`` (None when not cached)."""
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"{kind}s--{repo_id.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None


def hub_revision(repo_id: str, kind: str = "model") -> str | None:
    """The commit a hub id resolves to now: the hub's ``main`` when the hub can be reached, else the
    cache's. Results are keyed by it, so a new revision of a model is a new cell."""
    if not offline_by_setting() and network_available():
        try:
            from huggingface_hub import HfApi

            api = HfApi()
            return (api.model_info if kind == "model" else api.dataset_info)(repo_id).sha
        except Exception:  # noqa: BLE001 - a private or missing repo: the cache (or the load) says more
            pass
    return cached_revision(repo_id, kind)


def in_local_cache(repo_id: str, kind: str) -> bool:
    """Whether the hub cache already holds ``repo_id`` (a model or a dataset)."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover
        return False
    folder = Path(HF_HUB_CACHE) / f"{kind}s--{repo_id.replace('/', '--')}"
    if folder.is_dir():
        return True
    if kind == "dataset":
        from datasets import config

        return any(Path(config.HF_DATASETS_CACHE).glob(repo_id.replace("/", "___") + "*"))
    return False


def check_hub_name(repo_id: str, kind: str, what: str, fix: str, error: type) -> None:
    """Raise ``error`` at once when ``repo_id`` would need the hub and the hub cannot be reached."""
    if in_local_cache(repo_id, kind):
        return
    if offline_by_setting():
        raise error(f"{what} is not a local folder, and is not in the Hugging Face cache while offline mode is set "
                    f"(HF_HUB_OFFLINE); {fix}")
    if not network_available():
        raise error(f"{what} is not a local folder, and the Hugging Face hub cannot be reached (no network); {fix}")
