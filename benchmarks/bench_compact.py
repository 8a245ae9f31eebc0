"""Cost of a compact model against realesrgan-x4plus, side by side in one process (issue 38).

Usage: python benchmarks/bench_compact.py MODEL [--slice PATH.nii.gz] [--repeats 3] [--threads N]

Upscales the same 512x512 slice at x2 with MODEL (a known name or a file) and with the general
x4plus model (x4, then Lanczos to x2, as medsr does), fp32, alternating runs so that a noisy machine
affects both alike; the best of the repeats is kept. Then the whole volume at x2 with MODEL, timed
once. Prints the CPU model and its vector extensions beside the numbers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import medsr
from medsr.formats.volume import read_volume

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_SLICE = SHARED / "volumes/ct/thorax-BigBore_z040-099.nii.gz"


def cpu() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    wide = sorted(f for f in flags if f.startswith(("avx2", "avx512f", "avx512_bf16", "amx")))
    return f"{name} ({', '.join(wide) or 'no AVX2'}), {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--slice", type=Path, default=DEFAULT_SLICE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    volume = read_volume(args.slice)
    plane = volume.data[:, :, volume.data.shape[2] // 2].astype(np.float32)
    plane = (plane - volume.data.min()) / float(np.ptp(volume.data))
    models = {"compact": medsr.load_model(args.model), "realesrgan-x4plus": medsr.load_model("realesrgan-x4plus")}
    best = dict.fromkeys(models, float("inf"))
    for _ in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            medsr.upscale(plane, model=model, outscale=2, precision="fp32", device="cpu")
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"CPU: {cpu()}")
    print(f"one {plane.shape[1]}x{plane.shape[0]} slice at x2, fp32, best of {args.repeats}:")
    for name, seconds in best.items():
        print(f"  {name:20s} {seconds:8.3f} s")
    print(f"  realesrgan-x4plus / {args.model}: {best['realesrgan-x4plus'] / best['compact']:.1f}x")
    start = time.perf_counter()
    medsr.upscale(volume, model=models["compact"], outscale=2, precision="fp32", device="cpu")
    print(f"the whole {'x'.join(map(str, volume.data.shape))} volume at x2 with {args.model}: "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
