"""Resizing float images (C, H, W) in [0, 1] channel by channel, in float (no 8-bit rounding):
Lanczos for medsr's own resizes, bicubic for the protocols' LR and their baseline."""

from __future__ import annotations

import numpy as np
from PIL import Image as PILImage


def _resize(pixels: np.ndarray, height: int, width: int, method: PILImage.Resampling) -> np.ndarray:
    channels = [np.asarray(PILImage.fromarray(c).resize((width, height), method))
                for c in pixels.astype(np.float32, copy=False)]
    return np.clip(np.stack(channels), 0, 1)


def resize_lanczos(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    return _resize(pixels, height, width, PILImage.Resampling.LANCZOS)


def resize_bicubic(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow's bicubic (antialiased when it shrinks, as the paper's MATLAB-style downscale)."""
    return _resize(pixels, height, width, PILImage.Resampling.BICUBIC)
