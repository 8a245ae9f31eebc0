"""Which Frangi scales make vessel AUC rank a sharp fundus above blurred copies of it.

Usage: python benchmarks/vesselness_scales.py [--images 4]

For the first STARE images (../shared/data), GT as in the retina-x2 protocol (512x512), prints the
mean AUC of vesselness against the manual annotation for the GT and for the GT blurred with
sigma 1.5 and 3, per set of scales. A useful metric must decrease from left to right.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from medsr.core import metrics
from medsr.core.kernels import gaussian_blur
from medsr.evaluation.evaluate import PROTOCOLS, find_samples, make_pair, read_annotation, read_any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    samples = find_samples(SHARED / "retina/STARE")[: args.images]
    pairs = []
    for sample in samples:
        _, gt = make_pair(read_any(sample.image), PROTOCOLS["retina-x2"])
        pairs.append((gt, read_annotation(sample.annotation, 512), metrics.field_of_view(gt)))
    print("scales          AUC: sharp   blur 1.5   blur 3")
    for scales in ((1, 2, 3, 4), (2, 3, 4), (1, 2), (1.5, 2.5)):
        rows = []
        for gt, annotation, fov in pairs:
            row = []
            for sigma in (0, 1.5, 3):
                image = gt if sigma == 0 else gaussian_blur(torch.from_numpy(gt)[None], 15, sigma)[0].numpy()
                vessels = metrics.vesselness(image[1], sigmas=scales)
                row.append(metrics.auc(vessels[fov], annotation[fov]))
            rows.append(row)
        mean = np.mean(rows, 0)
        print(f"{str(scales):15s}      {mean[0]:.4f}    {mean[1]:.4f}    {mean[2]:.4f}")


if __name__ == "__main__":
    main()
