"""The field's two numbers.

CACC: accuracy on the full clean test set. ASR: among the test rows whose true label is not the
target, with the trigger applied, the share predicted as the target label. A prediction of -1 (an
input a defense rejected) is wrong for CACC and not a success for ASR.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def clean_accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or len(y) == 0:
        raise ValueError(f"clean accuracy needs as many predictions as labels (> 0), got {p.shape} and {y.shape}")
    return float((p == y).mean())


def attack_success_rate(predictions: Sequence[int], target_label: int) -> float:
    p = np.asarray(predictions)
    if len(p) == 0:
        raise ValueError("ASR is undefined on an empty poisoned test set")
    return float((p == target_label).mean())
