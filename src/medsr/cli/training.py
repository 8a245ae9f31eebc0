"""The command line: `medsr degrade-preview`, `finetune`, `export` and `prepare`."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsr.cli.common import error as _error


def run_degrade_preview(args: argparse.Namespace) -> int:
    from medsr.core.files import write_atomic
    from medsr.evaluation.figures import degradation_sheet
    from medsr.formats.io import ImageError, read_image

    if args.output.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"{args.output}: write the sheet as .png or .jpg")
    if args.output.exists() and not args.overwrite:
        _error(f"{args.output}: already exists (use --overwrite to replace it)")
        return 1
    try:
        image = read_image(args.image)
    except ImageError as exc:
        _error(str(exc))
        return 1
    sheet = degradation_sheet(image, n=args.n, seed=args.seed, scale=args.scale, crop=args.crop)
    try:
        write_atomic(args.output, lambda tmp: sheet.save(tmp), overwrite=args.overwrite)
    except OSError as exc:
        _error(str(exc))
        return 1
    print(f"wrote {args.output}: {args.n} degraded samples of a {args.crop}x{args.crop} crop, x{args.scale}, "
          f"seed {args.seed}")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from medsr.formats.io import ImageError
    from medsr.models import weights
    from medsr.training import config as cfg
    from medsr.training.train import config_of, finetune

    overrides = list(args.set)
    if args.data:
        overrides.append(f"data.train={args.data}")
    if args.val:
        overrides.append(f"data.val={args.val}")
    if args.resume:
        if args.preset or args.config:
            raise ValueError("--resume continues with the run's stored config; give only --set overrides")
        stored = cfg.to_dict(config_of(args.output / "latest.pth"))
        for assignment in overrides:
            stored = cfg.apply_override(stored, assignment)
        config = cfg.from_dict(cfg.TrainConfig, stored)
    else:
        config = cfg.build_config(preset=args.preset, yaml_file=args.config, overrides=tuple(overrides))
    try:
        finetune(config, args.output, resume=args.resume)
    except (weights.WeightsError, ImageError) as exc:
        _error(str(exc))
        return 1
    return 0


def run_export(args: argparse.Namespace) -> int:
    from medsr.training.train import export

    print(f"wrote {export(args.checkpoint, args.output, overwrite=args.overwrite)}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medsr.formats.io import ImageError
    from medsr.training.data import prepare_crops, prepare_multiscale

    if args.kind == "multiscale":
        written = prepare_multiscale(args.source, args.output, shortest_side=args.shortest_side)
    else:
        written = prepare_crops(args.source, args.output, size=args.size, step=args.step)
    try:
        count = sum(1 for _ in tqdm(written, desc=args.kind, unit="file", disable=None))
    except ImageError as exc:
        _error(str(exc))
        return 1
    print(f"wrote {count} files into {args.output}")
    return 0



def add_commands(sub: argparse._SubParsersAction) -> None:
    from medsr.training.presets import PRESETS

    dp = sub.add_parser("degrade-preview", help="sheet of synthetic LR samples from the training degradation")
    dp.add_argument("image", type=Path, metavar="IMAGE", help="a high-resolution image")
    dp.add_argument("-o", "--output", type=Path, required=True, help="sheet file (.png or .jpg)")
    dp.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    dp.add_argument("--seed", type=int, default=0, help="random seed of the samples (default 0)")
    dp.add_argument("--scale", type=int, default=4, choices=[1, 2, 4], help="downscaling factor (default 4)")
    dp.add_argument("--crop", type=int, default=256, help="ground-truth crop side (default 256)")
    dp.add_argument("--overwrite", action="store_true", help="replace an existing sheet")
    dp.set_defaults(run=run_degrade_preview)

    ft = sub.add_parser("finetune", help="fine-tune generator and discriminator on your images")
    ft.add_argument("-o", "--output", type=Path, required=True, help="run folder (checkpoints, logs, config)")
    ft.add_argument("--data", default=None, help="folder of high-resolution training images")
    ft.add_argument("--val", default=None, help="folder of high-resolution validation images")
    ft.add_argument("--preset", default=None, help="one of: " + ", ".join(PRESETS))
    ft.add_argument("--config", default=None, help="YAML file of settings")
    ft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. run.iterations=500")
    ft.add_argument("--resume", action="store_true", help="continue the run in --output")
    ft.set_defaults(run=run_finetune)

    ex = sub.add_parser("export", help="write a checkpoint's EMA generator as fp16 safetensors")
    ex.add_argument("checkpoint", type=Path, help="a training checkpoint (RUN/latest.pth)")
    ex.add_argument("-o", "--output", type=Path, required=True, help="the .safetensors file to write")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing file")
    ex.set_defaults(run=run_export)

    pr = sub.add_parser("prepare", help="prepare training data into a new folder")
    pr.add_argument("kind", choices=["multiscale", "crops"], help="downscaled copies, or sub-image crops")
    pr.add_argument("source", type=Path, help="folder of high-resolution images")
    pr.add_argument("-o", "--output", type=Path, required=True, help="a new folder")
    pr.add_argument("--shortest-side", type=int, default=400, help="multiscale: extra copy with this shortest side")
    pr.add_argument("--size", type=int, default=400, help="crops: sub-image side")
    pr.add_argument("--step", type=int, default=200, help="crops: step between sub-images")
    pr.set_defaults(run=run_prepare)
