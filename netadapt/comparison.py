"""Comparing networks on the same test images: paired bootstrap intervals and the multiplier curve.

Two networks scored on the same images are paired: most images are right (or
wrong) for both, so the difference of their accuracies is far less noisy than
either accuracy alone, and resampling images, not networks, is what a
confidence interval of that difference needs (Efron & Tibshirani, ch. 13).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDifference", "latency_at_accuracy", "paired_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of network a minus network b on the same images, in percentage points, with a bootstrap interval."""

    mean_pts: float
    ci_low_pts: float
    ci_high_pts: float
    level: float  # e.g. 0.95
    resamples: int


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = 2000, seed: int = 0,
                      level: float = 0.95) -> PairedDifference:
    """a's accuracy minus b's with a percentile bootstrap interval over the images.

    Args:
        correct_a, correct_b: whether each image was classified right, shape
            [images] or [runs, images] (several training seeds: each image's
            score is its mean over the runs, so seed noise is averaged in
            and the images stay paired).
        resamples: bootstrap resamples of the images.
        seed: seeds the resampling, so the interval is reproducible.
        level: the interval's coverage.

    Raises:
        ValueError: the arrays do not cover the same images, or are empty.
    """
    a, b = _per_image(correct_a), _per_image(correct_b)
    if a.shape != b.shape or not a.size:
        raise ValueError(f"paired_difference needs scores of the same, non-empty set of images, got {a.shape} and {b.shape}")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples} and {level}")
    difference = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 100):  # chunks bound the index array's memory on large test sets
        stop = min(resamples, start + 100)
        picks = rng.integers(0, difference.size, size=(stop - start, difference.size))
        means[start:stop] = difference[picks].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return PairedDifference(100 * float(difference.mean()), 100 * float(low), 100 * float(high), level, resamples)


def _per_image(correct: np.ndarray) -> np.ndarray:
    array = np.asarray(correct, dtype=float)
    if array.ndim == 2:
        return array.mean(axis=0)
    if array.ndim != 1:
        raise ValueError(f"scores must be [images] or [runs, images], got shape {array.shape}")
    return array


def latency_at_accuracy(latencies_ms: list[float], accuracies: list[float], accuracy: float) -> float:
    """The latency at which a curve of networks (width multipliers) reaches `accuracy`.

    The curve is the multipliers' Pareto front: points sorted by latency,
    without any that is less accurate than a faster one (it adds nothing),
    linear between the rest. Returns the latency where the front reaches
    `accuracy`, interpolated within its segment, or NaN when `accuracy` is
    outside the front's range (below its fastest point or above its most
    accurate): the curve does not say there.
    """
    if len(latencies_ms) != len(accuracies) or not latencies_ms:
        raise ValueError(f"need as many latencies as accuracies, at least one, got {len(latencies_ms)} and {len(accuracies)}")
    order = np.argsort(latencies_ms, kind="stable")
    front_ms: list[float] = []
    front_acc: list[float] = []
    for index in order:
        if not front_acc or accuracies[index] > front_acc[-1]:
            front_ms.append(float(latencies_ms[index]))
            front_acc.append(float(accuracies[index]))
    if accuracy < front_acc[0] or accuracy > front_acc[-1]:
        return float("nan")
    if accuracy == front_acc[0]:
        return front_ms[0]
    reached = next(i for i, value in enumerate(front_acc) if value >= accuracy)  # the point before is below
    share = (accuracy - front_acc[reached - 1]) / (front_acc[reached] - front_acc[reached - 1])
    return front_ms[reached - 1] + share * (front_ms[reached] - front_ms[reached - 1])
