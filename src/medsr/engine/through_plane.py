"""Thick slices to thin: super-resolution across the slice axis of a volume.

Clinical MR is mostly 2D multi-slice (0.5-1 mm in-plane, 3-6.5 mm between slices) and CT is often
reconstructed at 3-5 mm; volumetry, 3D rendering and registration want near-isotropic voxels. Here
the slice axis is resampled by an integer factor, in-plane left as it is:

- **The contract along the slice axis**: each input slice equals the mean of the output slices it
  covers (the slice profile as a box over the slice thickness, slices without gaps). It is exact at
  integer factors, and measured and returned as for every output.
- **Method** (as SMORE and ECLARE use the high-resolution in-plane axes): a 2D model is applied to
  the planes that contain the slice axis, sagittal and coronal. The model super-resolves both axes
  of a plane by its scale; the in-plane axis is then averaged back to its own grid (a box mean of
  a block-consistent output keeps the slice axis consistent), and the two orientations are
  averaged. A factor that is not a power of the model's scale, or ``lanczos-projected``, resamples
  the slice axis by Lanczos instead; medsr's projection follows either way.
- **Geometry**: the affine's slice column is divided by the factor and the origin moved so that the
  volume's outer faces stay where they were (``scaled_affine``); qform and sform follow on writing.

Not yet: self-supervised adaptation of the model to each volume (ECLARE's step), slice gaps, and
DICOM series out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch.nn import functional as F

from medsr.core.consistency import Consistency, enforce, measure
from medsr.core.image import ImageError
from medsr.core.resize import resize_lanczos
from medsr.engine.infer import upscale_tensor
from medsr.formats.volume import Volume, as_dtype, largest_spacing_axis, scaled_affine
from medsr.models.model import SRModel

log = logging.getLogger(__name__)

SHEAR_TOLERANCE = 1e-3  # |cosine| between two voxel axes beyond this: a sheared grid (gantry tilt)


def through_plane_factor(volume: Volume, axis: int, *, spacing: float | None = None) -> int:
    """The integer factor that brings the slice spacing to ``spacing`` (default: the in-plane
    spacing), rounded; an error where it is below 2 (nothing to do)."""
    sizes = volume.spacing
    target = float(np.mean([s for i, s in enumerate(sizes) if i != axis])) if spacing is None else spacing
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"spacing {spacing}: must be a positive number of millimetres")
    factor = round(sizes[axis] / target)
    if factor < 2:
        raise ImageError(f"{volume.source}: slices {sizes[axis]:g} mm apart and a target of {target:g} mm: no "
                         "thinner slices to make (through-plane super-resolution needs a factor of at least 2)")
    return factor


def check_through_plane(volume: Volume, axis: int | None, slice_thickness: float | None) -> int:
    """The slice axis of a volume fit for through-plane work, or an error that says why not."""
    if volume.data.ndim != 3:
        raise ImageError(f"{volume.source}: a 4D volume; through-plane super-resolution takes 3D volumes")
    axis = largest_spacing_axis(volume.spacing) if axis is None else axis
    if axis is None:
        raise ImageError(f"{volume.source}: voxel spacing {' x '.join(f'{s:g}' for s in volume.spacing)} mm is "
                         "isotropic: there are no thick slices to make thin")
    columns = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    cosines = np.abs(columns.T @ columns - np.eye(3))
    if cosines.max() > SHEAR_TOLERANCE:
        raise ImageError(f"{volume.source}: the voxel axes are not at right angles (a sheared grid, as gantry tilt "
                         "leaves it); resample it onto a rectangular grid first")
    if slice_thickness is not None:
        spacing = volume.spacing[axis]
        extent = spacing * volume.data.shape[axis]
        if not (math.isfinite(slice_thickness) and 0 < slice_thickness <= extent):
            raise ValueError(f"slice thickness {slice_thickness}: must be above 0 and at most the volume's "
                             f"{extent:g} mm along its slice axis")
        if not math.isclose(slice_thickness, spacing, rel_tol=0.01):
            raise ValueError(f"slice thickness {slice_thickness:g} mm with slices {spacing:g} mm apart: slices with "
                             "gaps or overlaps are not supported yet (the box profile covers the spacing)")
    return axis


def upscale_through_plane(volume: Volume, model: SRModel, *, factor: int, axis: int, tile: int | None = None,
                          device: str | torch.device = "auto", precision: str = "auto",
                          progress: Callable[[int, int], None] | None = None) -> Volume:
    """``volume`` with ``factor`` times as many slices across ``axis`` (see the module docstring)."""
    values = np.moveaxis(volume.values, axis, 2)  # (A, B, K): slices along the last axis
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    unit = ((values - low) / span).astype(np.float32)
    passes = _passes(model, factor)
    planes = unit.shape[0] * len(passes) + unit.shape[1] * len(passes)
    done = [0]

    def step() -> None:
        done[0] += 1
        if progress:
            progress(done[0], planes)

    if passes:
        sagittal = _planes(unit, model, passes, tile, device, precision, step)
        coronal = np.swapaxes(_planes(np.swapaxes(unit, 0, 1), model, passes, tile, device, precision, step), 0, 1)
        out = (sagittal + coronal) / 2
    else:
        log.info("%s: x%d across the slices is not a power of model %s's x%d: Lanczos along the slice axis",
                 volume.source, factor, model.name, model.scale)
        out = np.stack([resize_lanczos(plane[None], plane.shape[0], plane.shape[1] * factor)[0] for plane in unit])
    levels = span if np.issubdtype(volume.data.dtype, np.integer) else None
    projected, found = _project(out, unit, factor, levels)
    data = as_dtype(np.moveaxis(projected.astype(np.float64) * span + low, 2, axis), volume.data.dtype)
    return replace(volume, data=data, affine=scaled_affine(volume.affine, {axis: factor}), model=model.name,
                   consistency=found)


def _passes(model: SRModel, factor: int) -> list[int]:
    """The model's scale once per pass, when ``factor`` is a power of it; else none (Lanczos)."""
    if model.architecture == "Interpolation" or model.scale < 2:
        return []
    count = round(math.log(factor, model.scale))
    return [model.scale] * count if model.scale**count == factor else []


def _planes(unit: np.ndarray, model: SRModel, passes: list[int], tile: int | None, device: str | torch.device,
            precision: str, step: Callable[[], None]) -> np.ndarray:
    """Each plane ``unit[a]`` (B, K) made ``prod(passes)`` times longer along K: the model on the
    plane, then its B axis averaged back to B (each pass)."""
    out = []
    for plane in unit:
        current = torch.from_numpy(plane)[None]  # (1, B, K)
        for scale in passes:
            sr = upscale_tensor(model, current, tile=tile, device=device, precision=precision)
            current = F.avg_pool2d(sr[None].float(), (scale, 1))[0]  # the in-plane axis back to its grid
            step()
        out.append(current[0].numpy())
    return np.stack(out)


def _project(out: np.ndarray, unit: np.ndarray, factor: int, levels: float | None
             ) -> tuple[np.ndarray, Consistency]:
    """Every plane projected so that each input slice is the mean of its ``factor`` output slices,
    within the volume's range; the worst plane's consistency."""
    projected, found = np.empty_like(out), []
    for index, (plane, source) in enumerate(zip(out, unit, strict=True)):
        projected[index] = enforce(plane[None], source[None], bounds=(0.0, 1.0), levels=levels)[0]
        check = projected[index] if levels is None else np.rint(projected[index] * levels) / levels
        found.append(measure(check[None], source[None], value_range=(0.0, 1.0)))
    worst = Consistency.worst(found)
    assert worst is not None  # a volume has planes
    return projected, worst
