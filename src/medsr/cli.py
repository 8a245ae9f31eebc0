"""Command line: thin subcommands over the library."""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import signal
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from medsr import batch, dicom, ncnn, volume, weights
from medsr.config import PRESETS
from medsr.consistency import Consistency
from medsr.devices import join_process_group, leave_process_group, rank_device
from medsr.files import write_atomic
from medsr.image import DEFAULT_MAX_PIXELS, ReadOptions, check_value_range
from medsr.infer import pick_precision, precision_name
from medsr.io import ImageError, is_nifti, read_frames, read_image, reader_for
from medsr.upscale import DEFAULT_MODEL, check_outscale

RANGE_HELP = ("stored values that mean black and white, for non-DICOM files: auto (what the file says, else the "
              "smallest of 8/10/12/14/16 bits that holds the data), full (the file type's range) or LO,HI "
              "(default: auto)")


def _error(message: str) -> None:
    tqdm.write(f"error: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# upscale


def run_upscale(args: argparse.Namespace) -> int:
    ext = None if args.ext is None else "." + args.ext.lower().lstrip(".")
    if args.tile is not None and args.tile < 0:
        raise ValueError(f"--tile {args.tile}: must be 0 (no tiling) or a positive size")
    if args.outscale is not None:
        check_outscale(args.outscale, consistency=args.consistency == "on")
    options = ReadOptions(max_pixels=args.max_pixels, window=dicom.parse_window(args.window),
                          value_range=parse_range(args.range))
    index, count = (batch.shard_from_environment(slurm=args.shard == "auto") if args.shard in (None, "auto")
                    else parse_shard(args.shard))
    plan = batch.shard(batch.plan_outputs(args.inputs, args.output, ext=ext), index, count)
    ranks, device = _ranks(args.device)
    pick_precision(args.precision, device)  # an impossible precision is refused before any model loads
    bars: dict[Path, tqdm] = {}

    def progress(source: Path, done: int, total: int) -> None:
        if source not in bars:
            bars.clear()
            bars[source] = tqdm(desc=source.name, total=total, unit="tile", leave=False, disable=None)
        bars[source].update(done - bars[source].n)

    results = batch.upscale_files(plan, model=args.model, outscale=args.outscale, tile=args.tile, device=device,
                                  precision=args.precision, options=options, overwrite=args.overwrite,
                                  progress=progress, fidelity=args.fidelity, maps=args.detail_map,
                                  consistency=args.consistency == "on", allow_inconsistent=args.allow_inconsistent,
                                  axis=args.axis)
    used: Counter[str] = Counter()  # "model x4 fp32": files
    paths: Counter[str] = Counter()  # how values and channels were taken, and why each model, for the summary
    scores: list[str] = []
    kept: list[Consistency] = []
    failed, start = 0, time.perf_counter()
    try:
        for result in tqdm(results, total=len(plan), desc="images", unit="img", disable=len(plan) < 2 or None):
            for bar in bars.values():
                bar.close()
            if result.ok:
                used[f"{result.model} x{result.scale:g} {result.precision}"] += 1
                stack = f", {result.frames} frames each" if result.frames > 1 else ""
                paths[result.values + stack] += 1
                paths[f"model {result.model}: {result.why}"] += 1
                kept += [result.consistency] if result.consistency else []
                if result.detail is not None:
                    scores.append(f"  detail {result.detail:5.2f}  consistency {result.consistency_rms:5.2f}  "
                                  f"{result.target}")
            else:
                _error(result.error)
                failed += 1
    except weights.WeightsError as exc:  # no model: nothing can run (other ranks learn it in the merge)
        _error(str(exc))
        failed += 1
    seconds = time.perf_counter() - start
    if ranks:  # rank 0 reports for all
        used, paths, failed, scores, kept = _merged(ranks, used, paths, failed, scores, kept)
        if ranks.get_rank() != 0:
            return 1 if failed else 0
    share = f" (share {index} of {count})" if count > 1 and not ranks else ""
    models = ", ".join(f"{name} ({count})" if len(used) > 1 else name for name, count in used.items())
    done = f"upscaled {sum(used.values())} file(s){share} with {models}" if used else f"upscaled no files{share}"
    print(f"{done} on {device.type} in {seconds:.1f} s; {failed} failed")
    for path, count in sorted(paths.items()):
        print(f"  {count} file(s): {path}")
    if kept:
        projection = "projected" if args.consistency == "on" else "raw network, not projected"
        print(f"values kept ({projection}; each output averaged back onto its input, % of the input's value span; "
              f"worst of {len(kept)} file(s)): {Consistency.worst(kept)}")
    if scores:
        print("added detail and consistency (RMS, 8-bit levels; maps beside each output, see the README):")
        print("\n".join(scores))
    return 1 if failed else 0


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N): this job's share of the files, K from 0 to N - 1."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: give K/N, e.g. 0/4 for the first of four shares") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: K must be within 0..N-1")
    return index, count


def _ranks(device: str):
    """torch.distributed under torchrun with several processes (gloo: it only gathers results; each
    rank works alone), else None; and this rank's device."""
    _, size = join_process_group("gloo")
    return (torch.distributed if size > 1 else None), rank_device(device, size)


def _merged(dist, used: Counter, paths: Counter, failed: int, scores: list[str], kept: list):
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (used, paths, failed, scores, kept))
    used, paths, failed, scores, kept = Counter(), Counter(), 0, [], []
    for part_used, part_paths, part_failed, part_scores, part_kept in gathered:
        used.update(part_used)
        paths.update(part_paths)
        failed += part_failed
        scores += part_scores
        kept += part_kept
    return used, paths, failed, scores, kept


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


def parse_range(text: str) -> str | tuple[float, float]:
    """``auto``, ``full`` or ``LO,HI`` from the command line -> ReadOptions.value_range."""
    if text in ("auto", "full"):
        return text
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--range {text!r}: give auto, full or LO,HI (e.g. 0,4095)") from None
    check_value_range((low, high))
    return low, high


# ---------------------------------------------------------------------------------------------
# weights


def run_info(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            if is_nifti(path):
                rows = volume.describe(path)
            elif reader_for(path) is dicom.read_dicom:
                rows = dicom.describe(path)
                rows += batch.dicom_outlook(path)
            else:
                frames = read_frames(path, ReadOptions(max_pixels=args.max_pixels, value_range=parse_range(args.range)))
                image = frames[0]
                height, width = image.size
                rows = [("size", f"{width} x {height}"), ("mode", image.mode), ("bits", f"{image.bit_depth}"),
                        ("value range", f"{image.min_value:g}..{image.max_value:g} ({image.range_reason})")]
                rows += [("frames", f"{len(frames)} (the first is shown)")] if len(frames) > 1 else []
                rows += [(key, str(image.meta[key])) for key in ("dpi",) if key in image.meta]
        except ImageError as exc:
            _error(str(exc))
            failed += 1
            continue
        print(path)
        for name, value in rows:
            print(f"  {name + ':':20s} {value}")
    return 1 if failed else 0


def run_degrade_preview(args: argparse.Namespace) -> int:
    from medsr.figures import degradation_sheet

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
    from medsr import config as cfg
    from medsr.train import config_of, finetune

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
    from medsr.train import export

    print(f"wrote {export(args.checkpoint, args.output, overwrite=args.overwrite)}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from medsr.data import prepare_crops, prepare_multiscale

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


def run_evaluate(args: argparse.Namespace) -> int:
    from medsr import __version__, stats
    from medsr import evaluate as ev
    from medsr.report import markdown_table, paired_table, paper_comparison, write_outputs, write_report

    if args.output.exists() and not args.overwrite:
        raise ValueError(f"{args.output}: already exists (use --overwrite to replace its files)")
    protocol = ev.with_blur(ev.PROTOCOLS[args.protocol], args.blur_sigma)
    region = parse_region(args.region, protocol.gt_size)  # checked before any work, not after it
    if args.max_images < 0 or args.figures < 0 or args.slices < 1:
        raise ValueError(f"--max-images {args.max_images}, --figures {args.figures}, --slices {args.slices}: "
                         "need 0 or more images and figures, and at least one slice")
    if protocol.volume:
        samples = [s for folder in args.data for s in ev.find_slices(folder, per_volume=args.slices, axis=args.axis)]
    else:
        samples = [s for folder in args.data for s in ev.find_samples(folder)]
    samples = samples[: args.max_images or None]
    if len({s.name for s in samples}) < len(samples):  # figures are named by image
        raise ValueError("two input images share a name; evaluate their folders separately")
    if not samples:
        raise ValueError("no images found in " + ", ".join(map(str, args.data)))
    baselines = [name.strip() for name in args.baselines.split(",") if name.strip()]
    ranks, device = _ranks(args.device)  # under torchrun each rank takes every N-th image; rank 0 reports
    models = ev.build_models([*baselines, *args.model], tile=args.tile, device=device, precision=args.precision)
    lpips, lpips_status = ev.lpips_metric()
    options = ev.Options(protocol=protocol, fit=args.fit, ssim_convention=args.ssim, lpips=lpips,
                         consistency=args.consistency)
    failed = []
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
    reference = args.reference if args.reference in names else ("bicubic" if "bicubic" in names else names[0])
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


def run_weights(args: argparse.Namespace) -> int:
    if args.action == "list":
        for spec in weights.KNOWN_MODELS.values():
            cached = weights.cached_path(spec)
            offline_copy = ncnn.ncnn_files(spec)
            where = f"cached at {cached}" if cached.is_file() else "not cached"
            if spec.packaged:
                where = f"shipped at {weights.PACKAGED_DIR / spec.packaged}"
            offline = "; offline copy available" if offline_copy else ""
            print(f"{spec.name:22s} {spec.description} [{where}{offline}]")
        return 0
    try:
        if args.action == "fetch":
            if args.model not in weights.KNOWN_MODELS:
                raise weights.WeightsError(f"{args.model}: not a known model ({', '.join(weights.KNOWN_MODELS)})")
            print(weights.fetch(weights.KNOWN_MODELS[args.model]))
            return 0
        model = weights.load_model(args.model)
    except weights.WeightsError as exc:
        _error(str(exc))
        return 1
    net = model.module
    for path, digest in model.sources:
        print(f"file:       {path}\nsize:       {path.stat().st_size:,} bytes\nSHA-256:    {digest}")
    shape = f", {len(net.body)} blocks, {net.conv_first.out_channels} features" if model.exact_tiles else ""
    print(f"network:    {model.architecture} x{model.scale}{shape}; {model.in_channels} channels; "
          f"runs in {', '.join(model.precisions)}")
    print(f"parameters: {sum(p.numel() for p in net.parameters()):,} in {len(net.state_dict())} tensors")
    return 0


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from medsr import __version__

    parser = argparse.ArgumentParser(prog="medsr", description="Super-resolution for medical images.")
    parser.add_argument("--version", action="version", version=f"medsr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale image files or folders")
    up.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    up.add_argument("-o", "--output", type=Path, required=True, help="output folder, or file for one input")
    up.add_argument("--outscale", type=float, default=None, help="final scale (default: the model's, 4)")
    up.add_argument("--model", default=DEFAULT_MODEL,
                    help="auto (default: cxr for gray images, retina for colour), a known name such as "
                         "realesrgan-x4plus, or a checkpoint path (RRDBNet; other architectures with medsr[zoo])")
    up.add_argument("--fidelity", type=float, default=None, metavar="F",
                    help="medical models: 0 (sharp GAN model) .. 1 (faithful fidelity model), blending their "
                         "weights (default for --model auto: see the README)")
    up.add_argument("--detail-map", action="store_true",
                    help="also write OUT.detail.png (detail added beyond Lanczos) and OUT.consistency.png "
                         "(output downscaled minus input) beside each output, and print their scores")
    up.add_argument("--shard", default=None, metavar="K/N|auto",
                    help="upscale only share K (0-based) of N of the files; auto: this Slurm array task's "
                         "share (default: torchrun's rank under torchrun, else all)")
    up.add_argument("--tile", type=int, default=None, help="LR tile side in pixels; 0 = no tiling (default: auto)")
    up.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    up.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="network precision (default: auto = bf16 on a CPU with native bf16, else fp32 on CPU; "
                         "bf16 or fp16 on CUDA)")
    up.add_argument("--ext", default=None, help="output file type, e.g. png or tif (default: as input)")
    up.add_argument("--overwrite", action="store_true", help="replace existing output files")
    up.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger inputs")
    up.add_argument("--range", default="auto", metavar="auto|full|LO,HI", help=RANGE_HELP)
    up.add_argument("--window", default=None, metavar="C,W|voi",
                    help="DICOM: the window (modality units) the network's range maps to, or the file's own "
                         "(voi); values outside it are kept (default: the image's own min..max)")
    up.add_argument("--axis", type=int, default=None, choices=[0, 1, 2],
                    help="NIfTI volumes: the slice axis (0, 1, 2 = i, j, k); default: the one with the largest "
                         "voxel spacing (an isotropic volume needs the choice)")
    up.add_argument("--consistency", default="on", choices=["on", "off"],
                    help="on (default): correct the output so that it averages back to the input and stays in its "
                         "range; off: the raw network (still measured)")
    up.add_argument("--allow-inconsistent", action="store_true",
                    help="write outputs that do not average back to their inputs within the tolerance (see the "
                         "README), instead of refusing them")
    up.set_defaults(run=run_upscale)

    info = sub.add_parser("info", help="show what medsr sees in image files (size, bits, DICOM details)")
    info.add_argument("files", nargs="+", type=Path, metavar="FILE", help="image files")
    info.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                      help=f"refuse larger images (default: {DEFAULT_MAX_PIXELS:,})")
    info.add_argument("--range", default="auto", help=RANGE_HELP)
    info.set_defaults(run=run_info)

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

    ev = sub.add_parser("evaluate", help="compare models on a protocol: metrics, figures, HTML report")
    ev.add_argument("data", nargs="+", type=Path, metavar="FOLDER",
                    help="image folders (plain, or DRIVE/STARE/CHASE_DB1 layouts with vessel annotations)")
    ev.add_argument("--protocol", required=True, choices=["retina-x2", "cxr-x4", "volume-x2"],
                    help="retina-x2: GT 512, x2; cxr-x4: GT 1024, x4 (docs/METRICS.md)")
    ev.add_argument("--baselines", default="bicubic,lanczos,realesrgan-x4plus",
                    help="comma-separated reference methods (default: bicubic,lanczos,realesrgan-x4plus)")
    ev.add_argument("--model", action="append", default=[], metavar="NAME|PATH",
                    help="a model to compare: a known name, NAME@F (a fidelity), LABEL=MODEL, or a checkpoint "
                         "(RRDBNet; other architectures with medsr[zoo]); repeatable")
    ev.add_argument("--blur-sigma", type=float, default=None, help="LR blur sigma in LR pixels (default 1.0)")
    ev.add_argument("--reference", default="realesrgan-x4plus",
                    help="the model the others are compared with, image by image (default: realesrgan-x4plus "
                         "when evaluated, else bicubic)")
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
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ev.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="network precision (default: auto, as for upscale)")
    ev.add_argument("-o", "--output", type=Path, required=True, help="report folder")
    ev.add_argument("--overwrite", action="store_true", help="write into an existing report folder")
    ev.set_defaults(run=run_evaluate)

    wt = sub.add_parser("weights", help="list, fetch or inspect model weights")
    wsub = wt.add_subparsers(dest="action", required=True, help="list, fetch or info")
    wsub.add_parser("list", help="known models and where they are")
    fetch = wsub.add_parser("fetch", help="download or convert a known model into the cache")
    fetch.add_argument("model", help="a known model name")
    winfo = wsub.add_parser("info", help="describe a known model or checkpoint file")
    winfo.add_argument("model", help="a known model name or a checkpoint path")
    wt.set_defaults(run=run_weights)

    vw = sub.add_parser("view", help="look at images and their upscaled versions in the browser (local web app)")
    vw.add_argument("paths", nargs="+", help="folders or files, one layer each: inputs, outputs, references; "
                                             "folders' files are matched by name; an evaluate report folder")
    _serving_options(vw)
    vw.add_argument("--device", default="cpu", help="where the fidelity dial runs the model (default: cpu)")
    vw.set_defaults(run=run_view)

    st = sub.add_parser("study", help="a blinded reader study: build it, serve it, read its results")
    ssub = st.add_subparsers(dest="action", required=True, help="build, serve or results")
    sb = ssub.add_parser("build", help="questions from folders of outputs, randomised with a recorded seed")
    sb.add_argument("--method", action="append", default=[], metavar="NAME=FOLDER",
                    help="a method and the folder of its outputs (two or more)")
    sb.add_argument("--report", type=Path, default=None,
                    help="an evaluate report written with --save-outputs: its models as the methods, its ground "
                         "truth as the reference")
    sb.add_argument("--reference", default=None, help="folder of reference images shown beside each question")
    sb.add_argument("--regions", type=int, default=2, help="regions per image (default 2)")
    sb.add_argument("--size", type=int, default=128, help="region side in pixels (default 128)")
    sb.add_argument("--seed", type=int, default=0, help="seed of the randomisation (recorded in the study)")
    sb.add_argument("--question", choices=("reference", "structure"), default="reference",
                    help="closer to the reference, or fine structure more faithfully")
    sb.add_argument("--allow-changes", action="store_true", help="readers may change an answer already given")
    sb.add_argument("-o", "--output", type=Path, required=True, help="the study file to create (SQLite)")
    ss = ssub.add_parser("serve", help="serve a study to readers in the browser")
    ss.add_argument("study", type=Path)
    _serving_options(ss)
    sr = ssub.add_parser("results", help="preferences with 95%% intervals, per reader and pooled, and agreement")
    sr.add_argument("study", type=Path)
    sr.add_argument("-o", "--output", type=Path, default=None, help="folder for results.json and results.html")
    st.set_defaults(run=run_study)
    return parser


def _serving_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface (default 127.0.0.1, this machine only; any other needs the printed token)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port}: 1 to 65535")


def run_view(args: argparse.Namespace) -> int:
    from medsr import view, web

    _check_port(args.port)
    collection = view.open_collection(args.paths)
    print(f"{len(collection.items)} image(s) in {len(collection.layers)} layer(s): "
          + ", ".join(layer.name for layer in collection.layers))
    token = web.token_for(args.host)
    web.serve(web.viewer_app(collection, token=token, device=args.device), host=args.host, port=args.port,
              token=token, open_browser=not args.no_browser, announce=print)
    return 0


def run_study(args: argparse.Namespace) -> int:
    from medsr import study, web

    if args.action == "build":
        methods, reference = {}, args.reference
        if args.report:
            methods, found = study.report_methods(args.report)
            reference = reference or found
        for entry in args.method:
            name, eq, folder = entry.partition("=")
            if not eq or not name or not folder:
                raise ValueError(f"--method {entry!r}: give NAME=FOLDER")
            if name in methods:
                raise ValueError(f"--method {name}: given twice")
            methods[name] = folder
        count = study.build(methods, args.output, reference=reference, regions=args.regions, size=args.size,
                            seed=args.seed, question=args.question, allow_changes=args.allow_changes)
        print(f"wrote {args.output}: {count} questions (seed {args.seed})")
        return 0
    if args.action == "serve":
        _check_port(args.port)
        token = web.token_for(args.host)
        web.serve(web.study_app(args.study, token=token), host=args.host, port=args.port, token=token,
                  open_browser=not args.no_browser, announce=print)
        return 0
    found = study.results(args.study)
    print(f"{found['answers']} answers to {found['questions']} questions by {len(found['readers'])} reader(s)")
    for method, v in found["pooled"].items():
        low, high = v["ci95_readers_images"]
        drawn = "n/a with one image" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"
        print(f"  {method}: preferred {v['preferred']} of {v['shown']}, {v['share']:.2f}, 95% interval "
              f"{drawn} with readers and images drawn again "
              f"(Wilson, answers as independent: [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}])")
    for a in found["agreement"]:
        print(f"  {' & '.join(a['readers'])}: {a['questions']} common questions, same choice {a['agreement']:.2f}, "
              f"kappa {a['kappa']:.2f}")
    if args.output:
        print(f"wrote {study.write_results(found, args.output)}")
    return 0


def _show_library_logs() -> None:
    """The library logs through ``logging``; the command line shows its INFO lines on stdout."""
    logger = logging.getLogger("medsr")
    for handler in [h for h in logger.handlers if getattr(h, "medsr_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.medsr_cli = True
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: temporary files are removed on the way out


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 all done, 1 some inputs failed, 2 a usage or set-up error, 130 interrupted."""
    args = build_parser().parse_args(argv)
    args.command_line = "medsr " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    _show_library_logs()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return args.run(args)
    except ValueError as exc:  # invalid option values found after parsing
        _error(str(exc))
        return 2
    except OSError as exc:  # the disk or the file system, outside any one input
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    finally:
        leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
