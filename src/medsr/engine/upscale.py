"""The upscaling job: image in, model, tiles, optional resize to the asked scale, image out."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsr.core.consistency import DEFAULT_TOLERANCE, ConsistencyError, Tolerance, content_range, enforce, measure
from medsr.core.image import ImageError, OutputError, ReadOptions
from medsr.core.resize import resize_lanczos
from medsr.engine import devices, infer
from medsr.engine.infer import upscale_tensor
from medsr.engine.through_plane import check_through_plane, through_plane_factor, upscale_through_plane
from medsr.formats.io import Image, read_image
from medsr.formats.volume import Volume, is_nifti, read_volume, upscale_volume
from medsr.models.catalog import AUTO, DIAL_MODELS
from medsr.models.interpolation import interpolation_model
from medsr.models.model import SRModel, as_model
from medsr.models.weights import load_model
from medsr.nets.rrdbnet import RRDBNet

log = logging.getLogger(__name__)

DEFAULT_MODEL = "auto"




# DICOM Modality codes and the medical model for them under "auto"
CHEST_XRAY_MODALITIES = ("CR", "DX", "MG")  # computed and digital radiography, mammography
FUNDUS_MODALITIES = ("OP", "XC")  # ophthalmic and external-camera photography


def model_for(image: Image, model: str | Path = DEFAULT_MODEL, fidelity: float | None = None
              ) -> tuple[str | Path, float | None, str]:
    """(model, fidelity, why) to load: ``model`` itself, or for "auto" what ``catalog.AUTO`` holds for
    the kind of image (by its DICOM Modality where it has one: CR/DX/MG chest X-rays, OP/XC fundus
    photographs, CT, MR; else gray images as chest X-rays and colour ones as fundus photographs).
    With a ``fidelity``, "auto" blends the kind's two models instead (the fidelity dial)."""
    if str(model) != "auto":
        return model, fidelity, "as asked"
    kind, seen = _kind_of(image)
    if fidelity is not None and kind in DIAL_MODELS:
        return DIAL_MODELS[kind], fidelity, f"auto: {seen}, at fidelity {fidelity:g}"
    if fidelity is not None:
        raise ValueError(f"fidelity applies to chest X-rays and fundus photographs; this image is {seen}")
    choice = AUTO[kind]
    return choice.model, None, f"auto: {seen}; {choice.why}"


def _kind_of(image: Image) -> tuple[str, str]:
    """The kind of image for ``catalog.AUTO``, and what told it, in words."""
    colour = "chest-xray" if image.is_gray else "fundus"
    if image.modality in CHEST_XRAY_MODALITIES:
        return "chest-xray", f"DICOM Modality {image.modality}"
    if image.modality in FUNDUS_MODALITIES:
        return "fundus", f"DICOM Modality {image.modality}"
    if image.modality in ("CT", "MR") and image.is_gray:
        return image.modality.lower(), f"DICOM Modality {image.modality}"
    if image.modality is not None:
        return colour, f"DICOM Modality {image.modality}, which no model is trained on; taken as {colour}"
    return colour, f"a {'gray' if image.is_gray else 'colour'} image"


MAX_OUTSCALE = 16


def check_outscale(outscale: float, *, consistency: bool = True) -> float:
    outscale = float(outscale)
    if not (math.isfinite(outscale) and 0 < outscale <= MAX_OUTSCALE):
        raise ValueError(f"outscale {outscale:g}: must be a number above 0 and at most {MAX_OUTSCALE}")
    if consistency and outscale < 1:
        raise ValueError(f"outscale {outscale:g}: below 1 an output cannot average back to its input; "
                         "use at least 1, or turn consistency off")
    return outscale


def _check_memory(image: Image, scale: int, out_size: tuple[int, int], device: torch.device, source: str) -> None:
    """Refuse, before the model runs, an image whose result cannot fit in the memory there is.

    The peak holds the network's output and its NumPy view, the resized result and its quantised
    copy (all float32 but the last), and the tiles' activations (the inference budget).
    """
    available = devices.available_memory()
    if available is None:
        return
    height, width = image.size
    channels = image.pixels.shape[0] + (image.alpha is not None)
    network_out = height * scale * width * scale * channels * 4
    final = out_size[0] * out_size[1] * channels * 4
    tiles = infer.activation_bytes(height, width, infer.memory_budget(device)) if device.type == "cpu" else 0
    need = 2 * network_out + 20 * final + tiles  # the projection: ~65 bytes per output value (float64 copies, sorts)
    if need > available:
        raise ImageError(f"{source}: x{out_size[0] / height:g} of {width}x{height} needs about "
                         f"{need / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB available now; "
                         "use a smaller outscale, or split the image")


def upscale(
    image: Image | np.ndarray | str | Path | Volume,
    *,
    model: str | Path | SRModel | RRDBNet = DEFAULT_MODEL,
    outscale: float | None = None,
    tile: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    value_range: str | tuple[float, float] = "auto",
    fidelity: float | None = None,
    consistency: bool = True,
    allow_inconsistent: bool = False,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    stack_range: tuple[float, float] | None = None,
    axis: int | None = None,
    through_plane: bool = False,
    spacing: float | None = None,
    slice_thickness: float | None = None,
) -> Image | np.ndarray | Volume:
    """Super-resolve an image, keeping its values: the output averages back to the input.

    The network sees the image's own range (its min..max, or ``stack_range``, or a DICOM window)
    mapped to [0, 1], and its output is mapped back exactly. With ``consistency`` (the default) the
    output is then projected so that each input pixel is the mean of the output pixels over it and
    no value leaves the input's range (``medsr.consistency``). Either way the consistency is
    measured (``Image.consistency``) and an output beyond ``tolerance`` is an error.

    Args:
        image: an ``Image``, a file path, or an array (H, W) / (H, W, C) of uint8, uint16 or
            float in [0, 1]; an array in gives an array of the same dtype out.
        model: "auto" (the medical model for the image: by DICOM Modality, else ``cxr`` for gray
            images and ``retina`` for colour), a known model name ("realesrgan-x4plus" for the
            general model), a checkpoint path (RRDBNet; other architectures with spandrel
            installed), a loaded ``SRModel`` (load once with ``medsr.load_model`` when upscaling
            many images) or an ``RRDBNet``.
        outscale: final scale factor, at least 1; the default is the model's own. Other factors run
            the model and then resize with Lanczos (x2 with the x4 model, as upstream does); the
            consistency holds on the final grid.
        tile: LR tile side; None picks one from a memory budget, 0 runs the whole image at once.
        fidelity: for the medical models (and "auto"), 0..1 from the GAN model (sharp) to the
            fidelity model (faithful), by blending their weights; see ``medsr.load_model``.
        value_range: which stored values map to black and white, for files and arrays (not DICOM):
            "auto" (what the file declares, else for 16-bit data the smallest of 8/10/12/14/16 bits
            that holds the maximum; floats: [0, 1]), "full" (the container's range) or (low, high).
            The output uses the same range.
        consistency: project the network's output onto the outputs that average back to the input
            (False: the raw network, still measured and checked).
        allow_inconsistent: return an output beyond ``tolerance`` instead of raising.
        stack_range: (min, max) of the whole stack the image is a frame of, in its [0, 1] units:
            one mapping, one range bound and one span for every frame.
        axis: for a volume (a ``medsr.Volume`` or a NIfTI path), the slice axis (0, 1, 2); the
            default is the one with the largest voxel spacing. Volumes are upscaled in-plane, slice
            by slice, with the volume's min..max as the one range of every slice.
        through_plane: for a volume, make its slices thinner instead (``medsr.engine.through_plane``):
            the slice axis resampled by ``outscale`` (an integer), or to ``spacing`` mm (default: the
            in-plane spacing, rounded to an integer factor); in-plane left as it is.
            ``slice_thickness`` (mm) must equal the spacing (slices without gaps).

    Raises:
        OutputError: the network's output is non-finite or constant where the input is not;
            ``ConsistencyError`` (an OutputError) when the output does not average back to the
            input within ``tolerance``. Nothing is returned to be written.

    Example:
        >>> sr = medsr.upscale("chest.png", outscale=2)      # doctest: +SKIP
        >>> medsr.write_image("chest_x2.png", sr)            # doctest: +SKIP
        >>> print(sr.consistency)                           # doctest: +SKIP
        mean shift +0.000%, mean abs error 0.000%, 0.000% beyond range
    """
    infer.check_tile(tile)  # arguments before work
    devices.pick_device(device)
    if isinstance(image, str | Path) and is_nifti(image):
        image = read_volume(image)
    options: dict[str, Any] = dict(outscale=outscale, tile=tile, device=device, precision=precision,
                                   consistency=consistency, allow_inconsistent=allow_inconsistent, tolerance=tolerance)
    if through_plane:
        if not isinstance(image, Volume):
            raise ValueError("through_plane takes a volume (a medsr.Volume or a NIfTI file)")
        return _through_plane(image, model=model, fidelity=fidelity, axis=axis, spacing=spacing,
                              slice_thickness=slice_thickness, progress=progress, options=options)
    if spacing is not None or slice_thickness is not None:
        raise ValueError("spacing and slice_thickness apply to through-plane super-resolution (through_plane=True)")
    if isinstance(image, Volume):
        return _upscale_volume(image, model=model, fidelity=fidelity, axis=axis, progress=progress, options=options)
    if isinstance(image, np.ndarray):
        result = _upscale_image(Image.from_array(image, value_range=value_range), model=model, fidelity=fidelity,
                                progress=progress, stack_range=stack_range, **options)
        return _as_array(result, image.dtype, value_range)
    if not isinstance(image, Image):
        image = read_image(image, ReadOptions(value_range=value_range))
    return _upscale_image(image, model=model, fidelity=fidelity, progress=progress, stack_range=stack_range,
                          **options)


def _upscale_image(image: Image, *, model: str | Path | SRModel | torch.nn.Module, fidelity: float | None,
                   outscale: float | None, tile: int | None, device: str | torch.device, precision: str,
                   progress: Callable[[int, int], None] | None, consistency: bool, allow_inconsistent: bool,
                   tolerance: Tolerance, stack_range: tuple[float, float] | None) -> Image:
    """``upscale`` of one image (see there)."""
    if isinstance(model, SRModel | torch.nn.Module):
        if fidelity is not None:
            raise ValueError("fidelity blends named medical models; give model='retina' or 'cxr', not a network")
        model = as_model(model)
    else:
        name, fidelity, _ = model_for(image, model, fidelity)
        model = load_model(name, fidelity=fidelity)
    outscale = check_outscale(model.scale if outscale is None else outscale, consistency=consistency)
    model = _interpolation_at(model, outscale)
    name = model.name
    height, width = image.size
    out_h, out_w = max(1, round(height * outscale)), max(1, round(width * outscale))
    source = image.source
    _check_memory(image, model.scale, (out_h, out_w), devices.pick_device(device), source)
    _warn_out_of_domain(model, image)
    low, high = stack_range if stack_range is not None else content_range(image.pixels)
    net_low, net_high = image.window or (low, high)
    spread = max(float(net_high - net_low), float(np.finfo(np.float32).tiny))
    lq = np.clip((image.pixels - net_low) / spread, 0, 1, dtype=np.float32)
    try:
        sr = upscale_tensor(model, torch.from_numpy(lq), tile=tile, device=device, precision=precision,
                            progress=progress).numpy()
    except OutputError as exc:
        raise OutputError(f"{source}: model {name}: {exc}; nothing written") from None
    if np.ptp(sr) == 0 and np.ptp(lq) > 0:
        raise OutputError(f"{source}: model {name} gave a constant image for a non-constant input; nothing written")
    sr = sr * np.float32(spread) + np.float32(net_low)  # the exact inverse of the network's mapping
    if sr.shape[1:] != (out_h, out_w):
        sr = resize_lanczos(sr, out_h, out_w)
    levels = None if image.continuous else image.steps
    if consistency:
        sr = enforce(sr, image.pixels, bounds=(low, high), levels=levels)
    found = None  # below x1 (consistency off) an output has nothing to average back to
    if out_h >= height and out_w >= width:
        found = measure(sr if levels is None else np.rint(sr * levels) / levels, image.pixels,
                        value_range=(low, high), tolerance=tolerance)
    if found is not None and not consistency and found.exceeds(tolerance):  # asked raw: given raw
        if not allow_inconsistent:  # said, unless the caller accepted it already (evaluate projects it itself)
            log.warning("%s: model %s: the raw output does not average back to the input: %s (consistency off)",
                        source, name, ", ".join(found.exceeds(tolerance)))
    elif found is not None and not allow_inconsistent and found.exceeds(tolerance):
        raise ConsistencyError(f"{source}: model {name}: the output does not average back to the input: "
                               f"{', '.join(found.exceeds(tolerance))}; nothing written (the allow-inconsistent "
                               "option writes it anyway)")
    alpha = None if image.alpha is None else resize_lanczos(image.alpha, out_h, out_w)
    meta = dict(image.meta)
    if "dpi" in meta:  # same physical size, more pixels
        meta["dpi"] = tuple(d * out_w / width for d in meta["dpi"])
    return replace(image, pixels=sr, alpha=alpha, model=name, consistency=found, meta=meta)


def _as_array(result: Image, dtype: np.dtype, value_range: str | tuple[float, float]) -> np.ndarray:
    """An array of the input's dtype: integers in their stored levels, floats in the caller's range."""
    if dtype in (np.uint8, np.uint16):
        return result.to_array()
    low, high = value_range if isinstance(value_range, tuple) else (0.0, 1.0)
    out = result.to_array(dtype)
    colour = out[..., :-1] if result.alpha is not None else out  # a view: alpha stays in [0, 1]
    colour *= high - low
    colour += low
    return out


def _interpolation_at(model: SRModel, outscale: float) -> SRModel:
    """An interpolation runs at the asked scale itself where it can (one resize, not two)."""
    if model.architecture == "Interpolation" and outscale in (1, 2, 3, 4, 8) and outscale != model.scale:
        return interpolation_model(model.name, scale=int(outscale))
    return model


HOUNSFIELD_AIR = -500  # a volume with values below this is taken for CT in HU (air is -1000, water 0)


def volume_model(model: str | Path | SRModel | RRDBNet = DEFAULT_MODEL, fidelity: float | None = None,
                 volume: Volume | None = None) -> tuple[SRModel, str]:
    """The model for a volume, and why: ``model`` itself, or for "auto" ``catalog.AUTO``'s choice for
    CT when the volume's values reach below -500 (HU: air is -1000), else for MR."""
    if isinstance(model, SRModel | torch.nn.Module):
        return as_model(model), "as asked"
    if str(model) != "auto":
        return load_model(model, fidelity=fidelity), "as asked"
    if volume is not None and volume.value_range[0] < HOUNSFIELD_AIR:
        choice, seen = AUTO["ct"], f"a volume with values below {HOUNSFIELD_AIR} (CT in HU)"
    else:
        choice, seen = AUTO["mr"], "a volume without values below -500 (MR, or CT not in HU)"
    return load_model(choice.model), f"auto: {seen}; {choice.why}"


def _upscale_volume(volume: Volume, *, model, fidelity: float | None, axis: int | None,
                    progress: Callable[[int, int], None] | None, options: dict[str, Any]) -> Volume:
    chosen, why = volume_model(model, fidelity, volume)
    if not isinstance(model, SRModel | torch.nn.Module):  # chosen here, not by the caller: say which and why
        log.info("%s: model %s (%s)", volume.source, chosen.name, why)
    return upscale_volume(volume, lambda image, stack_range: _upscale_image(
        image, model=chosen, fidelity=None, progress=None, stack_range=stack_range, **options), axis=axis,
        progress=progress)


def _through_plane(volume: Volume, *, model, fidelity: float | None, axis: int | None, spacing: float | None,
                   slice_thickness: float | None, progress: Callable[[int, int], None] | None,
                   options: dict[str, Any]) -> Volume:
    axis = check_through_plane(volume, axis, slice_thickness)
    outscale = options["outscale"]
    if outscale is not None:
        if spacing is not None:
            raise ValueError("give outscale or spacing for through-plane super-resolution, not both")
        if outscale != int(outscale) or outscale < 2:
            raise ValueError(f"outscale {outscale:g}: through-plane super-resolution takes a whole factor of at "
                             "least 2")
    factor = int(outscale) if outscale is not None else through_plane_factor(volume, axis, spacing=spacing)
    chosen, why = volume_model(model, fidelity, volume)
    said = "" if isinstance(model, SRModel | torch.nn.Module) else f" ({why})"  # chosen here: say why
    log.info("%s: x%d across the slices (axis %d, %.3g mm -> %.3g mm), model %s%s", volume.source, factor, axis,
             volume.spacing[axis], volume.spacing[axis] / factor, chosen.name, said)
    return upscale_through_plane(volume, chosen, factor=factor, axis=axis, tile=options["tile"],
                                 device=options["device"], precision=options["precision"], progress=progress)


def _warn_out_of_domain(model: SRModel, image: Image) -> None:
    if model.domain is None:  # a foreign or home-made model: its training data is not known
        return
    mismatch = model.domain.mismatch(modality=image.modality, channels=image.pixels.shape[0],
                                     bit_depth=None if image.continuous else image.bit_depth)
    if mismatch:
        _warn_once(model.name, model.domain.description, mismatch)


@functools.cache
def _warn_once(name: str, domain: str, mismatch: str) -> None:
    """Once per process and kind of mismatch, not once per image of a batch."""
    log.warning("model %s was trained on %s; these images are %s, outside it (it runs: check the outputs)",
                name, domain, mismatch)
