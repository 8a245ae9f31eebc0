"""Read and write image files as float32 (C, H, W) arrays in [0, 1], keeping bit depth and mode.

The integer range of a file (``max_value``: 255 for 8-bit, 65535 for 16-bit, or a PGM/PPM maxval)
is read from the file's header, never guessed from pixel values, and is used again on writing, so
16-bit in gives 16-bit out. Gray stays one channel; alpha is kept apart from the colour channels.

Readers and writers are chosen by file suffix from ``READERS`` and ``WRITERS``; DICOM files are
also recognised by their content when they have no suffix (see ``medsr.dicom``).
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import png
import pydicom  # pypng: Pillow reads and writes 16-bit colour PNG as 8-bit only
import tifffile
from PIL import Image as PILImage
from PIL import ImageCms, ImageOps

from medsr.core import files
from medsr.core.image import Image, ImageError, ReadOptions, check_pixels, pick_value_range, single_frame
from medsr.formats import dicom

log = logging.getLogger(__name__)
JPEG_GRAY_TOLERANCE = 2  # stored levels: chroma subsampling and rounding leave gray JPEGs not quite equal




# ---------------------------------------------------------------------------------------------
# Readers


def _read_pillow(path: Path, options: ReadOptions) -> Image:
    im: PILImage.Image  # the opened file, then its upright and converted copies
    with warnings.catch_warnings(), _pillow_pixel_limit(options.max_pixels):
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
        with PILImage.open(path) as im:
            check_pixels(path, im.width, im.height, options.max_pixels)
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and im.format != "MPO":  # APNG and the like: not one picture
                # (MPO: a camera JPEG with extra images in its index; the first is the photograph)
                kind = "an animated PNG" if im.format == "PNG" else f"a {im.format} file"
                raise ImageError(f"{path}: {kind} of {frames} frames; medsr reads single images "
                                 "(save the frames as separate files, or as a multi-page TIFF)")
            tolerance = JPEG_GRAY_TOLERANCE if im.format == "JPEG" else 0  # the transposed copy has no format
            orientation = im.getexif().get(0x0112)
            im = ImageOps.exif_transpose(im)  # as viewers show it; the output is written upright, untagged
            meta = upright_meta({k: im.info[k] for k in ("dpi", "icc_profile") if k in im.info}, orientation)
            mode = im.mode
            if mode.startswith("I;16") or mode == "I":
                array = np.asarray(im)
                if array.min() < 0 or array.max() > 65535:
                    raise ImageError(f"{path}: 32-bit integer pixels outside 0..65535")
                return Image.from_integers(array.astype(np.uint16), 65535, value_range=options.value_range,
                                           meta=meta)
            if mode == "CMYK":
                im, meta = _cmyk_to_rgb(im), {k: v for k, v in meta.items() if k != "icc_profile"}
            elif mode in ("1", "L"):
                im = im.convert("L")
            elif mode in ("LA", "La"):
                im = im.convert("LA")
            elif mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
            elif mode in ("RGB", "P", "YCbCr", "LAB", "HSV"):
                if mode != "RGB":
                    meta.pop("icc_profile", None)  # a profile of another colour space does not fit RGB
                im = im.convert("RGB")
            else:
                raise ImageError(f"{path}: unsupported pixel mode {mode!r}")
            return Image.from_integers(np.asarray(im), 255, value_range=options.value_range,
                                       gray_tolerance=tolerance, meta=meta)


@contextmanager
def _pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow refuses images above twice its own limit while opening; medsr applies its own
    ``max_pixels`` (checked from the header, before decoding) instead."""
    saved = PILImage.MAX_IMAGE_PIXELS
    PILImage.MAX_IMAGE_PIXELS = max(max_pixels, saved or 0)
    try:
        yield
    finally:
        PILImage.MAX_IMAGE_PIXELS = saved


def _cmyk_to_rgb(im: PILImage.Image) -> PILImage.Image:
    """CMYK to sRGB through the file's own ICC profile when it has one (else Pillow's formula)."""
    profile = im.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        except (OSError, ImageCms.PyCMSError):
            source = None
        if source is not None and source.profile.xcolor_space.strip() == "CMYK":
            rgb = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
            assert rgb is not None  # None only with inPlace=True
            return rgb
    return im.convert("RGB")  # no usable CMYK profile: Pillow's formula


# EXIF/TIFF Orientation (1-8) -> the array as viewers show it (Pillow's exif_transpose, in NumPy)
_UPRIGHT = {
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180 degrees
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.swapaxes(0, 1),  # transposed
    6: lambda a: np.rot90(a, -1),  # turned 90 degrees clockwise
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],  # transversed
    8: lambda a: np.rot90(a, 1),  # turned 90 degrees counter-clockwise
}


def upright(array: np.ndarray, orientation: int | None) -> np.ndarray:
    """(H, W[, C]) turned as its Orientation tag says viewers show it (1 or None: as stored)."""
    turn = _UPRIGHT.get(int(orientation or 1))
    return np.ascontiguousarray(turn(array)) if turn else array


def upright_meta(meta: dict, orientation: int | None) -> dict:
    """``meta`` for the upright picture: orientations 5-8 swap width and height, and so the
    horizontal and vertical resolutions."""
    if orientation in (5, 6, 7, 8) and "dpi" in meta:  # a malformed tag is ignored, as by exif_transpose
        meta = {**meta, "dpi": tuple(reversed(meta["dpi"]))}
    return meta


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
    reader.preamble()  # the chunks before the pixel data: header, sBIT, tRNS
    if reader.trns:
        raise ImageError(f"{path}: 16-bit PNG with a tRNS transparent colour is unsupported; use an alpha channel")
    check_pixels(path, reader.width, reader.height, options.max_pixels)
    declared = None
    if reader.sbit:
        bits = max(reader.sbit[: 3 if reader.planes >= 3 else 1])
        declared = (2**bits - 1, f"PNG sBIT: {bits} significant bits")
    with PILImage.open(path) as im:  # what Pillow reads right at 16 bits: the chunks, and gray pixels
        orientation = im.getexif().get(0x0112)
        meta = upright_meta({k: im.info[k] for k in ("dpi", "icc_profile") if k in im.info}, orientation)
        if reader.planes == 1:  # exactly, and far faster than pypng
            array = np.asarray(im).astype(np.uint16)
    if reader.planes > 1:  # Pillow reads 16-bit colour as 8-bit.
        # read(), not asDirect(): asDirect shifts values down by sBIT, which ruins raw 12-bit data.
        width, height, rows, info = reader.read()
        array = np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, info["planes"])
    return Image.from_integers(upright(array, orientation), 65535, value_range=options.value_range,
                               declared=declared, meta=meta)


def _read_tiff(path: Path, options: ReadOptions) -> Image:
    return single_frame(_read_tiff_frames(path, options), path, "TIFF")


def _read_tiff_frames(path: Path, options: ReadOptions) -> list[Image]:
    """Every page of a TIFF as its own 2D gray or RGB(A) image (a stack is never read as colour),
    all with one value range: the slices of a stack must reach the network alike."""
    with tifffile.TiffFile(path) as tif:
        pages = _full_pages(tif)
        if len(pages) < len(tif.pages):
            log.info("%s: %d reduced-resolution page(s) (thumbnails) left out", path, len(tif.pages) - len(pages))
        for page in pages:
            check_pixels(path, page.imagewidth, page.imagelength, options.max_pixels)
        total = sum(page.imagewidth * page.imagelength for page in pages)
        if total > options.max_pixels:
            raise ImageError(f"{path}: {len(pages)} pages of {total:,} pixels in all exceed the limit of "
                             f"{options.max_pixels:,} (raise it with max_pixels)")
        arrays = [_tiff_page(page, path, len(pages)) for page in pages]
        container = int(np.iinfo(pages[0].dtype).max)
        declared = _tiff_declared_max(pages[0], container)
    colour = [a[..., :-1] if a.ndim == 3 and a.shape[2] in (2, 4) else a for a in arrays]  # alpha aside
    extremes = np.array([min(c.min() for c in colour), max(c.max() for c in colour)], dtype=arrays[0].dtype)
    low, high, reason = pick_value_range(extremes, container, options.value_range, declared)
    return [replace(Image.from_integers(a, container, value_range=(low, high)), range_reason=reason) for a in arrays]


def _full_pages(tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    """The pages of a TIFF that hold images, without reduced-resolution copies (thumbnails, pyramids)."""
    pages = []
    for page in tif.pages:
        assert isinstance(page, tifffile.TiffPage)  # TiffFrames come only with useframes, which stays off here
        if not page.is_reduced:
            pages.append(page)
    return pages


def _tiff_page(page, path: Path, count: int) -> np.ndarray:
    where = f"{path}: page {page.index + 1} of {count}" if count > 1 else str(path)
    if page.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{where}: TIFF sample type {page.dtype} is unsupported (need uint8 or uint16)")
    if page.axes not in ("YX", "YXS", "SYX") or page.samplesperpixel not in (1, 2, 3, 4):
        raise ImageError(f"{where}: TIFF page of shape {page.shape} (axes {page.axes}) is not a 2D gray/RGB(A) image")
    array = page.asarray()
    array = np.moveaxis(array, 0, 2) if page.axes == "SYX" else array  # planar colour to (H, W, C)
    if page.photometric == tifffile.PHOTOMETRIC.SEPARATED:  # CMYK, not RGB + alpha
        array = _tiff_cmyk_to_rgb(page, array, where)
    orientation = page.tags.get("Orientation")
    return upright(array, orientation.value if orientation is not None else None)


def _tiff_cmyk_to_rgb(page, array: np.ndarray, where: str) -> np.ndarray:
    """A CMYK page as RGB, through its own ICC profile when it has one (as for Pillow's CMYK)."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 4:
        raise ImageError(f"{where}: CMYK TIFF of {array.dtype} with {array.shape[-1]} samples is unsupported "
                         "(8-bit CMYK is read); convert it to RGB")
    im = PILImage.fromarray(array, mode="CMYK")
    profile = page.tags.get("InterColorProfile")
    if profile is not None:
        im.info["icc_profile"] = bytes(profile.value)
    return np.asarray(_cmyk_to_rgb(im))


def _tiff_declared_max(page, container_max: int) -> tuple[int, str] | None:
    """MaxSampleValue (or SMaxSampleValue) when it is below the sample type's maximum."""
    for name in ("SMaxSampleValue", "MaxSampleValue"):
        tag = page.tags.get(name)
        if tag is not None:
            value = int(np.max(tag.value))
            if 0 < value < container_max:
                return value, f"TIFF {name} {value}"
    return None


def _pnm_header(data: bytes, path: Path) -> tuple[bytes, int, int, int, int]:
    """Parse a binary PGM/PPM header: (magic, width, height, maxval, offset of pixel data)."""
    tokens: list[bytes] = []
    pos = 0
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
    return Image.from_integers(array.astype(np.uint16 if maxval > 255 else np.uint8), maxval,
                               value_range=options.value_range)


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


NIFTI_SUFFIXES = (".nii", ".nii.gz")  # volumes: medsr.volume reads and writes them


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def reader_for(path: Path) -> Callable[[Path, ReadOptions], Image] | None:
    """The reader for ``path``: by suffix, or DICOM by content for files without a known suffix."""
    reader = READERS.get(path.suffix.lower())
    if reader is None and path.is_file() and dicom.is_dicom(path):
        reader = dicom.read_dicom
    return reader


def image_size(path: str | Path) -> tuple[int, int, int]:
    """(height, width, frames) of an image file from its header, without decoding the pixels
    (the first frame's size for a stack). Raises ImageError naming the file when the header cannot
    be read."""
    path = Path(path)
    try:
        if reader_for(path) is dicom.read_dicom:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns), dicom.frame_count(ds)
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                pages = _full_pages(tif)
                return int(pages[0].imagelength), int(pages[0].imagewidth), len(pages)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with _pillow_pixel_limit(2**62), PILImage.open(path) as im:
                width, height = im.size
                return height, width, 1
    except Exception as exc:
        raise ImageError(f"{path}: cannot read the image header ({type(exc).__name__}: {exc})") from None


def image_files(folder: str | Path, unreadable: list[str] | None = None, *, volumes: bool = False) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden ones skipped), sorted; with ``volumes``,
    NIfTI volumes too.

    A subfolder that cannot be listed is an error, or with ``unreadable`` given, a message added
    to it: never skipped in silence.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    problems: list[str] = []

    def report(error: OSError) -> None:
        problems.append(f"{error.filename}: cannot list this folder ({error.strerror}); its images are left out")

    found = []
    for root, dirs, names in os.walk(folder, onerror=report):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / n for n in names if not n.startswith(".")]
    if problems and unreadable is None:
        raise ValueError(problems[0])
    if unreadable is not None:
        unreadable += problems
    return sorted(p for p in found if p.is_file() and (reader_for(p) or (volumes and is_nifti(p))))


FRAME_READERS: dict[str, Callable[[Path, ReadOptions], list[Image]]] = {
    ".tif": _read_tiff_frames,
    ".tiff": _read_tiff_frames,
    ".dcm": dicom.read_dicom_frames,
    ".dicom": dicom.read_dicom_frames,
}


def read_frames(path: str | Path, options: ReadOptions | None = None) -> list[Image]:
    """Every frame of a file as its own 2D image: the pages of a TIFF, the frames of a DICOM file,
    or the one image of any other file."""
    path = Path(path)
    reader = reader_for(path)
    frame_reader = dicom.read_dicom_frames if reader is dicom.read_dicom else FRAME_READERS.get(path.suffix.lower())
    if frame_reader is None:
        return [read_image(path, options)]
    return _decode(path, options or ReadOptions(), frame_reader)


def read_image(path: str | Path, options: ReadOptions | None = None) -> Image:
    """Read an image file; raise ImageError naming the file and the problem."""
    path, options = Path(path), options or ReadOptions()
    reader = reader_for(path)
    if reader is None:
        raise ImageError(f"{path}: unsupported file type {path.suffix!r} (known: {', '.join(READERS)})")
    return _decode(path, options, lambda p, o: [reader(p, o)])[0]


def _decode(path: Path, options: ReadOptions, reader: Callable[[Path, ReadOptions], list[Image]]) -> list[Image]:
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        frames = reader(path, options)
    except ImageError as exc:
        raise exc if str(path) in str(exc) else ImageError(f"{path}: {exc}") from None
    except Exception as exc:  # decoders raise many types for corrupt data
        raise ImageError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from None
    return [replace(frame, source=str(path)) for frame in frames]


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
    if image.bit_depth == 8 or (image.stored_channels == 1 and image.alpha is None):
        return _write_pillow(path, image, "PNG")
    array = image.to_array()
    height, width = array.shape[:2]
    planes = 1 if array.ndim == 2 else array.shape[2]
    writer = png.Writer(
        width, height, greyscale=planes <= 2, alpha=planes in (2, 4), bitdepth=16
    )
    encoded = io.BytesIO()
    writer.write(encoded, array.reshape(height, width * planes))
    data = encoded.getvalue()
    profile = image.meta.get("icc_profile") if image.stored_channels == 3 else None
    if profile:  # pypng writes no iCCP chunk: put it after IHDR, where the PNG specification has it
        body = b"icc\x00\x00" + zlib.compress(profile)
        chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
        data = data[:33] + chunk + data[33:]  # 8-byte signature, 25-byte IHDR chunk
    path.write_bytes(data)


def _write_tiff(path: Path | tifffile.TiffWriter, image: Image) -> None:
    """One image, into a new file or as the next page of an open writer."""
    array = image.to_array()
    photometric = "minisblack" if image.stored_channels == 1 else "rgb"
    extrasamples = ("unassalpha",) if image.alpha is not None else None
    extratags: list[tuple[int, str, int, tuple[int, ...], bool]] = []
    if image.min_value == 0 and image.max_value < np.iinfo(array.dtype).max:  # e.g. 12-bit data: say so
        samples = array.shape[2] if array.ndim == 3 else 1
        extratags.append((281, "H", samples, (int(image.max_value),) * samples, True))  # MaxSampleValue
    options: dict[str, Any] = dict(photometric=photometric, extrasamples=extrasamples, compression="zlib",
                                   extratags=extratags)
    if isinstance(path, tifffile.TiffWriter):
        path.write(array, contiguous=False, **options)
    else:
        tifffile.imwrite(path, array, **options)


def _write_pnm(path: Path, image: Image) -> None:
    if image.alpha is not None:
        raise ImageError("PGM/PPM cannot hold an alpha channel; write .png or .tif")
    array = image.to_array()
    magic = b"P5" if image.stored_channels == 1 else b"P6"
    height, width = array.shape[:2]
    maxval = int(image.max_value) if image.min_value == 0 else (image.container_max or 65535)
    data = array.astype(">u2" if maxval > 255 else np.uint8).tobytes()
    path.write_bytes(b"%s\n%d %d\n%d\n" % (magic, width, height, maxval) + data)


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


def _write_tiff_frames(path: Path, frames: list[Image]) -> None:
    with tifffile.TiffWriter(path) as tif:
        for frame in frames:
            _write_tiff(tif, frame)


FRAME_WRITERS: dict[str, Callable[[Path, list[Image]], None]] = {
    ".tif": _write_tiff_frames,
    ".tiff": _write_tiff_frames,
    ".dcm": dicom.write_dicom,
    ".dicom": dicom.write_dicom,
}


def check_writable(path: str | Path, frames: list[Image]) -> None:
    """Refuse, before any work, what the file type at ``path`` cannot hold truly: too many frames,
    16 bits in an 8-bit format, colour in PGM, alpha in PNM or DICOM, DICOM from a plain image."""
    path = Path(path)
    suffix, image = path.suffix.lower(), frames[0]
    problem = None
    if suffix not in WRITERS:
        problem = f"cannot write file type {path.suffix!r} (known: {', '.join(WRITERS)})"
    elif len(frames) > 1 and suffix not in FRAME_WRITERS:
        problem = f"{len(frames)} frames cannot be written as {suffix}; write .tif (or .dcm for frames read from DICOM)"
    elif suffix in (".jpg", ".jpeg", ".bmp") and image.bit_depth > 8:
        problem = f"{suffix} holds 8 bits per sample; write 16-bit images as .png or .tif"
    elif suffix == ".pgm" and image.stored_channels != 1:
        problem = "PGM holds gray images; write colour as .ppm"
    elif suffix in (".pgm", ".ppm", ".pnm") and image.alpha is not None:
        problem = "PGM/PPM cannot hold an alpha channel; write .png or .tif"
    elif suffix in (".dcm", ".dicom") and "dicom" not in image.meta:
        problem = ("only images read from DICOM can be written as DICOM (patient and study data would be "
                   "missing); write .png or .tif")
    elif suffix in (".dcm", ".dicom") and image.alpha is not None:
        problem = "DICOM cannot hold an alpha channel"
    if problem:
        raise ImageError(f"{path}: {problem}")


def write_image(path: str | Path, image: Image, *, overwrite: bool = False) -> None:
    """Write ``image`` in the format its suffix names, atomically and checked.

    The file is written under a temporary name, decoded again and compared with ``image`` (size,
    channels, bit depth), and only then moved to ``path``: a truncated or wrong file never appears
    there, and an existing file is never replaced by one. An existing file is an error unless
    ``overwrite``, also when another process creates it while this one writes.
    """
    write_frames(path, [image], overwrite=overwrite)


def write_frames(path: str | Path, frames: list[Image], *, overwrite: bool = False) -> None:
    """Write the frames of one file (see ``read_frames``) as ``write_image`` writes one image:
    several frames as a multi-page TIFF, or as multi-frame DICOM when they came from DICOM."""
    path = Path(path)
    suffix = path.suffix.lower()
    check_writable(path, frames)
    if path.exists() and not overwrite:
        raise ImageError(f"{path}: already exists (kept; the overwrite option replaces it)")
    write_checked(path, _writer(suffix, frames), lambda tmp: _verify_written(tmp, frames, path), overwrite=overwrite)


def _writer(suffix: str, frames: list[Image]) -> Callable[[Path], None]:
    """``write(tmp)`` for ``frames``: one image by ``WRITERS``, several by ``FRAME_WRITERS``."""
    if len(frames) == 1:
        write_one = WRITERS[suffix]
        return lambda tmp: write_one(tmp, frames[0])
    write_all = FRAME_WRITERS[suffix]
    return lambda tmp: write_all(tmp, frames)


def write_checked(path: Path, write: Callable[[Path], None], verify: Callable[[Path], None], *,
                  overwrite: bool) -> None:
    """``files.write_atomic`` for images and volumes: ``write(tmp)``, ``verify(tmp)``, then into place
    (never over an existing file unless ``overwrite``); every failure is an ImageError naming ``path``."""
    def write_image_file(tmp: Path) -> None:
        try:
            write(tmp)
        except ImageError as exc:
            raise ImageError(f"{path}: cannot write ({exc})") from None
        os.chmod(tmp, 0o644)

    try:
        files.write_atomic(path, write_image_file, verify=verify, overwrite=overwrite)
    except FileExistsError:
        raise ImageError(f"{path}: already exists (created while this image was written); kept it") from None
    except OSError as exc:  # disk full, read-only folder, a file where a folder should be, ...
        reason = str(exc).removeprefix(f"cannot write {path}: ")
        raise ImageError(f"{path}: cannot write ({reason})") from None
    except ImageError:
        raise
    except Exception as exc:  # encoders raise many types; name the target, not the temporary file
        raise ImageError(f"{path}: cannot write ({type(exc).__name__}: {exc})") from None


def _shape_of(image: Image) -> tuple:
    return image.size, image.stored_channels, image.alpha is not None, image.bit_depth


def _verify_written(tmp: Path, frames: list[Image], path: Path) -> None:
    """Decode the written file again: it must hold the frames' sizes, channels and bit depths."""
    pixels = sum(frame.size[0] * frame.size[1] for frame in frames)
    try:
        back = read_frames(tmp, ReadOptions(max_pixels=pixels, value_range="full"))
    except Exception as exc:
        reason = str(exc).replace(str(tmp), "").lstrip(": ")
        raise ImageError(f"{path}: the written file does not decode ({reason}); nothing was written") from None
    expected, found = [_shape_of(f) for f in frames], [_shape_of(f) for f in back]
    if found != expected:
        raise ImageError(f"{path}: the written file reads back as (size, channels, alpha, bits) {found[:3]}, "
                         f"not {expected[:3]}; nothing was written")
