"""The command line: `medsr evaluate`."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from medsr.cli.common import add_threads_option, ranks_and_device
from medsr.cli.common import error as _error


def parse_region(text: str | None, size: int) -> tuple[int, int, int, int] | None:
    """``X,Y,W,H`` -> the magnified region of the figures, within a ``size`` square (0: any size)."""
    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--region {text!r}: give X,Y,W,H in ground-truth pixels, e.g. 200,180,64,64") from None
    if x < 0 or y < 0 or w < 1 or h < 1 or (size and (x + w > size or y + h > size)):
        raise ValueError(f"--region {text!r}: needs x, y >= 0, a width and height of at least 1"
                         + (f", within the {size}x{size} ground truth" if size else ""))
    return x, y, w, h


def run_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medsr.core.version import __version__
    from medsr.engine.devices import fit_threads
    from medsr.engine.infer import pick_precision, precision_name
    from medsr.evaluation import evaluate as ev
    from medsr.evaluation import stats
    from medsr.evaluation.report import markdown_table, paired_table, paper_comparison, write_outputs, write_report

    if args.output.exists() and not args.overwrite:
        raise ValueError(f"{args.output}: already exists (use --overwrite to replace its files)")
    fit_threads(args.threads)
    if args.protocol == "volume-z":
        return run_volume_z(args)
    if args.degradation == "box" and args.blur_sigma is not None:
        raise ValueError("--blur-sigma applies to the paper's degradation; --degradation box has no blur")
    protocol = ev.with_blur(ev.with_degradation(ev.PROTOCOLS[args.protocol], args.degradation), args.blur_sigma)
    region = parse_region(args.region, protocol.gt_size)  # checked before any work, not after it
    if args.max_images < 0 or args.figures < 0 or args.slices < 1:
        raise ValueError(f"--max-images {args.max_images}, --figures {args.figures}, --slices {args.slices}: "
                         "need 0 or more images and figures, and at least one slice")
    unreadable: list[str] = []  # volumes that cannot be read: reported, the others evaluated

    def unread(message: str) -> None:
        unreadable.append(message)
        _error(message)

    if protocol.volume:
        samples = [s for folder in args.data
                   for s in ev.find_slices(folder, per_volume=args.slices, axis=args.axis, on_error=unread)]
    else:
        samples = [s for folder in args.data for s in ev.find_samples(folder)]
    samples = samples[: args.max_images or None]
    if len({s.name for s in samples}) < len(samples):  # figures are named by image
        raise ValueError("two input images share a name; evaluate their folders separately")
    if not samples:
        raise ValueError("no images found in " + ", ".join(map(str, args.data)))
    baselines = [name.strip() for name in args.baselines.split(",") if name.strip()]
    ranks, device = ranks_and_device(args.device)  # under torchrun each rank takes every N-th image; rank 0 reports
    models = ev.build_models([*baselines, *args.model], tile=args.tile, device=device, precision=args.precision)
    lpips, lpips_status = ev.lpips_metric()
    options = ev.Options(protocol=protocol, fit=args.fit, ssim_convention=args.ssim, lpips=lpips,
                         consistency=args.consistency)
    failed = list(unreadable) if not ranks or ranks.get_rank() == 0 else []  # said once under torchrun
    share = samples[ranks.get_rank():: ranks.get_world_size()] if ranks else samples
    bar = tqdm(total=len(share), disable=None, desc="images", unit="img")  # "images 3/40 [..., a.png: cxr]"

    def report_error(message: str) -> None:
        failed.append(message)
        _error(message)
        bar.update()

    results = []
    for result in ev.evaluate(share, models, options, on_error=report_error, on_step=bar.set_postfix_str):
        if args.save_outputs:
            write_outputs(args.output, result)
        results.append(result)
        bar.update()
    bar.close()
    if ranks:
        # Images travel only for the figures: each rank's first ``figures`` results hold the first
        # ``figures`` of all, whatever the shares' failures.
        local = [r if i < args.figures else ev.without_images(r) for i, r in enumerate(results)]
        gathered: list = [None] * ranks.get_world_size()
        ranks.all_gather_object(gathered, (local, failed))
        if ranks.get_rank() != 0:
            return 1 if failed else 0
        order = {sample.name: i for i, sample in enumerate(samples)}
        results = sorted((r for part, _ in gathered for r in part), key=lambda r: order[r.sample.name])
        failed = [message for _, part in gathered for message in part]
    summary = ev.summarise(results)
    names = [name for m in models for name, _ in ev.variants(m, args.consistency)]
    fallback = next((n for n in ("lanczos-projected", "bicubic") if n in names), names[0])
    reference = args.reference if args.reference in names else fallback
    models_only = {m: rows for m, rows in ev.per_image(results).items() if m != "ground truth"}
    statistics = stats.statistics(models_only, reference)
    settings = {
        "protocol": protocol.name, "data": ", ".join(map(str, args.data)), "images": len(results),
        "skipped": len(failed), **ev.describe_protocol(protocol, fit=args.fit, slices=args.slices),
        "consistency": {"on": "networks' outputs projected to average back to LR (as medsr upscale does)",
                        "off": "networks' raw outputs", "both": "each network projected (NAME) and raw (NAME raw)"
                        }[args.consistency],
        "SSIM convention": args.ssim,
        "precision": f"networks in {precision_name(pick_precision(args.precision, device))} on {device.type}",
        "LPIPS": lpips_status,
        "models": "; ".join(f"{m.name}: {m.source}" for m in models),
        "reference": reference,
        "medsr": __version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": args.command_line,
    }
    path = write_report(args.output, results, summary, settings, figures=args.figures, region=region,
                        statistics=statistics)
    print(markdown_table(summary))
    print(f"\npaired against {reference}: mean difference [bootstrap 95% interval], images where better")
    print(paired_table(statistics))
    if args.paper_table:
        fine_tuned = next((n for n in names if n not in ("bicubic", "lanczos", "realesrgan-x4plus")), None)
        print("\nthe paper's table beside this run:")
        print(paper_comparison(protocol.name, summary, protocol.blur_sigma, fine_tuned))
    print(f"report: {path} ({len(results)} images, {len(failed)} skipped)")
    return 1 if failed else 0



VOLUME_Z_DEFAULT = "cubic,lanczos,cubic-projected,lanczos-projected"


def run_volume_z(args: argparse.Namespace) -> int:
    """The volume-z protocol: per volume and method, PSNR, SSIM and MAE; paired against lanczos-projected."""
    import json

    import numpy as np

    from medsr.core.files import write_atomic
    from medsr.engine.upscale import upscale
    from medsr.evaluation import volume_z
    from medsr.formats.volume import Volume

    if not 2 <= args.factor <= 16:
        raise ValueError(f"--factor {args.factor}: from 2 to 16")
    given = args.baselines if args.baselines != DEFAULT_BASELINES else VOLUME_Z_DEFAULT
    baselines = [name.strip() for name in given.split(",") if name.strip()]
    methods = list(dict.fromkeys(baselines + list(args.model)))
    if not methods:
        raise ValueError("no methods to evaluate: give baselines or models")
    unknown = [m for m in baselines if m not in volume_z.BASELINES]
    if unknown:
        raise ValueError(f"volume-z baselines: {', '.join(unknown)} unknown (known: {', '.join(volume_z.BASELINES)})")
    paths = volume_z.find_volumes(args.data)

    def run_model(thick: Volume, name: str) -> Volume:
        out = upscale(thick, model=name, through_plane=True, outscale=args.factor, device=args.device,
                      precision=args.precision)
        assert isinstance(out, Volume)
        return out

    failed: list[str] = []

    def report(message: str) -> None:
        failed.append(message)
        _error(message)

    results = volume_z.evaluate_volume_z(paths, methods, factor=args.factor, run_model=run_model, axis=args.axis,
                                         on_error=report)
    if not results:
        raise ValueError("no volume could be evaluated")
    print(f"volume-z x{args.factor}: {len(results)} volume(s); PSNR (dB) over each volume's 0.5..99.5th percentile "
          "range, SSIM over the planes across the slices, MAE in its units")
    print("| volume | method | psnr | ssim | mae | psnr vs lanczos-projected |\n|---|---|---|---|---|---|")
    for name, rows in results.items():
        reference = rows.get("lanczos-projected", {}).get("psnr", np.nan)
        for method, row in rows.items():
            print(f"| {name} | {method} | {row['psnr']:.3f} | {row['ssim']:.4f} | {row['mae']:.3f} | "
                  f"{row['psnr'] - reference:+.3f} |")
    args.output.mkdir(parents=True, exist_ok=True)
    document = {"protocol": f"volume-z x{args.factor}", "volumes": results, "skipped": failed}
    write_atomic(args.output / "summary.json", json.dumps(document, indent=2).encode())
    print(f"wrote {args.output / 'summary.json'}")
    return 1 if failed else 0


DEFAULT_BASELINES = "bicubic,lanczos,lanczos-projected,realesrgan-x4plus"


def add_commands(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="compare models on a protocol: metrics, figures, HTML report")
    ev.add_argument("data", nargs="+", type=Path, metavar="FOLDER",
                    help="image folders (plain, or DRIVE/STARE/CHASE_DB1 layouts with vessel annotations)")
    ev.add_argument("--protocol", required=True, choices=["retina-x2", "cxr-x4", "volume-x2", "volume-z"],
                    help="retina-x2: GT 512, x2; cxr-x4: GT 1024, x4; volume-x2: slices in-plane; volume-z: slices "
                         "made --factor times thicker, then thin again (docs/METRICS.md)")
    ev.add_argument("--baselines", default=DEFAULT_BASELINES,
                    help="comma-separated reference methods: bicubic, lanczos, bicubic-projected and "
                         "lanczos-projected (the interpolation, then the projection every model gets) and known "
                         "models (default: bicubic,lanczos,lanczos-projected,realesrgan-x4plus)")
    ev.add_argument("--degradation", default="paper", choices=["paper", "box"],
                    help="2D protocols' LR: paper (bicubic down, then a Gaussian blur; default) or box (the "
                         "scale x scale block mean, the values contract's own operator, no blur)")
    ev.add_argument("--model", action="append", default=[], metavar="NAME|PATH",
                    help="a model to compare: a known name, NAME@F (a fidelity), LABEL=MODEL, or a checkpoint "
                         "(RRDBNet; other architectures with medsr[zoo]); repeatable")
    ev.add_argument("--blur-sigma", type=float, default=None, help="LR blur sigma in LR pixels (default 1.0)")
    ev.add_argument("--reference", default="lanczos-projected",
                    help="the method the others are compared with, image by image (default: lanczos-projected, "
                         "what a network must beat once every output is projected; else bicubic)")
    ev.add_argument("--paper-table", action="store_true",
                    help="also print the paper's Table 1/2 values beside the measured ones, with what differs")
    ev.add_argument("--fit", default="resize", choices=["resize", "crop"],
                    help="how non-square images become the protocol's square: resize (the paper) or centre "
                         "crop (default: resize)")
    ev.add_argument("--ssim", default="realesrgan", choices=["realesrgan", "skimage"],
                    help="SSIM convention (default: realesrgan)")
    ev.add_argument("--consistency", default="on", choices=["on", "off", "both"],
                    help="networks' outputs projected to average back to LR as upscale does (on, default), raw "
                         "(off), or both as two rows, NAME and NAME raw")
    ev.add_argument("--factor", type=int, default=4,
                    help="volume-z: how many times thicker the slices are made, then thin again (default 4)")
    ev.add_argument("--slices", type=int, default=8, help="volume-x2: slices per volume, evenly spaced (default 8)")
    ev.add_argument("--axis", type=int, default=None, choices=[0, 1, 2],
                    help="volume-x2: the slice axis (default: the largest spacing; isotropic volumes: 2)")
    ev.add_argument("--max-images", type=int, default=0, help="evaluate at most this many images (0: all)")
    ev.add_argument("--figures", type=int, default=4, help="comparison figures for the first N images")
    ev.add_argument("--save-outputs", action="store_true",
                    help="also write every image's ground truth, LR and outputs (16-bit PNG) under outputs/, "
                         "for medsr view and medsr study build --report")
    ev.add_argument("--region", default=None, metavar="X,Y,W,H", help="magnified region in GT pixels")
    ev.add_argument("--tile", type=int, default=None, help="LR tile side (default: auto)")
    add_threads_option(ev)
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ev.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="network precision (default: auto, as for upscale)")
    ev.add_argument("-o", "--output", type=Path, required=True, help="report folder")
    ev.add_argument("--overwrite", action="store_true", help="write into an existing report folder")
    ev.set_defaults(run=run_evaluate)
