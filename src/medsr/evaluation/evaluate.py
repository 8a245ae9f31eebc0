"""`medsr evaluate`: the paper's two protocols, several models in one run, honest metrics.

For each image: ground truth (GT) = Lanczos resize to the protocol's size; LR = bicubic
downscale by the scale, then a Gaussian blur (the paper does not give its kernel: ours is an
option, default sigma 1.0 LR pixel, 7x7); every model super-resolves LR back to the GT size (networks' outputs projected
onto the outputs that average back to LR, as ``medsr.upscale`` does, unless asked otherwise); the
metrics of docs/METRICS.md compare each result with GT in the source's own integer range.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from medsr.core import metrics
from medsr.core.consistency import average_back, enforce
from medsr.core.image import Image, ImageError, OutputError, quantize
from medsr.core.kernels import gaussian_blur
from medsr.core.resize import resize_bicubic, resize_lanczos
from medsr.engine.upscale import upscale
from medsr.formats.io import image_files, is_nifti, read_image, reader_for
from medsr.formats.volume import read_volume, reading_axis, slice_axis
from medsr.models.interpolation import INTERPOLATIONS, RESIZERS
from medsr.models.weights import WeightsError, load_model


@dataclass(frozen=True, kw_only=True)
class Protocol:
    name: str
    gt_size: int  # GT is resized to gt_size x gt_size (Lanczos)
    scale: int  # LR = GT / scale (bicubic), and models super-resolve x scale
    blur_sigma: float = 1.0  # Gaussian blur of LR, in LR pixels (0: none)
    blur_size: int = 7
    vessels: bool = False  # fundus vessel fidelity metrics
    anatomy: str | None = None  # "fundus" or "chest": PSNR and SSIM inside that anatomy mask too
    volume: bool = False  # slices of volumes: GT = the slice, LR = its s x s box mean (see evaluate_slice)
    # 2D protocols: "paper" (bicubic down, then the Gaussian blur) or "box" (the s x s block mean, the
    # values contract's own operator: a detector of s times the pitch; no blur)
    degradation: str = "paper"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.blur_sigma) and self.blur_sigma >= 0):
            raise ValueError(f"blur sigma {self.blur_sigma}: must be a finite number >= 0 (0: no blur)")
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"degradation {self.degradation!r}: choose {' or '.join(DEGRADATIONS)}")


DEGRADATIONS = ("paper", "box")


PROTOCOLS = {
    "retina-x2": Protocol(name="retina-x2", gt_size=512, scale=2, vessels=True, anatomy="fundus"),
    "cxr-x4": Protocol(name="cxr-x4", gt_size=1024, scale=4, anatomy="chest"),
    "volume-x2": Protocol(name="volume-x2", gt_size=0, scale=2, blur_sigma=0, volume=True),
}
VOLUME_PERCENTILES = (0.5, 99.5)  # volume-x2: PSNR and SSIM over this range of the volume's values


@dataclass(frozen=True, kw_only=True)
class Sample:
    name: str
    image: Path
    annotation: Path | None = None  # manual vessel map
    slice: int | None = None  # volume-x2: the slice of the volume across ``axis``
    axis: int | None = None


def find_slices(folder: str | Path, *, per_volume: int = 8, axis: int | None = None,
                on_error: Callable[[str], None] | None = None) -> list[Sample]:
    """volume-x2: ``per_volume`` slices, evenly spaced, of each NIfTI volume in ``folder`` (or the
    file itself), across its slice axis (the largest spacing; isotropic volumes: ``axis``, else k),
    leaving out slices that hold a single value (background). A volume that cannot be read is
    reported through ``on_error`` and left out (raised without one)."""
    folder = Path(folder)
    paths = [folder] if folder.is_file() else image_files(folder, volumes=True)
    samples, blank = [], []
    for path in (p for p in paths if is_nifti(p)):
        try:
            volume = read_volume(path)
        except ImageError as exc:
            if on_error is None:
                raise
            on_error(str(exc))
            continue
        chosen = reading_axis(volume.spacing) if axis is None else slice_axis(volume, axis)
        data = np.moveaxis(volume.data, chosen, 2)
        useful = [k for k in range(data.shape[2]) if np.ptp(data[:, :, k]) > 0]
        if not useful:
            blank.append(path.name)
            continue
        picked = [useful[int(i)] for i in np.linspace(0, len(useful) - 1, min(per_volume, len(useful)))]
        stem = path.name.removesuffix(".gz").removesuffix(".nii")
        samples += [Sample(name=f"{stem}-{'ijk'[chosen]}{k:03d}", image=path, slice=k, axis=chosen) for k in picked]
    if not samples:
        said = f" ({', '.join(blank)}: every slice holds a single value)" if blank else ""
        raise ValueError(f"{folder}: no NIfTI volumes (.nii, .nii.gz) with content for the volume protocol{said}")
    return samples


def _annotated(folder: Path, images: str, labels: str, label_name: Callable[[Path], str]) -> list[Sample] | None:
    image_dir, label_dir = folder / images, folder / labels
    if not (image_dir.is_dir() and label_dir.is_dir()):
        return None
    samples = []
    for path in sorted(p for p in image_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        label = label_dir / label_name(path)
        samples.append(Sample(name=path.stem, image=path, annotation=label if label.exists() else None))
    return samples


def find_samples(folder: str | Path) -> list[Sample]:
    """Images of a folder, with vessel annotations for the DRIVE, STARE and CHASE_DB1 layouts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    layouts = (
        ("images", "1st_manual", lambda p: f"{p.stem.split('_')[0]}_manual1.gif"),  # DRIVE/test, DRIVE/training
        ("images", "labels-ah", lambda p: f"{p.stem}.ah.png"),  # STARE (shared copy)
        ("images", "manual", lambda p: f"{p.stem}_1stHO.png"),  # CHASE_DB1
    )
    for images, labels, name in layouts:
        found = _annotated(folder, images, labels, name)
        if found is not None:
            return found
    return [Sample(name=p.stem, image=p) for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and (reader_for(p) or p.suffix.lower() == ".gif")]


def read_any(path: Path) -> Image:
    """medsr's reader, plus GIF/other Pillow formats (DRIVE ships TIFF images and GIF masks)."""
    if reader_for(path):
        return read_image(path)
    try:
        with PILImage.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise ImageError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from None
    return Image(pixels=np.moveaxis(array, 2, 0).astype(np.float32) / 255, max_value=255, source=str(path))


def read_annotation(path: Path, size: int) -> np.ndarray:
    with PILImage.open(path) as im:
        mask = im.convert("L").resize((size, size), PILImage.Resampling.NEAREST)
    return np.asarray(mask) > 127


# ---------------------------------------------------------------------------------------------
# The protocol


FITS = ("resize", "crop")


def make_pair(image: Image, protocol: Protocol, fit: str = "resize") -> tuple[np.ndarray, np.ndarray]:
    """(lr, gt) float32 (C, h, w) and (C, H, W) arrays in [0, 1].

    The ground truth is never upsampled: an image smaller than the protocol's size is refused, as
    is a constant one. ``fit`` brings other shapes to the square: "resize" (the paper, for DRIVE)
    or "crop" (the centre square, then resize).
    """
    height, width = image.size
    source = image.source
    if min(height, width) < protocol.gt_size:
        raise ImageError(f"{source}: {width}x{height} is smaller than the protocol's {protocol.gt_size}x"
                         f"{protocol.gt_size} ground truth; skipped (upsampling it would make a meaningless score)")
    if np.ptp(image.pixels) == 0:
        raise ImageError(f"{source}: a constant image; skipped (PSNR would be infinite)")
    pixels = image.pixels
    if fit == "crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        pixels = pixels[:, top : top + side, left : left + side]
    elif fit != "resize":
        raise ValueError(f"fit {fit!r}: choose {' or '.join(FITS)}")
    gt = resize_lanczos(pixels, protocol.gt_size, protocol.gt_size)
    side = protocol.gt_size // protocol.scale
    if protocol.degradation == "box":
        return average_back(gt, (side, side)).astype(np.float32), gt
    lr = resize_bicubic(gt, side, side)
    if protocol.blur_sigma > 0:
        lr = gaussian_blur(torch.from_numpy(lr)[None], protocol.blur_size, protocol.blur_sigma)[0].numpy()
    return np.clip(lr, 0, 1), gt


@dataclass
class Model:
    """A named way to go from LR to GT size."""

    name: str
    run: Callable[[np.ndarray, tuple[int, int]], np.ndarray]  # (lr, (height, width) of GT) -> output
    source: str = "interpolation"  # the weights' file(s) and SHA-256, for the report's provenance
    network: bool = False  # a network's raw output, to be projected (``Options.consistency``)


def parse_model_entry(entry: str) -> tuple[str, float | None]:
    """``retina@0.5`` -> ("retina", 0.5): a medical model at a fidelity; anything else as it is."""
    name, at, fidelity = entry.rpartition("@")
    if not at or Path(entry).exists():  # a checkpoint whose path holds an @
        return entry, None
    try:
        return name, float(fidelity)
    except ValueError:
        raise ValueError(f"model {entry!r}: after @ give a fidelity from 0 to 1, e.g. retina@0.5") from None


def build_models(names: list[str], *, tile: int | None, device: str, precision: str = "auto") -> list[Model]:
    """Baselines and models by entry: a name, ``NAME@F`` (a fidelity), a path, or ``LABEL=ENTRY``.
    Labels are unique: two checkpoints of one file name are told apart by their paths."""
    if not names:
        raise ValueError("no methods to evaluate: give baselines or models")
    labelled: list[tuple[str, str]] = []  # (label or "", entry)
    for entry in names:
        label, _, rest = entry.partition("=") if "=" in entry and not Path(entry).exists() else ("", "", entry)
        labelled.append((label, rest))
    stems = [Path(entry).name for _, entry in labelled]
    models = []
    for (label, name), stem in zip(labelled, stems, strict=True):
        model = _build_model(name, tile=tile, device=device, precision=precision)
        if label:
            model.name = label
        elif stems.count(stem) > 1 and Path(name).is_file():
            model.name = name  # the path: file names collide
        models.append(model)
    taken = [m.name for m in models]
    duplicates = sorted({n for n in taken if taken.count(n) > 1})
    if duplicates:
        raise ValueError(f"models {', '.join(duplicates)} appear twice; label them as LABEL=MODEL")
    return models


def _build_model(name: str, *, tile: int | None, device: str, precision: str) -> Model:
    if name == "bicubic":
        return Model(name, lambda lr, size: resize_bicubic(lr, *size))
    if name == "lanczos":
        return Model(name, lambda lr, size: resize_lanczos(lr, *size))
    if name in INTERPOLATIONS:  # the interpolation, then the projection every model's output gets
        resize = RESIZERS[INTERPOLATIONS[name]]
        return Model(name, lambda lr, size: enforce(resize(lr, *size), lr))
    entry, fidelity = parse_model_entry(name)
    try:
        model = load_model(entry, fidelity=fidelity)
    except WeightsError as exc:  # a name or file given as an argument: a usage error
        raise ValueError(str(exc)) from None

    def run(lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:  # the raw network: evaluate projects it (or not)
        out = upscale(Image(pixels=lr), model=model, outscale=size[0] / lr.shape[1], tile=tile, device=device,
                      precision=precision, consistency=False, allow_inconsistent=True)
        assert isinstance(out, Image)  # an Image in gives an Image out
        return out.pixels

    source = "; ".join(f"{path} (SHA-256 {digest})" for path, digest in model.sources)
    # "retina@0.5" keeps its label (the report plots the dial from it); otherwise the known name,
    # or the file name of a checkpoint
    return Model(name if fidelity is not None else model.name, run, source=source, network=True)


# ---------------------------------------------------------------------------------------------
# Metrics of one image


@dataclass
class Options:
    protocol: Protocol
    fit: str = "resize"
    ssim_convention: str = "realesrgan"
    lpips: Callable[[np.ndarray, np.ndarray], float] | None = None  # when LPIPS weights are present
    # networks' outputs: "on" projected as ``medsr.upscale`` does, "off" raw, "both" (``NAME`` and ``NAME raw``)
    consistency: str = "on"

    def __post_init__(self) -> None:
        if self.consistency not in CONSISTENCY_CHOICES:
            raise ValueError(f"consistency {self.consistency!r}: choose {', '.join(CONSISTENCY_CHOICES)}")


CONSISTENCY_CHOICES = ("on", "off", "both")


def variants(model: Model, consistency: str) -> list[tuple[str, bool]]:
    """(row name, projected) for each output of ``model`` to score."""
    if not model.network:
        return [(model.name, False)]
    return {"on": [(model.name, True)], "off": [(model.name, False)],
            "both": [(model.name, True), (f"{model.name} raw", False)]}[consistency]


def _gray(pixels: np.ndarray, vessels: bool) -> np.ndarray:
    """The channel the structure metrics use: green for fundus (vessel contrast), else luminance."""
    if pixels.shape[0] == 3:
        return pixels[1] if vessels else pixels.mean(0)
    return pixels[0]


def anatomy_mask(gt: np.ndarray, protocol: Protocol) -> np.ndarray | None:
    """Where the anatomy is (docs/METRICS.md): the fundus disc 8 pixels in from its rim, or the chest
    X-ray without its border band; None for protocols without one."""
    if protocol.anatomy == "fundus":
        return metrics.field_of_view(gt)
    if protocol.anatomy == "chest":
        return metrics.chest_region(gt.shape[1:])
    return None


@dataclass(frozen=True)
class VesselTruth:
    """What the vessel metrics of an image's outputs compare against, made once per image."""

    vessels: np.ndarray  # the ground truth's vesselness
    fov: np.ndarray
    annotation: np.ndarray | None = None
    thin: np.ndarray | None = None  # metrics.thin_vessel_regions of the annotation
    considered: np.ndarray | None = None

    @classmethod
    def of(cls, gt: np.ndarray, fov: np.ndarray, annotation: np.ndarray | None) -> VesselTruth:
        vessels = metrics.vesselness(_gray(gt, True))
        if annotation is None:
            return cls(vessels, fov)
        return cls(vessels, fov, annotation, *metrics.thin_vessel_regions(annotation, fov))

    def scores(self, vessels: np.ndarray) -> dict[str, float]:
        """AUC of a vesselness map against the annotation, all vessels and the thin ones."""
        assert self.annotation is not None and self.thin is not None and self.considered is not None  # see ``of``
        return {"vessel_auc": metrics.auc(vessels[self.fov], self.annotation[self.fov]),
                "thin_vessel_auc": metrics.auc(vessels[self.considered], self.thin[self.considered])}


def image_metrics(sr: np.ndarray, gt: np.ndarray, max_value: float, options: Options, inside: np.ndarray | None,
                  truth: VesselTruth | None) -> dict[str, float]:
    """The metrics of one output; ``inside``: the anatomy mask (``anatomy_mask``), None for none."""
    sr_q, gt_q = quantize(sr, max_value).astype(np.float64), quantize(gt, max_value).astype(np.float64)
    convention = options.ssim_convention
    row = {"psnr": metrics.psnr(sr_q, gt_q, data_range=max_value),
           "ssim": metrics.ssim(sr_q, gt_q, data_range=max_value, convention=convention)}
    if inside is not None and inside.any():
        row["psnr_inside"] = metrics.psnr(sr_q, gt_q, data_range=max_value, mask=inside)
        row["ssim_inside"] = metrics.ssim(sr_q, gt_q, data_range=max_value, convention=convention, mask=inside)
    bands = metrics.band_detail(_gray(sr, False), _gray(gt, False))
    row["hf_kept"], row["hf_invented"] = bands[-1]["kept"], bands[-1]["invented"]
    row["mf_kept"], row["mf_invented"] = bands[-2]["kept"], bands[-2]["invented"]
    if truth is not None:
        sr_vessels = metrics.vesselness(_gray(sr, True))
        row["vessel_agreement"] = metrics.vessel_agreement(sr_vessels, truth.vessels, truth.fov)
        if truth.annotation is not None:
            row |= truth.scores(sr_vessels)
    row["lpips"] = options.lpips(sr, gt) if options.lpips else float("nan")
    return row


@dataclass
class Result:
    sample: Sample
    lr: np.ndarray
    gt: np.ndarray
    outputs: dict[str, np.ndarray]
    rows: dict[str, dict[str, float]]  # model name -> metrics (plus "ground truth" for vessel AUC)


def without_images(result: Result) -> Result:
    """The result with its metrics only (what a figure needs is left out), to send between processes."""
    empty = np.zeros((0, 0, 0), np.float32)
    return replace(result, lr=empty, gt=empty, outputs={})


def evaluate_slice(sample: Sample, models: list[Model], options: Options,
                   on_step: Callable[[str], None] | None = None) -> Result:
    """volume-x2: GT = one slice (in-plane, cropped to whole blocks), LR = its s x s box mean (the
    signal of a detector of s times the pixel pitch), both in [0, 1] over the volume's min..max
    (the mapping ``medsr.upscale`` uses for volumes). PSNR and SSIM over the volume's 0.5..99.5th
    percentile range (``VOLUME_PERCENTILES``), the mean absolute error in the volume's units."""
    values, (low, high), data_range = _volume_of(sample.image, sample.axis)
    plane = values[..., sample.slice] if values.ndim == 3 else values[..., sample.slice, 0]
    s = options.protocol.scale
    plane = plane[: plane.shape[0] // s * s, : plane.shape[1] // s * s]
    span = high - low if high > low else 1.0
    gt = ((plane - low) / span).astype(np.float32)[None]
    lr = average_back(gt, (gt.shape[1] // s, gt.shape[2] // s)).astype(np.float32)
    outputs, rows = {}, {}
    for model in models:
        if on_step:
            on_step(f"{sample.name}: {model.name}")
        out = np.clip(model.run(lr, gt.shape[1:]), 0, 1)
        for name, projected in variants(model, options.consistency):
            outputs[name] = enforce(out, lr) if projected else out
            sr_values, gt_values = outputs[name][0] * span + low, gt[0].astype(np.float64) * span + low
            rows[name] = {"psnr": metrics.psnr(sr_values, gt_values, data_range=data_range),
                          "ssim": metrics.ssim(sr_values, gt_values, data_range=data_range,
                                               convention=options.ssim_convention),
                          "mae": float(np.abs(sr_values - gt_values).mean())}
            bands = metrics.band_detail(outputs[name][0], gt[0])
            rows[name]["hf_kept"], rows[name]["hf_invented"] = bands[-1]["kept"], bands[-1]["invented"]
    return Result(sample=sample, lr=lr, gt=gt, outputs=outputs, rows=rows)


@functools.lru_cache(maxsize=1)  # the slices of one volume come one after another: read it once
def _volume_of(path: Path, axis: int) -> tuple[np.ndarray, tuple[float, float], float]:
    """A volume's values with ``axis`` moved last, their (min, max), and the span of its
    ``VOLUME_PERCENTILES`` (the metrics' data range; the full span for a volume of one value)."""
    values = np.moveaxis(read_volume(path).values, axis, 2)
    robust = np.percentile(values, VOLUME_PERCENTILES)
    low, high = float(values.min()), float(values.max())
    return values, (low, high), float(robust[1] - robust[0]) or (high - low) or 1.0


def evaluate_sample(sample: Sample, models: list[Model], options: Options,
                    on_step: Callable[[str], None] | None = None) -> Result:
    if options.protocol.volume:
        return evaluate_slice(sample, models, options, on_step)
    image = read_any(sample.image)
    lr, gt = make_pair(image, options.protocol, options.fit)
    inside = anatomy_mask(gt, options.protocol)  # once per image, for every model
    truth = None
    if options.protocol.vessels and gt.shape[0] == 3:
        fov = inside if options.protocol.anatomy == "fundus" and inside is not None else metrics.field_of_view(gt)
        annotation = None if sample.annotation is None else read_annotation(sample.annotation,
                                                                            options.protocol.gt_size)
        truth = VesselTruth.of(gt, fov, annotation)
    outputs, rows = {}, {}
    for model in models:
        if on_step:
            on_step(f"{sample.name}: {model.name}")
        out = np.clip(model.run(lr, (options.protocol.gt_size, options.protocol.gt_size)), 0, 1)
        for name, projected in variants(model, options.consistency):
            outputs[name] = enforce(out, lr) if projected else out
            rows[name] = image_metrics(outputs[name], gt, image.max_value, options, inside, truth)
    if truth is not None and truth.annotation is not None:
        rows["ground truth"] = truth.scores(truth.vessels)
    return Result(sample=sample, lr=lr, gt=gt, outputs=outputs, rows=rows)


def evaluate(samples: list[Sample], models: list[Model], options: Options,
             on_error: Callable[[str], None] = print, on_step: Callable[[str], None] | None = None
             ) -> Iterator[Result]:
    """Evaluate each sample; a file that cannot be read, or a model output that cannot be scored
    (non-finite, constant), is reported through ``on_error`` and the sample skipped. ``on_step``
    hears what runs now ("image: model"), for progress."""
    for sample in samples:
        try:
            yield evaluate_sample(sample, models, options, on_step)
        except ImageError as exc:
            on_error(str(exc))
        except OutputError as exc:  # raised on the LR made from the file: name the file
            on_error(f"{sample.image}: {exc}")


def per_image(results: list[Result]) -> dict[str, dict[str, list[float]]]:
    """``{model: {metric: [value per image]}}``, NaN where an image has no value, in image order."""
    models: dict[str, set[str]] = {m: set() for r in results for m in r.rows}
    for result in results:
        for model, row in result.rows.items():
            models[model] |= set(row)
    return {model: {metric: [r.rows.get(model, {}).get(metric, math.nan) for r in results] for metric in metrics}
            for model, metrics in models.items()}


def summarise(results: list[Result]) -> dict[str, dict[str, float]]:
    """Mean of each metric per model (NaN and infinite values left out of the mean, and counted)."""
    table: dict[str, dict[str, list[float]]] = {}
    for result in results:
        for model, row in result.rows.items():
            for key, value in row.items():
                table.setdefault(model, {}).setdefault(key, []).append(value)
    summary: dict[str, dict[str, float]] = {}
    for model, columns in table.items():
        summary[model] = {}
        for key, values in columns.items():
            finite = [v for v in values if math.isfinite(v)]
            summary[model][key] = float(np.mean(finite)) if finite else float("nan")
        summary[model]["images"] = max(len(v) for v in columns.values())
    return summary


ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet, which LPIPS builds on


def lpips_metric() -> tuple[Callable[[np.ndarray, np.ndarray], float] | None, str]:
    """LPIPS (AlexNet) when the ``lpips`` package and torchvision's AlexNet weights are present
    locally, so that nothing is downloaded; otherwise None and the reason."""
    try:
        import lpips
    except ImportError:
        return None, "unavailable: the lpips package is not installed"
    weights = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    if not weights.is_file():
        return None, f"unavailable: AlexNet weights {weights} are not present"
    model = lpips.LPIPS(net="alex", verbose=False).eval()

    def score(sr: np.ndarray, gt: np.ndarray) -> float:
        to_tensor = lambda a: torch.from_numpy(a).float().expand(3, -1, -1)[None] * 2 - 1  # noqa: E731
        with torch.no_grad():
            return float(model(to_tensor(sr), to_tensor(gt)))

    return score, "computed: LPIPS (AlexNet)"


def describe_protocol(protocol: Protocol, *, fit: str, slices: int) -> dict[str, str]:
    """The protocol in words, for the report's settings."""
    if protocol.volume:
        return {"ground truth": f"{slices} slices per volume, evenly spaced, across the slice axis (the largest "
                                "spacing; isotropic volumes: k unless an axis is given), cropped to whole blocks",
                "LR": f"the {protocol.scale}x{protocol.scale} box mean in-plane (a detector of {protocol.scale} "
                      "times the pitch)",
                "PSNR/SSIM": f"in the volume's units over its {VOLUME_PERCENTILES[0]:g}th..{VOLUME_PERCENTILES[1]:g}th "
                             "percentile range; MAE in its units"}
    return {"ground truth": f"Lanczos resize to {protocol.gt_size}x{protocol.gt_size}",
            "LR": (f"the {protocol.scale}x{protocol.scale} box mean (the values contract's operator), no blur"
                   if protocol.degradation == "box" else
                   f"bicubic x1/{protocol.scale}, then Gaussian blur sigma {protocol.blur_sigma} "
                   f"({protocol.blur_size}x{protocol.blur_size}) in LR pixels (the paper's degradation)"),
            "fit": {"resize": "non-square images resized to the square (as the paper did for DRIVE)",
                    "crop": "non-square images cropped to their centre square, then resized"}[fit],
            "PSNR/SSIM": "on the source's value range (8-bit: 255; 12-bit data: 4095; ...)"}


def with_degradation(protocol: Protocol, degradation: str) -> Protocol:
    """The 2D protocol with another LR operator; volume protocols always use the box mean."""
    if protocol.volume:
        return protocol
    return replace(protocol, degradation=degradation, blur_sigma=0.0 if degradation == "box" else protocol.blur_sigma)


def with_blur(protocol: Protocol, sigma: float | None) -> Protocol:
    return protocol if sigma is None else replace(protocol, blur_sigma=sigma)
