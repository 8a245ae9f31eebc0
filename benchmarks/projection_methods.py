"""How to make a network's output average back to its input: the one-step box projection (medsr's)
against iterative back-projection with a smooth kernel (Irani & Peleg's form) ending in the box step.

On the evaluation protocols' pairs (GT, LR made by bicubic + blur), each model's raw output is
corrected three ways: none, "box" (``medsr.core.consistency.enforce``: each s x s block moves by one
constant, the nearest consistent image: ``enforce(..., smooth_rounds=0)``), "smooth + box" (``--rounds``
of y += bicubic_up(x - box_mean(y)), then the box step for what remains, so that it is exactly
consistent too: medsr's default, ``enforce``). Reported per method:
PSNR and SSIM against GT, and a block index: the mean |step| between neighbouring output pixels
across block borders over the same within blocks (1.0: no grid; a grid of block edges shows above it).

    python benchmarks/projection_methods.py --images 5 [--rounds 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import medsr
from medsr.core import metrics
from medsr.core.consistency import SMOOTH_ROUNDS, average_back, enforce
from medsr.core.image import quantize
from medsr.evaluation.evaluate import PROTOCOLS, find_samples, make_pair, read_any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def block_index(image: np.ndarray, factor: int) -> float:
    """Mean |horizontal and vertical steps| across block borders / within blocks."""
    steps_x = np.abs(np.diff(image, axis=2))
    steps_y = np.abs(np.diff(image, axis=1))
    border_x = (np.arange(steps_x.shape[2]) % factor) == factor - 1
    border_y = (np.arange(steps_y.shape[1]) % factor) == factor - 1
    across = np.concatenate([steps_x[:, :, border_x].ravel(), steps_y[:, border_y].ravel()]).mean()
    within = np.concatenate([steps_x[:, :, ~border_x].ravel(), steps_y[:, ~border_y].ravel()]).mean()
    return float(across / within)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=SMOOTH_ROUNDS)
    args = parser.parse_args()
    sets = (("retina-x2", SHARED / "retina/CHASE_DB1", "retina-fidelity"),
            ("cxr-x4", SHARED / "cxr/NIH-ChestXray14/val", "cxr-fidelity"))
    print("| protocol | model | method | PSNR | SSIM | block index | max |mean - LR| (levels of 255) |")
    print("|---|---|---|---|---|---|---|")
    for protocol_name, folder, model_name in sets:
        protocol = PROTOCOLS[protocol_name]
        for name in (model_name, "realesrgan-x4plus"):
            model = medsr.load_model(name)
            rows: dict[str, list[tuple[float, float, float, float]]] = {}
            for sample in find_samples(folder)[: args.images]:
                image = read_any(sample.image)
                lr, gt = make_pair(image, protocol)
                raw = medsr.upscale(medsr.Image(pixels=lr), model=model, outscale=protocol.scale, consistency=False,
                                    allow_inconsistent=True).pixels
                for method, out in (("raw", raw), ("box", enforce(raw, lr, smooth_rounds=0)),
                                    ("smooth + box", enforce(raw, lr, smooth_rounds=args.rounds))):
                    sr_q, gt_q = (quantize(a, 255).astype(np.float64) for a in (out, gt))
                    off = np.abs(average_back(out, lr.shape[1:]) - lr).max() * 255
                    rows.setdefault(method, []).append((metrics.psnr(sr_q, gt_q, data_range=255),
                                                        metrics.ssim(sr_q, gt_q, data_range=255),
                                                        block_index(out, protocol.scale), off))
            for method, values in rows.items():
                psnr, ssim, blocks, off = np.mean(values, axis=0)
                print(f"| {protocol_name} | {name} | {method} | {psnr:.2f} | {ssim:.4f} | {blocks:.3f} | {off:.3f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
