"""No defense: plain full fine-tuning on the poisoned data (the reference point of every table)."""

from __future__ import annotations

from bench.defense import Defense
from bench.registry import register


@register("defense", "none")
class NoDefense(Defense):
    """No defense: full fine-tuning of every parameter on the poisoned training set."""
