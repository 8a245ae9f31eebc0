"""What a model added: the detail map and the consistency map of one upscaled image.

- **Detail**: the high-pass part of ``sr - lanczos(lr)``: structure the model drew beyond what plain
  interpolation of the input gives. Zero for Lanczos itself; sharpened edges and invented texture
  both show, so read it with the image (docs/DETAIL_MAPS.md, which also relates it to
  the FDA's sFRC).
- **Consistency**: ``lanczos_down(sr) - lr``: whether the output, brought back to the input's
  size, is still the input. Invented detail that vanishes on downscaling does not show here, which
  is why the detail map exists.

Scores are RMS values in 8-bit levels (1/255 of the range), whatever the image's bit depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medsr.core.kernels import gaussian_blur
from medsr.core.resize import resize_lanczos

FULL_SCALE = 16 / 255  # a difference of 16 levels or more shows at full colour in the maps


@dataclass(frozen=True)
class DetailMaps:
    """(H, W) detail map at the output's size, (h, w) consistency map at the input's, in [0, 1]
    units, and their RMS in 8-bit levels."""

    detail: np.ndarray
    consistency: np.ndarray

    @property
    def detail_score(self) -> float:
        return float(np.sqrt(np.mean(self.detail**2)) * 255)

    @property
    def consistency_score(self) -> float:
        return float(np.sqrt(np.mean(self.consistency**2)) * 255)


def detail_maps(sr: np.ndarray, lr: np.ndarray) -> DetailMaps:
    """Maps of ``sr`` (C, H, W) against its input ``lr`` (C, h, w), both float in [0, 1].

    The detail map is high-passed with a Gaussian of sigma = H / h output pixels (one input pixel),
    so a change of brightness over a region is left to the consistency map.
    """
    height, width = sr.shape[1:]
    difference = (sr - resize_lanczos(lr, height, width)).mean(axis=0)
    sigma = height / lr.shape[1]
    size = 2 * int(np.ceil(3 * sigma)) + 1
    low = gaussian_blur(torch.from_numpy(difference)[None, None], size, sigma)[0, 0].numpy()
    back = resize_lanczos(sr, *lr.shape[1:])
    return DetailMaps(detail=difference - low, consistency=(back - lr).mean(axis=0))


def heat_map(values: np.ndarray, under: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: ``under`` (C, H, W in [0, 1]) as dimmed gray, with |values| in red-yellow
    on top, full colour at ``FULL_SCALE``."""
    gray = under.mean(axis=0) * 0.6
    strength = np.clip(np.abs(values) / FULL_SCALE, 0, 1)
    red = gray + (1 - gray) * np.clip(2 * strength, 0, 1)
    green = gray + (1 - gray) * np.clip(2 * strength - 1, 0, 1) - gray * np.clip(2 * strength, 0, 1) * 0.5
    blue = gray * (1 - strength)
    rgb = np.stack([red, green, blue], axis=2)
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
