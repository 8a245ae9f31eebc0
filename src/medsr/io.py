"""Read and write image files as float32 (C, H, W) arrays in [0, 1], keeping bit depth and mode.

The integer range of a file (``max_value``: 255 for 8-bit, 65535 for 16-bit, or a PGM/PPM maxval)
is read from the file's header, never guessed from pixel values, and is used again on writing, so
16-bit in gives 16-bit out. Gray stays one channel; alpha is kept apart from the colour channels.

Readers and writers are chosen by file suffix from ``READERS`` and ``WRITERS``; DICOM files are
also recognised by their content when they have no suffix (see ``medsr.dicom``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import png  # pypng: Pillow reads and writes 16-bit colour PNG as 8-bit only
import tifffile
from PIL import Image as PILImage

from medsr import dicom
from medsr.image import Image, ImageError, ReadOptions, check_pixels


def _from_integer_hwc(array: np.ndarray, max_value: int, meta: dict) -> Image:
    if array.ndim == 2:
        array = array[:, :, None]
    values = np.moveaxis(array, 2, 0).astype(np.float32) / max_value
    if values.shape[0] in (2, 4):
        return Image(pixels=values[:-1], alpha=values[-1:], max_value=max_value, meta=meta)
    return Image(pixels=values, max_value=max_value, meta=meta)




# ---------------------------------------------------------------------------------------------
# Readers


def _read_pillow(path: Path, options: ReadOptions) -> Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
        with PILImage.open(path) as im:
            check_pixels(path, im.width, im.height, options.max_pixels)
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


def _read_png(path: Path, options: ReadOptions) -> Image:
    if _png_bit_depth(path) != 16:
        return _read_pillow(path, options)
    reader = png.Reader(filename=str(path))
    width, height, rows, info = reader.asDirect()
    check_pixels(path, width, height, options.max_pixels)
    array = np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, info["planes"])
    return _from_integer_hwc(array, 65535, {})


def _read_tiff(path: Path, options: ReadOptions) -> Image:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape, dtype = series.shape, series.dtype
        if tif.series[0].ndim == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4):
            shape = (shape[1], shape[2], shape[0])  # planar (C, H, W)
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 2, 3, 4)):
            raise ImageError(f"{path}: TIFF of shape {series.shape} is not one 2D gray/RGB(A) image")
        if dtype not in (np.uint8, np.uint16):
            raise ImageError(f"{path}: TIFF sample type {dtype} is unsupported (need uint8 or uint16)")
        check_pixels(path, shape[1], shape[0], options.max_pixels)
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


def _read_pnm(path: Path, options: ReadOptions) -> Image:
    data = path.read_bytes()
    if data[:2] not in (b"P5", b"P6"):
        return _read_pillow(path, options)  # ASCII and bitmap variants
    magic, width, height, maxval, offset = _pnm_header(data, path)
    check_pixels(path, width, height, options.max_pixels)
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


READERS: dict[str, Callable[[Path, ReadOptions], Image]] = {
    ".dcm": dicom.read_dicom,
    ".dicom": dicom.read_dicom,
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


def reader_for(path: Path) -> Callable[[Path, ReadOptions], Image] | None:
    """The reader for ``path``: by suffix, or DICOM by content for files without a known suffix."""
    reader = READERS.get(path.suffix.lower())
    if reader is None and path.is_file() and dicom.is_dicom(path):
        reader = dicom.read_dicom
    return reader


def image_files(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden ones skipped), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and reader_for(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_image(path: str | Path, options: ReadOptions | None = None) -> Image:
    """Read an image file; raise ImageError naming the file and the problem."""
    path, options = Path(path), options or ReadOptions()
    reader = reader_for(path)
    if reader is None:
        raise ImageError(f"{path}: unsupported file type {path.suffix!r} (known: {', '.join(READERS)})")
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        image = reader(path, options)
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
    ".dcm": dicom.write_dicom,
    ".dicom": dicom.write_dicom,
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
