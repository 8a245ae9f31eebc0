"""The in-memory image: float pixels in [0, 1] plus what is needed to write them back."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(ValueError):
    """A file cannot be read or written as an image; the message names the file and the reason."""


@dataclass(frozen=True, kw_only=True)
class ReadOptions:
    """How to read files.

    Attributes:
        max_pixels: larger images are refused before decoding.
        window: DICOM only. None maps the full stored range to [0, 1]; "voi" uses the file's
            first window (centre, width); (centre, width) in modality units (after rescale).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    window: str | tuple[float, float] | None = None


@dataclass(kw_only=True)
class Image:
    """Pixels plus what is needed to write them back faithfully.

    Attributes:
        pixels: float32, shape (C, H, W), C = 1 (gray) or 3 (RGB), range [0, 1].
        alpha: float32, shape (1, H, W) in [0, 1], or None.
        max_value: the stored integer that means 1.0 (255, 65535, or a PNM maxval).
        meta: format details kept for writing (``dpi``, ``icc_profile``, ``dicom``), the source
            path, and what ``upscale`` did (``model``, ``scale``).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    max_value: int = 255
    meta: dict = field(default_factory=dict)

    @property
    def bit_depth(self) -> int:
        return 8 if self.max_value <= 255 else 16

    @property
    def is_gray(self) -> bool:
        return self.pixels.shape[0] == 1

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.pixels.shape[1], self.pixels.shape[2]

    @classmethod
    def from_array(cls, array: np.ndarray) -> Image:
        """Wrap a (H, W) or (H, W, C) uint8/uint16 array, or a float array in [0, 1] (C = 1, 3, 4)."""
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
            raise ImageError(f"array of shape {array.shape}: need (H, W) or (H, W, C) with C in 1..4")
        if array.dtype == np.uint8 or array.dtype == np.uint16:
            max_value = np.iinfo(array.dtype).max
        elif np.issubdtype(array.dtype, np.floating):
            max_value = 1
        else:
            raise ImageError(f"array of dtype {array.dtype}: need uint8, uint16 or float")
        values = np.moveaxis(array, 2, 0).astype(np.float32) / max_value
        color, alpha = (values[:-1], values[-1:]) if values.shape[0] in (2, 4) else (values, None)
        return cls(pixels=color, alpha=alpha, max_value=max(max_value, 255))

    def to_array(self, dtype: np.dtype | None = None) -> np.ndarray:
        """(H, W) or (H, W, C) array of the stored integer type (or ``dtype``), alpha last."""
        values = self.pixels if self.alpha is None else np.concatenate([self.pixels, self.alpha])
        values = np.moveaxis(values, 0, 2)
        out = quantize(values, self.max_value) if dtype is None else values.astype(dtype)
        return out[:, :, 0] if out.shape[2] == 1 else out


def quantize(values: np.ndarray, max_value: int) -> np.ndarray:
    """Round [0, 1] floats to integers 0..max_value, in uint8 or uint16."""
    dtype = np.uint8 if max_value <= 255 else np.uint16
    scaled = np.multiply(values, max_value, dtype=np.float32)
    np.rint(scaled, out=scaled)  # in place: outputs of 100+ megapixels are common at x4
    np.clip(scaled, 0, max_value, out=scaled)
    return scaled.astype(dtype)




def check_pixels(path: object, width: int, height: int, max_pixels: int) -> None:
    """Refuse empty images and images above the pixel limit, before decoding them."""
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (raise it with --max-pixels)"
        )
