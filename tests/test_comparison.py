"""Paired bootstrap intervals and the multiplier curve's latency at an accuracy."""

import math

import numpy as np
import pytest

from netadapt.comparison import latency_at_accuracy, paired_difference


def test_paired_difference_of_identical_networks_is_exactly_zero():
    rng = np.random.default_rng(0)
    correct = rng.random(1000) < 0.8
    same = paired_difference(correct, correct)
    assert (same.mean_pts, same.ci_low_pts, same.ci_high_pts) == (0.0, 0.0, 0.0)


def test_paired_difference_brackets_a_known_gain_and_pairing_narrows_it():
    rng = np.random.default_rng(1)
    b = rng.random(5000) < 0.8
    a = b.copy()
    flips = rng.choice(np.flatnonzero(~b), size=100, replace=False)  # a gets 100 more images right: +2 points
    a[flips] = True
    paired = paired_difference(a, b, resamples=2000, seed=0)
    assert paired.mean_pts == pytest.approx(2.0)
    assert 0 < paired.ci_low_pts < 2.0 < paired.ci_high_pts < 4.0
    # Unpaired (a's errors on other images), the same 2-point gain is far less certain.
    shuffled = rng.permutation(a)
    unpaired = paired_difference(shuffled, b, resamples=2000, seed=0)
    assert unpaired.ci_high_pts - unpaired.ci_low_pts > 3 * (paired.ci_high_pts - paired.ci_low_pts)
    # The same seed gives the same interval.
    assert paired_difference(a, b, resamples=2000, seed=0) == paired


def test_paired_difference_averages_seeds_per_image():
    b = np.array([[1, 0, 0, 0], [1, 0, 0, 0]], dtype=bool)
    a = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=bool)  # each seed +1 image: +25 points
    assert paired_difference(a, b, resamples=50).mean_pts == pytest.approx(25.0)
    with pytest.raises(ValueError, match="same, non-empty set of images"):
        paired_difference(a[:, :3], b)
    with pytest.raises(ValueError, match=r"\[images\] or \[runs, images\]"):
        paired_difference(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))


def test_latency_at_accuracy_interpolates_the_curve_and_refuses_to_extrapolate():
    ms, acc = [1.0, 2.0, 3.0], [0.80, 0.85, 0.90]
    assert latency_at_accuracy(ms, acc, 0.875) == pytest.approx(2.5)
    assert latency_at_accuracy(ms[::-1], acc[::-1], 0.875) == pytest.approx(2.5)  # order does not matter
    assert latency_at_accuracy(ms, acc, 0.80) == 1.0 and latency_at_accuracy(ms, acc, 0.90) == 3.0
    assert math.isnan(latency_at_accuracy(ms, acc, 0.95)) and math.isnan(latency_at_accuracy(ms, acc, 0.70))
    # A slower, less accurate point is off the front: the curve runs from 1 ms straight to 3 ms.
    assert latency_at_accuracy([1.0, 2.0, 3.0], [0.85, 0.80, 0.90], 0.875) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="as many latencies as accuracies"):
        latency_at_accuracy([1.0], [0.8, 0.9], 0.85)
