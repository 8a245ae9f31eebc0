"""Values that stay measurements: every output averages back to its input.

A pixel of the input is the signal of a detector element: the mean of what the s x s output pixels
over it hold (area-weighted where the scale is not an integer). No network keeps that by itself,
so after the network medsr *projects* its output onto the outputs that do (iterative
back-projection, Irani & Peleg, CVGIP 1991; with the box mean, one step is exact):

- integer scales: first ``SMOOTH_ROUNDS`` rounds of back-projection with a smooth kernel (the
  residual, input minus the output's block means, upsampled bicubically and added), which spread
  the correction across block borders; then what remains is removed exactly: each block of s x s
  output pixels is shifted by one constant so that its mean is the input pixel, with the output
  kept within the input's range (the Euclidean projection onto both constraints, block by block).
  The box step alone moves the output least but draws the block grid wherever the network
  disagrees with its input (docs/CONSISTENCY.md measures both). Last, values are rounded to stored
  levels so that each block's sum stays exact (largest remainders): the written file averages back
  exactly;
- other scales: the least-squares correction of the area-weighted mean, alternated with the range
  bound (a few rounds; what remains is measured).

``measure`` computes the consistency of any output, and ``check`` refuses one beyond ``Tolerance``.
All values are in the image's [0, 1] units; reported errors in % of the input's value span.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from medsr.core.image import OutputError

SMOOTH_ROUNDS = 20  # the smooth kernel's correction falls by at least 4x per 5 rounds at the worst frequency
BISECTION_STEPS = 48  # of the per-block shift: 2**-48 of the range, far below a 16-bit level
ALTERNATING_ROUNDS = 16  # non-integer scales: rounds of correction and range bound (see `_alternating`)


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    """The most an output may differ from its input, averaged back onto the input's grid.

    Attributes:
        mean_shift: |mean difference|, % of the input's value span.
        mean_abs_error: mean absolute difference, % of the span.
        beyond_range: % of output pixels outside the input's range by more than ``margin`` % of the span.
    """

    mean_shift: float = 0.1
    mean_abs_error: float = 1.0
    beyond_range: float = 0.1
    margin: float = 2.0

    def __post_init__(self) -> None:
        for name in ("mean_shift", "mean_abs_error", "beyond_range", "margin"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"tolerance {name}={value}: must be a finite number >= 0")


DEFAULT_TOLERANCE = Tolerance()


@dataclass(frozen=True, kw_only=True)
class Consistency:
    """How far an output is from averaging back to its input (% of the input's value span)."""

    mean_shift: float
    mean_abs_error: float
    beyond_range: float  # % of output pixels beyond the input's range by more than the margin

    def exceeds(self, tolerance: Tolerance = DEFAULT_TOLERANCE) -> list[str]:
        """What exceeds ``tolerance``, in words (empty when within it)."""
        found = []
        if abs(self.mean_shift) > tolerance.mean_shift:
            found.append(f"mean shift {self.mean_shift:+.2f}% (tolerance {tolerance.mean_shift:g}%)")
        if self.mean_abs_error > tolerance.mean_abs_error:
            found.append(f"mean abs error {self.mean_abs_error:.2f}% (tolerance {tolerance.mean_abs_error:g}%)")
        if self.beyond_range > tolerance.beyond_range:
            found.append(f"{self.beyond_range:.2f}% of pixels beyond the input's range (tolerance "
                         f"{tolerance.beyond_range:g}%)")
        return found

    def __str__(self) -> str:
        shift = round(self.mean_shift, 3) + 0.0  # no "-0.000%" for float noise
        return (f"mean shift {shift:+.3f}%, mean abs error {self.mean_abs_error:.3f}%, "
                f"{self.beyond_range:.3f}% beyond range")

    @classmethod
    def worst(cls, found: list[Consistency]) -> Consistency | None:
        """The worst of each figure (the frames of a stack); None for none."""
        if not found:
            return None
        return cls(mean_shift=max((c.mean_shift for c in found), key=abs),
                   mean_abs_error=max(c.mean_abs_error for c in found),
                   beyond_range=max(c.beyond_range for c in found))


class ConsistencyError(OutputError):
    """An output does not average back to its input within the tolerance."""


# ---------------------------------------------------------------------------------------------
# The operator: output pixels averaged onto the input's grid


def _integer_factor(out_len: int, in_len: int) -> int | None:
    return out_len // in_len if out_len % in_len == 0 else None


def area_matrix(in_len: int, out_len: int) -> np.ndarray:
    """(in_len, out_len): row i holds the weights of the output pixels that input pixel i covers
    (their overlap with it, as a share of its area); rows sum to one."""
    ratio = out_len / in_len
    edges = np.arange(in_len + 1) * ratio  # input pixel i covers output coordinates [edges[i], edges[i+1])
    starts, ends = np.arange(out_len), np.arange(1, out_len + 1)
    overlap = np.minimum(edges[1:, None], ends[None]) - np.maximum(edges[:-1, None], starts[None])
    return np.clip(overlap, 0, None) / ratio


def average_back(sr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``sr`` (C, H, W) averaged onto an input grid of ``size`` (h, w): (C, h, w), float64."""
    (height, width), (out_h, out_w) = size, sr.shape[1:]
    fy, fx = _integer_factor(out_h, height), _integer_factor(out_w, width)
    if fy and fx:
        return sr.reshape(sr.shape[0], height, fy, width, fx).mean(axis=(2, 4), dtype=np.float64)
    rows, cols = area_matrix(height, out_h), area_matrix(width, out_w)
    return np.einsum("hH,cHW,wW->chw", rows, sr.astype(np.float64), cols, optimize=True)


def measure(sr: np.ndarray, lr: np.ndarray, *, value_range: tuple[float, float] | None = None,
            tolerance: Tolerance = DEFAULT_TOLERANCE) -> Consistency:
    """The consistency of ``sr`` (C, H, W) with its input ``lr`` (C, h, w), H >= h and W >= w.

    ``value_range``: (min, max) the span and the range test refer to; default ``lr``'s own (give
    the whole stack's for a frame of one).
    """
    low, high = value_range if value_range is not None else (float(lr.min()), float(lr.max()))
    span = max(high - low, 1 / 65535)  # a constant input: differences in units of a 16-bit level
    difference = average_back(sr, lr.shape[1:]) - lr
    margin = tolerance.margin / 100 * span
    beyond = np.count_nonzero((sr < low - margin) | (sr > high + margin)) / sr.size
    return Consistency(mean_shift=100 * float(difference.mean()) / span,
                       mean_abs_error=100 * float(np.abs(difference).mean()) / span, beyond_range=100 * beyond)


def check(found: Consistency, tolerance: Tolerance = DEFAULT_TOLERANCE) -> None:
    """Raise ``ConsistencyError`` naming what exceeds ``tolerance``."""
    exceeded = found.exceeds(tolerance)
    if exceeded:
        raise ConsistencyError("the output does not average back to the input: " + ", ".join(exceeded))


# ---------------------------------------------------------------------------------------------
# The projection


def enforce(sr: np.ndarray, lr: np.ndarray, *, bounds: tuple[float, float] | None = None,
            levels: float | None = None, smooth_rounds: int = SMOOTH_ROUNDS) -> np.ndarray:
    """``sr`` (C, H, W) corrected so that it averages back to ``lr`` (C, h, w) and stays within
    ``bounds`` (default: ``lr``'s min and max); float32.

    ``levels``: stored steps from 0 to 1 (255 for 8-bit files); the result is then on those steps,
    with each block's sum kept exact at integer scales. None for float data. ``smooth_rounds``:
    rounds of smooth back-projection before the exact box step (0: the box step alone).
    """
    if sr.shape[1] < lr.shape[1] or sr.shape[2] < lr.shape[2]:
        raise ValueError(f"an output of {sr.shape[2]}x{sr.shape[1]} is smaller than its input "
                         f"{lr.shape[2]}x{lr.shape[1]}: consistency is defined for upscaling only")
    low, high = bounds if bounds is not None else (float(lr.min()), float(lr.max()))
    lr64 = lr.astype(np.float64)
    (height, width), (out_h, out_w) = lr.shape[1:], sr.shape[1:]
    fy, fx = _integer_factor(out_h, height), _integer_factor(out_w, width)
    if fy and fx:
        smooth = _smooth_back_projection(sr, lr64, fy, fx, smooth_rounds) if smooth_rounds else sr
        blocks = _blocks(smooth.astype(np.float64), fy, fx)
        blocks = _bounded_shift(blocks, lr64[..., None], low, high)
        if levels is not None:
            blocks = _round_keeping_sums(blocks, lr64[..., None], levels, low, high)
        return _unblocks(blocks, fy, fx).astype(np.float32)
    out = _alternating(sr.astype(np.float64), lr64, low, high)
    if levels is not None:
        out = np.rint(out * levels) / levels
    return out.astype(np.float32)


def _smooth_back_projection(sr: np.ndarray, lr: np.ndarray, fy: int, fx: int, rounds: int) -> np.ndarray:
    """Irani & Peleg's iteration y += U(x - D y) with D the block mean and U bicubic upsampling: the
    correction varies smoothly across block borders (no grid), and shrinks each round."""
    out = torch.from_numpy(sr.astype(np.float64))[None]
    target = torch.from_numpy(lr)[None]
    for _ in range(rounds):
        residual = target - F.avg_pool2d(out, (fy, fx))
        out += F.interpolate(residual, scale_factor=(fy, fx), mode="bicubic", align_corners=False)
    return out[0].numpy()


def _blocks(image: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """(C, H, W) -> (C, h, w, fy * fx): the output pixels over each input pixel."""
    channels, out_h, out_w = image.shape
    blocks = image.reshape(channels, out_h // fy, fy, out_w // fx, fx).transpose(0, 1, 3, 2, 4)
    return blocks.reshape(channels, out_h // fy, out_w // fx, fy * fx)


def _unblocks(blocks: np.ndarray, fy: int, fx: int) -> np.ndarray:
    channels, height, width, _ = blocks.shape
    image = blocks.reshape(channels, height, width, fy, fx).transpose(0, 1, 3, 2, 4)
    return image.reshape(channels, height * fy, width * fx)


def _bounded_shift(blocks: np.ndarray, target: np.ndarray, low: float, high: float) -> np.ndarray:
    """Each block shifted by the constant that makes its mean ``target`` with values clipped to
    [low, high]: the nearest such block (KKT: y = clip(z + shift))."""
    shift = target - blocks.mean(axis=-1, keepdims=True)  # the unbounded projection
    out = blocks + shift
    clipped = ((out < low) | (out > high)).any(axis=-1)
    if clipped.any():  # only blocks that reach a bound need the search
        z, goal = blocks[clipped], target[clipped]
        lo, hi = low - z.max(axis=-1, keepdims=True), high - z.min(axis=-1, keepdims=True)
        for _ in range(BISECTION_STEPS):  # the mean of clip(z + shift) grows with the shift
            middle = (lo + hi) / 2
            below = np.clip(z + middle, low, high).mean(axis=-1, keepdims=True) < goal
            lo, hi = np.where(below, middle, lo), np.where(below, hi, middle)
        out[clipped] = np.clip(z + (lo + hi) / 2, low, high)
    return out


def _round_keeping_sums(blocks: np.ndarray, target: np.ndarray, levels: float, low: float, high: float
                        ) -> np.ndarray:
    """Round to stored levels so that each block's sum equals ``target`` times its size as closely
    as whole levels allow: floor everything, then raise the pixels with the largest remainders."""
    scaled = blocks * levels
    floor = np.floor(scaled + 1e-9)
    remainder = scaled - floor
    size = blocks.shape[-1]
    needed = np.rint(target[..., 0] * levels * size - floor.sum(axis=-1)).clip(0, size)
    rank = np.argsort(np.argsort(-remainder, axis=-1, kind="stable"), axis=-1, kind="stable")
    rounded = (floor + (rank < needed[..., None])) / levels
    return np.clip(rounded, np.floor(low * levels + 1e-6) / levels, np.ceil(high * levels - 1e-6) / levels)


def _alternating(sr: np.ndarray, lr: np.ndarray, low: float, high: float) -> np.ndarray:
    """Non-integer scales: the least-squares correction towards the area mean (x = A y, corrected by
    A^T (A A^T)^-1 (x - A y), separable), alternated with the range bound.

    Output pixels that straddle two input pixels tie them together, so with the range bound an exact
    answer need not exist (inputs 0 and 1 side by side at x2.5 cannot both be met within [0, 1]);
    the rounds approach the nearest one. White noise, the worst case, ends within the tolerance
    (tests/test_consistency.py); smooth images far below it."""
    rows, cols = area_matrix(lr.shape[1], sr.shape[1]), area_matrix(lr.shape[2], sr.shape[2])
    spread_rows = np.linalg.solve(rows @ rows.T, rows).T  # A^T (A A^T)^-1, per axis
    spread_cols = np.linalg.solve(cols @ cols.T, cols).T
    out = sr
    for _ in range(ALTERNATING_ROUNDS):
        residual = lr - np.einsum("hH,cHW,wW->chw", rows, out, cols, optimize=True)
        out = np.clip(out + np.einsum("Hh,chw,Ww->cHW", spread_rows, residual, spread_cols, optimize=True),
                      low, high)
    return out


# ---------------------------------------------------------------------------------------------
# The network's range


def content_range(pixels: np.ndarray | list[np.ndarray]) -> tuple[float, float]:
    """(min, max) of an image's values, or of all frames of a stack: what the network's [0, 1] is
    mapped from, so that it sees the contrast it was trained on whatever range the file stores."""
    frames = pixels if isinstance(pixels, list) else [pixels]
    return float(min(f.min() for f in frames)), float(max(f.max() for f in frames))
