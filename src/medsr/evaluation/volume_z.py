"""The ``volume-z`` protocol: thin-slice (or isotropic) volumes made thick, and made thin again.

Each volume is cropped to whole blocks along its slice axis (the largest spacing; isotropic volumes:
the given axis, else k), made ``factor`` times thicker by the box profile (each thick slice the mean
of the ``factor`` slices it covers: the contract's operator), and resampled back by every method.
Scores against the original over the whole volume, in its units: PSNR over its 0.5th..99.5th
percentile range (as ``volume-x2``), the mean absolute error, and SSIM averaged over the planes
that contain the slice axis (where the methods differ).

Methods: ``cubic`` and ``lanczos`` along the slice axis, each also ``-projected`` (medsr's projection
after it), and any model through ``medsr.upscale(..., through_plane=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsr.core import metrics
from medsr.core.consistency import enforce
from medsr.core.resize import resize_bicubic, resize_lanczos
from medsr.formats.io import image_files, is_nifti
from medsr.formats.volume import Volume, largest_spacing_axis, read_volume, scaled_affine

VOLUME_PERCENTILES = (0.5, 99.5)
INTERPOLATIONS = {"cubic": resize_bicubic, "lanczos": resize_lanczos}
BASELINES = ("cubic", "lanczos", "cubic-projected", "lanczos-projected")


@dataclass(frozen=True)
class ZCase:
    """One volume of the protocol: the original (values, the slice axis last) and its thick version."""

    name: str
    truth: np.ndarray  # (A, B, K * factor), float64 values
    thick: Volume  # (A, B, K) as stored values, its affine with the thick spacing
    axis: int


def find_volumes(folders: list[Path]) -> list[Path]:
    paths = []
    for folder in folders:
        paths += [folder] if folder.is_file() else [p for p in image_files(folder, volumes=True)]
    found = [p for p in paths if is_nifti(p)]
    if not found:
        raise ValueError(f"{', '.join(map(str, folders))}: no NIfTI volumes (.nii, .nii.gz) for volume-z")
    return found


def make_case(path: Path, factor: int, axis: int | None = None) -> ZCase:
    """The original cropped to whole blocks along the slice axis, and its box-profile thick version."""
    volume = read_volume(path)
    if volume.data.ndim != 3:
        raise ValueError(f"{path}: a 4D volume; volume-z takes 3D volumes")
    chosen = largest_spacing_axis(volume.spacing) if axis is None else axis
    chosen = 2 if chosen is None else chosen
    values = np.moveaxis(volume.values, chosen, 2)
    slices = values.shape[2] // factor * factor
    if slices < 2 * factor:
        raise ValueError(f"{path}: {values.shape[2]} slices across axis {chosen}: too few for x{factor}")
    truth = values[:, :, :slices]
    thick = truth.reshape(*truth.shape[:2], slices // factor, factor).mean(axis=3)
    affine = scaled_affine(volume.affine, {chosen: 1 / factor})  # thick slices, the same outer faces
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    # the thick volume in float64 values, slice axis back in place (its own axis for the methods)
    return ZCase(name=stem, truth=truth, axis=chosen,
                 thick=Volume(data=np.moveaxis(thick, 2, chosen), affine=affine, source=f"{path} (x{factor} thick)"))


def interpolate(case: ZCase, method: str, factor: int, projected: bool) -> np.ndarray:
    """``cubic`` or ``lanczos`` along the slice axis of every plane; then, if asked, the projection."""
    thick = np.moveaxis(case.thick.data, case.axis, 2)
    low, high = float(thick.min()), float(thick.max())
    span = high - low if high > low else 1.0
    unit = ((thick - low) / span).astype(np.float32)
    planes = []
    for plane in unit:
        up = INTERPOLATIONS[method](plane[None], plane.shape[0], plane.shape[1] * factor)
        planes.append(enforce(up, plane[None], bounds=(0.0, 1.0))[0] if projected else up[0])
    return np.stack(planes).astype(np.float64) * span + low


def scores(out: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    low, high = np.percentile(truth, VOLUME_PERCENTILES)
    data_range = float(high - low) or float(np.ptp(truth)) or 1.0
    planes = [metrics.ssim(out[a], truth[a], data_range=data_range) for a in range(truth.shape[0])]
    return {"psnr": metrics.psnr(out, truth, data_range=data_range), "ssim": float(np.mean(planes)),
            "mae": float(np.abs(out - truth).mean())}


def evaluate_volume_z(paths: list[Path], methods: list[str], *, factor: int,
                      run_model: Callable[[Volume, str], Volume], axis: int | None = None,
                      on_error: Callable[[str], None] = print) -> dict[str, dict[str, dict[str, float]]]:
    """``{volume: {method: {metric: value}}}``. ``run_model(thick, name)`` makes a model's thin
    volume; a volume that cannot be read or is too thin is reported through ``on_error`` and left out."""
    results = {}
    for path in paths:
        try:
            case = make_case(path, factor, axis)
        except (ValueError, OSError) as exc:
            on_error(str(exc))
            continue
        rows = {}
        for method in methods:
            base = method.removesuffix("-projected")
            if base in INTERPOLATIONS:
                out = interpolate(case, base, factor, projected=method != base)
            else:
                thin = run_model(case.thick, method)
                out = np.moveaxis(thin.values, case.axis, 2)
            rows[method] = scores(out, case.truth)
        results[case.name] = rows
    return results
