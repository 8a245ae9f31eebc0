"""Read and write image files as float32 (C, H, W) arrays in [0, 1], keeping bit depth and mode.

The integer range of a file (``max_value``: 255 for 8-bit, 65535 for 16-bit, or a PGM/PPM maxval)
is read from the file's header, never guessed from pixel values, and is used again on writing, so
16-bit in gives 16-bit out. Gray stays one channel; alpha is kept apart from the colour channels.

Readers are chosen by file suffix from ``READERS``; each returns an ``Image``. A new format (DICOM)
adds a reader and a writer there.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import png  # pypng: Pillow reads and writes 16-bit colour PNG as 8-bit only
import tifffile
from PIL import Image as PILImage

DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(ValueError):
    """A file cannot be read or written as an image; the message names the file and the reason."""


@dataclass(kw_only=True)
class Image:
    """Pixels plus what is needed to write them back faithfully.

    Attributes:
        pixels: float32, shape (C, H, W), C = 1 (gray) or 3 (RGB), range [0, 1].
        alpha: float32, shape (1, H, W) in [0, 1], or None.
        max_value: the stored integer that means 1.0 (255, 65535, or a PNM maxval).
        meta: format details kept for writing (``dpi``, ``icc_profile``), and the source path.
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


def _from_integer_hwc(array: np.ndarray, max_value: int, meta: dict) -> Image:
    if array.ndim == 2:
        array = array[:, :, None]
    values = np.moveaxis(array, 2, 0).astype(np.float32) / max_value
    if values.shape[0] in (2, 4):
        return Image(pixels=values[:-1], alpha=values[-1:], max_value=max_value, meta=meta)
    return Image(pixels=values, max_value=max_value, meta=meta)


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (raise it with --max-pixels)"
        )


# ---------------------------------------------------------------------------------------------
# Readers


def _read_pillow(path: Path, max_pixels: int) -> Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
        with PILImage.open(path) as im:
            _check_pixels(path, im.width, im.height, max_pixels)
            meta = {k: im.info[k] for k in ("dpi", "icc_profile") if k in im.info}
            mode = im.mode
            if mode.startswith("I;16") or mode == "I":
                array = np.asarray(im)
                if array.min() < 0 or array.max() > 65535:
                    raise ImageError(f"{path}: 32-bit integer pixels outside 0..65535")
                return _from_integer_hwc(array.astype(np.uint16), 65535, meta)
            if mode in ("1", "L"):
                im = im.convert("L")
            elif mode in ("LA", "La"):
                im = im.convert("LA")
            elif mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
            elif mode in ("RGB", "P", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            else:
                raise ImageError(f"{path}: unsupported pixel mode {mode!r}")
            return _from_integer_hwc(np.asarray(im), 255, meta)


def _png_bit_depth(path: Path) -> int:
    """Bit depth from the PNG header (IHDR byte 24): Pillow hides 16-bit colour."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ImageError(f"{path}: not a PNG file (bad signature or header)")
    return head[24]


def _read_png(path: Path, max_pixels: int) -> Image:
    if _png_bit_depth(path) != 16:
        return _read_pillow(path, max_pixels)
    reader = png.Reader(filename=str(path))
    width, height, rows, info = reader.asDirect()
    _check_pixels(path, width, height, max_pixels)
    array = np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, info["planes"])
    return _from_integer_hwc(array, 65535, {})


def _read_tiff(path: Path, max_pixels: int) -> Image:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape, dtype = series.shape, series.dtype
        if tif.series[0].ndim == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4):
            shape = (shape[1], shape[2], shape[0])  # planar (C, H, W)
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 2, 3, 4)):
            raise ImageError(f"{path}: TIFF of shape {series.shape} is not one 2D gray/RGB(A) image")
        if dtype not in (np.uint8, np.uint16):
            raise ImageError(f"{path}: TIFF sample type {dtype} is unsupported (need uint8 or uint16)")
        _check_pixels(path, shape[1], shape[0], max_pixels)
        array = series.asarray()
    if array.shape != shape:
        array = np.moveaxis(array, 0, 2)
    return _from_integer_hwc(array, np.iinfo(dtype).max, {})


def _pnm_header(data: bytes, path: Path) -> tuple[bytes, int, int, int, int]:
    """Parse a binary PGM/PPM header: (magic, width, height, maxval, offset of pixel data)."""
    tokens, pos = [], 0
    while len(tokens) < 4:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.find(b"\n", pos) + 1 or len(data)
            continue
        end = pos
        while end < len(data) and not data[end : end + 1].isspace() and data[end : end + 1] != b"#":
            end += 1
        if end == pos:
            raise ImageError(f"{path}: truncated PGM/PPM header")
        tokens.append(data[pos:end])
        pos = end
    try:
        width, height, maxval = (int(t) for t in tokens[1:])
    except ValueError:
        raise ImageError(f"{path}: malformed PGM/PPM header") from None
    return tokens[0], width, height, maxval, pos + 1


def _read_pnm(path: Path, max_pixels: int) -> Image:
    data = path.read_bytes()
    if data[:2] not in (b"P5", b"P6"):
        return _read_pillow(path, max_pixels)  # ASCII and bitmap variants
    magic, width, height, maxval, offset = _pnm_header(data, path)
    _check_pixels(path, width, height, max_pixels)
    if not 0 < maxval <= 65535:
        raise ImageError(f"{path}: maxval {maxval} outside 1..65535")
    planes = 1 if magic == b"P5" else 3
    dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
    count = width * height * planes
    if len(data) - offset < count * dtype.itemsize:
        raise ImageError(f"{path}: file ends before its {width}x{height} pixels")
    array = np.frombuffer(data, dtype, count, offset).reshape(height, width, planes)
    if array.max() > maxval:
        raise ImageError(f"{path}: pixel values exceed the header's maxval {maxval}")
    return _from_integer_hwc(array.astype(np.uint16 if maxval > 255 else np.uint8), maxval, {})


READERS: dict[str, Callable[[Path, int], Image]] = {
    ".png": _read_png,
    ".jpg": _read_pillow,
    ".jpeg": _read_pillow,
    ".bmp": _read_pillow,
    ".tif": _read_tiff,
    ".tiff": _read_tiff,
    ".pgm": _read_pnm,
    ".ppm": _read_pnm,
    ".pnm": _read_pnm,
}


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Read an image file; raise ImageError naming the file and the problem."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ImageError(f"{path}: unsupported file type {path.suffix!r} (known: {', '.join(READERS)})")
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        image = reader(path, max_pixels)
    except ImageError:
        raise
    except Exception as exc:  # decoders raise many types for corrupt data
        raise ImageError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from None
    image.meta["source"] = str(path)
    return image


# ---------------------------------------------------------------------------------------------
# Writers


def _write_pillow(path: Path, image: Image, fmt: str) -> None:
    if image.bit_depth > 8 and fmt != "PNG":
        raise ImageError(f"{fmt} holds 8 bits per sample; write 16-bit images as .png or .tif")
    array = image.to_array()
    if image.bit_depth > 8:  # 16-bit gray PNG without alpha; colour 16-bit goes through pypng
        pil = PILImage.fromarray(array.astype(np.uint16))
    else:
        pil = PILImage.fromarray(array)
    options = {k: image.meta[k] for k in ("dpi", "icc_profile") if k in image.meta}
    if fmt == "JPEG":
        options["quality"] = 95
    pil.save(path, format=fmt, **options)


def _write_png(path: Path, image: Image) -> None:
    if image.bit_depth == 8 or (image.is_gray and image.alpha is None):
        return _write_pillow(path, image, "PNG")
    array = image.to_array()
    height, width = array.shape[:2]
    planes = 1 if array.ndim == 2 else array.shape[2]
    writer = png.Writer(
        width, height, greyscale=planes <= 2, alpha=planes in (2, 4), bitdepth=16
    )
    with open(path, "wb") as f:
        writer.write(f, array.reshape(height, width * planes))


def _write_tiff(path: Path, image: Image) -> None:
    array = image.to_array()
    photometric = "minisblack" if image.is_gray else "rgb"
    extrasamples = ("unassalpha",) if image.alpha is not None else None
    tifffile.imwrite(path, array, photometric=photometric, extrasamples=extrasamples, compression="zlib")


def _write_pnm(path: Path, image: Image) -> None:
    if image.alpha is not None:
        raise ImageError("PGM/PPM cannot hold an alpha channel; write .png or .tif")
    array = image.to_array()
    magic = b"P5" if image.is_gray else b"P6"
    height, width = array.shape[:2]
    data = array.astype(">u2" if image.max_value > 255 else np.uint8).tobytes()
    path.write_bytes(b"%s\n%d %d\n%d\n" % (magic, width, height, image.max_value) + data)


WRITERS: dict[str, Callable[[Path, Image], None]] = {
    ".png": _write_png,
    ".jpg": lambda p, im: _write_pillow(p, im, "JPEG"),
    ".jpeg": lambda p, im: _write_pillow(p, im, "JPEG"),
    ".bmp": lambda p, im: _write_pillow(p, im, "BMP"),
    ".tif": _write_tiff,
    ".tiff": _write_tiff,
    ".pgm": _write_pnm,
    ".ppm": _write_pnm,
    ".pnm": _write_pnm,
}


def write_image(path: str | Path, image: Image, *, overwrite: bool = False) -> None:
    """Write ``image`` in the format its suffix names, atomically.

    An existing file is an error unless ``overwrite``; a half-written file never appears at ``path``.
    """
    path = Path(path)
    writer = WRITERS.get(path.suffix.lower())
    if writer is None:
        raise ImageError(f"{path}: cannot write file type {path.suffix!r} (known: {', '.join(WRITERS)})")
    if path.suffix.lower() in (".pgm",) and not image.is_gray:
        raise ImageError(f"{path}: PGM holds gray images; write colour as .ppm")
    if image.max_value not in (255, 65535) and path.suffix.lower() not in (".pgm", ".ppm", ".pnm"):
        # Only PNM stores its own maxval; elsewhere scale to the container's full range.
        image = replace(image, max_value=255 if image.max_value <= 255 else 65535)
    if path.exists() and not overwrite:
        raise ImageError(f"{path}: already exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        try:
            writer(Path(tmp), image)
        except Exception as exc:  # name the target, not the temporary file
            reason = str(exc) if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"
            raise ImageError(f"{path}: cannot write ({reason})") from None
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
