"""bf16 on the CPU against fp32: fidelity on real images of each modality at 8 and 16 bits, and time.

For each input, the same model runs in fp32, in bf16 (the whole network cast, channels-last) and
in bf16 with the RRDBNet head (upsampling and output convolutions) kept in fp32, interleaved and
repeated, in one process. Differences against fp32 are in levels of 255 over the image's own value
span (what a display shows) and as PSNR over that span, for the raw network and for the projected
output that medsr writes (``medsr.consistency``). Times are wall seconds per image (median).

    python benchmarks/bench_bf16.py [--repeats 2] [--size 128]

Inputs (crops of --size, from ../shared/data and pydicom): HRF fundus (8-bit RGB), NIH chest X-ray
(8-bit, and the same as 12-bit), the shared thorax CT (12-bit, HU + 1024) and the VS-SEG MR DICOM
series (16-bit container, 12-bit values).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

import medsr
from medsr.engine import devices, infer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def inputs(size: int) -> list[tuple[str, np.ndarray, str]]:
    """(label, stored array, model) per input found."""
    found = []
    fundus = SHARED / "retina/HRF/images/01_h.jpg"
    if fundus.exists():
        with PILImage.open(fundus) as im:
            small = np.asarray(im.convert("RGB").resize((876, 584), PILImage.Resampling.LANCZOS))
        found.append(("fundus 8-bit RGB", small[200 : 200 + size, 300 : 300 + size].copy(), "retina-fidelity"))
    cxr = sorted((SHARED / "cxr/NIH-ChestXray14/val").glob("*.png"))
    if cxr:
        with PILImage.open(cxr[0]) as im:
            gray = np.asarray(im.convert("L"))[448 : 448 + size, 448 : 448 + size].copy()
        found.append(("chest X-ray 8-bit", gray, "cxr-fidelity"))
        found.append(("chest X-ray 12-bit", np.rint(gray * (4095 / 255)).astype(np.uint16), "cxr-fidelity"))
    ct = SHARED / "volumes/ct/thorax-BigBore_z040-099.nii.gz"
    if ct.exists():
        import nibabel

        hu = np.asarray(nibabel.load(ct).dataobj[:, :, 30], dtype=np.float64).T
        found.append(("CT 12-bit (HU + 1024)", np.clip(hu[150 : 150 + size, 200 : 200 + size] + 1024, 0, 4095)
                      .astype(np.uint16), "cxr-fidelity"))
    mr = sorted((SHARED / "volumes/mr/VS-SEG-001_dicom_slices053-068").glob("*"))
    if mr:
        import pydicom

        pixels = pydicom.dcmread(mr[len(mr) // 2]).pixel_array.astype(np.int64)
        top = (pixels.shape[0] - size) // 2
        crop = pixels[top : top + size, top : top + size]
        found.append(("MR 16-bit container (12-bit)", (crop - min(0, crop.min())).astype(np.uint16), "cxr-fidelity"))
    return found


VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16, fp32 head": ("bf16", True)}


def run(stored: np.ndarray, model: medsr.SRModel, variant: str, consistency: bool) -> tuple[np.ndarray, float]:
    precision, head_fp32 = VARIANTS[variant]
    infer.BF16_HEAD_IN_FP32 = head_fp32
    start = time.perf_counter()
    image = medsr.upscale(medsr.Image.from_array(stored), model=model, precision=precision, tile=0,
                          consistency=consistency, allow_inconsistent=True)
    return image.pixels.astype(np.float64), time.perf_counter() - start


def compare(out: np.ndarray, reference: np.ndarray, span: float) -> tuple[float, float, float]:
    """(max, mean |difference| in levels of 255 over the span, PSNR over the span)."""
    difference = np.abs(out - reference) / span * 255
    mse = np.mean(((out - reference) / span) ** 2)
    return float(difference.max()), float(difference.mean()), float(10 * np.log10(1 / mse)) if mse else float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if "Model name" in line), "?")
    extensions = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    print(f"CPU: {model_name}, {', '.join(extensions)}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"native bf16: {devices.cpu_has_native_bf16()}")
    print("\n| input | model | precision | raw: max / mean levels, PSNR | projected: max / mean levels, PSNR "
          "| s per image | x fp32 |")
    print("|---|---|---|---|---|---|---|")
    loaded: dict[str, medsr.SRModel] = {}
    for label, stored, name in inputs(args.size):
        model = loaded.setdefault(name, medsr.load_model(name))
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        outputs: dict[tuple[str, bool], np.ndarray] = {}
        for _ in range(args.repeats):  # interleaved, so that load beside this process hits every variant alike
            for variant in VARIANTS:
                outputs[variant, False], seconds = run(stored, model, variant, consistency=False)
                times[variant].append(seconds)
        for variant in VARIANTS:
            outputs[variant, True], _ = run(stored, model, variant, consistency=True)
        reference_image = medsr.Image.from_array(stored)
        span = float(np.ptp(reference_image.pixels))
        base = statistics.median(times["fp32"])
        for variant in VARIANTS:
            raw = compare(outputs[variant, False], outputs["fp32", False], span)
            kept = compare(outputs[variant, True], outputs["fp32", True], span)
            seconds = statistics.median(times[variant])
            print(f"| {label} | {name} | {variant} | {raw[0]:.2f} / {raw[1]:.3f}, {raw[2]:.1f} dB "
                  f"| {kept[0]:.2f} / {kept[1]:.3f}, {kept[2]:.1f} dB | {seconds:.2f} | {base / seconds:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
