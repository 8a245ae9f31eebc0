"""DICOM in and out: stored values to [0, 1] and back exactly, metadata kept true.

Mapping. A ``StoredRange`` maps stored pixel values linearly to [0, 1] over the full range the
file can store (0..2**BitsStored - 1, or the signed equivalent), which its inverse restores
exactly. A window (centre, width, in modality units after RescaleSlope/Intercept, with the DICOM
linear VOI function of PS3.3 C.11.2.1.2.1) chooses what the network's range maps to
(``Image.window``); values outside it are kept. MONOCHROME1 is flipped so that the network sees
the image as displayed, and flipped back on writing.

Writing. The output keeps every element of the input except those that describe the pixels
(rows, columns, pixel data: written uncompressed, explicit VR little endian), the spacings
(PixelSpacing, ImagerPixelSpacing, NominalScannedPixelSpacing: divided by the scale), the
identity of the new image (new SOP Instance UID; a Series Instance UID derived from the original
series and the processing, so one input series gives one output series), ImageType
(DERIVED/SECONDARY), DerivationDescription (medsr, model, scale), and the Smallest/Largest Image
Pixel Value elements, which are dropped since they no longer hold. Patient and study elements are
untouched. Colour is written as RGB, or YBR_FULL when the input was uncompressed YBR_FULL.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsr.core.image import Image, ImageError, ReadOptions, check_pixels, single_frame

log = logging.getLogger(__name__)

# Colour encodings arrive as RGB from pydicom's decoders (YBR_RCT/ICT: JPEG 2000's colour transforms)
# or from the palette (PALETTE COLOR), and are written back as RGB.
SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT",
                         "PALETTE COLOR")
_SPACING_TAGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")


def is_dicom(path: Path) -> bool:
    """True when the file has the DICOM preamble marker ("DICM" at byte 128)."""
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


@dataclass(frozen=True, kw_only=True)
class StoredRange:
    """Linear map of stored values: ``low`` to 0, ``high`` to 1 (then flipped if ``invert``)."""

    low: float
    high: float
    invert: bool = False

    def to_unit(self, stored: np.ndarray, *, clip: bool = True) -> np.ndarray:
        unit = (stored.astype(np.float64) - self.low) / (self.high - self.low)
        unit = np.clip(unit, 0, 1) if clip else unit
        return (1 - unit if self.invert else unit).astype(np.float32)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """The stored values (float64, not rounded) that ``to_unit`` maps to ``unit``."""
        unit = np.asarray(unit, np.float64)
        return (1 - unit if self.invert else unit) * (self.high - self.low) + self.low

    def to_stored(self, unit: np.ndarray, dtype: np.dtype, bits_stored: int) -> np.ndarray:
        lowest, highest = stored_limits(dtype, bits_stored)
        return np.clip(np.rint(self.from_unit(unit)), lowest, highest).astype(dtype)


def stored_limits(dtype: np.dtype, bits_stored: int) -> tuple[int, int]:
    if np.issubdtype(dtype, np.signedinteger):
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def parse_window(text: str | None) -> str | tuple[float, float] | None:
    """``None``, ``"voi"``, or ``"C,W"`` from the command line -> ReadOptions.window."""
    if text is None or text == "voi":
        return text
    try:
        centre, width = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--window {text!r}: give CENTRE,WIDTH (e.g. 2048,4096) or 'voi'") from None
    check_window(centre, width, f"window {text!r}")
    return centre, width


def check_window(centre: float, width: float, what: str) -> None:
    if not (np.isfinite(centre) and np.isfinite(width)):
        raise ValueError(f"{what}: centre and width must be finite numbers")
    if width < 1:
        raise ValueError(f"{what}: the width must be at least 1")


def file_window(ds: Dataset) -> tuple[float, float] | None:
    """The file's first window (centre, width in modality units), or None when it has none."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    first = lambda v: float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)  # noqa: E731
    return first(ds.WindowCenter), first(ds.WindowWidth)


def rescale(ds: Dataset) -> tuple[float, float]:
    """(slope, intercept): modality values = slope x stored + intercept."""
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def _window_of(ds: Dataset, path: Path) -> tuple[float, float]:
    found = file_window(ds)
    if found is None:
        reason = "has only a VOI LUT Sequence, which is not supported" if "VOILUTSequence" in ds else "has none"
        raise ImageError(f"{path}: --window voi asks for the file's window, but it {reason}; give --window C,W")
    return found


def stored_range(ds: Dataset, dtype: np.dtype, bits: int | None = None) -> StoredRange:
    """The full range the file can store, mapped to [0, 1] (flipped for MONOCHROME1); ``bits``: of
    the decoded values, when they differ from BitsStored (a palette's entries)."""
    low, high = stored_limits(dtype, bits or int(ds.BitsStored))
    return StoredRange(low=low, high=high, invert=ds.PhotometricInterpretation == "MONOCHROME1")


def window_range(ds: Dataset, mapping: StoredRange, window: str | tuple[float, float], path: Path
                 ) -> tuple[float, float] | None:
    """A window (centre, width in modality units, or "voi": the file's first) as the [0, 1] values of
    ``mapping`` that it spans, for the network's range; None for colour images, which have none."""
    if ds.SamplesPerPixel != 1 or ds.PhotometricInterpretation == "PALETTE COLOR":
        return None
    if isinstance(window, str):
        if window != "voi":
            raise ImageError(f"{path}: window {window!r}: give (centre, width) or 'voi'")
        centre, width = _window_of(ds, path)
    else:
        centre, width = window
    try:
        check_window(centre, width, f"{path}: window {centre:g},{width:g}")
    except ValueError as exc:
        raise ImageError(str(exc)) from None
    slope, intercept = rescale(ds)
    # Modality values at the window's ends (the linear VOI function of PS3.3 C.11.2.1.2.1), as stored values.
    ends = sorted((centre - 0.5 + side * (width - 1) / 2 - intercept) / slope for side in (-1, 1))
    # A window far wider than the stored values squeezes the image into a few of the network's
    # levels, and one beside them makes its input constant.
    if ends[1] - ends[0] > 2 * (mapping.high - mapping.low) or ends[1] <= mapping.low or ends[0] >= mapping.high:
        raise ImageError(f"{path}: window {centre:g},{width:g} (stored {ends[0]:g}..{ends[1]:g}) does not "
                         f"fit the stored values {mapping.low:g}..{mapping.high:g}: it is more than twice as wide "
                         "or misses them")
    unit = sorted(float(v) for v in mapping.to_unit(np.array(ends), clip=False))
    return unit[0], unit[1]


def _read_dataset(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as exc:  # pydicom's advice to force reading is not for medsr's users
        reason = str(exc).split(" Use force=True")[0].rstrip(" .")
        raise ImageError(f"{path}: not a DICOM file ({reason})") from None
    except Exception as exc:  # truncated or malformed element data
        raise ImageError(f"{path}: cannot parse DICOM ({type(exc).__name__}: {exc})") from None


def series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID of a DICOM file (header only), or None when it has none or cannot be read."""
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                   .get("SeriesInstanceUID", "")) or None
    except Exception:
        return None


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _check_supported(ds: Dataset, path: Path, max_pixels: int) -> None:
    if "PixelData" not in ds:
        raise ImageError(f"{path}: DICOM without pixel data (SOP class {ds.get('SOPClassUID', 'unknown')})")
    photometric = ds.get("PhotometricInterpretation", "")
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise ImageError(f"{path}: photometric interpretation {photometric!r} is not supported "
                         f"(supported: {', '.join(SUPPORTED_PHOTOMETRIC)})")
    if ds.get("BitsAllocated") not in (8, 16):
        raise ImageError(f"{path}: {ds.get('BitsAllocated')} bits allocated per sample is not supported (8 or 16)")
    samples = ds.get("SamplesPerPixel", 1)
    expected = 1 if photometric.startswith("MONOCHROME") or photometric == "PALETTE COLOR" else 3
    if samples != expected:  # the header contradicts itself: refuse the input, not the output it would make
        raise ImageError(f"{path}: {photometric} with {samples} samples per pixel (it needs {expected}); the "
                         "header contradicts itself")
    check_pixels(path, int(ds.Columns), int(ds.Rows) * frame_count(ds), max_pixels)


def read_dicom(path: Path, options: ReadOptions) -> Image:
    """Read a single-frame DICOM image (gray or colour, 8-16 bits stored, signed or not)."""
    return single_frame(read_dicom_frames(path, options), path, "multi-frame DICOM")


def _from_palette(ds: Dataset, indices: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    """RGB through the file's palette, and the palette's bits per entry."""
    from pydicom.pixels import apply_color_lut

    try:
        rgb = apply_color_lut(indices, ds)
    except Exception as exc:
        raise ImageError(f"{path}: cannot apply its colour palette ({type(exc).__name__}: {exc})") from None
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    for keyword in [e.keyword for e in ds if "PaletteColor" in e.keyword or "PaletteUID" in e.keyword]:
        delattr(ds, keyword)  # the output is RGB: a palette would contradict it
    return rgb.astype(np.uint8 if bits <= 8 else np.uint16), bits


def read_dicom_frames(path: Path, options: ReadOptions) -> list[Image]:
    """Read every frame of a DICOM image as its own 2D image, sharing the dataset."""
    ds = _read_dataset(path)
    _check_supported(ds, path, options.max_pixels)
    try:
        stored = ds.pixel_array  # colour YBR arrives converted to RGB
    except RuntimeError as exc:  # pydicom names the decoder packages that are missing
        syntax = ds.file_meta.get("TransferSyntaxUID")
        name = syntax.name if syntax is not None else "unknown transfer syntax"
        raise ImageError(f"{path}: cannot decode {name} pixel data: {exc}") from None
    except Exception as exc:
        raise ImageError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {exc})") from None
    bits = int(ds.BitsStored)
    if ds.PhotometricInterpretation == "PALETTE COLOR":  # the palette's RGB is the picture
        stored, bits = _from_palette(ds, stored, path)
    mapping = stored_range(ds, stored.dtype, bits=bits)
    window = None if options.window is None else window_range(ds, mapping, options.window, path)
    if frame_count(ds) == 1:
        stored = stored[None]
    del ds.PixelData  # the decoded copy is in ``stored``; the writer sets new pixel data
    # Native byte order: a big-endian file's array must not write big-endian bytes into little-endian output.
    meta = {"dicom": ds, "dicom_range": mapping, "dicom_dtype": stored.dtype.newbyteorder("="), "dicom_bits": bits}
    reason = f"DICOM: {ds.BitsStored} bits stored, {mapping.low:g}..{mapping.high:g}"
    if window is not None:
        ends = sorted(float(v) for v in mapping.from_unit(np.array(window)))
        reason += f"; the network sees the window, stored {ends[0]:g}..{ends[1]:g}"
    # Written to another format, unsigned stored values that the display does not invert keep their
    # numbers (12-bit 0..4095 stays 0..4095); others fill the container's range.
    kept = mapping.low == 0 and not mapping.invert and mapping.high >= 1
    max_value = int(mapping.high) if kept else (255 if bits <= 8 else 65535)
    frames = []
    for frame in stored:
        pixels = mapping.to_unit(frame)
        pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, 2, 0)
        frames.append(Image(pixels=np.ascontiguousarray(pixels), max_value=max_value,
                            levels=mapping.high - mapping.low, window=window, modality=ds.get("Modality") or None,
                            meta=dict(meta), range_reason=reason))
    return frames


def _output_photometric(ds: Dataset) -> str:
    photometric = ds.PhotometricInterpretation
    if photometric.startswith("MONOCHROME"):
        return photometric
    compressed = ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian).is_compressed
    return "YBR_FULL" if photometric == "YBR_FULL" and not compressed else "RGB"


def derived_dataset(image: Image | list[Image]) -> Dataset:
    """The output dataset for ``image`` (or the frames of one file), read from DICOM and possibly
    upscaled."""
    frames = image if isinstance(image, list) else [image]
    image = frames[0]
    source: Dataset = image.meta["dicom"]
    if any(f.meta.get("dicom") is not source for f in frames) or any(f.size != image.size for f in frames):
        raise ImageError("the frames of one DICOM output must come from one file and have one size")
    ds = copy.deepcopy(source)  # Dataset.copy is shallow: set_pixel_data would change the source's UIDs too
    for _ in ds.iterall():  # elements not read yet get their VR now: implicit-VR input is written as explicit
        pass
    mapping: StoredRange = image.meta["dicom_range"]
    dtype = np.dtype(image.meta["dicom_dtype"])
    height, width = image.size
    scale_y, scale_x = height / source.Rows, width / source.Columns
    photometric = _output_photometric(source)
    bits = int(image.meta.get("dicom_bits", source.BitsStored))
    stored = np.stack([_stored(frame, mapping, dtype, bits) for frame in frames])
    stored = stored[0] if len(frames) == 1 else stored
    if photometric == "YBR_FULL":
        stored = convert_color_space(stored, "RGB", "YBR_FULL")
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # Forget a big-endian or implicit-VR source encoding, so that pydicom writes the syntax above.
    ds.set_original_encoding(False, True, ds.original_character_set)
    for name in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths", "SmallestImagePixelValue",
                 "LargestImagePixelValue"):
        if name in ds:
            delattr(ds, name)
    ds.set_pixel_data(stored, photometric, bits, generate_instance_uid=False)
    # the same output of the same source gets the same UID (a series sent twice is one derived series to
    # an archive); any change to the pixels (another model, setting or version) gives another
    pixels_digest = hashlib.sha256(np.ascontiguousarray(stored).tobytes()).hexdigest()
    known = str(source.get("SOPInstanceUID") or "")
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[known, pixels_digest, _derivation(image, scale_y, scale_x)]) \
        if known else generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if not ds.get("SOPClassUID") and ds.file_meta.get("MediaStorageSOPClassUID"):  # anonymisers empty it
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    if ds.get("SOPClassUID"):
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    _move_position(ds, ds, ds, scale_y, scale_x)
    _scale_spacing(ds, scale_y, scale_x, image.source)
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    for frame in [*ds.get("PerFrameFunctionalGroupsSequence", []), shared]:  # enhanced objects
        for position in frame.get("PlanePositionSequence", []):
            _move_position(position, _first(frame, shared, "PlaneOrientationSequence"),
                           _first(frame, shared, "PixelMeasuresSequence"), scale_y, scale_x)
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in ds.get(group, []):
            for measures in item.get("PixelMeasuresSequence", []):
                _scale_spacing(measures, scale_y, scale_x, image.source)
    if source.get("SOPClassUID") and source.get("SOPInstanceUID"):  # a derived image names its source
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        reference.PurposeOfReferenceCodeSequence = [_code("121322", "Source image for image processing operation")]
        ds.SourceImageSequence = [reference]
    description = _derivation(image, scale_y, scale_x)
    _derived_series_tags(ds, source, description)
    # an anonymiser may empty the UIDs: then each file is its own series, never merged with strangers
    series = str(source.get("SeriesInstanceUID") or source.get("SOPInstanceUID") or generate_uid())
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[series, description])
    ds.ImageType = ["DERIVED", "SECONDARY", *list(source.get("ImageType", []))[2:]]
    earlier = str(source.get("DerivationDescription", "") or "")  # what was done before is kept
    ds.DerivationDescription = (f"{earlier}; {description}" if earlier else description)[-1024:]
    if "NumberOfFrames" in source and "NumberOfFrames" not in ds:  # a single-frame NM or US file states it
        ds.NumberOfFrames = source.NumberOfFrames
    return ds


def _stored(image: Image, mapping: StoredRange, dtype: np.dtype, bits_stored: int) -> np.ndarray:
    values = np.moveaxis(image.pixels, 0, 2)
    return mapping.to_stored(values[:, :, 0] if image.is_gray else values, dtype, bits_stored)


def _scale_spacing(ds: Dataset, scale_y: float, scale_x: float, source: str) -> None:
    """Pixel spacings (row, column) divided by the scale: the same anatomy, more pixels. A malformed
    spacing (not two finite numbers) is left out: kept, it would be wrong for the new pixels."""
    for name in _SPACING_TAGS:
        if name not in ds:
            continue
        spacing = _numbers(ds, name)
        if spacing is None or len(spacing) != 2:
            element = ds.data_element(name)
            assert element is not None  # a keyword's element in ds: checked above
            log.warning("%s: %s %r is not two numbers; left out of the upscaled image", source, name, element.value)
            delattr(ds, name)
            continue
        row, col = spacing
        setattr(ds, name, [f"{row / scale_y:.10g}"[:16], f"{col / scale_x:.10g}"[:16]])


def _first(frame: Dataset, shared: Dataset, sequence: str) -> Dataset:
    """The first item of a functional group's sequence, per frame or else shared (empty if neither)."""
    items = frame.get(sequence) or shared.get(sequence) or [Dataset()]
    return items[0]


def _numbers(ds: Dataset, name: str) -> np.ndarray | None:
    """A multi-valued decimal element as numbers; None when absent or not all finite numbers."""
    element = ds.data_element(name) if name in ds else None
    if element is None:
        return None
    value = element.value
    try:
        numbers = np.array([float(v) for v in (value if isinstance(value, list | tuple | MultiValue) else [value])])
    except (TypeError, ValueError):
        return None
    return numbers if np.isfinite(numbers).all() else None


def _move_position(position: Dataset, orientation: Dataset, measures: Dataset, scale_y: float, scale_x: float
                   ) -> None:
    """ImagePositionPatient is the centre of the first pixel; the output's first pixel is smaller and
    its centre lies (1 - 1/scale) / 2 of an input pixel up and left of the input's, so that both
    images cover the same anatomy. Uses the input's spacing (call before scaling it)."""
    origin, cosines, spacing = (_numbers(ds, name) for ds, name in (
        (position, "ImagePositionPatient"), (orientation, "ImageOrientationPatient"), (measures, "PixelSpacing")))
    if origin is None or cosines is None or spacing is None or (len(origin), len(cosines), len(spacing)) != (3, 6, 2):
        return  # absent or malformed: left as it is, as other readers would find it
    row_spacing, col_spacing = spacing
    # cosines[:3]: the direction of increasing column index (along a row); cosines[3:]: of increasing row
    moved = (origin + (1 / scale_x - 1) / 2 * col_spacing * cosines[:3]
             + (1 / scale_y - 1) / 2 * row_spacing * cosines[3:])
    position.ImagePositionPatient = [f"{v:.10g}"[:16] for v in moved]


def _code(value: str, meaning: str) -> Dataset:
    """A DICOM code of the DCM scheme (PS3.16)."""
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
    return code


def _derived_series_tags(ds: Dataset, source: Dataset, description: str) -> None:
    """What archives and viewers expect of a derived series (PS3.3): how it was derived (DCM 113085
    "Spatial resampling": no DICOM code names super-resolution), which series it came from, the
    equipment that made it, and a series description that says so."""
    from medsr.core.version import __version__

    ds.DerivationCodeSequence = [_code("113085", "Spatial resampling")]
    if source.get("SeriesInstanceUID") and source.get("SOPClassUID") and source.get("SOPInstanceUID"):
        instance = Dataset()
        instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
        series = Dataset()
        series.SeriesInstanceUID = source.SeriesInstanceUID
        series.ReferencedInstanceSequence = [instance]
        ds.ReferencedSeriesSequence = [series]
    equipment = Dataset()
    equipment.PurposeOfReferenceCodeSequence = [_code("109102", "Processing Equipment")]
    equipment.Manufacturer = "medsr"
    equipment.SoftwareVersions = __version__
    equipment.ContributionDescription = description[:1024]
    ds.ContributingEquipmentSequence = [*source.get("ContributingEquipmentSequence", []), equipment]
    suffix = " (medsr super-resolution)"
    earlier = str(source.get("SeriesDescription", "") or "").removesuffix(suffix)
    ds.SeriesDescription = (earlier[: 64 - len(suffix)] + suffix).strip()


def _derivation(image: Image, scale_y: float, scale_x: float) -> str:
    from medsr.core.version import __version__

    scale = f"x{scale_y:g}" if abs(scale_y - scale_x) < 1e-9 else f"x{scale_y:g} (rows), x{scale_x:g} (columns)"
    model = image.model
    done = f"super-resolution {scale} with model {model}" if model else f"resampled {scale}"
    return f"medsr {__version__}: {done}; uncompressed, explicit VR little endian"


def write_dicom(path: Path, image: Image | list[Image]) -> None:
    """Write one image, or the frames of one multi-frame file, as DICOM."""
    for frame in image if isinstance(image, list) else [image]:
        if "dicom" not in frame.meta:
            raise ImageError("only images read from DICOM can be written as DICOM (patient and study "
                             "data would be missing); write .png or .tif")
        if frame.alpha is not None:
            raise ImageError("DICOM output cannot hold an alpha channel")
    derived_dataset(image).save_as(path, enforce_file_format=True)


def describe(path: Path) -> list[tuple[str, str]]:
    """What medsr sees in a DICOM file, as (field, value) pairs for ``medsr info``."""
    ds = _read_dataset(path)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    get = lambda name: str(ds.get(name, "-"))  # noqa: E731
    rows = [
        ("format", f"DICOM, {syntax.name if syntax else 'no transfer syntax'}"),
        ("size", f"{get('Columns')} x {get('Rows')} (columns x rows), frames {get('NumberOfFrames')}"),
        ("bits", f"stored {get('BitsStored')} of {get('BitsAllocated')}, "
                 f"{'signed' if ds.get('PixelRepresentation') == 1 else 'unsigned'}"),
        ("photometric", get("PhotometricInterpretation")),
        ("modality", get("Modality")),
        ("rescale", f"slope {get('RescaleSlope')}, intercept {get('RescaleIntercept')}"),
        ("window", f"centre {get('WindowCenter')}, width {get('WindowWidth')}"
                   + (", VOI LUT Sequence present" if "VOILUTSequence" in ds else "")),
    ]
    rows += [(name, get(name)) for name in _SPACING_TAGS if name in ds]
    return rows
