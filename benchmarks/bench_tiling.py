"""How far tiled inference is from a whole-image pass, by trunk context, with the real x4plus weights.

Usage: python benchmarks/bench_tiling.py [--contexts 16,32,64,96] [--tile 100] [--size 200]

Runs a SIZE x SIZE crop of a STARE fundus image (from ../shared/data) once whole and once per
context value with 3 x 3 tiles, and prints the largest and mean differences in 8-bit grey levels,
before and after rounding to 8 bits, plus the time of each run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from medsr.engine.infer import DEFAULT_OVERLAP, upscale_tensor
from medsr.formats.io import read_image
from medsr.models.weights import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="16,32,64,96")
    parser.add_argument("--tile", type=int, default=100)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--image", type=Path, default=SHARED / "retina/STARE/images/im0004.png")
    args = parser.parse_args()
    image = read_image(args.image)
    lq = torch.from_numpy(image.pixels[:, 220 : 220 + args.size, 220 : 220 + args.size].copy())
    net = load_model("realesrgan-x4plus")
    start = time.perf_counter()
    whole = upscale_tensor(net, lq, tile=0, device="cpu")
    print(f"whole image {args.size}x{args.size}: {time.perf_counter() - start:.0f} s")
    for context in (int(c) for c in args.contexts.split(",")):
        start = time.perf_counter()
        tiled = upscale_tensor(net, lq, tile=args.tile, context=context, overlap=DEFAULT_OVERLAP, device="cpu")
        diff = (tiled - whole).abs() * 255
        rounded = (torch.round(tiled * 255) - torch.round(whole * 255)).abs()
        print(f"context {context:3d}, overlap {DEFAULT_OVERLAP}: max {diff.max():.4f} mean {diff.mean():.5f} levels; "
              f"8-bit max {rounded.max():.0f}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
