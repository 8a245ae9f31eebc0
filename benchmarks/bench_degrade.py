"""Cost of the second-order degradation on CPU, and its share of one training iteration.

Usage: python benchmarks/bench_degrade.py [--batch 10] [--size 256] [--repeats 5] [--skip-generator]

Times, in one process on the same batch of real fundus crops (or smooth noise without shared data):
- sample + apply for a batch (the whole degradation), best and median of the repeats;
- its parts: unsharp mask, the two libjpeg round trips (the codec alone), sampling alone;
- one generator step of the x4plus network at the same batch (forward, L1, backward), the largest
  single part of a training iteration (the discriminator and VGG steps come on top), to give the
  degradation's share of an iteration as an upper bound.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from medsr.formats.io import read_image
from medsr.nets.rrdbnet import rrdbnet
from medsr.training.degrade import DegradeConfig, apply, jpeg, sample, sharpen

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def batch_of_crops(batch: int, size: int) -> torch.Tensor:
    files = sorted((SHARED / "retina/STARE/images").glob("*.png"))[:batch]
    if len(files) < batch:
        return torch.nn.functional.interpolate(torch.rand(batch, 3, size // 8, size // 8), size=(size, size))
    crops = [torch.from_numpy(read_image(f).pixels[:, 150 : 150 + size, 200 : 200 + size].copy()) for f in files]
    return torch.stack(crops)


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-generator", action="store_true")
    args = parser.parse_args()
    config = DegradeConfig()
    gt = batch_of_crops(args.batch, args.size)
    generator = torch.Generator().manual_seed(0)
    records = [sample(args.batch, config, generator) for _ in range(args.repeats)]
    whole = timed(lambda: [apply(gt, records[i], config) for i in range(args.repeats)], 1)[0] / args.repeats
    per_batch = timed(lambda: apply(gt, sample(args.batch, config, generator), config), args.repeats)
    print(f"degradation of {args.batch} x {args.size}x{args.size} on CPU ({torch.get_num_threads()} threads): "
          f"best {min(per_batch):.3f} s, median {statistics.median(per_batch):.3f} s "
          f"(mean over {args.repeats} fixed records {whole:.3f} s)")
    parts = {
        "sampling": lambda: sample(args.batch, config, generator),
        "unsharp mask": lambda: sharpen(gt, config.sharpen),
        "libjpeg round trip at GT size": lambda: jpeg(gt, (75,) * args.batch),
        "libjpeg round trip at LQ size": lambda: jpeg(gt[:, :, :: config.scale, :: config.scale], (75,) * args.batch),
    }
    for name, fn in parts.items():
        print(f"  {name:32s} best {min(timed(fn, args.repeats)) * 1000:7.1f} ms")
    if args.skip_generator:
        return
    net = rrdbnet("x4plus").to(memory_format=torch.channels_last)
    lq = gt[:, :, :: config.scale, :: config.scale].contiguous(memory_format=torch.channels_last)

    def generator_step() -> None:
        net.zero_grad(set_to_none=True)
        torch.nn.functional.l1_loss(net(lq), gt).backward()

    step = min(timed(generator_step, 2))
    share = statistics.median(per_batch) / (statistics.median(per_batch) + step)
    print(f"x4plus generator step (forward, L1, backward) at batch {args.batch}, GT {args.size}: {step:.1f} s")
    print(f"degradation share of (degradation + generator step): {share:.1%} (an upper bound for a full iteration)")


if __name__ == "__main__":
    main()
