"""Peak CPU memory per LR pixel of two foreign architectures (random weights, fp32, whole image), the
figures behind ``medsr.engine.infer.GENERIC_BYTES_PER_PIXEL``. Needs spandrel (``pip install 'medsr[zoo]'``).

Run each case in a fresh process, with glibc keeping freed memory so that the peak resident size is
the peak of the allocations::

    MALLOC_MMAP_MAX_=0 python benchmarks/bench_memory_zoo.py swinir 128
    MALLOC_MMAP_MAX_=0 python benchmarks/bench_memory_zoo.py compact 256
"""

import argparse
import resource
import time

import torch
from spandrel.architectures.Compact import Compact
from spandrel.architectures.SwinIR import SwinIR


def build(name: str) -> torch.nn.Module:
    if name == "swinir":  # SwinIR-M, classical x4 (001_classicalSR_DF2K_s64w8_SwinIR-M_x4)
        return SwinIR(upscale=4, img_size=64, window_size=8, embed_dim=180, depths=[6] * 6, num_heads=[6] * 6,
                      mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
    return Compact(num_feat=64, num_conv=32, upscale=4)  # realesr-general-x4v3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("architecture", choices=["swinir", "compact"])
    parser.add_argument("side", type=int, help="LR side in pixels")
    args = parser.parse_args()
    net = build(args.architecture).eval()
    lq = torch.rand(1, 3, args.side, args.side)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with torch.inference_mode():
        net(lq)
    rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(f"{args.architecture} {args.side}x{args.side}: peak rise {rise / 1024:.0f} MiB, "
          f"{rise / args.side**2:.1f} KiB per LR pixel, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
