"""What a held-out accuracy must beat: trivial rules computed on the same held-out examples.

A reward model at 0.55 pairwise accuracy means little if "the longer answer is better" already gets 0.60, and a
cost model's sign accuracy of 0.70 is nothing if 70% of the responses are safe. Every score-model evaluation
reports these next to its accuracies (keys `baseline_*`).
"""

from __future__ import annotations

import numpy as np


def pairwise(first_length, second_length) -> dict:
    """`baseline_longer`: accuracy of "the first of each pair is the longer one" (ties count ½), for pairs whose
    model accuracy is P(score(first) > score(second)); lengths are (N,) token counts. {} without lengths."""
    if first_length is None or second_length is None:
        return {}
    a, b = np.asarray(first_length), np.asarray(second_length)
    if a.size == 0:
        return {}
    return {"baseline_longer": float(np.mean((a > b) + 0.5 * (a == b)))}


def majority(positive, name: str = "") -> dict:
    """`baseline_majority[_name]`: accuracy of always predicting the more frequent class of the (N,) bool labels."""
    y = np.asarray(positive, bool)
    if y.size == 0:
        return {}
    rate = float(np.mean(y))
    return {f"baseline_majority{'_' + name if name else ''}": max(rate, 1.0 - rate)}
