"""The batch job: plan outputs for files and folders, upscale each file (every frame of a stack),
write it checked, and report one result per file. The CLI, notebooks and cluster jobs share it.

    plan = medsr.plan_outputs(["cxr/"], "cxr_x2/")
    for result in medsr.upscale_files(plan, outscale=2):
        print(result.source, result.error or result.target)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsr.core.consistency import Consistency, content_range
from medsr.core.image import Image, ImageError, ReadOptions
from medsr.engine import infer
from medsr.engine.detail import detail_maps, heat_map
from medsr.engine.devices import pick_device
from medsr.engine.upscale import DEFAULT_MODEL, model_for, upscale, volume_model
from medsr.formats import dicom
from medsr.formats.io import WRITERS, check_writable, image_files, read_frames, reader_for, write_frames, write_image
from medsr.formats.volume import Volume, is_nifti, read_volume, write_volume
from medsr.models import weights
from medsr.models.model import SRModel, as_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What a batch will do: (source, target) pairs, and (path, problem) for inputs refused already."""

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs) + len(self.problems)


@dataclass(frozen=True)
class FileResult:
    """The outcome for one input file: ``error`` is None when ``target`` was written."""

    source: Path
    target: Path | None = None
    model: str | None = None
    scale: float | None = None  # the output's scale factor
    precision: str | None = None  # what the network ran in: fp32, bf16, fp16
    values: str | None = None  # how values and channels were taken (``describe_values``)
    frames: int = 0
    why: str | None = None  # why this model ("auto: DICOM Modality CR")
    consistency: Consistency | None = None  # how far the output averages back to the input (worst frame)
    detail: float | None = None  # with detail maps: RMS added detail, 8-bit levels (medsr.detail)
    consistency_rms: float | None = None  # with detail maps: RMS of Lanczos-downscaled output minus input
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def plan_outputs(inputs: Sequence[str | Path], output: str | Path, *, ext: str | None = None) -> Plan:
    """Pair each input image with its output path.

    A folder contributes its image files (recursively), mirrored under ``output``. ``output`` names
    a file only for a single input file and when it has an image suffix. ``ext`` (".png", ".tif",
    ...) sets the output type; the default keeps the input's.
    """
    items, output = [Path(p) for p in inputs], Path(output)
    if ext is not None and ext not in WRITERS:
        raise ValueError(f"ext {ext!r}: cannot write that type (known: {', '.join(WRITERS)})")
    problems: list[tuple[Path, str]] = []
    sources: list[tuple[Path, Path]] = []
    for item in items:
        if item.is_dir():
            unreadable: list[str] = []
            # an output folder inside the input folder holds earlier outputs, not inputs
            skip = output if _inside(output, item) else None
            found = [p for p in image_files(item, unreadable, volumes=True) if skip is None or not _inside(p, skip)]
            problems += [(item, message) for message in unreadable]
            if not found:
                problems.append((item, f"{item}: folder holds no image files"))
            sources += [(p, p.relative_to(item)) for p in found]
        elif item.exists():
            sources.append((item, Path(item.name)))
        else:
            problems.append((item, f"{item}: no such file or folder"))
    named = output.suffix.lower() in WRITERS or is_nifti(output)
    single_file = len(items) == 1 and not items[0].is_dir() and named
    if named and not single_file:  # the arguments, not a file: nothing to plan
        raise ValueError(f"{output}: an output file name needs exactly one input file (give a folder to write into)")
    unwritable = _unwritable(output.parent if single_file else output)
    if unwritable:  # found before any model runs, not after the first image
        return Plan([], problems + [(output, unwritable)])
    pairs: list[tuple[Path, Path]] = []
    taken: dict[Path, Path] = {}
    for source, relative in sources:
        target = output if single_file else output / relative
        if is_nifti(source) != is_nifti(target) and (single_file or ext):
            problems.append((source, f"{source}: a volume is written as NIfTI and an image as an image; "
                                     f"not as {target.name}"))
            continue
        if ext and not is_nifti(source):
            target = target.with_suffix(ext)
        elif target.suffix.lower() not in WRITERS and not is_nifti(target):  # a DICOM file named without suffix
            target = target.with_name(target.name + ".dcm")
        if target.resolve() == source.resolve():
            problems.append((source, f"{source}: output would replace the input; choose another output"))
        elif target in taken:
            problems.append((source, f"{source}: output {target} is also the output of {taken[target]}"))
        else:
            taken[target] = source
            pairs.append((source, target))
    return Plan(pairs, problems)


def shard(plan: Plan, index: int, count: int) -> Plan:
    """Share ``index`` of ``count`` (0-based): every count-th file from the index-th, so that shares
    of a sorted folder get similar mixes of sizes. The plan's problems go to share 0 alone."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    return Plan(plan.pairs[index::count], plan.problems if index == 0 else [])


def shard_from_environment(*, slurm: bool = False) -> tuple[int, int]:
    """(index, count) of this process: a torchrun rank; with ``slurm``, this task's position in a
    Slurm array (``--array=A-B[:STEP]``); else (0, 1). An array of listed ids cannot be placed."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if not slurm:
        return 0, 1
    try:
        task, first, count = (int(env[k]) for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN",
                                                      "SLURM_ARRAY_TASK_COUNT"))
    except (KeyError, ValueError):
        raise ValueError("shard auto: not a Slurm array task (SLURM_ARRAY_TASK_ID, _MIN, _COUNT unset)") from None
    step = int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
    index, rest = divmod(task - first, step)
    if rest or not 0 <= index < count:
        raise ValueError(f"shard auto: cannot place Slurm task {task} in an array of {count} from {first} by "
                         f"{step}; give shard K/N")
    return index, count


def _inside(path: Path, folder: Path) -> bool:
    """``path`` lies strictly below ``folder``."""
    return folder.resolve() in path.resolve().parents


def _unwritable(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (or in the folders that would be made for it)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{folder}: cannot write there ({existing} is a file, not a folder)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{folder}: cannot write there ({existing} is not writable)"
    return None


def dicom_outlook(path: Path) -> list[tuple[str, str]]:
    """What upscaling would do with a DICOM file: the stored values the network sees and the model
    "auto" takes; ImageError when it would refuse the file."""
    frames = read_frames(path)
    meta = frames[0].meta
    extremes = np.array(content_range([frame.pixels for frame in frames]))
    stored = sorted(meta["dicom_range"].to_stored(extremes, np.dtype(meta["dicom_dtype"]), meta["dicom_bits"]))
    name, fidelity, why = model_for(frames[0])
    model = f"{name}-fidelity" if fidelity == 1 else name if fidelity in (0, None) else f"{name}@{fidelity:g}"
    return [("stored values", f"{stored[0]:g}..{stored[1]:g} (the network sees this range)"),
            ("model (auto)", f"{model} ({why})")]


def describe_values(image: Image) -> str:
    """``gray, values 0..4095 (data: maximum 4000 fits 12 bits)``: what medsr took the pixels to be
    (DICOM: ``gray, DICOM: 12 bits stored, 0..4095``: its stored range, not the container's)."""
    if image.levels is not None:  # the format maps its own stored range (DICOM), which the reason names
        return f"{image.mode}, {image.range_reason}"
    return f"{image.mode}, values {image.min_value:g}..{image.max_value:g} ({image.range_reason})"


def upscale_files(
    plan: Plan,
    *,
    model: str | Path | SRModel | torch.nn.Module = DEFAULT_MODEL,
    outscale: float | None = None,
    tile: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    options: ReadOptions | None = None,
    overwrite: bool = False,
    progress: Callable[[Path, int, int], None] | None = None,
    fidelity: float | None = None,
    maps: bool = False,
    consistency: bool = True,
    allow_inconsistent: bool = False,
    axis: int | None = None,
    through_plane: bool = False,
    spacing: float | None = None,
    slice_thickness: float | None = None,
) -> Iterator[FileResult]:
    """Upscale every pair of ``plan``, yielding one ``FileResult`` per file (problems first).

    A file that cannot be read, upscaled or written gives a result with its ``error``; the batch
    goes on. Stacks (multi-page TIFF, multi-frame DICOM) are upscaled frame by frame and written
    back as one stack. Named models load once. ``progress(source, done, total)`` follows the tiles.
    ``fidelity`` blends the medical models (see ``medsr.load_model``). ``maps`` writes beside each
    output its detail and consistency maps (``a.png.detail.png``, ``a.png.consistency.png``; see
    ``medsr.detail``) and puts their scores in the result. ``consistency`` and
    ``allow_inconsistent`` are ``medsr.upscale``'s; a stack, and a DICOM series (the files of one
    SeriesInstanceUID in the plan), has one value range for all its frames, and an output beyond the
    tolerance is an error for its file, with nothing written. NIfTI volumes are upscaled in-plane
    across ``axis`` (default: the largest spacing; see ``medsr.volume``) and written as NIfTI; with
    ``through_plane`` their slices are made thinner instead (``spacing``, ``slice_thickness``: see
    ``medsr.upscale``), and other files are refused.

    Raises:
        WeightsError: the model cannot be loaded (the whole batch would fail).
    """
    options = options or ReadOptions()
    if fidelity is not None:
        weights.check_fidelity(fidelity)  # arguments before work
    for source, problem in plan.problems:
        yield FileResult(source=source, error=problem)
    loaded: dict[tuple[str | Path, float | None], SRModel] = {}
    series = series_ranges([source for source, _ in plan.pairs], options)  # whole series, also when resumed
    settings: dict[str, Any] = dict(outscale=outscale, tile=tile, device=device, precision=precision,
                                    consistency=consistency, allow_inconsistent=allow_inconsistent)
    for source, target in plan.pairs:
        if target.exists() and not overwrite:
            yield FileResult(source=source, error=f"{target}: already exists (kept; the overwrite option replaces it)")
            continue
        if through_plane and not is_nifti(source):
            yield FileResult(source=source, error=f"{source}: through-plane super-resolution takes NIfTI volumes "
                                                   "(DICOM series are not supported yet)")
            continue
        if is_nifti(source):
            if options.window is not None:
                yield FileResult(source=source, error=f"{source}: a window applies to DICOM files only")
                continue
            extra = dict(through_plane=True, spacing=spacing, slice_thickness=slice_thickness) if through_plane else {}
            yield _volume_file(source, target, model, fidelity, axis, overwrite, progress, settings | extra)
            continue
        try:
            if options.window is not None and reader_for(source) is not dicom.read_dicom:
                raise ImageError(f"{source}: a window applies to DICOM files only; use value_range for others")
            frames = read_frames(source, options)
            check_writable(target, frames)  # before the model runs, not after
            if isinstance(model, SRModel | torch.nn.Module):
                chosen, why = as_model(model), "as asked"
            else:
                name, name_fidelity, why = model_for(frames[0], model, fidelity)
                key = (name, name_fidelity)
                if key not in loaded:
                    loaded[key] = weights.load_model(name, fidelity=name_fidelity)
                chosen = loaded[key]
            stack_range = series.get(source) or content_range([frame.pixels for frame in frames])
            outputs: list[Image] = []
            for index, frame in enumerate(frames):
                def tiles(done: int, total: int, index: int = index, source: Path = source,
                          count: int = len(frames)) -> None:
                    if progress:
                        progress(source, index * total + done, count * total)
                out = upscale(frame, model=chosen, progress=tiles, stack_range=stack_range, **settings)
                assert isinstance(out, Image)  # an Image in gives an Image out
                outputs.append(out)
            write_frames(target, outputs, overwrite=overwrite)
            scores = _write_maps(target, frames, outputs, overwrite) if maps else (None, None)
        except weights.WeightsError:
            raise
        except (ImageError, ValueError, RuntimeError) as exc:
            yield _failed(source, target, exc)
            continue
        log.info("%s -> %s (%s)", source, target, chosen.name)
        ran_in = infer.precision_name(infer.pick_precision(precision, pick_device(device), chosen))
        yield FileResult(source=source, target=target, model=chosen.name, scale=outscale or chosen.scale,
                         precision=ran_in, values=describe_values(frames[0]), frames=len(frames), why=why,
                         consistency=Consistency.worst([out.consistency for out in outputs if out.consistency]),
                         detail=scores[0], consistency_rms=scores[1])


def _failed(source: Path, target: Path, exc: Exception) -> FileResult:
    """The result of a file that failed, its message naming the file."""
    message = str(exc) if str(source) in str(exc) or str(target) in str(exc) else f"{source}: {exc}"
    log.debug(message)  # the result carries it: the caller reports it once
    return FileResult(source=source, error=message)


def series_ranges(sources: list[Path], options: ReadOptions) -> dict[Path, tuple[float, float]]:
    """The one value range (in [0, 1] units) of each DICOM series that has several files among
    ``sources``, for each of its files: a series is one volume, and its slices must not each get
    their own mapping (brightness would jump from slice to slice). Files that cannot be read are
    left to fail on their own turn."""
    groups: dict[str, list[Path]] = {}
    for source in sources:
        if reader_for(source) is not dicom.read_dicom:
            continue
        uid = dicom.series_uid(source)
        if uid:
            groups.setdefault(uid, []).append(source)
    ranges = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        found = []
        for member in members:
            try:
                found.append(content_range([frame.pixels for frame in read_frames(member, options)]))
            except ImageError:
                continue
        if found:
            span = (min(low for low, _ in found), max(high for _, high in found))
            ranges.update(dict.fromkeys(members, span))
    return ranges


def _volume_file(source: Path, target: Path, model, fidelity: float | None, axis: int | None, overwrite: bool,
                 progress: Callable[[Path, int, int], None] | None, settings: dict[str, Any]) -> FileResult:
    """One NIfTI file: read, upscale slice by slice, write checked; the result or the error."""
    try:
        volume = read_volume(source)
        chosen, why = volume_model(model, fidelity, volume)
        out = upscale(volume, model=chosen, axis=axis, **settings,
                      progress=(lambda done, total: progress(source, done, total)) if progress else None)
        assert isinstance(out, Volume)  # a Volume in gives a Volume out
        write_volume(target, out, overwrite=overwrite)
    except weights.WeightsError:
        raise
    except (ImageError, ValueError, RuntimeError) as exc:
        return _failed(source, target, exc)
    ran_in = infer.precision_name(infer.pick_precision(settings["precision"], pick_device(settings["device"]),
                                                       chosen))
    scale = settings["outscale"] or chosen.scale
    if settings.get("through_plane"):  # the factor across the slices (in-plane is unchanged)
        scale = out.data.size / volume.data.size
    return FileResult(source=source, target=target, model=chosen.name, scale=scale,
                      precision=ran_in, why=why,
                      values=f"volume {volume.data.dtype} {volume.orientation}, values "
                             "{:g}..{:g} (the volume's min..max)".format(*volume.value_range),
                      frames=int(np.prod(volume.data.shape[2:])), consistency=out.consistency)


def _write_maps(target: Path, inputs: list[Image], outputs: list[Image], overwrite: bool) -> tuple[float, float]:
    """Write each frame's detail and consistency heat maps beside ``target``; mean scores."""
    details, consistencies = [], []
    for index, (lr, sr) in enumerate(zip(inputs, outputs, strict=True)):
        found = detail_maps(sr.pixels, lr.pixels)
        frame = f".frame{index + 1}" if len(inputs) > 1 else ""
        for kind, values, under in (("detail", found.detail, sr.pixels), ("consistency", found.consistency, lr.pixels)):
            path = target.with_name(f"{target.name}{frame}.{kind}.png")  # a.png.detail.png: no clash with a.tif
            write_image(path, Image.from_array(heat_map(values, under)), overwrite=overwrite)
        details.append(found.detail_score)
        consistencies.append(found.consistency_score)
    return float(np.mean(details)), float(np.mean(consistencies))
