"""The command line: `medsr upscale` and `medsr info`."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from medsr.cli.common import Progress, add_threads_option, ranks_and_device
from medsr.cli.common import error as _error

RANGE_HELP = ("stored values that mean black and white, for non-DICOM files: auto (what the file says, else the "
              "smallest of 8/10/12/14/16 bits that holds the data), full (the file type's range) or LO,HI "
              "(default: auto)")


def run_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medsr.core.consistency import Consistency
    from medsr.core.image import ReadOptions
    from medsr.engine import batch
    from medsr.engine.devices import fit_threads
    from medsr.engine.infer import pick_precision
    from medsr.engine.upscale import check_outscale
    from medsr.formats import dicom
    from medsr.formats.io import is_nifti
    from medsr.models import weights

    ext = None if args.ext is None else "." + args.ext.lower().lstrip(".")
    fit_threads(args.threads)
    if not args.through_plane and (args.spacing is not None or args.slice_thickness is not None):
        raise ValueError("--spacing and --slice-thickness apply to --through-plane")
    if args.tile is not None and args.tile < 0:
        raise ValueError(f"--tile {args.tile}: must be 0 (no tiling) or a positive size")
    if args.outscale is not None:
        check_outscale(args.outscale, consistency=args.consistency == "on")
    options = ReadOptions(max_pixels=args.max_pixels, window=dicom.parse_window(args.window),
                          value_range=parse_range(args.range))
    index, count = (batch.shard_from_environment(slurm=args.shard == "auto") if args.shard in (None, "auto")
                    else parse_shard(args.shard))
    plan = batch.shard(batch.plan_outputs(args.inputs, args.output, ext=ext), index, count)
    if args.axis is None and not args.through_plane:
        _check_slice_axes([source for source, _ in plan.pairs if is_nifti(source)])
    ranks, device = ranks_and_device(args.device)
    pick_precision(args.precision, device)  # an impossible precision is refused before any model loads
    shown = Progress()

    def progress(source: Path, done: int, total: int) -> None:  # a volume counts its slices, an image its tiles
        shown(source, source.name, "slice" if is_nifti(source) else "tile", done, total)

    results = batch.upscale_files(plan, model=args.model, outscale=args.outscale, tile=args.tile, device=device,
                                  precision=args.precision, options=options, overwrite=args.overwrite,
                                  progress=progress, fidelity=args.fidelity, maps=args.detail_map,
                                  consistency=args.consistency == "on", allow_inconsistent=args.allow_inconsistent,
                                  axis=args.axis, through_plane=args.through_plane, spacing=args.spacing,
                                  slice_thickness=args.slice_thickness)
    used: Counter[str] = Counter()  # "model x4 fp32": files
    paths: Counter[str] = Counter()  # how values and channels were taken, and why each model, for the summary
    scores: list[str] = []
    kept: list[Consistency] = []
    failed, start = 0, time.perf_counter()
    try:
        for result in tqdm(results, total=len(plan), desc="images", unit="img", disable=len(plan) < 2 or None):
            shown.close()
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


def _check_slice_axes(volumes: list[Path]) -> None:
    """An isotropic volume has no slice axis to take: a usage error naming --axis, before any work
    (from the headers alone; a file that cannot be read is left to its own error)."""
    import nibabel

    from medsr.formats.volume import largest_spacing_axis

    for path in volumes:
        try:
            header = nibabel.load(path).header
            assert isinstance(header, nibabel.Nifti1Header)  # NIfTI-1 and -2 (others fail on reading)
            sizes = tuple(float(z) for z in header.get_zooms()[:3])
            unit = header.get_xyzt_units()[0]
        except Exception:  # nibabel raises many types for a damaged file: upscaling it will name the problem
            continue
        if len(sizes) == 3 and largest_spacing_axis(sizes) is None:
            shown = " x ".join(f"{s:g}" for s in sizes) + (f" {unit}" if unit and unit != "unknown" else
                                                          " (units not stated)")
            raise ValueError(f"{path}: voxel spacing {shown} is isotropic: there is no slice axis to take; give "
                             "--axis 0, 1 or 2 (i, j or k)")


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N): this job's share of the files, K from 0 to N - 1."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: give K/N, e.g. 0/4 for the first of four shares") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: K must be within 0..N-1")
    return index, count


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


def parse_range(text: str) -> str | tuple[float, float]:
    """``auto``, ``full`` or ``LO,HI`` from the command line -> ReadOptions.value_range."""
    from medsr.core.image import check_value_range

    if text in ("auto", "full"):
        return text
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--range {text!r}: give auto, full or LO,HI (e.g. 0,4095)") from None
    check_value_range((low, high))
    return low, high


def run_info(args: argparse.Namespace) -> int:
    from medsr.core.image import ReadOptions
    from medsr.engine import batch
    from medsr.formats import dicom, volume
    from medsr.formats.io import ImageError, is_nifti, read_frames, reader_for

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



# ``medsr.engine.upscale.DEFAULT_MODEL``, written here so that building the parser imports no PyTorch
# (tests/test_startup.py holds the two equal)
DEFAULT_MODEL = "auto"


def add_commands(sub: argparse._SubParsersAction) -> None:
    from medsr.core.image import DEFAULT_MAX_PIXELS

    up = sub.add_parser("upscale", help="upscale image files or folders")
    up.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                    help="image files (PNG, JPEG, TIFF, PGM/PPM, DICOM), NIfTI volumes (.nii, .nii.gz) or folders")
    up.add_argument("-o", "--output", type=Path, required=True, help="output folder, or file for one input")
    up.add_argument("--outscale", type=float, default=None, help="final scale (default: the model's own)")
    up.add_argument("--model", default=DEFAULT_MODEL,
                    help="auto (default: for each kind of image -- chest X-ray, fundus, CT, MR -- the model that "
                         "beats lanczos-projected on validation, else lanczos-projected itself; the summary says "
                         "which and why), a known name such as realesrgan-x4plus or lanczos-projected, or a "
                         "checkpoint path (RRDBNet, SRVGGNetCompact; other architectures with medsr[zoo])")
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
    add_threads_option(up)
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
    up.add_argument("--through-plane", action="store_true",
                    help="NIfTI volumes: make the slices thinner instead of upscaling in-plane: the slice axis "
                         "resampled to --spacing (default: the in-plane spacing, rounded to a whole factor) or by "
                         "--outscale; each input slice stays the mean of the output slices it covers")
    up.add_argument("--spacing", type=float, default=None, metavar="MM",
                    help="--through-plane: the slice spacing to reach, in mm (default: the in-plane spacing)")
    up.add_argument("--slice-thickness", type=float, default=None, metavar="MM",
                    help="--through-plane: the input's slice thickness in mm, checked against its spacing (slices "
                         "with gaps are not supported yet)")
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
