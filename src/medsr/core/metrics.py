"""Image-quality and fidelity metrics, all with an explicit data range (never an assumed 255).

Definitions, formulas and reasons: docs/METRICS.md.
"""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, distance_transform_edt
from scipy.stats import mannwhitneyu
from skimage.filters import frangi
from skimage.metrics import structural_similarity
from skimage.morphology import skeletonize

SSIM_CONVENTIONS = ("realesrgan", "skimage")


def _prepare(a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool, data_range: float):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[None], b[None]
    if y_channel and a.shape[0] == 3:
        a, b = luma(a, data_range), luma(b, data_range)
    if crop_border:
        inner = np.s_[:, crop_border:-crop_border, crop_border:-crop_border]
        a, b = a[inner], b[inner]
    return a, b


def luma(rgb: np.ndarray, data_range: float) -> np.ndarray:
    """BT.601 luma (the toolbox's "Y channel"), in the same data range: 16 + (65.481 R + 128.553 G
    + 24.966 B) on a 0..255 scale, scaled to ``data_range``."""
    weights = np.array([65.481, 128.553, 24.966]).reshape(3, 1, 1) / 255
    return (np.sum(rgb * weights, axis=0, keepdims=True) + 16 / 255 * data_range)


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float, crop_border: int = 0, y_channel: bool = False,
         mask: np.ndarray | None = None) -> float:
    """10 log10(data_range^2 / MSE) over all pixels and channels (or the pixels of ``mask``, an
    (H, W) boolean array); infinite for identical images.

    Arrays are (H, W) or (C, H, W) in the same units as ``data_range`` (255 for 8-bit values,
    65535 for 16-bit, 1 for [0, 1] floats).
    """
    a, b = _prepare(a, b, crop_border, y_channel, data_range)
    error = (a - b) ** 2
    if mask is not None:
        error = error[:, _inner(mask, crop_border)]
    mse = float(np.mean(error))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def _inner(mask: np.ndarray, border: int) -> np.ndarray:
    mask = np.asarray(mask, bool)
    return mask[border:-border, border:-border] if border else mask


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float, convention: str = "realesrgan",
         crop_border: int = 0, y_channel: bool = False, mask: np.ndarray | None = None) -> float:
    """Mean SSIM over the image and channels (or over the window centres in ``mask``).

    ``realesrgan`` (the Real-ESRGAN/BasicSR toolbox): 11x11 Gaussian window (sigma 1.5) over the
    'valid' region, population statistics, C1 = (0.01 L)^2, C2 = (0.03 L)^2: scikit-image's
    ``structural_similarity`` with those settings (a test checks it against the formula).
    ``skimage``: scikit-image's defaults (7x7 uniform window, sample covariance).
    """
    if convention not in SSIM_CONVENTIONS:
        raise ValueError(f"unknown SSIM convention {convention!r}; choose {', '.join(SSIM_CONVENTIONS)}")
    a, b = _prepare(a, b, crop_border, y_channel, data_range)
    if convention == "realesrgan":
        settings, pad = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}, 5
    else:
        settings, pad = {}, 3
    _, ssim_map = structural_similarity(a, b, data_range=data_range, channel_axis=0, full=True, **settings)
    # skimage's mean leaves out the windows that overhang the border (the 'valid' region); so do we
    valid = np.zeros(ssim_map.shape[1:], bool)
    valid[pad:-pad, pad:-pad] = True
    if mask is not None:
        valid &= _inner(mask, crop_border)
    return float(ssim_map[:, valid].mean())


# ---------------------------------------------------------------------------------------------
# Fine-structure fidelity (fundus vessels)


def vesselness(gray: np.ndarray, *, sigmas: tuple[float, ...] = (2, 3, 4)) -> np.ndarray:
    """Multi-scale Frangi vesselness of dark tubular structures (vessels on a fundus green channel).

    Scales 2-4 pixels suit vessels of 512-pixel fundus images; scale 1 answers to background texture
    and noise more than to vessels (docs/METRICS.md).
    """
    return frangi(np.asarray(gray, np.float64), sigmas=sigmas, black_ridges=True)


def field_of_view(rgb_or_gray: np.ndarray, *, threshold: float = 0.06) -> np.ndarray:
    """Pixels inside the fundus disc: brighter than ``threshold`` (in [0, 1]) in the mean channel,
    minus a margin so the disc's rim is not mistaken for a vessel."""
    mean = np.asarray(rgb_or_gray).reshape(-1, *np.shape(rgb_or_gray)[-2:]).mean(0)
    return binary_erosion(mean > threshold, iterations=8)


def vessel_agreement(sr_vessels: np.ndarray, gt_vessels: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two vesselness maps inside ``mask`` (1 = same vessel map)."""
    x, y = sr_vessels[mask], gt_vessels[mask]
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative (ties count half): the Mann-Whitney U of positives against negatives, over their pairs."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    positives, negatives = scores[labels], scores[~labels]
    if not positives.size or not negatives.size:
        return float("nan")
    return float(mannwhitneyu(positives, negatives).statistic / (positives.size * negatives.size))


THIN_VESSEL_WIDTH = 3  # pixels at the protocol's 512 px: the branches interpolation blurs away


def thin_vessels(annotation: np.ndarray, *, max_width: float = THIN_VESSEL_WIDTH) -> np.ndarray:
    """Annotated vessel pixels whose vessel is at most ``max_width`` pixels wide.

    The width at a centre-line pixel (the annotation's skeleton) is 2 d - 1, d its distance to the
    background; every vessel pixel takes the width of its nearest centre-line pixel.
    """
    annotation = np.asarray(annotation, bool)
    if not annotation.any():
        return annotation.copy()
    centre = skeletonize(annotation)
    width = 2 * distance_transform_edt(annotation) - 1
    _, (rows, cols) = distance_transform_edt(~centre, return_indices=True)
    return annotation & (width[rows, cols] <= max_width)


def thin_vessel_regions(annotation: np.ndarray, fov: np.ndarray, *, max_width: float = THIN_VESSEL_WIDTH
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(thin, considered): the thin annotated vessels (``thin_vessels``), and the pixels their AUC
    scores: inside ``fov``, without the wider vessels and a 2-pixel band around them, so that the
    trunks every method keeps do not decide. They depend on the annotation alone: one image's
    outputs share them."""
    annotation = np.asarray(annotation, bool)
    thin = thin_vessels(annotation, max_width=max_width)
    near_wide = binary_dilation(annotation & ~thin, iterations=2)
    return thin, fov & (thin | ~(annotation | near_wide))


def thin_vessel_auc(vessels: np.ndarray, annotation: np.ndarray, fov: np.ndarray, *,
                    max_width: float = THIN_VESSEL_WIDTH) -> float:
    """AUC of a vesselness map for telling thin annotated vessels from the background, over the
    pixels ``thin_vessel_regions`` considers."""
    thin, considered = thin_vessel_regions(annotation, fov, max_width=max_width)
    return auc(vessels[considered], thin[considered])


def chest_region(shape: tuple[int, int], *, margin: float = 0.1) -> np.ndarray:
    """The chest X-ray's anatomy mask: the image without a border band of ``margin`` of each side,
    where collimator edges, burned-in labels and markers sit in PA/AP views (the NIH set's among them);
    the lungs and mediastinum lie inside it."""
    height, width = shape
    top, left = round(height * margin), round(width * margin)
    region = np.zeros(shape, bool)
    region[top : height - top, left : width - left] = True
    return region


# ---------------------------------------------------------------------------------------------
# Detail kept and detail invented, per frequency band


BANDS = ((0.0625, 0.125), (0.125, 0.25), (0.25, 0.5))  # cycles per pixel


class BandDetail(TypedDict):
    """One frequency band of ``band_detail``."""

    band: str  # "low-high", in cycles per pixel
    kept: float
    invented: float


def band_detail(sr: np.ndarray, gt: np.ndarray, *, bands: tuple[tuple[float, float], ...] = BANDS
                ) -> list[BandDetail]:
    """For each frequency band of two gray images: how much of the GT's detail the SR reproduces
    (``kept``) and how much energy the SR has that the GT does not (``invented``).

    With S, G the windowed spectra in the band, E_g = sum |G|^2, E_s = sum |S|^2, C = Re sum S G*:
    kept = C / E_g (1: GT detail at full amplitude; 0: gone), invented = (E_s - C^2 / E_g) / E_g
    (SR energy uncorrelated with the GT, relative to the GT's energy; 0 for a copy or a blur).
    """
    sr, gt = np.asarray(sr, np.float64), np.asarray(gt, np.float64)
    window = np.outer(np.hanning(gt.shape[0]), np.hanning(gt.shape[1]))
    spec_s = np.fft.fft2((sr - sr.mean()) * window)
    spec_g = np.fft.fft2((gt - gt.mean()) * window)
    fy, fx = np.fft.fftfreq(gt.shape[0]), np.fft.fftfreq(gt.shape[1])
    radius = np.sqrt(fy[:, None] ** 2 + fx[None] ** 2)
    out: list[BandDetail] = []
    for low, high in bands:
        band = (radius >= low) & (radius < high)
        e_g = float(np.sum(np.abs(spec_g[band]) ** 2))
        e_s = float(np.sum(np.abs(spec_s[band]) ** 2))
        cross = float(np.real(np.sum(spec_s[band] * np.conj(spec_g[band]))))
        if e_g == 0:
            out.append({"band": f"{low:g}-{high:g}", "kept": float("nan"), "invented": float("nan")})
            continue
        out.append({"band": f"{low:g}-{high:g}", "kept": cross / e_g, "invented": max(0.0, e_s - cross**2 / e_g) / e_g})
    return out
