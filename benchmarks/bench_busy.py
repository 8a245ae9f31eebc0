"""A run beside one busy competing process, against the same run idle (issue 36).

Usage: python benchmarks/bench_busy.py [--model NAME] [--size 512] [--repeats 3]

Upscales one generated size x size 16-bit image at x2 in this process, with 2 and with 1 compute
threads and with what ``fit_threads`` chooses, idle and while another process spins on one core (a
pure Python loop); best of the repeats.
Prints the CPU and the ratios busy/idle.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import torch

import medsr
from medsr.engine.devices import fit_threads, usable_cpus

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_compact import cpu  # noqa: E402  (the same CPU line in both benchmarks)


def timed(model, image: np.ndarray, threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    medsr.upscale(image, model=model, outscale=2, precision="fp32", device="cpu")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ct-fidelity")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = (np.cumsum(np.cumsum(rng.normal(0, 1, (args.size, args.size)), 0), 1))
    image = ((image - image.min()) / np.ptp(image) * 4095).astype(np.uint16)
    model = medsr.load_model(args.model)
    timed(model, image, 2)  # warm-up: first-call allocations and kernel choices
    best: dict[tuple[str, str], float] = {}
    for busy in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            time.sleep(1 if busy else 0)
            torch.set_num_threads(2)
            chosen = fit_threads()
            for _ in range(args.repeats):
                for label, threads in (("2", 2), ("1", 1), ("auto", chosen)):
                    key = ("busy" if busy else "idle", label)
                    best[key] = min(best.get(key, float("inf")), timed(model, image, threads))
            best[("busy" if busy else "idle", "chosen")] = chosen
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    print(f"CPU: {cpu()}; usable CPUs {usable_cpus()}")
    print(f"{args.model}, one {args.size}x{args.size} image at x2, fp32, best of {args.repeats}:")
    for label in ("2", "1", "auto"):
        idle, busy = best[("idle", label)], best[("busy", label)]
        chosen = f" (idle: {best[('idle', 'chosen')]:g}, busy: {best[('busy', 'chosen')]:g})" if label == "auto" else ""
        print(f"  {label} thread(s){chosen}: idle {idle:.3f} s, beside a busy process {busy:.3f} s, "
              f"busy/idle {busy / idle:.2f}; against the idle auto {busy / best[('idle', 'auto')]:.2f}")


if __name__ == "__main__":
    main()
