"""Volumes: NIfTI files (nibabel), upscaled in-plane, slice by slice, with one value mapping.

A ``Volume`` holds the stored values of a 3D or 4D scan (before ``scl_slope``/``scl_inter``), the
affine from voxel indices to world millimetres, and the header it came with. ``upscale_volume``
runs the model on each slice across the slice axis (the one with the largest voxel spacing unless
``axis`` is given; an isotropic volume needs the choice), with the volume's min..max as the one
value range of every slice (no flicker from slice to slice) and the consistency contract of
``medsr.consistency`` for each slice. The output keeps the datatype (integers rounded and never
wrapped, floats stay floats), the scaling, orientation, units, qform and sform codes; its affine
has the in-plane voxel sizes divided by the scale and its origin moved so that the outer corner of
the first voxel stays put: the volume covers the same space.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsr.core.consistency import Consistency
from medsr.core.image import Image, ImageError
from medsr.formats.io import is_nifti, write_checked

if TYPE_CHECKING:
    import nibabel

log = logging.getLogger(__name__)

ISOTROPIC = 1.01  # spacings within 1% of each other: no slice axis can be told


@dataclass(kw_only=True)
class Volume:
    """A scan: stored values, where each voxel lies, and the header to write it back with.

    Attributes:
        data: stored values, shape (X, Y, Z) or (X, Y, Z, T), in the file's datatype.
        affine: (4, 4) voxel index (i, j, k) -> world millimetres (RAS+, nibabel's convention),
            through the voxel centres.
        slope, inter: value = stored * slope + inter (NIfTI ``scl_slope``/``scl_inter``).
        header: the NIfTI header (units, qform and sform codes, descriptions), or None.
        source: the file, for messages.
        consistency: the worst slice's, when ``upscale_volume`` made it.
    """

    data: np.ndarray
    affine: np.ndarray
    slope: float = 1.0
    inter: float = 0.0
    header: nibabel.Nifti1Header | None = None  # NIfTI-2's header is a Nifti1Header too
    source: str = "array"
    model: str | None = None
    consistency: Consistency | None = None

    def __post_init__(self) -> None:
        if self.data.ndim not in (3, 4):
            raise ImageError(f"{self.source}: a volume of shape {self.data.shape}: need 3 or 4 dimensions")
        if self.affine.shape != (4, 4) or not np.isfinite(self.affine).all():
            raise ImageError(f"{self.source}: the affine must be a finite 4x4 matrix")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel sizes (mm) along i, j, k: the lengths of the affine's columns."""
        i, j, k = (float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        return i, j, k

    @property
    def value_range(self) -> tuple[float, float]:
        """(min, max) of the values, from the stored extremes (no full-size copy)."""
        ends = sorted(float(v) * self.slope + self.inter for v in (self.data.min(), self.data.max()))
        return ends[0], ends[1]

    @property
    def values(self) -> np.ndarray:
        """The values the stored data mean (float64)."""
        return self.data.astype(np.float64) * self.slope + self.inter

    @property
    def orientation(self) -> str:
        """Axis codes of i, j, k, e.g. "LPS"."""
        import nibabel

        return "".join(nibabel.aff2axcodes(self.affine))


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI-1/2 file (``.nii``, ``.nii.gz``) with nibabel."""
    import nibabel
    from nibabel.arrayproxy import ArrayProxy

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.name.lower().endswith(".gz"):
        _check_gzip(path)
    try:
        image = nibabel.load(path)
        if not isinstance(image, nibabel.Nifti1Pair):  # NIfTI-1 and NIfTI-2, one file or a pair
            raise TypeError(f"nibabel reads it as {type(image).__name__}, not NIfTI-1 or NIfTI-2")
        proxy = image.dataobj
        assert isinstance(proxy, ArrayProxy)  # an image loaded from a file keeps its data behind a proxy
        floating = np.issubdtype(image.get_data_dtype(), np.floating)
        # Integers keep their stored values and scaling; floats (and scaled floats) are read as values.
        # (scaled floats come back as float64: cast to the file's own type, which the output keeps)
        data = np.asarray(proxy).astype(image.get_data_dtype(), copy=False) if floating \
            else np.asarray(proxy.get_unscaled())
        slope, inter = (1.0, 0.0) if floating else (float(proxy.slope), float(proxy.inter))
    except Exception as exc:  # nibabel raises many types for damaged files
        raise ImageError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc})") from None
    if data.ndim == 5 and data.shape[3] == 1:  # (X, Y, Z, 1, C) vector volumes are not scans
        raise ImageError(f"{path}: a vector-valued volume {data.shape}; medsr takes 3D and 4D scans")
    if data.ndim not in (3, 4):
        raise ImageError(f"{path}: {data.ndim} dimensions {data.shape}; medsr takes 3D and 4D volumes")
    if data.dtype.kind not in "iuf" or data.dtype.itemsize > 8:  # RGB24, complex, ...: not a scan's values
        raise ImageError(f"{path}: datatype {data.dtype} is not supported (integers and floats up to 64 bits)")
    if not np.issubdtype(data.dtype, np.integer) and not np.isfinite(data).all():
        raise ImageError(f"{path}: holds NaN or infinite values")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not abs(np.linalg.det(affine[:3, :3])) > 1e-12:
        raise ImageError(f"{path}: its affine is singular (a voxel size of 0, or two axes along one direction): "
                         "where each voxel lies is not defined")
    return Volume(data=data, affine=affine, slope=slope, inter=inter,
                  header=image.header.copy(), source=str(path))


def _check_gzip(path: Path) -> None:
    """Read a gzip stream to its end, where its CRC-32 and length are checked: nibabel stops at the
    last voxel, so a damaged file would otherwise be read without a word."""
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageError(f"{path}: cannot read as NIfTI: the gzip data are damaged ({exc})") from None


def write_volume(path: str | Path, volume: Volume, *, overwrite: bool = False) -> None:
    """Write ``volume`` as NIfTI (the header's version, compressed for ``.nii.gz``), atomically and
    checked as ``medsr.write_image`` writes images: read back, it must hold the same shape and
    datatype, or nothing is written."""
    path = Path(path)
    if not is_nifti(path):
        raise ImageError(f"{path}: a volume is written as .nii or .nii.gz")
    if path.exists() and not overwrite:
        raise ImageError(f"{path}: already exists (kept; the overwrite option replaces it)")

    def verify(tmp: Path) -> None:
        back = read_volume(tmp)
        if back.data.shape != volume.data.shape or back.data.dtype != volume.data.dtype:
            raise ImageError(f"{path}: the written file reads back as {back.data.shape} {back.data.dtype}, not "
                             f"{volume.data.shape} {volume.data.dtype}; nothing was written")

    write_checked(path, lambda tmp: _write_nifti(tmp, volume), verify, overwrite=overwrite)


def _write_nifti(path: Path, volume: Volume) -> None:
    import nibabel

    header = volume.header.copy() if volume.header is not None else nibabel.Nifti1Header()
    kind = nibabel.Nifti2Image if isinstance(header, nibabel.Nifti2Header) else nibabel.Nifti1Image
    header.set_data_dtype(volume.data.dtype)
    image = kind(volume.data, None, header)  # the forms are set below, each from its own matrix
    qform, sform = _forms(volume)
    image.set_qform(qform[0], code=qform[1])
    image.set_sform(sform[0], code=sform[1])
    if np.issubdtype(volume.data.dtype, np.integer):
        image.header.set_slope_inter(volume.slope, volume.inter)
    else:
        image.header.set_slope_inter(np.nan, np.nan)  # floats are values: unscaled
    image.to_filename(str(path))


def largest_spacing_axis(spacing: tuple[float, ...]) -> int | None:
    """The axis (0, 1, 2) whose voxel spacing is the largest by more than 1% (the acquisition's slice
    direction of most clinical MR and CT), or None for an isotropic volume."""
    largest = int(np.argmax(spacing[:3]))
    others = [s for i, s in enumerate(spacing[:3]) if i != largest]
    return largest if spacing[largest] > max(others) * ISOTROPIC else None


def slice_axis(volume: Volume, axis: int | None = None) -> int:
    """The axis slices are taken across: ``axis`` (0, 1, 2 for i, j, k), or the largest spacing's."""
    if axis is not None:
        if axis not in (0, 1, 2):
            raise ValueError(f"axis {axis}: give 0, 1 or 2 (i, j or k)")
        return axis
    largest = largest_spacing_axis(volume.spacing)
    if largest is None:
        raise ValueError(f"{volume.source}: voxel spacing {' x '.join(f'{s:g}' for s in volume.spacing)} mm has "
                         "no largest axis to take as the slice axis; choose one with axis (0, 1 or 2)")
    return largest


def reading_axis(spacing: tuple[float, ...]) -> int:
    """Where no one chooses (training, evaluation): the largest spacing's axis, or for an isotropic
    volume k, the axial slices a reader expects."""
    largest = largest_spacing_axis(spacing)
    return 2 if largest is None else largest


def training_slices(volume: Volume) -> tuple[np.ndarray, int]:
    """A volume for training: its slices across ``reading_axis`` as float32 (H, W, N) in [0, 1]
    over the volume's min..max (the mapping ``upscale`` uses), and the axis. 4D volumes give every
    time point's slices."""
    axis = reading_axis(volume.spacing)
    data = np.moveaxis(volume.data, axis, 2)
    data = data.reshape(*data.shape[:2], -1).astype(np.float32)
    low, high = float(data.min()), float(data.max())
    data -= low
    data /= high - low if high > low else 1.0
    return data, axis


def slice_images(volume: Volume, axis: int) -> tuple[list[Image], tuple[float, float]]:
    """The 2D slices across ``axis`` (every time point of a 4D volume) as images whose [0, 1] is
    the volume's min..max, and that range in stored values."""
    data = np.moveaxis(volume.data, axis, 2)
    low, high = float(data.min()), float(data.max())
    span = high - low if high > low else 1.0
    integer = np.issubdtype(data.dtype, np.integer)
    flat = data.reshape(*data.shape[:2], -1)
    images = []
    for index in range(flat.shape[2]):
        pixels = ((flat[:, :, index].astype(np.float64) - low) / span).astype(np.float32)[None]
        images.append(Image(pixels=pixels, levels=span if integer else None, continuous=not integer,
                            max_value=255 if data.dtype.itemsize == 1 else 65535,  # its bit depth, for messages
                            source=f"{volume.source} slice {index}", range_reason="the volume's min..max"))
    return images, (low, span)


def upscale_volume(volume: Volume, run: Callable[[Image, tuple[float, float]], Image], *, axis: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> Volume:
    """Upscale every slice across the slice axis with ``run(image, stack_range)`` (``medsr.upscale``
    with its options) and reassemble the volume (see the module docstring). ``progress(done, total)``
    after each slice."""
    axis = slice_axis(volume, axis)
    images, (low, span) = slice_images(volume, axis)
    outputs = []
    for image in images:
        outputs.append(run(image, (0.0, 1.0)))
        if progress:
            progress(len(outputs), len(images))
    moved = np.moveaxis(volume.data, axis, 2)
    out_h, out_w = outputs[0].size
    stacked = np.stack([o.pixels[0] for o in outputs], axis=2).astype(np.float64) * span + low
    stacked = stacked.reshape(out_h, out_w, *moved.shape[2:])
    data = as_dtype(stacked, volume.data.dtype)
    inplane = [a for a in (0, 1, 2) if a != axis]
    scales = {inplane[0]: out_h / moved.shape[0], inplane[1]: out_w / moved.shape[1]}
    return replace(volume, data=np.moveaxis(data, 2, axis), affine=scaled_affine(volume.affine, scales),
                   model=outputs[0].model, consistency=Consistency.worst([o.consistency for o in outputs
                                                                          if o.consistency]))


def _forms(volume: Volume) -> tuple[tuple[np.ndarray, int], tuple[np.ndarray, int]]:
    """(qform, code), (sform, code) for writing ``volume``. A file's two forms can differ (the scanner
    frame and a registered one): each is carried onto the new grid by the same change of voxel
    indices that took the affine read (the header's best) to ``volume.affine``, codes kept; a form
    with code 0 gets the affine. A file without either (only voxel sizes) stays so; an affine that
    says more (given through the Python API, or without a header) is written as the sform, "aligned"
    (code 2)."""
    header = volume.header
    codes = (0, 0) if header is None else (int(header["qform_code"]), int(header["sform_code"]))
    if codes == (0, 0):
        from nibabel.volumeutils import shape_zoom_affine

        # Nothing known but the voxel sizes (what readers fall back to): so it stays, unless the
        # affine says more than that (one given through the Python API).
        only_sizes = shape_zoom_affine(volume.data.shape[:3], volume.spacing, True)
        if header is not None and np.allclose(volume.affine, only_sizes, atol=1e-4):
            return (volume.affine, 0), (volume.affine, 0)
        return (volume.affine, 0), (volume.affine, 2)
    assert header is not None  # without one the codes are (0, 0)
    grid = np.linalg.inv(header.get_best_affine()) @ volume.affine  # new voxel index -> old voxel index
    stored = header.get_qform(), header.get_sform()
    qform, sform = ((form @ grid, code) if code else (volume.affine, 0)
                    for form, code in zip(stored, codes, strict=True))
    return qform, sform


def as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Floats stay floats; integers are rounded and clipped to the type (never wrapped)."""
    if np.issubdtype(dtype, np.floating):
        return values.astype(dtype)
    limits = np.iinfo(dtype)
    return np.clip(np.rint(values), limits.min, limits.max).astype(dtype)


def scaled_affine(affine: np.ndarray, scales: dict[int, float]) -> np.ndarray:
    """The affine of a volume whose axes ``scales`` hold scale factors: those columns divided by the
    scale, and the origin moved by (1/scale - 1)/2 voxel along each, so that the outer corner of the
    first voxel (index -0.5) stays where it was."""
    out = affine.astype(np.float64).copy()
    for axis, scale in scales.items():
        column = affine[:3, axis]
        out[:3, axis] = column / scale
        out[:3, 3] += (1 / scale - 1) / 2 * column
    return out


def describe(path: str | Path) -> list[tuple[str, str]]:
    """What medsr sees in a NIfTI file, as (field, value) pairs for ``medsr info``."""
    volume = read_volume(path)
    header = volume.header
    units = header.get_xyzt_units() if header is not None else ("unknown", "unknown")
    largest = largest_spacing_axis(volume.spacing)
    axis = "none: isotropic, choose one with --axis" if largest is None else f"{'ijk'[largest]} (largest spacing)"
    return [
        ("format", f"NIfTI-{2 if type(header).__name__ == 'Nifti2Header' else 1}"),
        ("shape", " x ".join(str(n) for n in volume.data.shape)),
        ("spacing", " x ".join(f"{s:g}" for s in volume.spacing) + f" {units[0]}"),
        ("orientation", volume.orientation),
        ("datatype", f"{volume.data.dtype}" + (f", scl_slope {volume.slope:g}, scl_inter {volume.inter:g}"
                                              if (volume.slope, volume.inter) != (1.0, 0.0) else "")),
        ("value range", "{:g}..{:g}".format(*volume.value_range)),
        ("qform, sform codes", f"{int(header['qform_code'])}, {int(header['sform_code'])}" if header is not None
         else "-"),
        ("slice axis", axis),
    ]
