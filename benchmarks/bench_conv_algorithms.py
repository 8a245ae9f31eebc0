"""Per-layer timing of 3x3 convolution algorithms available to PyTorch on CPU, on RRDBNet's shapes.

Usage: python benchmarks/bench_conv_algorithms.py [--size 128]

Why: our x4 inference already runs at the machine's fp32 matmul ceiling with direct convolution;
ncnn is faster because it uses Winograd. This measures what PyTorch itself can offer in place of
direct convolution: NCHW vs channels-last (oneDNN), NNPACK (Winograd/FFT inside PyTorch), and a
Winograd F(4x4, 3x3) written with PyTorch tensor ops (transforms as einsum, products as bmm).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from torch.nn import functional as F

# Winograd F(4x4, 3x3) transform matrices (Lavin & Gray, 2016).
BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float32)
G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float32)
AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                  dtype=torch.float32)


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3) -> (36, Cin, Cout)."""
    u = G @ weight @ G.T
    return u.permute(2, 3, 1, 0).reshape(36, weight.shape[1], weight.shape[0]).contiguous()


def winograd_conv(x_nhwc: torch.Tensor, u: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """3x3 conv, padding 1, of (1, H, W, C) with H and W divisible by 4."""
    n, _, _, c = x_nhwc.shape
    padded = F.pad(x_nhwc, (0, 0, 1, 1, 1, 1))
    tiles = padded.unfold(1, 6, 4).unfold(2, 6, 4)  # (N, th, tw, C, 6, 6)
    th, tw = tiles.shape[1:3]
    v = torch.einsum("ij,nabcjk,lk->ilnabc", BT, tiles, BT).reshape(36, -1, c)
    m = torch.bmm(v, u).reshape(6, 6, n, th, tw, -1)
    y = torch.einsum("ij,jknabc,lk->nabcil", AT, m, AT)  # (N, th, tw, Cout, 4, 4)
    return y.permute(0, 3, 1, 4, 2, 5).reshape(n, -1, th * 4, tw * 4) + bias.view(1, -1, 1, 1)


def best_ms(fn, repeats: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{args.size}x{args.size} input, {torch.get_num_threads()} threads, best of 10, ms")
    print(f"{'Cin->Cout':>10s} {'NCHW':>7s} {'ch-last':>7s} {'NNPACK':>7s} {'Winograd':>8s}  max |err| Winograd")
    with torch.inference_mode():
        for cin, cout in ((64, 32), (128, 32), (192, 64), (64, 64)):
            weight, bias = torch.randn(cout, cin, 3, 3) * 0.05, torch.randn(cout)
            x = torch.randn(1, cin, args.size, args.size)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            u = winograd_weight(weight)
            error = (winograd_conv(x.permute(0, 2, 3, 1), u, bias) - F.conv2d(x, weight, bias, padding=1)).abs().max()
            row = [
                best_ms(partial(F.conv2d, x, weight, bias, padding=1)),
                best_ms(partial(F.conv2d, x_cl, weight, bias, padding=1)),
                best_ms(partial(torch._nnpack_spatial_convolution, x, weight, bias, [1, 1]))
                if torch.backends.nnpack.is_available() else float("nan"),
                best_ms(partial(winograd_conv, x.permute(0, 2, 3, 1), u, bias)),
            ]
            print(f"{cin:>5d}->{cout:<4d} " + " ".join(f"{t:7.1f}" for t in row[:3]) + f" {row[3]:8.1f}  {error:.1e}")


if __name__ == "__main__":
    main()
