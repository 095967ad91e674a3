"""How sure a figure is: the 95 % Wilson interval of an accuracy, and mean and spread over seeds."""
from __future__ import annotations

import math
import statistics

Z95 = 1.959964  # the standard normal's 97.5th percentile


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval (Wilson 1927) for a proportion `accuracy` measured on n test
    images: the test set's sampling error. Unlike the normal approximation p ± z sqrt(p(1-p)/n),
    it stays inside [0, 1] and is not empty at 0 % or 100 %."""
    if n <= 0:
        return (0.0, 1.0)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    # At 0 % and 100 % one end is exactly 0 or 1; rounding would leave 0.9999999999999999.
    return (0.0 if accuracy <= 0 else max(0.0, centre - half), 1.0 if accuracy >= 1 else min(1.0, centre + half))


def summarise(per_seed: list[dict], accuracies: tuple[str, ...], n_test: int) -> dict:
    """Mean of every numeric figure over seeds, its sample deviation as `NAME_std` (0 for one
    seed), and for the accuracies `NAME_ci`, the Wilson interval of the mean accuracy."""
    out = {}
    numeric = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for key in numeric:
        values = [r[key] for r in per_seed]
        out[key] = statistics.fmean(values)
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    for key in accuracies:
        if key in out:
            out[f"{key}_ci"] = list(wilson_interval(out[key], n_test))
    return out
