"""Spread and paired comparisons for evaluation results: bootstrap intervals over images."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import bootstrap

# Which way is better, per metric (docs/METRICS.md): +1 higher, -1 lower.
DIRECTIONS = {"psnr": 1, "ssim": 1, "psnr_inside": 1, "ssim_inside": 1, "vessel_agreement": 1, "vessel_auc": 1,
              "thin_vessel_auc": 1, "hf_kept": 1, "mf_kept": 1,
              "hf_invented": -1, "mf_invented": -1, "lpips": -1, "mae": -1}
RESAMPLES = 2000


def bootstrap_interval(values: np.ndarray, *, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (scipy; ``RESAMPLES`` resamples of the images,
    seeded: the same data give the same interval)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return math.nan, math.nan
    if np.ptp(values) == 0:  # every resample has the same mean (scipy warns and gives NaN)
        return float(values[0]), float(values[0])
    interval = bootstrap((values,), np.mean, n_resamples=RESAMPLES, confidence_level=level, method="percentile",
                         rng=np.random.default_rng(seed), vectorized=True, axis=-1).confidence_interval
    return float(interval.low), float(interval.high)


def describe(values: list[float]) -> dict:
    """Mean and its bootstrap 95% interval over the finite values."""
    finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if not len(finite):
        return {"mean": math.nan, "ci95": [math.nan, math.nan], "n": 0}
    return {"mean": float(finite.mean()), "ci95": list(bootstrap_interval(finite)), "n": int(len(finite))}


def paired(model: list[float], reference: list[float], metric: str) -> dict:
    """Mean of (model - reference) over images where both are finite, its bootstrap 95% interval,
    and on how many images the model is better (by the metric's direction)."""
    pairs = [(m, r) for m, r in zip(model, reference, strict=True) if math.isfinite(m) and math.isfinite(r)]
    if not pairs:
        return {"difference": math.nan, "ci95": [math.nan, math.nan], "wins": 0, "n": 0}
    difference = np.array([m - r for m, r in pairs])
    wins = int(np.sum(np.sign(difference) == DIRECTIONS.get(metric, 1)))
    return {"difference": float(difference.mean()), "ci95": list(bootstrap_interval(difference)),
            "wins": wins, "n": len(pairs)}


def statistics(rows: dict[str, dict[str, list[float]]], reference: str | None) -> dict:
    """``rows[model][metric]`` = per-image values, in one image order for every model.

    Returns ``{model: {metric: {"mean", "ci95", "n", "vs_reference": paired(...)}}}``; the paired
    part only when ``reference`` is one of the models and not the model itself.
    """
    out: dict[str, dict[str, dict]] = {}
    for model, columns in rows.items():
        out[model] = {}
        for metric, values in columns.items():
            entry = describe(values)
            if reference in rows and model != reference and metric in rows[reference]:
                entry["vs_reference"] = paired(values, rows[reference][metric], metric)
            out[model][metric] = entry
    return out
