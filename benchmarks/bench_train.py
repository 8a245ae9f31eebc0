"""Seconds per fine-tuning iteration on this machine, with a breakdown.

Usage: python benchmarks/bench_train.py [--setting paper|light|both] [--iterations 2] [--precision fp32,bf16]
       [--device cpu|cuda] [--data FOLDER]

Settings: "paper" = batch 10, GT 256 (the paper's); "light" = the cpu-light preset (batch 4,
GT 128). Networks are the full x4plus generator and discriminator and VGG19 with random weights:
the cost does not depend on the weight values, and the real VGG19 file cannot be downloaded here.
Per setting: one warm-up iteration, then the mean of ``--iterations`` full iterations, and each
part timed on its own: data + degradation (+ pool), the discriminator step, and VGG19 (forward and
backward of the perceptual loss); the generator part is the rest of an iteration. The crops alone
are timed twice: from the images kept decoded (what a run does) and read from disk each time.
``--data`` times real images (default: twelve generated 512x512 ones).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medsr.nets.vgg import VGG19Features
from medsr.training.config import build_config
from medsr.training.data import HRImages
from medsr.training.train import build, d_step, degraded_batch, train_step


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":  # kernels run asynchronously: wait for them on both sides
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def crop_seconds(run, repeats: int = 3) -> tuple[float, float]:
    """Seconds for one batch of GT crops: from the decoded images, and read from disk each time."""
    config = run.config.data
    generators = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    on_disk = HRImages(config.train, gt_size=config.gt_size, cache_bytes=0)
    cpu = torch.device("cpu")

    def best(images: HRImages) -> float:
        return min(timed(lambda: images.batch(config.batch_size, *generators), cpu) for _ in range(repeats))

    return best(run.data), best(on_disk)


def bench(setting: str, iterations: int, folder: Path, data: Path, precision: str, device: str) -> float:
    overrides = ["model.init_g=scratch", f"data.train={data}", f"loss.vgg_weights={folder / 'vgg.pth'}",
                 f"run.bf16={'true' if precision == 'bf16' else 'false'}", f"run.device={device}"]
    config = build_config(preset="cpu-light" if setting == "light" else "retina", overrides=tuple(overrides))
    run = build(config, folder / f"run-{setting}-{precision}")
    dev = run.device
    train_step(run)  # warm-up
    full = sum(timed(lambda: train_step(run), dev) for _ in range(iterations)) / iterations
    data_time = timed(lambda: degraded_batch(run), dev)
    lq, gt_usm, gt = degraded_batch(run)
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=run.bf16):
        sr = run.net_g(lq)
    d = timed(lambda: d_step(run, gt, sr), dev)
    sr_grad = sr.clone().requires_grad_(True)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=run.bf16):
        vgg = timed(lambda: run.perceptual(sr_grad, gt_usm).backward(), dev)
    g = full - data_time - d - vgg
    b, size = config.data.batch_size, config.data.gt_size
    print(f"{setting}, {precision}, {dev}: batch {b}, GT {size}: {full:.3f} s per iteration (mean of {iterations})")
    for name, seconds in (("data + degradation", data_time), ("generator (fwd, L1, GAN, bwd, Adam)", g),
                          ("discriminator step", d), ("VGG19 perceptual (fwd + bwd)", vgg)):
        print(f"  {name:38s} {seconds:7.3f} s  {seconds / full:6.1%}")
    kept, read = crop_seconds(run)
    print(f"  the crops alone: {kept:.3f} s from decoded images, {read:.3f} s read from disk each time")
    print(f"  -> {7200 / full:.0f} iterations in two hours")
    return full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=["paper", "light", "both"], default="both")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16 (autocast), side by side")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timed with synchronisation)")
    parser.add_argument("--data", type=Path, help="a folder of training images (default: generated)")
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    if args.device.startswith("cuda"):
        print(f"{torch.cuda.get_device_name()}; fp32 convolutions in TF32 where cuDNN allows it "
              f"(allow_tf32={torch.backends.cudnn.allow_tf32}); bf16 = autocast, weights and optimiser fp32")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = args.data or folder / "hr"
        if args.data is None:
            data.mkdir()
            rng = np.random.default_rng(0)
            for i in range(12):  # smooth random 512x512 images
                small = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
                Image.fromarray(small).resize((512, 512), Image.Resampling.BICUBIC).save(data / f"{i}.png")
        torch.save(VGG19Features().state_dict(), folder / "vgg.pth")
        for setting in (["light", "paper"] if args.setting == "both" else [args.setting]):
            times = {p: bench(setting, args.iterations, folder, data, p, args.device)
                     for p in args.precision.split(",")}
            if len(times) > 1:
                print(f"{setting}: " + ", ".join(f"{p} {t / times['fp32']:.2f}x fp32's time" for p, t in times.items()
                                                if p != "fp32"))


if __name__ == "__main__":
    main()
