"""Peak memory of x4 upscaling: per-pixel costs of the x4plus trunk and head, and the whole pipeline.

Usage: python benchmarks/bench_memory.py [--size 3000] [--network tiny|x4plus] [--skip-pipeline]

Each measurement runs in a fresh subprocess and reads its peak resident set (ru_maxrss), so the
numbers include everything Python, PyTorch and the allocator hold, not just tensors.

1. Trunk and head of the real x4plus network at two sizes each; the slope between them is the
   memory per feature pixel that ``medsr.infer`` budgets with (TRUNK/HEAD_BYTES_PER_PIXEL).
2. The whole ``medsr upscale`` pipeline on a SIZE x SIZE 16-bit gray PNG, x4, by default with
   the tiny preset network (same reading, tiling, blending, accumulation and writing; running
   x4plus on 3000x3000 takes most of an hour on 2 cores). ``--network x4plus`` runs the real
   network (with the default automatic tile), e.g. on ``--size 1024``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
import torch
from medsr.nets.rrdbnet import rrdbnet
part, side = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
net = rrdbnet("x4plus").eval().to(memory_format=torch.channels_last)
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with torch.inference_mode():
    if part == "trunk":
        x = torch.rand(1, 3, side, side).contiguous(memory_format=torch.channels_last)
        net.trunk(x[:, :, :8, :8])
        before = peak()
        net.trunk(x)
    else:
        f = torch.rand(1, 64, side, side).contiguous(memory_format=torch.channels_last)
        net.head(f[:, :, :4, :4])
        before = peak()
        net.head(f)
print(json.dumps({"before": before, "after": peak()}))
"""

PIPELINE = r"""
import json, resource, sys, time
import numpy as np, torch
from PIL import Image
from safetensors.torch import save_file
from medsr.cli import main
from medsr.nets.rrdbnet import rrdbnet
size, folder, network = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.manual_seed(0)
save_file(rrdbnet(network).state_dict(), f"{folder}/net.safetensors")
ramp = (np.add.outer(np.arange(size), np.arange(size)) * 7 % 65536).astype(np.uint16)
Image.fromarray(ramp).save(f"{folder}/in.png")
del ramp
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
code = main(["upscale", f"{folder}/in.png", "-o", f"{folder}/out.png", "--model", f"{folder}/net.safetensors"])
print(json.dumps({"code": code, "before": before, "seconds": time.perf_counter() - start,
                  "after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--network", choices=["tiny", "x4plus"], default="tiny")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    mib = 1 << 20
    for part, sides in (("trunk", (128, 256)), ("head", (64, 128))):
        peaks = {s: child(CHILD, part, str(s)) for s in sides}
        growth = [(p["after"] - p["before"]) for p in peaks.values()]
        slope = (growth[1] - growth[0]) / (sides[1] ** 2 - sides[0] ** 2)
        print(f"{part}: peak growth {growth[0] / mib:.0f} MiB at {sides[0]}^2, {growth[1] / mib:.0f} MiB at "
              f"{sides[1]}^2 feature pixels -> {slope / 1024:.1f} KiB per feature pixel")
    if not args.skip_pipeline:
        with tempfile.TemporaryDirectory() as folder:
            result = child(PIPELINE, str(args.size), folder, args.network)
        print(f"pipeline ({args.size}x{args.size} 16-bit gray PNG, x4, {args.network} network): exit {result['code']}, "
              f"peak RSS {result['after'] / mib:.0f} MiB (before upscaling {result['before'] / mib:.0f} MiB), "
              f"{result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
