"""medsr against upstream Real-ESRGAN (``realesrgan.RealESRGANer``) on one image: images per second
and peak device memory, whole image and tiled, the same x4plus weights and precision on both sides.

Usage: python benchmarks/bench_upstream.py IMAGE [--device cuda] [--precision fp16] [--tile 256]
       [--repeats 3] [--size N]

Needs realesrgan 0.3.0 and basicsr 1.4.2 (with torchvision and OpenCV). basicsr imports
``torchvision.transforms.functional_tensor``, which torchvision 0.17 removed; its one function
there (rgb_to_grayscale) is in ``torchvision.transforms.functional``, which stands in for it here.

Both sides start from the same 8-bit array (gray images stay gray: upstream turns them into RGB
and back, medsr runs the gray channel replicated) and end with an 8-bit array on the CPU, the
network loaded once. Tiles: upstream's ``tile`` is LR pixels plus a 10-pixel pad each side that is
cut off; medsr's is LR pixels plus its 24-pixel context each side and blended overlaps. medsr runs
twice: like upstream (no consistency projection) and with its defaults (the projection on). The
outputs are not equal, and the script says by how much: medsr maps the image's own min..max to the
network's range (upstream: 0..255), averages the three outputs of a gray input equally (upstream:
BT.601 weights) and blends its tiles.
The runs alternate (medsr, upstream, ...) so that a busy machine slows both alike; the best of
``--repeats`` is reported. ``--size`` takes the centre N x N of the image (small runs on a CPU).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from medsr.engine.upscale import upscale
from medsr.formats.io import read_image
from medsr.models import weights
from medsr.models.model import SRModel

UPSTREAM_PAD = 10  # inference_realesrgan.py's default --tile_pad


def upstream_upsampler(model: SRModel, tile: int, half: bool, device: torch.device, folder: Path):
    import torchvision.transforms.functional as functional

    sys.modules.setdefault("torchvision.transforms.functional_tensor",
                           types.ModuleType("torchvision.transforms.functional_tensor"))
    sys.modules["torchvision.transforms.functional_tensor"].rgb_to_grayscale = functional.rgb_to_grayscale
    from basicsr.archs.rrdbnet_arch import RRDBNet
    from realesrgan import RealESRGANer

    path = folder / "x4plus.pth"  # upstream reads the release's layout: {"params_ema": state}
    torch.save({"params_ema": model.module.state_dict()}, path)
    net = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=4)
    return RealESRGANer(scale=4, model_path=str(path), model=net, tile=tile, tile_pad=UPSTREAM_PAD, pre_pad=0,
                        half=half, device=device)


def timed(fn, device: torch.device) -> tuple[float, int | None]:
    """Seconds and peak device memory (bytes; None on the CPU) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter() - start, torch.cuda.max_memory_allocated(device)
    return time.perf_counter() - start, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    parser.add_argument("--tile", type=int, default=256, help="LR tile side for the tiled rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, help="the centre N x N of the image only")
    args = parser.parse_args()
    device = torch.device(args.device)
    pixels = read_image(args.image).pixels  # (C, H, W) in [0, 1]
    if args.size:
        top, left = (pixels.shape[1] - args.size) // 2, (pixels.shape[2] - args.size) // 2
        pixels = pixels[:, top : top + args.size, left : left + args.size]
    array = np.round(pixels * 255).astype(np.uint8).transpose(1, 2, 0).squeeze(-1 if pixels.shape[0] == 1 else ())
    model = weights.load_model("realesrgan-x4plus")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"{name}; torch {torch.__version__}; {args.precision}; input {array.shape[1]}x{array.shape[0]} "
          f"{'gray' if array.ndim == 2 else 'RGB'} 8-bit; best of {args.repeats}")
    if args.precision == "fp16":  # the same precision named, not the same arithmetic
        print("fp16: medsr on CUDA autocasts (weights fp32, convolutions in fp16); upstream casts the whole "
              "network to fp16 (half=True)")
    elif device.type == "cuda":
        print(f"fp32: convolutions in TF32 where cuDNN allows it (allow_tf32={torch.backends.cudnn.allow_tf32}), "
              "on both sides")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for label, tile in (("whole", 0), (f"tiles of {args.tile}", args.tile)):
            upsampler = upstream_upsampler(model, tile, args.precision == "fp16", device, Path(tmp))
            runs = {
                "medsr, no projection": lambda t=tile: upscale(array, model=model, tile=t, device=device,
                                                                precision=args.precision, consistency=False,
                                                                allow_inconsistent=True),
                "medsr, defaults (projection)": lambda t=tile: upscale(array, model=model, tile=t, device=device,
                                                                        precision=args.precision),
                "upstream RealESRGANer": lambda u=upsampler: u.enhance(array, outscale=4)[0],
            }
            outputs = {key: run() for key, run in runs.items()}  # warm-up: cuDNN's choices, prepared copies
            ours, theirs = outputs["medsr, no projection"], outputs["upstream RealESRGANer"]
            levels = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
            print(f"{label}: medsr (no projection) and upstream differ by at most {levels.max()} levels of 255, "
                  f"{(levels > 1).mean():.4%} of pixels by more than 1")
            best = {key: (float("inf"), None) for key in runs}
            for _ in range(args.repeats):
                for key, run in runs.items():
                    seconds, peak = timed(run, device)
                    best[key] = min(best[key], (seconds, peak), key=lambda x: x[0])
            rows += [(label, key, *best[key]) for key in runs]
    print("| input | run | s per image | images per s | peak device memory |")
    print("|---|---|---|---|---|")
    for label, key, seconds, peak in rows:
        memory = "-" if peak is None else f"{peak / 2**30:.2f} GiB"
        print(f"| {label} | {key} | {seconds:.3f} | {1 / seconds:.2f} | {memory} |")


if __name__ == "__main__":
    main()
