"""Paired statistics of evaluations (issue 17); expected values worked out by hand."""

import math

import numpy as np

from medsr.evaluation import stats


def test_bootstrap_interval_brackets_the_mean_and_is_repeatable():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    low, high = stats.bootstrap_interval(values)
    assert 1.0 <= low < 2.5 < high <= 4.0
    assert stats.bootstrap_interval(values) == (low, high)
    assert all(math.isnan(v) for v in stats.bootstrap_interval(np.array([3.0])))  # one image: no spread


def test_paired_difference_and_wins_follow_the_metric_direction():
    model, reference = [2.0, 3.0, 4.0], [1.0, 1.0, 5.0]  # differences 1, 2, -1: mean 2/3
    up = stats.paired(model, reference, "psnr")
    assert math.isclose(up["difference"], 2 / 3) and up["wins"] == 2 and up["n"] == 3
    down = stats.paired(model, reference, "hf_invented")  # lower is better: only the third image wins
    assert down["wins"] == 1
    assert stats.paired([1.0, math.nan], [0.5, 2.0], "psnr")["n"] == 1  # NaN pairs are left out


def test_statistics_compare_every_model_with_the_reference():
    rows = {"bicubic": {"psnr": [30.0, 31.0]}, "model": {"psnr": [30.5, 31.5]}}
    table = stats.statistics(rows, "bicubic")
    assert "vs_reference" not in table["bicubic"]["psnr"]
    entry = table["model"]["psnr"]["vs_reference"]
    assert math.isclose(entry["difference"], 0.5) and entry["wins"] == 2 and entry["ci95"] == [0.5, 0.5]


def test_bootstrap_keeps_the_values_of_the_hand_written_version():
    """Regression: the interval medsr's own resampling gave for these values (before scipy did the
    work, commit d8df07e): 2,000 resamples of the images, seed 0, 2.5th and 97.5th percentiles."""
    values = np.random.default_rng(1).normal(0.3, 0.2, 14)
    low, high = stats.bootstrap_interval(values)
    assert math.isclose(low, 0.2589838733725327, abs_tol=1e-12) and math.isclose(high, 0.38595253751616077,
                                                                                  abs_tol=1e-12)
