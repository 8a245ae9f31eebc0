"""Train a compact fidelity model for the values contract (medsr.contract), the recipe of the shipped
compact models (their cards give the exact command). Runs in the background for hours on a CPU:

    nohup .venv/bin/python benchmarks/train_compact.py --run ~/medsr-runs/volume-x2 \
        --train VOL[:FIRST-LAST] ... --val VOL[:FIRST-LAST] ... > ~/medsr-runs/volume-x2.log 2>&1 &

``--resume`` continues from the run's last.pt exactly.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch

from medsr.training.contract import ContractConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="run folder (checkpoints)")
    parser.add_argument("--train", nargs="+", required=True)
    parser.add_argument("--val", nargs="*", default=[])
    parser.add_argument("--preset", default="compact-m")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gt-size", type=int, default=128)
    parser.add_argument("--margin", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "2")))
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    config = ContractConfig(train=tuple(args.train), val=tuple(args.val), preset=args.preset, scale=args.scale,
                            iterations=args.iterations, batch_size=args.batch_size, gt_size=args.gt_size,
                            lr=args.lr, noise=args.noise, margin=args.margin, val_every=args.val_every,
                            save_every=args.val_every)
    last = args.run / "last.pt"
    train(config, args.run, resume_from=last if args.resume and last.is_file() else None)


if __name__ == "__main__":
    main()
