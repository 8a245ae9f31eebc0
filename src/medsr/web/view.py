"""What `medsr view` shows: images and their upscaled versions, side by side, rendered for a screen.

The paths given form *layers*: each folder or file is one layer (an input folder, an upscale output
folder, a folder of ground truths, ...). Files of folder layers are matched by their path inside the
folder without its suffix (``a/b.png`` and ``a/b.dcm`` match), so ``medsr view INPUTS OUTPUTS`` pairs
each input with its output. Given files alone, they are one item of as many layers. An evaluate
report folder (``summary.json`` beside ``figures/``) is a layer of its figures.

Nothing is written next to the user's files: pictures are rendered in memory, with a window (the
image's own units: stored values, HU, ...) mapped to the screen's 0..255.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from medsr.core.image import Image, ImageError, ReadOptions
from medsr.engine.detail import detail_maps, heat_map
from medsr.formats.dicom import file_window, rescale
from medsr.formats.io import image_files, read_image, reader_for

DIAL_CROP = 96  # LR pixels per side the live dial re-runs at most (a CPU answers in about a second)


@dataclass(frozen=True)
class Layer:
    name: str  # the folder's or file's name, told apart from the other layers'
    root: Path  # what the user opened: nothing outside it is ever read


@dataclass(frozen=True)
class Item:
    name: str  # the matching key: the path inside the folder, without suffix
    files: tuple[Path | None, ...]  # one per layer (None: that layer has no such file)


@dataclass(frozen=True)
class Collection:
    layers: tuple[Layer, ...]
    items: tuple[Item, ...]

    def file(self, item: int, layer: int) -> Path:
        """The file of ``item`` in ``layer``; IndexError or FileNotFoundError when there is none, and
        PermissionError when it now leads outside what was opened (resolved again at every request:
        a file replaced by a link after the server started is not followed out)."""
        found = self.items[item].files[layer]
        if found is None:
            raise FileNotFoundError(f"{self.items[item].name} has no file in {self.layers[layer].name}")
        opened, here = self.layers[layer].root, found.resolve()
        if not (here == opened or here.is_relative_to(opened)) or (here != opened and not opened.is_dir()):
            raise PermissionError(f"{self.items[item].name} in {self.layers[layer].name} leads outside what was "
                                  "opened; not served")
        return here


def _layer_files(root: Path) -> dict[str, Path]:
    if root.is_file():
        return {root.stem: root}
    opened = root.resolve()
    if (root / "summary.json").is_file():  # an evaluate report: its figures
        root = root / "figures"
        files = sorted(root.glob("*.png"))
    else:
        files = image_files(root)
    keys: dict[str, Path] = {}
    for path in files:
        if not path.resolve().is_relative_to(opened):
            continue  # a link (or a linked figures/) outside the folder: nothing outside what was opened is read
        key = path.relative_to(root).with_suffix("").as_posix()
        keys.setdefault(key, path)  # a.png beside a.dcm: the first, in sorted order
    return keys


def open_collection(paths: list[str | Path]) -> Collection:
    """The layers and items of ``paths`` (folders or files); ValueError for a path that is neither,
    or when nothing viewable is found."""
    roots = [Path(p).resolve() for p in paths]
    for given, root in zip(paths, roots, strict=True):
        if not root.exists():
            raise ValueError(f"{given}: no such file or folder")
        if root.is_file() and reader_for(root) is None:
            raise ValueError(f"{given}: not an image medsr reads")
    names = [root.name or str(root) for root in roots]
    layers = tuple(Layer(name=f"{name} ({i + 1})" if names.count(name) > 1 else name, root=root)
                   for i, (name, root) in enumerate(zip(names, roots, strict=True)))
    items: tuple[Item, ...]
    if all(root.is_file() for root in roots):
        items = (Item(name=roots[0].stem, files=tuple(roots)),)
    else:
        found = [_layer_files(root) if root.is_dir() else {} for root in roots]
        keys = list(dict.fromkeys(key for files in found for key in files))
        items = tuple(Item(name=key, files=tuple(files.get(key) for files in found)) for key in keys)
    if not items:
        raise ValueError(f"{', '.join(map(str, paths))}: no images to view")
    return Collection(layers=layers, items=items)


@functools.lru_cache(maxsize=16)
def load(path: Path) -> Image:
    """The image as medsr reads it for upscaling (full value range: a window never clips here)."""
    return read_image(path, ReadOptions(value_range="full"))


def values_of(image: Image) -> tuple[float, float, str, bool]:
    """(a, b, unit, inverted): the image's values in its own units are ``a + b * pixels``; for DICOM
    the modality's (stored values through RescaleSlope and RescaleIntercept: HU for CT), and
    ``inverted`` for MONOCHROME1 (high values display dark)."""
    mapping = image.meta.get("dicom_range")
    if mapping is None:
        return image.min_value, image.max_value - image.min_value, "level", False
    slope, intercept = rescale(image.meta["dicom"])
    span = mapping.high - mapping.low
    unit = "HU" if image.modality == "CT" else "modality value"
    if mapping.invert:  # the pixels were flipped to display values: undo it for the units, flip on screen
        return intercept + slope * mapping.high, -slope * span, unit, True
    return intercept + slope * mapping.low, slope * span, unit, False


def _dicom_window(image: Image) -> tuple[float, float] | None:
    found = file_window(image.meta["dicom"]) if "dicom" in image.meta else None
    if found is None or found[1] <= 0:
        return None
    centre, width = found
    return centre - width / 2, centre + width / 2


def describe(image: Image) -> dict:
    """What the page needs to draw and window an image: its size, the range of its values in its
    own units, and the window to start with (the file's own, for DICOM)."""
    height, width = image.size
    a, b, unit, inverted = values_of(image)
    low, high = sorted((a + b * float(image.pixels.min()), a + b * float(image.pixels.max())))
    # 8-bit pictures start as they are (0..255); deeper data at the range of its values, which is
    # all a 12-bit image in a 16-bit file fills
    start = (a, a + b) if unit == "level" and b <= 255 else (low, high)
    return {"width": width, "height": height, "channels": image.pixels.shape[0], "min": low, "max": high,
            "window": list(_dicom_window(image) or start), "unit": unit, "inverted": inverted,
            "modality": image.modality or ""}


def windowed(image: Image, window: tuple[float, float] | None = None) -> np.ndarray:
    """(C, H, W) in [0, 1] for a screen: the values ``window`` = (low, high) in the image's own units
    mapped to 0..1 (default: the window ``describe`` starts with; MONOCHROME1 drawn inverted, as it
    is read). A window of one value (a blank image) is widened to one unit."""
    a, b, _, inverted = values_of(image)
    low, high = window or describe(image)["window"]
    if high < low:
        raise ValueError(f"window {low:g}..{high:g}: the upper value must not be below the lower")
    high = max(high, low + 1e-6 * max(1.0, abs(low)))
    shown = np.clip((a + b * image.pixels.astype(np.float64) - low) / (high - low), 0, 1)
    return 1 - shown if inverted else shown


def render(image: Image, window: tuple[float, float] | None = None) -> bytes:
    """PNG bytes of ``windowed(image, window)``."""
    return png(windowed(image, window))


def png(pixels: np.ndarray) -> bytes:
    """PNG bytes of (C, H, W) floats in [0, 1]."""
    array = np.rint(np.moveaxis(pixels, 0, 2) * 255).astype(np.uint8)
    picture = PILImage.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def overlay(output: Image, source: Image, kind: str) -> bytes:
    """PNG of what a model added to ``source`` in ``output``: the ``detail`` map (at the output's
    size) or the ``consistency`` map (at the input's), as medsr's heat maps (docs/DETAIL_MAPS.md)."""
    if output.pixels.shape[0] != source.pixels.shape[0]:
        raise ValueError("the two images differ in channels: no map")
    maps = detail_maps(output.pixels, source.pixels)
    if kind == "detail":
        picture = heat_map(maps.detail, output.pixels)
    elif kind == "consistency":
        picture = heat_map(maps.consistency, source.pixels)
    else:
        raise ValueError(f"map {kind!r}: detail or consistency")
    buffer = io.BytesIO()
    PILImage.fromarray(picture).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def dial(source: Image, fidelity: float, region: tuple[int, int, int, int], *, device: str = "cpu") -> bytes:
    """PNG of the medical model for ``source`` (chosen as ``--model auto`` chooses) at ``fidelity``,
    run on ``region`` = (x, y, w, h) of it (in its pixels, at most ``DIAL_CROP`` a side), x4,
    projected as `medsr upscale` does."""
    from medsr.engine.upscale import model_for, upscale
    from medsr.models.weights import check_fidelity, load_model

    check_fidelity(fidelity)
    x, y, w, h = region
    height, width = source.size
    if not (0 <= x < width and 0 <= y < height and w > 0 and h > 0):
        raise ValueError(f"region {x},{y},{w},{h} lies outside the {width}x{height} image")
    w, h = min(w, DIAL_CROP, width - x), min(h, DIAL_CROP, height - y)
    crop = Image(pixels=np.ascontiguousarray(source.pixels[:, y : y + h, x : x + w]))
    try:
        name, blend, _ = model_for(source, "auto", fidelity)  # chest X-rays and fundus: the two models blended
    except ValueError:  # a kind without a dial: what auto takes for it
        name, blend, _ = model_for(source)
    model = load_model(name, fidelity=blend)
    try:
        out = upscale(crop, model=model, outscale=4, device=device)
    except ImageError as exc:
        raise ValueError(str(exc)) from None
    assert isinstance(out, Image)  # an Image in gives an Image out
    return png(out.pixels)
