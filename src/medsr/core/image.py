"""The in-memory image: float pixels in [0, 1] plus what is needed to write them back."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from medsr.core.consistency import Consistency

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
    value_range: str | tuple[float, float] = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"max_pixels {self.max_pixels}: must be a whole number of at least 1")
        check_value_range(self.value_range)


def check_value_range(value_range: str | tuple[float, float]) -> None:
    """``"auto"``, ``"full"`` or ``(low, high)`` with finite low < high."""
    if isinstance(value_range, str):
        if value_range not in ("auto", "full"):
            raise ValueError(f"value_range {value_range!r}: use 'auto', 'full' or (low, high)")
        return
    low, high = value_range
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"value_range ({low}, {high}): need finite low < high")


BIT_RANGES = (8, 10, 12, 14, 16)  # the clinical conventions for data in a 16-bit container


def pick_value_range(array: np.ndarray, container_max: int, value_range: str | tuple[float, float] = "auto",
                     declared: tuple[int, str] | None = None) -> tuple[float, float, str]:
    """The stored values that map to 0 and 1, and why: ``(low, high, reason)``.

    ``value_range`` "auto" takes what the file declares (``declared``: a maximum and where it was
    read), else for 16-bit containers the smallest of 8/10/12/14/16 bits that holds the data's
    maximum (12-bit X-rays are usually stored as 0..4095 in 16-bit files); "full" takes the
    container's range; ``(low, high)`` is the caller's, and data outside it is an error.
    """
    check_value_range(value_range)
    if isinstance(value_range, tuple):
        low, high = float(value_range[0]), float(value_range[1])
        if container_max > 1 and (low < 0 or high > container_max):  # integers: the container must hold it
            raise ImageError(f"the range {low:g}..{high:g} does not fit the file's values 0..{container_max}")
        if array.size and (array.min() < low or array.max() > high):
            raise ImageError(f"values {array.min():g}..{array.max():g} fall outside the given range "
                             f"{low:g}..{high:g}")
        return low, high, "as given"
    if value_range == "full":
        return 0, container_max, f"full {_container_name(container_max)} range"
    if declared is not None and array.max(initial=0) <= declared[0]:
        return 0, declared[0], declared[1]
    if container_max != 65535:
        return 0, container_max, _container_name(container_max)
    peak = int(array.max(initial=0))
    bits = next(b for b in BIT_RANGES if peak < 2**b)
    return 0, 2**bits - 1, f"data: maximum {peak} fits {bits} bits"


def _container_name(container_max: int) -> str:
    if container_max in (255, 65535):
        return f"{8 if container_max == 255 else 16}-bit file"
    return f"maxval {container_max}"


@dataclass(kw_only=True)
class Image:
    """Pixels plus what is needed to write them back faithfully.

    Attributes:
        pixels: float32, shape (C, H, W), C = 1 (gray) or 3 (RGB), range [0, 1].
        alpha: float32, shape (1, H, W) in [0, 1], or None.
        max_value: the stored value that means 1.0 (255, 4095 for 12-bit data, 65535, a PNM maxval).
        min_value: the stored value that means 0.0.
        container_max: the largest value the file's samples can hold (255, 65535, a PNM maxval);
            None: the smallest of 255 and 65535 that holds ``max_value``.
        range_reason: why ``min_value..max_value`` was chosen (shown by ``medsr info`` and runs).
        stored_as_rgb: gray pixels that came from (and go back to) a colour file with equal channels.
        source: the file it was read from ("array" for arrays), for messages.
        modality: what the image shows, where the file says (DICOM Modality: CT, MR, CR, OP, ...).
        window: the [0, 1] values the network's range maps to when one was chosen (a DICOM window);
            None: the image's own range. Values outside it are kept, never clipped.
        levels: stored steps from 0.0 to 1.0 where they are not ``max_value - min_value`` (DICOM).
        continuous: float data, not stored in steps (float arrays, float volumes): never rounded.
        model: the model that produced it, when ``upscale`` did (DICOM outputs name it).
        consistency: how far it averages back to its input, when ``upscale`` made it.
        meta: format details kept for writing, each read and written by its format's module
            (``dpi``, ``icc_profile``; ``dicom`` and its ``dicom_*`` companions).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    max_value: float = 255
    min_value: float = 0
    container_max: int | None = None
    range_reason: str = ""
    stored_as_rgb: bool = False
    source: str = "array"
    modality: str | None = None
    window: tuple[float, float] | None = None
    levels: float | None = None
    continuous: bool = False
    model: str | None = None
    consistency: Consistency | None = None
    meta: dict = field(default_factory=dict)

    @property
    def bit_depth(self) -> int:
        """Bits per sample of the container: 8 or 16."""
        return 8 if (self.container_max or self.max_value) <= 255 else 16

    @property
    def value_range(self) -> tuple[float, float]:
        return self.min_value, self.max_value

    @property
    def steps(self) -> float:
        """Stored levels from 0.0 to 1.0: one level is ``1 / steps`` in pixel units."""
        return self.levels if self.levels is not None else self.max_value - self.min_value

    @property
    def is_gray(self) -> bool:
        """One channel of content (a gray file, or a colour file whose channels are equal)."""
        return self.pixels.shape[0] == 1

    @property
    def stored_channels(self) -> int:
        """Colour channels in the file: 1 (gray) or 3."""
        return 3 if self.stored_as_rgb else self.pixels.shape[0]

    @property
    def mode(self) -> str:
        """What the pixels are and how they are stored, in words (``gray stored as RGB+alpha``)."""
        alpha = "+alpha" if self.alpha is not None else ""
        if self.stored_as_rgb:
            return f"gray stored as RGB{alpha}"
        return ("gray" if self.is_gray else "RGB") + alpha

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.pixels.shape[1], self.pixels.shape[2]

    @classmethod
    def from_integers(cls, array: np.ndarray, container_max: int, *, value_range: str | tuple[float, float] = "auto",
                      declared: tuple[int, str] | None = None, gray_tolerance: float = 0,
                      meta: dict | None = None) -> Image:
        """Wrap stored integers (H, W) or (H, W, C), the last of 2 or 4 channels being alpha.

        The value range comes from ``pick_value_range``; three channels that differ by at most
        ``gray_tolerance`` stored levels are taken as gray (see ``gray_if_equal``).
        """
        if array.ndim in (2, 3) and 0 in array.shape[:2]:
            raise ImageError(f"an empty array of shape {array.shape}: nothing to upscale")
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
            raise ImageError(f"array of shape {array.shape}: need (H, W) or (H, W, C) with C in 1..4")
        channels = array.shape[2] - (array.shape[2] in (2, 4))
        low, high, reason = pick_value_range(array[:, :, :channels], container_max, value_range, declared)
        values = np.moveaxis(array, 2, 0).astype(np.float32)
        pixels = values[:channels]
        pixels -= low
        pixels /= high - low
        np.clip(pixels, 0, 1, out=pixels)
        pixels, stored_as_rgb = gray_if_equal(pixels, gray_tolerance / (high - low))
        alpha = values[channels:] / container_max if channels < array.shape[2] else None
        return cls(pixels=pixels, alpha=alpha, max_value=high, min_value=low, container_max=container_max,
                   range_reason=reason, stored_as_rgb=stored_as_rgb, meta=meta or {})

    @classmethod
    def from_array(cls, array: np.ndarray, *, value_range: str | tuple[float, float] = "auto") -> Image:
        """Wrap a (H, W) or (H, W, C) array (C = 1, 3, 4; the last of 2 or 4 is alpha).

        uint8 and uint16 arrays take their range by ``pick_value_range`` (``value_range`` "auto":
        from the data, e.g. 0..4095 for 12-bit values in uint16). Float arrays are taken as [0, 1]
        unless ``value_range`` is given; other values are then an error, never clipped silently.
        """
        if array.dtype == np.uint8 or array.dtype == np.uint16:
            return cls.from_integers(array, int(np.iinfo(array.dtype).max), value_range=value_range)
        if not np.issubdtype(array.dtype, np.floating):
            raise ImageError(f"array of dtype {array.dtype}: need uint8, uint16 or float")
        if not np.isfinite(array).all():
            raise ImageError("float array holds NaN or infinite values")
        if value_range in ("auto", "full"):
            if array.size and (array.min() < 0 or array.max() > 1):
                raise ImageError(f"float array with values {array.min():g}..{array.max():g}: floats are taken "
                                 "as [0, 1]; give value_range=(low, high) for other ranges")
            value_range = (0.0, 1.0)
        image = cls.from_integers(array.astype(np.float32), 1, value_range=value_range)
        low, high = image.value_range
        # Written to a file, a float image is 8-bit; the float range stays in range_reason.
        return replace(image, max_value=255, min_value=0, container_max=255, continuous=True,
                       range_reason=f"float {low:g}..{high:g}")

    def to_array(self, dtype: np.dtype | None = None) -> np.ndarray:
        """(H, W) or (H, W, C) array, alpha last: stored integers in the image's value range, or
        with a float ``dtype`` the [0, 1] values."""
        if dtype is None:
            integer = np.uint8 if self.bit_depth == 8 else np.uint16
            out = quantize(self.pixels, self.max_value, self.min_value, integer)
            alpha = None if self.alpha is None else quantize(self.alpha, np.iinfo(integer).max, 0, integer)
        else:
            out = self.pixels.astype(dtype)
            alpha = None if self.alpha is None else self.alpha.astype(dtype)
        if self.stored_as_rgb:
            out = np.repeat(out, 3, axis=0)
        if alpha is not None:
            out = np.concatenate([out, alpha])
        out = np.moveaxis(out, 0, 2)
        return out[:, :, 0] if out.shape[2] == 1 else out


def gray_if_equal(pixels: np.ndarray, tolerance: float = 0.0) -> tuple[np.ndarray, bool]:
    """(pixels, stored_as_rgb): three channels that differ by at most ``tolerance`` become one
    (their mean), so a gray picture in a colour file is processed and written back as gray."""
    if pixels.shape[0] != 3:
        return pixels, False
    spread = np.ptp(pixels, axis=0).max(initial=0)
    if spread > tolerance + 1e-6:  # float32 rounding of a difference of exactly ``tolerance``
        return pixels, False
    gray = pixels[:1] if spread == 0 else pixels.mean(axis=0, keepdims=True, dtype=np.float32)
    return np.ascontiguousarray(gray), True


def quantize(values: np.ndarray, max_value: float, min_value: float = 0, dtype: type | None = None) -> np.ndarray:
    """Round [0, 1] floats to integers min_value..max_value, in ``dtype`` (default: uint8 up to
    255, else uint16)."""
    dtype = dtype or (np.uint8 if max_value <= 255 else np.uint16)
    scaled = np.multiply(values, max_value - min_value, dtype=np.float32)
    np.rint(scaled, out=scaled)  # in place: outputs of 100+ megapixels are common at x4
    scaled += min_value
    limits = np.iinfo(dtype)  # never wrap around the integer type, whatever the range says
    np.clip(scaled, max(min_value, limits.min), min(max_value, limits.max), out=scaled)
    return scaled.astype(dtype)




def single_frame(frames: list[Image], path: object, kind: str) -> Image:
    """The one image of ``frames``; a stack is an error, never read as one (colour) image."""
    if len(frames) > 1:
        raise ImageError(f"{path}: {kind} of {len(frames)} frames (a stack); read it with read_frames "
                         "(medsr upscale does, frame by frame)")
    return frames[0]


def check_pixels(path: object, width: int, height: int, max_pixels: int) -> None:
    """Refuse empty images and images above the pixel limit, before decoding them."""
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (raise it with --max-pixels)"
        )


class OutputError(RuntimeError):
    """A result that must not be written (non-finite or constant values, beyond the values contract)."""
