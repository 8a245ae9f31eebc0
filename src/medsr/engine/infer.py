"""Tiled, blended inference: any image size, bounded memory, no seams.

The generator is run in two parts (``RRDBNet.trunk`` and ``RRDBNet.head``), because they differ:

- The trunk does 97% of the work at LR resolution and sees ~350 LR pixels around each output
  pixel. It runs on large tiles, each with extra context around it that is discarded, and
  neighbouring tiles overlap; in the overlap, outputs are blended with linear ramps that sum to
  one. Images that fit the memory budget (a quarter of the memory available, 1-16 GiB: up to
  592x592 LR with 2 GiB, 1,000x1,000 with 5 GiB) are one tile,
  identical to a whole-image pass; larger ones match it to within a grey level (tested on the real
  x4plus weights).
- The head upsamples x4 and holds most of the memory (64-channel maps at output resolution), but
  sees under 2 feature pixels. It runs on strips of each trunk tile with a 2-pixel margin, which
  is exact: strips cost memory bounds and no accuracy.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import logging
import math
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torch.nn import functional as F

from medsr.core.image import OutputError
from medsr.engine import devices
from medsr.models.model import SRModel, as_model
from medsr.nets.rrdbnet import RRDBNet

log = logging.getLogger(__name__)

# Peak memory per feature pixel of the x4plus trunk and head in fp32, measured with
# benchmarks/bench_memory.py and rounded up.
TRUNK_BYTES_PER_PIXEL = 4 * 1024
HEAD_BYTES_PER_PIXEL = 16 * 1024
# Other architectures: their activations are not known in advance. Peak fp32 memory measured per LR
# pixel (x4, benchmarks/bench_memory_zoo.py): SwinIR-M 15-27 KiB over five runs, realesr-general-x4v3
# (SRVGGNetCompact) 1.6-1.9 KiB; this covers both, and larger models need the tile argument.
GENERIC_BYTES_PER_PIXEL = 32 * 1024
HEAD_CONTEXT = 2  # feature pixels: the head's reach (four 3x3 convs at x2 and x4) is under 2
DEFAULT_CONTEXT = 64  # LR pixels of extra trunk input on each inner tile side
DEFAULT_OVERLAP = 32  # LR pixels over which neighbouring trunk tiles are blended
DEFAULT_CPU_BUDGET = 2 << 30  # where the available memory cannot be read
CPU_BUDGET_RANGE = (1 << 30, 16 << 30)  # a quarter of the available memory, within these bounds
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU bf16: an RRDBNet's head (upsampling and output convolutions) stays in fp32 (benchmarks/bench_bf16.py)
BF16_HEAD_IN_FP32 = True


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc keep memory the process frees, for reuse, instead of returning it at once; True if set.

    Each convolution of a large tile allocates its output anew (PyTorch does not cache CPU memory);
    glibc serves blocks that large with fresh mappings, whose pages the kernel zeroes on first touch:
    2 million page faults for the x4plus trunk on a 256x256 tile, and 1.3x its time on a 512x512 one
    (docs/BENCHMARKS.md). The setting is process-wide and stays (glibc cannot go back to its adaptive
    default); CPU inference calls it once, and gives the memory back with ``malloc_trim`` when it ends.
    Left alone where the user tuned glibc's allocator (``GLIBC_TUNABLES``, ``MALLOC_*_``) and where
    the C library is not glibc.
    """
    libc = _glibc()
    tuned = "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(
        k.startswith("MALLOC_") and k.endswith("_") for k in os.environ)
    if libc is None or tuned:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def return_freed_memory() -> None:
    """Give the memory kept by ``keep_freed_memory`` back to the system."""
    libc = _glibc()
    if keep_freed_memory() and libc is not None:  # kept only with glibc
        libc.malloc_trim(0)


@contextmanager
def _freed_memory_kept(device: torch.device) -> Iterator[None]:
    """On CPU, freed memory kept for reuse while the tiles run, and given back after."""
    if device.type != "cpu":
        yield
        return
    keep_freed_memory()
    try:
        yield
    finally:
        return_freed_memory()


def check_tile(tile: int | None) -> None:
    """None (automatic), 0 (the whole image) or a positive whole number of LR pixels."""
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile < 0):
        raise ValueError(f"tile {tile!r}: give None (automatic), 0 (the whole image) or a positive whole number")


def pick_precision(precision: str, device: torch.device, model: SRModel | None = None) -> torch.dtype:
    """By default: bf16 on a CPU with native bf16 (AVX512-BF16 or AMX; the network cast, its head in
    fp32: 1.75-1.89x faster than fp32, outputs within 0.26 levels of 255 on average, docs/BENCHMARKS.md),
    else fp32 on CPU; bf16 (or fp16 where bf16 is missing) on CUDA; each where the model runs in it."""
    runs_in = model.precisions if model is not None else tuple(PRECISIONS)
    if precision == "auto":
        if device.type != "cuda":
            return torch.bfloat16 if device.type == "cpu" and devices.cpu_has_native_bf16() and "bf16" in runs_in \
                else torch.float32
        preferred = ["bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp16"]
        return PRECISIONS[next((p for p in preferred if p in runs_in), "fp32")]
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose auto, {', '.join(PRECISIONS)}")
    if precision not in runs_in:
        assert model is not None  # without one, every precision runs
        raise ValueError(f"model {model.name} ({model.architecture}) does not run in {precision}; "
                         f"it runs in {', '.join(runs_in)}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 inference is not supported on CPU; use fp32 or bf16")
    if precision == "bf16" and device.type == "cpu" and not devices.cpu_has_native_bf16():
        _warn_emulated_bf16()
    return PRECISIONS[precision]


@functools.cache
def _warn_emulated_bf16() -> None:
    """Once per process, not once per image."""
    log.warning("bf16 on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated and usually slower "
                "than fp32 (about 4x on an AVX2 machine); fp32 is the default for that reason")


def precision_name(dtype: torch.dtype) -> str:
    """fp32, bf16 or fp16."""
    return next(name for name, known in PRECISIONS.items() if known == dtype)


def memory_budget(device: torch.device) -> int:
    """Bytes the activations may use: on CPU a quarter of the available memory (1-16 GiB; larger
    tiles waste less on context), on CUDA half the free memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    available = devices.available_memory()
    if available is None:
        return DEFAULT_CPU_BUDGET
    low, high = CPU_BUDGET_RANGE
    return min(max(available // 4, low), high)


def bytes_per_pixel(model: SRModel) -> int:
    """Peak fp32 activation memory per LR pixel of a tile: RRDBNet's measured trunk (its head runs in
    strips), else a guess for an unknown architecture (``GENERIC_BYTES_PER_PIXEL``)."""
    return TRUNK_BYTES_PER_PIXEL if model.exact_tiles else GENERIC_BYTES_PER_PIXEL


def activation_bytes(height: int, width: int, budget: int) -> int:
    """Peak activation memory of an LR image of this size: its trunk and head, or the budget when
    the image is tiled."""
    pixels = (height + 2 * DEFAULT_CONTEXT) * (width + 2 * DEFAULT_CONTEXT)
    return min(budget, pixels * (TRUNK_BYTES_PER_PIXEL + HEAD_BYTES_PER_PIXEL))


def auto_tile(budget_bytes: int, dtype: torch.dtype = torch.float32, *, context: int = DEFAULT_CONTEXT,
              bytes_per_pixel: int = TRUNK_BYTES_PER_PIXEL) -> int:
    """Largest tile side (LR pixels, context excluded) whose activations fit the budget.

    For RRDBNet sized for x4 models, where a feature pixel is an LR pixel; conservative for x2 and x1.
    """
    per_pixel = bytes_per_pixel * torch.finfo(dtype).bits // 32
    side = int(math.sqrt(budget_bytes / per_pixel)) - 2 * context
    return max(64, side // 8 * 8)


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Cover [0, length) with tiles of size ``tile`` overlapping by at least ``overlap``."""
    if tile >= length:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    starts = np.linspace(0, length - tile, count).round().astype(int)
    return [(int(s), int(s) + tile) for s in starts]


def _ramps(spans: list[tuple[int, int]], length: int, scale: int) -> list[torch.Tensor]:
    """Per span, 1D output weights: linear ramps at inner edges, normalised to sum to one."""
    weights = []
    for start, stop in spans:
        pos = torch.arange(start * scale, stop * scale, dtype=torch.float32) + 0.5
        left = (pos - start * scale) if start > 0 else torch.full_like(pos, math.inf)
        right = (stop * scale - pos) if stop < length else torch.full_like(pos, math.inf)
        weights.append(torch.minimum(left, right).clamp(max=1e9))
    total = torch.zeros(length * scale)
    for (start, stop), w in zip(spans, weights, strict=True):
        total[start * scale : stop * scale] += w
    return [w / total[start * scale : stop * scale] for (start, stop), w in zip(spans, weights, strict=True)]


def _head_in_strips(net: RRDBNet, feat: torch.Tensor, rows: tuple[int, int], strip: int) -> torch.Tensor:
    """Run the head on ``feat`` rows [rows[0], rows[1]) in strips; exact thanks to HEAD_CONTEXT."""
    outputs = []
    for top in range(rows[0], rows[1], strip):
        bottom = min(top + strip, rows[1])
        y0, y1 = max(top - HEAD_CONTEXT, 0), min(bottom + HEAD_CONTEXT, feat.shape[2])
        sr = net.head(feat[:, :, y0:y1].to(net.conv_last.weight.dtype)).float()
        outputs.append(sr[:, :, (top - y0) * 4 : (bottom - y0) * 4])
    return torch.cat(outputs, 2)


def _prepared(net: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.float32,
              head_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``net`` on ``device``, channels-last, in eval mode and with its weights in ``dtype`` (an
    RRDBNet's head in ``head_dtype``, default ``dtype``), as it is if it already is; otherwise a
    prepared copy, so that the caller's module (a network in training, say) is never changed.

    The copy is kept for the next call (a batch prepares its network once, not once per image)
    until ``net``'s weights change (their tensors' version counters, which every in-place update
    such as an optimiser step advances) or ``net`` is gone."""
    head = set()
    if isinstance(net, RRDBNet) and head_dtype not in (None, dtype):
        head = {id(p) for m in net.head_modules() for p in m.parameters()}
    wanted = {id(p): head_dtype if id(p) in head else dtype for p in net.parameters()}
    ready = not net.training and all(
        p.device == device and p.dtype == wanted[id(p)]
        and (p.dim() != 4 or p.is_contiguous(memory_format=torch.channels_last))
        for p in net.parameters()
    )
    if ready:
        return net
    key = (str(device), dtype, head_dtype if head else None)
    version = tuple(t._version for t in (*net.parameters(), *net.buffers()))
    kept = _PREPARED.setdefault(net, {}).get(key)
    if kept is not None and kept[0] == version:
        return kept[1]
    copied = copy.deepcopy(net).to(device, memory_format=torch.channels_last).eval().to(dtype)  # type: ignore[call-overload]  # torch stubs lack Module.to(memory_format=)
    if head:
        for module in copied.head_modules():
            module.to(head_dtype)
    _PREPARED[net] = {key: (version, copied)}  # one prepared copy per network: memory stays bounded
    return copied


_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def reduced_on_cpu(dtype: torch.dtype, device: torch.device) -> bool:
    """On CPU a reduced precision runs as a network cast to it (weights and activations); autocast,
    which casts at every layer, was slower than fp32 there (docs/BENCHMARKS.md). CUDA uses autocast."""
    return device.type == "cpu" and dtype != torch.float32


# A tile runner takes an input patch (1, C, h, w) on the device and the core box (top, bottom, left,
# right) within it, in cells, and returns the output of the core: (1, C, rows * k, cols * k) on the CPU,
# where k output pixels per side make a cell.
TileRunner = Callable[[torch.Tensor, tuple[int, int, int, int]], torch.Tensor]


def _rrdbnet_runner(net: RRDBNet, budget: int) -> TileRunner:
    """The trunk on the whole patch, the head on the core (plus its margin) in strips that fit ``budget``."""
    def run(patch: torch.Tensor, core: tuple[int, int, int, int]) -> torch.Tensor:
        top, bottom, left, right = core
        feat = net.trunk(patch.contiguous(memory_format=torch.channels_last))
        x0, x1 = max(left - HEAD_CONTEXT, 0), min(right + HEAD_CONTEXT, feat.shape[3])
        feat = feat[:, :, :, x0:x1]
        strip = max(1, budget // (HEAD_BYTES_PER_PIXEL * feat.shape[3]))
        return _head_in_strips(net, feat, (top, bottom), strip)[:, :, :, (left - x0) * 4 : (right - x0) * 4].cpu()
    return run


def _module_runner(module: torch.nn.Module, out_per_cell: int, name: str, scale: int) -> TileRunner:
    """Any module: the whole patch, then the core cut out."""
    def run(patch: torch.Tensor, core: tuple[int, int, int, int]) -> torch.Tensor:
        top, bottom, left, right = core
        k = out_per_cell
        out = module(patch)
        height, width = patch.shape[2:]
        if tuple(out.shape[2:]) != (height * scale, width * scale):  # a custom network's mistake, in words
            raise OutputError(f"model {name}: the network gave {out.shape[3]}x{out.shape[2]} for a {width}x{height} "
                              f"input; a x{scale} model must give {width * scale}x{height * scale}")
        return out.float()[:, :, top * k : bottom * k, left * k : right * k].cpu()
    return run


def upscale_tensor(
    model: SRModel | RRDBNet,
    lq: torch.Tensor,
    *,
    tile: int | None = None,
    context: int = DEFAULT_CONTEXT,
    overlap: int = DEFAULT_OVERLAP,
    device: str | torch.device = "auto",
    precision: str = "auto",
    budget_bytes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Super-resolve ``lq`` with ``model``, tile by tile.

    Tiles overlap and carry ``context`` pixels on each side that are discarded; in the overlaps the
    outputs are blended with linear ramps that sum to one. RRDBNet runs its trunk on the tiles and
    its head in exact strips; other architectures run whole on each tile.

    Args:
        model: an ``SRModel`` (``medsr.load_model``) or an RRDBNet. Its module is not changed.
        lq: float32, shape (C, H, W), range [0, 1], on the CPU. C = 3, or 1 for gray: an RGB
            network sees the gray channel replicated, and its three outputs are averaged back to
            one (equal weights, so no tint and no bias towards a colour).
        tile: tile side in LR pixels (context excluded); None chooses it from the memory budget;
            0 runs the whole image at once.
        budget_bytes: memory for activations; default from ``memory_budget``.
        progress: called as ``progress(done, total)`` after each tile.

    Returns:
        float32, shape (C, H * scale, W * scale), on the CPU, clamped to [0, 1].
    """
    model = as_model(model)
    check_tile(tile)
    device = devices.pick_device(device)
    dtype = pick_precision(precision, device, model)
    budget = budget_bytes or memory_budget(device)
    if model.tiling == "internal" or (model.tiling == "discouraged" and tile is None):
        if tile:
            log.warning("%s tiles its input itself (spandrel): tile %d is not used", model.architecture, tile)
        tile = 0  # spandrel's advice for the architecture: the whole image at once
    elif tile is None:
        tile = auto_tile(budget, dtype, context=context, bytes_per_pixel=bytes_per_pixel(model))
    elif 0 < tile < 2 * context and tile < max(lq.shape[1:]):
        log.warning("tile %d with %d pixels of context on each side: most of the work is context (%.0fx the "
                    "image's); a larger tile, or none, is faster", tile, context, ((tile + 2 * context) / tile) ** 2)
    channels, height, width = lq.shape
    if channels != model.in_channels and not (channels == 1 and model.in_channels == 3):
        raise ValueError(f"model {model.name} takes {model.in_channels} channel(s); the image has {channels}")
    cast = reduced_on_cpu(dtype, device)
    module = _prepared(model.module, device, dtype if cast else torch.float32,
                       head_dtype=torch.float32 if cast and BF16_HEAD_IN_FP32 else None)
    cell = model.size_multiple  # LR pixels per side of the grid tiles are cut on
    out_per_cell = model.scale * cell
    if isinstance(module, RRDBNet):
        run = _rrdbnet_runner(module, budget)
    else:
        run = _module_runner(module, out_per_cell, model.name, model.scale)
    # Pad to whole cells (and the model's minimum) by replication; cropped afterwards.
    pad_h, pad_w = (math.ceil(max(n, model.min_size) / cell) * cell - n for n in (height, width))
    if pad_h or pad_w:
        lq = F.pad(lq[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
    rows_c, cols_c = lq.shape[1] // cell, lq.shape[2] // cell  # sizes in cells from here on
    tile_c = rows_c + cols_c if tile <= 0 else max(tile // cell, 8, math.ceil(model.min_size / cell))
    context_c, overlap_c = math.ceil(context / cell), min(math.ceil(overlap / cell), tile_c // 2)
    rows, cols = _spans(rows_c, tile_c, overlap_c), _spans(cols_c, tile_c, overlap_c)
    row_w, col_w = _ramps(rows, rows_c, out_per_cell), _ramps(cols, cols_c, out_per_cell)
    out = torch.zeros(channels, rows_c * out_per_cell, cols_c * out_per_cell)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 and not cast else nullcontext()
    done, total = 0, len(rows) * len(cols)
    with torch.inference_mode(), autocast, _freed_memory_kept(device):
        for (top, bottom), wy in zip(rows, row_w, strict=True):
            for (left, right), wx in zip(cols, col_w, strict=True):
                y0, y1 = max(top - context_c, 0), min(bottom + context_c, rows_c)
                x0, x1 = max(left - context_c, 0), min(right + context_c, cols_c)
                patch = lq[None, :, y0 * cell : y1 * cell, x0 * cell : x1 * cell]
                patch = patch.to(device, dtype if cast else torch.float32).expand(-1, model.in_channels, -1, -1)
                sr = run(patch, (top - y0, bottom - y0, left - x0, right - x0))[0]
                sr = sr.mean(0, keepdim=True) if channels < model.in_channels else sr
                k = out_per_cell
                out[:, top * k : bottom * k, left * k : right * k] += sr * wy[:, None] * wx
                done += 1
                if progress:
                    progress(done, total)
    out = out[:, : height * model.scale, : width * model.scale]
    bad = out.numel() - int(torch.isfinite(out).sum())
    if bad:  # overflowing activations: NaN would be written as black, inf as white
        hint = " (overflow in reduced precision? try precision fp32)" if dtype != torch.float32 else ""
        raise OutputError(f"the network's output holds {bad:,} non-finite values{hint}")
    return out.clamp_(0, 1)
