"""The upscaling job: image in, model, tiles, optional resize to the asked scale, image out."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from medsr import infer
from medsr.image import ImageError, ReadOptions
from medsr.infer import OutputError, pick_device, upscale_tensor
from medsr.io import Image, read_image
from medsr.model import SRModel, as_model
from medsr.nets.rrdbnet import RRDBNet
from medsr.weights import load_model

DEFAULT_MODEL = "auto"


DEFAULT_FIDELITY: float | None = 1.0  # "auto" without a fidelity: the fidelity model (docs/models/*-fidelity.md)


def model_for(image: Image, model: str | Path = DEFAULT_MODEL, fidelity: float | None = None
              ) -> tuple[str | Path, float | None]:
    """(model, fidelity) to load: ``model`` itself, or for "auto" the medical model for the image's
    kind (``cxr`` for gray images, ``retina`` for colour fundus images) at ``fidelity``, by default
    ``DEFAULT_FIDELITY``."""
    if str(model) != "auto":
        return model, fidelity
    return ("cxr" if image.is_gray else "retina"), DEFAULT_FIDELITY if fidelity is None else fidelity


MAX_OUTSCALE = 16


def check_outscale(outscale: float) -> float:
    outscale = float(outscale)
    if not (math.isfinite(outscale) and 0 < outscale <= MAX_OUTSCALE):
        raise ValueError(f"outscale {outscale:g}: must be a number above 0 and at most {MAX_OUTSCALE}")
    return outscale


def _check_memory(image: Image, scale: int, out_size: tuple[int, int], device: torch.device, source: str) -> None:
    """Refuse, before the model runs, an image whose result cannot fit in the memory there is.

    The peak holds the network's output and its NumPy view, the resized result and its quantised
    copy (all float32 but the last), and the tiles' activations (the inference budget).
    """
    available = infer.available_memory()
    if available is None:
        return
    height, width = image.size
    channels = image.pixels.shape[0] + (image.alpha is not None)
    network_out = height * scale * width * scale * channels * 4
    final = out_size[0] * out_size[1] * channels * 4
    tiles = infer.activation_bytes(height, width, infer.memory_budget(device)) if device.type == "cpu" else 0
    need = 2 * network_out + 2 * final + tiles
    if need > available:
        raise ImageError(f"{source}: x{out_size[0] / height:g} of {width}x{height} needs about "
                         f"{need / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB available now; "
                         "use a smaller outscale, or split the image")


def resize_lanczos(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Lanczos-resize float32 (C, H, W) channel by channel, in float (no 8-bit rounding)."""
    channels = [
        np.asarray(PILImage.fromarray(c).resize((width, height), PILImage.Resampling.LANCZOS))
        for c in pixels.astype(np.float32, copy=False)
    ]
    return np.clip(np.stack(channels), 0, 1)


def upscale(
    image: Image | np.ndarray | str | Path,
    *,
    model: str | Path | SRModel | RRDBNet = DEFAULT_MODEL,
    outscale: float | None = None,
    tile: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    value_range: str | tuple[float, float] = "auto",
    fidelity: float | None = None,
) -> Image | np.ndarray:
    """Super-resolve an image.

    Args:
        image: an ``Image``, a file path, or an array (H, W) / (H, W, C) of uint8, uint16 or
            float in [0, 1]; an array in gives an array of the same dtype out.
        model: "auto" (``cxr`` for gray images, ``retina`` for colour), a known model name
            ("realesrgan-x4plus" for the general model), a checkpoint path (RRDBNet; other
            architectures with spandrel installed), a loaded ``SRModel`` (load once with
            ``medsr.load_model`` when upscaling many images) or an ``RRDBNet``.
        outscale: final scale factor; the default is the model's own. Other factors run the model
            and then resize with Lanczos (x2 with the x4 model, as upstream does).
        tile: LR tile side; None picks one from a memory budget, 0 runs the whole image at once.
        fidelity: for the medical models (and "auto"), 0..1 from the GAN model (sharp) to the
            fidelity model (faithful), by blending their weights; see ``medsr.load_model``.
        value_range: which stored values map to black and white, for files and arrays (not DICOM):
            "auto" (what the file declares, else for 16-bit data the smallest of 8/10/12/14/16 bits
            that holds the maximum; floats: [0, 1]), "full" (the container's range) or (low, high).
            The output uses the same range.

    Raises:
        OutputError: the network's output is non-finite or constant where the input is not;
            nothing is returned to be written.

    Example:
        >>> sr = medsr.upscale("chest.png", outscale=2)      # doctest: +SKIP
        >>> medsr.write_image("chest_x2.png", sr)            # doctest: +SKIP
    """
    as_array = isinstance(image, np.ndarray)
    if as_array:
        dtype = image.dtype
        image = Image.from_array(image, value_range=value_range)
    elif not isinstance(image, Image):
        image = read_image(image, ReadOptions(value_range=value_range))
    if isinstance(model, SRModel | torch.nn.Module):
        if fidelity is not None:
            raise ValueError("fidelity blends named medical models; give model='retina' or 'cxr', not a network")
        model = as_model(model)
    else:
        name, fidelity = model_for(image, model, fidelity)
        model = load_model(name, fidelity=fidelity)
    name = model.name
    outscale = check_outscale(model.scale if outscale is None else outscale)
    height, width = image.size
    out_h, out_w = max(1, round(height * outscale)), max(1, round(width * outscale))
    source = image.source
    _check_memory(image, model.scale, (out_h, out_w), pick_device(device), source)
    try:
        sr = upscale_tensor(model, torch.from_numpy(image.pixels), tile=tile, device=device, precision=precision,
                            progress=progress).numpy()
    except OutputError as exc:
        raise OutputError(f"{source}: model {name}: {exc}; nothing written") from None
    if np.ptp(sr) == 0 and np.ptp(image.pixels) > 0:
        raise OutputError(f"{source}: model {name} gave a constant image for a non-constant input; nothing written")
    if sr.shape[1:] != (out_h, out_w):
        sr = resize_lanczos(sr, out_h, out_w)
    alpha = None if image.alpha is None else resize_lanczos(image.alpha, out_h, out_w)
    meta = dict(image.meta)
    if "dpi" in meta:  # same physical size, more pixels
        meta["dpi"] = tuple(d * out_w / width for d in meta["dpi"])
    result = replace(image, pixels=sr, alpha=alpha, model=name, meta=meta)
    if not as_array:
        return result
    if dtype in (np.uint8, np.uint16):
        return result.to_array()
    low, high = value_range if isinstance(value_range, tuple) else (0.0, 1.0)
    out = result.to_array(dtype)
    colour = out[..., :-1] if result.alpha is not None else out  # a view: alpha stays in [0, 1]
    colour *= high - low
    colour += low
    return out
