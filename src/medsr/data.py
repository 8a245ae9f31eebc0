"""Training data: random crops of high-resolution images, and the two preparation steps
(`medsr prepare multiscale`, `medsr prepare crops`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from medsr.image import Image
from medsr.io import image_files, read_image, write_image
from medsr.upscale import resize_lanczos


def as_rgb(image: Image) -> torch.Tensor:
    """(3, H, W) float tensor; gray repeated (the generator is RGB), alpha dropped."""
    pixels = torch.from_numpy(image.pixels)
    return pixels.expand(3, -1, -1).clone() if pixels.shape[0] == 1 else pixels


class HRImages:
    """Ground-truth batches: random ``gt_size`` crops (reflect-padded when smaller) with random
    horizontal flips, from every image medsr reads (8/16-bit, gray/RGB), in epochs.

    The epoch order comes from ``order_generator`` (the same on every rank); each rank takes its
    share of every epoch. Crops and flips come from ``crop_generator``.
    """

    def __init__(self, folder: str | Path, *, gt_size: int, use_hflip: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        self.files = image_files(folder)
        if len(self.files) < world_size:
            raise ValueError(f"{folder}: {len(self.files)} training images found, need at least {world_size}")
        self.gt_size, self.use_hflip, self.rank, self.world_size = gt_size, use_hflip, rank, world_size
        self.order: list[int] = []
        self.position = 0

    def state_dict(self) -> dict:
        return {"order": list(self.order), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.position = list(state["order"]), int(state["position"])

    def _next_index(self, order_generator: torch.Generator) -> int:
        if self.position >= len(self.order):
            epoch = torch.randperm(len(self.files), generator=order_generator).tolist()
            self.order, self.position = epoch[self.rank :: self.world_size], 0
        self.position += 1
        return self.order[self.position - 1]

    def crop(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        size = self.gt_size
        height, width = image.shape[-2:]
        if height < size or width < size:
            pad_h, pad_w = max(0, size - height), max(0, size - width)
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            image = F.pad(image[None], (0, pad_w, 0, pad_h), mode=mode)[0]
            height, width = image.shape[-2:]
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
            path = self.files[self._next_index(order_generator)]
            crops.append(self.crop(as_rgb(read_image(path)), crop_generator))
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
    its shortest side resized to ``shortest_side``: 5 images per input with the defaults."""
    dst = Path(dst)
    for path, image in _sources(src, dst):
        height, width = image.size
        versions = [("", image)]
        versions += [(f"_x{s:.3g}", _resized(image, round(height * s), round(width * s))) for s in scales]
        ratio = shortest_side / min(height, width)
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


