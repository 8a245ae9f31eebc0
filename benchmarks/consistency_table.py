"""Do medsr's outputs average back to their inputs? The table of issue 28, measured on written files.

For each input and model, ``medsr upscale`` is run as a user would (default settings plus the
model), and the written output is read back with pydicom / Pillow (not with medsr), averaged over
each s x s block onto the input's grid and compared with the input, in % of the input's value span:
mean shift, mean absolute error, and the share of output pixels beyond the input's range by more
than 2% of the span. Independent of medsr's own measurement, so it checks it.

    python benchmarks/consistency_table.py --workdir /tmp/consistency [--medsr .venv/bin/medsr]

Inputs (made in the work folder from pydicom's test files and ../shared/data where present): pydicom
CT_small.dcm and MR_small.dcm; a 128x128 crop of the shared thorax CT (slice 30) as a 12-bit PNG
(HU + 1024); a 128x128 crop of an NIH chest X-ray as a 12-bit PNG; a 128x128 HRF fundus crop (8-bit).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_inputs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    inputs = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        target = folder / name
        target.write_bytes(Path(get_testdata_file(name)).read_bytes())
        inputs.append(target)
    ct = SHARED / "volumes/ct/thorax-BigBore_z040-099.nii.gz"
    if ct.exists():
        import nibabel

        hu = np.asarray(nibabel.load(ct).dataobj[:, :, 30], dtype=np.float64)
        crop = np.clip(hu[200:328, 150:278] + 1024, 0, 4095).T  # 12-bit, as stored by most scanners
        Image.fromarray(np.rint(crop).astype(np.uint16)).save(folder / "ct12_thorax.png")
        inputs.append(folder / "ct12_thorax.png")
    cxr = sorted((SHARED / "cxr/NIH-ChestXray14/val").glob("*.png"))
    if cxr:
        with Image.open(cxr[0]) as im:
            gray = np.asarray(im.convert("L"), dtype=np.float64)[448:576, 448:576]
        Image.fromarray(np.rint(gray * 4095 / 255).astype(np.uint16)).save(folder / "cxr12.png")
        inputs.append(folder / "cxr12.png")
    fundus = SHARED / "retina/HRF/images/01_h.jpg"
    if fundus.exists():
        with Image.open(fundus) as im:
            small = im.convert("RGB").resize((876, 584), Image.Resampling.LANCZOS)
        small.crop((300, 200, 428, 328)).save(folder / "fundus8.png")
        inputs.append(folder / "fundus8.png")
    return inputs


def stored(path: Path) -> np.ndarray:
    """Values as stored (DICOM: modality values), float64, (H, W) or (H, W, C)."""
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        return ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    with Image.open(path) as im:
        return np.asarray(im, dtype=np.float64)


def consistency(lr: np.ndarray, sr: np.ndarray) -> tuple[float, float, float]:
    """(mean shift %, mean abs error %, % of output pixels beyond the input's range by > 2% of span)."""
    s = sr.shape[0] // lr.shape[0]
    blocks = sr.reshape(lr.shape[0], s, lr.shape[1], s, *sr.shape[2:]).mean(axis=(1, 3))
    span = lr.max() - lr.min()
    low, high = lr.min() - 0.02 * span, lr.max() + 0.02 * span
    beyond = np.mean((sr < low) | (sr > high))
    return (100 * (blocks - lr).mean() / span, 100 * np.abs(blocks - lr).mean() / span, 100 * beyond)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--medsr", default=str(Path(sys.executable).with_name("medsr")))
    parser.add_argument("--models", default="auto,realesrgan-x4plus")
    parser.add_argument("--extra", default="", help="more options for medsr upscale, e.g. '--consistency off'")
    args = parser.parse_args()
    inputs = make_inputs(args.workdir / "inputs")
    print("| input | model | mean shift % | mean abs error % | beyond range % | exit |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for path in inputs:
            out = args.workdir / model / path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            run = subprocess.run([args.medsr, "upscale", str(path), "-o", str(out), "--model", model, "--overwrite",
                                  *args.extra.split()], capture_output=True, text=True)
            if not out.exists():
                print(f"| {path.name} | {model} | - | - | - | {run.returncode}: {run.stderr.strip()[-200:]} |")
                continue
            shift, mae, beyond = consistency(stored(path), stored(out))
            print(f"| {path.name} | {model} | {shift:+.2f} | {mae:.2f} | {beyond:.2f} | {run.returncode} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
