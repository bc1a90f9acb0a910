"""bench: a backdoor attack-and-defense benchmark for language-model text classifiers."""

from .registry import register

__all__ = ["register"]
__version__ = "0.1.0"
