"""x4 inference speed on CPU: medsr vs the ncnn runtime, and the machine's fp32 matmul ceiling.

Usage: python benchmarks/bench_upscale.py [--size 128] [--repeats 3] [--compile]

All measurements run in this one process on the same LR input, interleaved (ours, ncnn, ours,
...), so a noisy shared machine affects both alike; the best of the repeats is reported.
Work per LR pixel: 17,926,848 multiply-adds = 35.85 MFLOP (derived from the layer shapes,
docs/SOURCES.md section 4).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from medsr.engine.infer import upscale_tensor
from medsr.models import weights

FLOP_PER_LR_PIXEL = 2 * 17_926_848


def matmul_ceiling(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ncnn_runner(lq: np.ndarray):
    import ncnn  # dev dependency

    param, bin_ = ncnn.ncnn_files(weights.KNOWN_MODELS["realesrgan-x4plus"])
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = torch.get_num_threads()
    net.load_param(str(param))
    net.load_model(str(bin_))
    lq = np.ascontiguousarray(lq, np.float32)

    def run() -> np.ndarray:
        mat = ncnn.Mat(lq)
        extractor = net.create_extractor()
        extractor.input("data", mat)
        return np.array(extractor.extract("output")[1])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="LR side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (inductor) of the net")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    lq = np.kron(rng.random((3, args.size // 8, args.size // 8)), np.ones((1, 8, 8))).astype(np.float32)
    net = weights.load_model("realesrgan-x4plus")
    ours = lambda: upscale_tensor(net, torch.from_numpy(lq), tile=0, device="cpu")  # noqa: E731
    runners = {"medsr": ours, "ncnn": ncnn_runner(lq)}
    if args.compile:
        compiled = weights.load_model("realesrgan-x4plus").module.to(memory_format=torch.channels_last)
        compiled.trunk, compiled.head = torch.compile(compiled.trunk), torch.compile(compiled.head)
        runners["medsr+compile"] = lambda: upscale_tensor(compiled, torch.from_numpy(lq), tile=0, device="cpu")
        print(f"torch.compile warm-up (compilation): {_timed(runners['medsr+compile']):.0f} s")
    for run in runners.values():
        run()  # warm-up: weight packing, allocator
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            times[name].append(_timed(run))
    ceiling = matmul_ceiling()

    pixels = args.size**2
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"fp32 matmul ceiling (2048^2): {ceiling:.0f} GFLOP/s")
    print(f"x4 inference of a {args.size}x{args.size} LR image, best of {args.repeats}:")
    for name, ts in times.items():
        best = min(ts)
        print(f"  {name:13s} {best:6.2f} s  {pixels / best:8.0f} LR px/s  "
              f"{pixels * FLOP_PER_LR_PIXEL / best / 1e9:5.0f} GFLOP/s (direct-conv count)  "
              f"all: {', '.join(f'{t:.2f}' for t in ts)}")
    ratio = min(times["medsr"]) / min(times["ncnn"])
    print(f"medsr / ncnn time: {ratio:.2f} ({'medsr faster' if ratio < 1 else 'ncnn faster'})")


if __name__ == "__main__":
    main()
