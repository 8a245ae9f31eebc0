"""Figures for people to judge by eye: the degradation preview sheet."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from medsr.core.image import Image, quantize
from medsr.training.degrade import DegradeConfig, apply, sample

TEXT_LINE = 12  # pixels per line of the default bitmap font


def to_pil(pixels: np.ndarray | torch.Tensor) -> PILImage.Image:
    """(C, H, W) floats in [0, 1] -> 8-bit RGB picture (gray repeated)."""
    pixels = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
    array = quantize(np.moveaxis(pixels, 0, 2), 255)
    return PILImage.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).convert("RGB")


def centre_crop(pixels: np.ndarray, size: int) -> torch.Tensor:
    """A size x size crop from the centre, reflect-padded when the image is smaller."""
    tensor = torch.from_numpy(pixels)[None]
    height, width = tensor.shape[-2:]
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        tensor = torch.nn.functional.pad(tensor, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2),
                                         mode=mode)
        height, width = tensor.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return tensor[:, :, top : top + size, left : left + size]


def degradation_sheet(image: Image, *, n: int = 16, seed: int = 0, scale: int = 4, crop: int = 256,
                      config: DegradeConfig | None = None) -> PILImage.Image:
    """A grid: the sharpened ground-truth crop, then ``n`` degraded LQ samples (shown at the crop's size,
    pixels repeated), each labelled with its sampled parameters."""
    if n < 1 or crop < scale * 8:
        raise ValueError(f"need n >= 1 and crop >= {scale * 8} (got n={n}, crop={crop})")
    if min(image.size) < crop:  # a padded crop would show degradations of a mirror, not of the image
        fits = min(image.size) // (scale * 8) * scale * 8
        hint = f"; give crop {fits} or less" if fits else ""
        raise ValueError(f"the image ({image.size[1]}x{image.size[0]}) is smaller than the {crop}x{crop} crop{hint}")
    config = config or DegradeConfig(scale=scale)
    generator = torch.Generator().manual_seed(seed)
    gt = centre_crop(image.pixels, crop)
    tiles = []
    for _ in range(n):
        params = sample(1, config, generator)  # one record per sample: every per-batch choice varies too
        lq, gt_usm = apply(gt, params, config)
        picture = to_pil(lq[0]).resize((crop, crop), PILImage.Resampling.NEAREST)
        tiles.append((picture, params.describe(0)))
    tiles.insert(0, (to_pil(gt_usm[0]), ["ground truth crop (unsharp-masked)", f"seed {seed}, x{scale}"]))
    return _grid(tiles, crop)


def _grid(tiles: list[tuple[PILImage.Image, list[str]]], size: int) -> PILImage.Image:
    font = ImageFont.load_default()
    chars = max(20, size // 6)
    wrapped = [sum((textwrap.wrap(line, chars) for line in lines), []) for _, lines in tiles]
    text_height = TEXT_LINE * max(len(w) for w in wrapped) + 6
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    sheet = PILImage.new("RGB", (columns * (size + 4), rows * (size + text_height + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, ((picture, _), lines) in enumerate(zip(tiles, wrapped, strict=True)):
        x, y = (i % columns) * (size + 4), (i // columns) * (size + text_height + 4)
        sheet.paste(picture, (x, y))
        for j, line in enumerate(lines):
            draw.text((x + 2, y + size + 3 + j * TEXT_LINE), line, fill="black", font=font)
    return sheet
