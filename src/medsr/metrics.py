"""Image-quality metrics with an explicit data range (never an assumed 255)."""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import structural_similarity


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float) -> float:
    """10 log10(data_range^2 / MSE); infinite for identical images."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float) -> float:
    """SSIM of (C, H, W) or (H, W) arrays in Real-ESRGAN's convention: 11x11 Gaussian window
    (sigma 1.5), population covariance, channels averaged."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    channel_axis = 0 if a.ndim == 3 else None
    return float(structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, channel_axis=channel_axis))
