"""Tiled, blended inference: any image size, bounded memory, no seams.

Each tile is run with extra context around it (discarded afterwards), and neighbouring tiles
overlap; in the overlap, outputs are blended with linear ramps that sum to one. The context keeps
the network's view of each pixel close to what it sees in one whole-image pass, and the ramps
spread what difference remains, so a tiled result matches the whole-image result to within a
grey level (tested on the real x4plus weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn import functional as F

from medsr.nets.rrdbnet import RRDBNet

# Peak memory of one x4plus forward pass per LR pixel in fp32, measured with
# benchmarks/bench_memory.py (about 14 KiB; most of it is 64-channel maps at x4 resolution).
BYTES_PER_LR_PIXEL = 16 * 1024
DEFAULT_CONTEXT = 24  # LR pixels of extra input on each inner tile side
DEFAULT_OVERLAP = 16  # LR pixels over which neighbouring tiles are blended
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return device


def pick_precision(precision: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU by default; bf16 (or fp16 where bf16 is missing) on CUDA."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 inference is not supported on CPU; use fp32 or bf16")
    return PRECISIONS[precision]


def auto_tile(device: torch.device, dtype: torch.dtype, *, budget_bytes: int | None = None) -> int:
    """Largest tile (LR pixels per side, context included) whose activations fit the budget.

    Default budget: 2 GiB on CPU; half the free memory on CUDA.
    """
    if budget_bytes is None:
        if device.type == "cuda":
            budget_bytes = torch.cuda.mem_get_info(device)[0] // 2
        else:
            budget_bytes = 2 << 30
    per_pixel = BYTES_PER_LR_PIXEL * (2 if dtype == torch.float32 else 1) // 2
    side = int(math.sqrt(budget_bytes / per_pixel)) - 2 * DEFAULT_CONTEXT
    return max(64, min(2048, side // 8 * 8))


def _spans(length: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int]]:
    """Cover [0, length) with tiles of size ``tile`` overlapping by at least ``overlap``."""
    if tile >= length:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    starts = np.linspace(0, length - tile, count)
    starts = [int(round(s / multiple)) * multiple for s in starts]
    return [(s, min(s + tile, length)) for s in starts]


def _ramps(spans: list[tuple[int, int]], length: int, scale: int) -> list[torch.Tensor]:
    """Per span, 1D output weights: linear ramps at inner edges, normalised to sum to one."""
    weights = []
    for start, stop in spans:
        pos = torch.arange(start * scale, stop * scale, dtype=torch.float32) + 0.5
        left = (pos - start * scale) if start > 0 else torch.full_like(pos, math.inf)
        right = (stop * scale - pos) if stop < length else torch.full_like(pos, math.inf)
        weights.append(torch.minimum(left, right).clamp(max=1e9))
    total = torch.zeros(length * scale)
    for (start, stop), w in zip(spans, weights):
        total[start * scale : stop * scale] += w
    return [w / total[start * scale : stop * scale] for (start, stop), w in zip(spans, weights)]


def upscale_tensor(
    net: RRDBNet,
    lq: torch.Tensor,
    *,
    tile: int | None = None,
    context: int = DEFAULT_CONTEXT,
    overlap: int = DEFAULT_OVERLAP,
    device: str | torch.device = "auto",
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Super-resolve ``lq`` with ``net``, tile by tile.

    Args:
        lq: float32, shape (C, H, W), range [0, 1], on the CPU. C = 3, or 1 for gray: the network
            sees the gray channel replicated, and its three outputs are averaged back to one
            (equal weights, so no tint and no bias towards a colour).
        tile: tile side in LR pixels (without context); None chooses it from a memory budget;
            0 disables tiling.
        progress: called as ``progress(done, total)`` after each tile.

    Returns:
        float32, shape (C, H * scale, W * scale), on the CPU, clamped to [0, 1].
    """
    device = pick_device(device)
    dtype = pick_precision(precision, device)
    if tile is None:
        tile = auto_tile(device, dtype)
    net = net.to(device, memory_format=torch.channels_last).eval()
    scale, multiple = net.scale, 4 // net.scale
    channels, height, width = lq.shape
    # Pixel-unshuffle needs sizes divisible by ``multiple``: pad by reflection, crop afterwards.
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        lq = F.pad(lq[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
    full_h, full_w = lq.shape[1:]
    tile = full_h + full_w if tile <= 0 else max(tile // multiple * multiple, 2 * overlap, multiple)
    context = math.ceil(context / multiple) * multiple
    rows, cols = _spans(full_h, tile, overlap, multiple), _spans(full_w, tile, overlap, multiple)
    row_w, col_w = _ramps(rows, full_h, scale), _ramps(cols, full_w, scale)
    out = torch.zeros(channels, full_h * scale, full_w * scale)
    autocast = (
        torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    )
    done, total = 0, len(rows) * len(cols)
    with torch.inference_mode(), autocast:
        for (top, bottom), wy in zip(rows, row_w):
            for (left, right), wx in zip(cols, col_w):
                y0, y1 = max(top - context, 0), min(bottom + context, full_h)
                x0, x1 = max(left - context, 0), min(right + context, full_w)
                patch = lq[None, :, y0:y1, x0:x1].to(device).contiguous(memory_format=torch.channels_last)
                sr = net(patch.expand(-1, net.num_in_ch, -1, -1))[0].float()
                sr = sr.mean(0, keepdim=True).cpu() if channels == 1 else sr.cpu()
                sr = sr[:, (top - y0) * scale : (bottom - y0) * scale, (left - x0) * scale : (right - x0) * scale]
                out[:, top * scale : bottom * scale, left * scale : right * scale] += sr * wy[:, None] * wx
                done += 1
                if progress:
                    progress(done, total)
    return out[:, : height * scale, : width * scale].clamp_(0, 1)
