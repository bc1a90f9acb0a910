"""Explicit seeds without touching anyone else's random state."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Inside: torch's global generators (CPU and CUDA) seeded with ``seed``. After: as they were.

    For code we do not own (transformers' and peft's initialisers, dropout) that draws from torch's
    global generator; our own code passes ``torch.Generator`` / ``numpy.random.Generator`` objects.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
