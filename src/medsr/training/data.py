"""Training data: random crops of high-resolution images, and the two preparation steps
(`medsr prepare multiscale`, `medsr prepare crops`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medsr.core.image import Image
from medsr.core.resize import resize_lanczos
from medsr.engine.devices import available_memory
from medsr.formats.io import ImageError, image_files, image_size, is_nifti, read_image, write_image
from medsr.formats.volume import Volume, read_volume, reading_axis, training_slices

log = logging.getLogger(__name__)


def as_rgb(image: Image) -> torch.Tensor:
    """(3, H, W) float tensor; gray repeated (the generator is RGB), alpha dropped."""
    pixels = torch.from_numpy(image.pixels)
    return pixels.expand(3, -1, -1).clone() if pixels.shape[0] == 1 else pixels


def checked_files(folder: str | Path, *, min_side: int, skip_bad: bool, what: str, volumes: bool = False,
                  keep: Callable[[Path, Image | Volume], None] | None = None) -> list[Path]:
    """The image files of ``folder`` (with ``volumes``, NIfTI volumes too) that decode whole and are
    at least ``min_side`` on both sides (a volume's slices). Others are listed in the error, or with
    ``skip_bad`` in a warning and left out. ``keep`` is given each usable file as decoded."""
    files, problems = [], []
    for path in image_files(folder, volumes=volumes):
        try:
            height, width, frames = volume_slice_size(path) if is_nifti(path) else image_size(path)
        except ImageError as exc:
            problems.append(str(exc))
            continue
        if frames > 1 and not is_nifti(path):
            problems.append(f"{path}: a stack of {frames} frames; training reads single images (split it)")
        elif min(height, width) < min_side:
            problems.append(f"{path}: {width}x{height} is smaller than the {min_side}-pixel crop")
        else:
            try:  # decoded once now: a file truncated after its header would stop the run hours later
                decoded = read_volume(path) if is_nifti(path) else read_image(path)
            except ImageError as exc:
                problems.append(str(exc))
                continue
            files.append(path)
            if keep is not None:
                keep(path, decoded)
    if problems and not skip_bad:
        raise ValueError(f"{folder}: {len(problems)} of the {what} images cannot be used (set data.skip_bad "
                         "to leave them out):\n  " + "\n  ".join(problems))
    for problem in problems:
        log.warning("left out: %s", problem)
    if not files:
        raise ValueError(f"{folder}: no usable {what} images")
    return files


def volume_slice_size(path: Path) -> tuple[int, int, int]:
    """(height, width, slices) of a NIfTI volume's slices across its slice axis, from the header."""
    try:
        import nibabel
        from nibabel.spatialimages import SpatialHeader

        header = nibabel.load(path).header
        if not isinstance(header, SpatialHeader):
            raise TypeError(f"a {type(header).__name__}, not the header of a volume")
        shape, zooms = header.get_data_shape(), header.get_zooms()[:3]
    except Exception as exc:
        raise ImageError(f"{path}: cannot read the NIfTI header ({type(exc).__name__}: {exc})") from None
    if len(shape) not in (3, 4):
        raise ImageError(f"{path}: {len(shape)} dimensions; training takes 3D and 4D volumes")
    axis = reading_axis(zooms)
    inplane = [shape[a] for a in range(3) if a != axis]
    return inplane[0], inplane[1], int(np.prod(shape)) // (inplane[0] * inplane[1])


class HRImages:
    """Ground-truth batches: random ``gt_size`` crops with random horizontal flips, from every image
    medsr reads (8/16-bit, gray/RGB) and every slice of every NIfTI volume (across its slice axis,
    over the volume's min..max; slices of one value left out), in epochs. Images that do not read
    or are smaller than a crop are refused when the run starts (or left out with ``skip_bad``).

    The epoch order comes from ``order_generator`` (the same on every rank); each rank takes its
    share of every epoch. Crops and flips come from ``crop_generator``.

    Images stay decoded (float32, as read) while they fit in ``cache_bytes`` (default: a quarter of the
    memory available at the start, shared by the ranks); the rest are read again for each crop. A GPU
    step takes milliseconds, decoding a whole photograph for every crop tens of them.
    """

    def __init__(self, folder: str | Path, *, gt_size: int, use_hflip: bool = True, rank: int = 0,
                 world_size: int = 1, skip_bad: bool = False, cache_bytes: int | None = None) -> None:
        self.folder = Path(folder)
        self.decoded: dict[Path, torch.Tensor] = {}
        self.volumes: dict[Path, np.ndarray] = {}  # slices of each volume, always kept (volumes are compressed)
        self._room = (available_memory() or 0) // (4 * world_size) if cache_bytes is None else cache_bytes
        files = checked_files(folder, min_side=gt_size, skip_bad=skip_bad, what="training", volumes=True,
                              keep=self._keep)
        self.items: list[tuple[Path, int | None]] = []  # (image, None) or (volume, slice)
        for path in files:
            if path in self.volumes:
                slices = self.volumes[path]
                self.items += [(path, k) for k in range(slices.shape[2]) if np.ptp(slices[:, :, k]) > 0]
            else:
                self.items.append((path, None))
        if len(self.items) < world_size:
            raise ValueError(f"{folder}: {len(self.items)} training images found, need at least {world_size}")
        self.gt_size, self.use_hflip, self.rank, self.world_size = gt_size, use_hflip, rank, world_size
        self.order: list[int] = []
        self.position = 0

    def _keep(self, path: Path, image: Image | Volume) -> None:
        if isinstance(image, Volume):
            self.volumes[path], _ = training_slices(image)
            return
        # a view (RGB of an RGBA array) would keep its whole base alive: keep a copy of its own
        pixels = torch.from_numpy(image.pixels if image.pixels.base is None else image.pixels.copy())
        if pixels.nbytes <= self._room:
            self.decoded[path] = pixels
            self._room -= pixels.nbytes

    def _names(self) -> list[str]:
        return [str(p.relative_to(self.folder)) + ("" if k is None else f"#{k}") for p, k in self.items]

    def state_dict(self) -> dict:
        return {"order": list(self.order), "position": self.position, "files": self._names()}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stored epoch; files removed since are left out of it (new ones join the next)."""
        order, position = list(state["order"]), int(state["position"])
        stored = state.get("files")
        names = self._names()
        if stored is not None and stored != names:
            index = {name: i for i, name in enumerate(names)}
            remaining = [index.get(stored[i]) for i in order[position:]]
            gone = sum(i is None for i in remaining)
            log.warning("%s: the training images changed since the checkpoint (%d now, %d then); the current "
                        "epoch goes on without %d removed file(s), so the run is no longer an exact repeat",
                        self.folder, len(names), len(stored), gone)
            order, position = [i for i in remaining if i is not None], 0
        elif any(i >= len(self.items) for i in order):
            raise ValueError(f"{self.folder}: the checkpoint's epoch refers to {max(order) + 1} images, "
                             f"the folder holds {len(self.items)}")
        self.order, self.position = order, position

    def _next_index(self, order_generator: torch.Generator) -> int:
        if self.position >= len(self.order):
            epoch = torch.randperm(len(self.items), generator=order_generator).tolist()
            self.order, self.position = epoch[self.rank :: self.world_size], 0
        self.position += 1
        return self.order[self.position - 1]

    def crop(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        size = self.gt_size
        height, width = image.shape[-2:]  # at least ``size``: checked when the run starts
        top = int(torch.randint(0, height - size + 1, (), generator=generator))
        left = int(torch.randint(0, width - size + 1, (), generator=generator))
        crop = image[:, top : top + size, left : left + size]
        if self.use_hflip and torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        return crop

    def batch(self, batch_size: int, order_generator: torch.Generator, crop_generator: torch.Generator
              ) -> torch.Tensor:
        """(batch_size, 3, gt_size, gt_size) float in [0, 1]."""
        crops = []
        for _ in range(batch_size):
            path, index = self.items[self._next_index(order_generator)]
            if index is not None:
                pixels = torch.from_numpy(self.volumes[path][:, :, index])[None]
            elif path in self.decoded:
                pixels = self.decoded[path]
            else:
                pixels = torch.from_numpy(read_image(path).pixels)
            crops.append(self.crop(pixels.expand(3, -1, -1), crop_generator).contiguous())
        return torch.stack(crops)


# ---------------------------------------------------------------------------------------------
# Preparation


def _sources(src: str | Path, dst: Path) -> Iterator[tuple[Path, Image]]:
    """The images of ``src``, once ``dst`` is created new (an existing folder is refused)."""
    files = image_files(src)
    if not files:
        raise ValueError(f"{src}: no images found")
    if dst.exists():
        raise ValueError(f"{dst}: already exists; give a new output folder (nothing was written)")
    dst.mkdir(parents=True)
    for path in files:
        yield path, read_image(path)


def _output_name(dst: Path, source: Path, tag: str) -> Path:
    # JPEG sources are written as PNG: prepared data should not be compressed twice.
    suffix = ".png" if source.suffix.lower() in (".jpg", ".jpeg") else source.suffix
    return dst / f"{source.stem}{tag}{suffix or '.dcm'}"


def _resized(image: Image, height: int, width: int) -> Image:
    return replace(image, pixels=resize_lanczos(image.pixels, height, width), alpha=None)


def prepare_multiscale(src: str | Path, dst: str | Path, *, scales: tuple[float, ...] = (0.75, 0.5, 1 / 3),
                       shortest_side: int = 400) -> Iterator[Path]:
    """Write every image of ``src`` at full size, Lanczos-downscaled by each of ``scales``, and with
    its shortest side resized to ``shortest_side`` when that is smaller: up to 5 images per input
    with the defaults, never an upsampled one."""
    dst = Path(dst)
    for path, image in _sources(src, dst):
        height, width = image.size
        versions = [("", image)]
        versions += [(f"_x{s:.3g}", _resized(image, round(height * s), round(width * s))) for s in scales]
        ratio = shortest_side / min(height, width)
        if ratio < 1:  # never upsample: interpolated pixels are not high-resolution data
            versions.append((f"_s{shortest_side}", _resized(image, round(height * ratio), round(width * ratio))))
        for tag, version in versions:
            target = _output_name(dst, path, tag)
            write_image(target, version)
            yield target


def crop_positions(length: int, size: int, step: int) -> list[int]:
    """Starts of ``size`` windows every ``step`` pixels, the last one flush with the end."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, step))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def prepare_crops(src: str | Path, dst: str | Path, *, size: int = 400, step: int = 200) -> Iterator[Path]:
    """Cut every image of ``src`` into ``size`` x ``size`` sub-images every ``step`` pixels
    (smaller images are kept whole)."""
    if size <= 0 or step <= 0:
        raise ValueError(f"size {size} and step {step} must be positive")
    dst = Path(dst)
    for path, image in _sources(src, dst):
        height, width = image.size
        for i, top in enumerate(crop_positions(height, size, step)):
            for j, left in enumerate(crop_positions(width, size, step)):
                window = np.s_[:, top : top + size, left : left + size]
                alpha = None if image.alpha is None else image.alpha[window]
                target = _output_name(dst, path, f"_s{i:03d}_{j:03d}")
                write_image(target, replace(image, pixels=image.pixels[window], alpha=alpha))
                yield target


