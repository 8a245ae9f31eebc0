"""Pack what the GPU trip (issue 27) carries into one ignored folder, and say whether it travels.

Usage: python benchmarks/gpu_trip/prepare.py [--shared ../shared/data] [--out .gpu-trip]

The device machine gets the working tree (tracked and not-ignored files) and the folders a call
carries, 64 MiB in all, and has no network. The folder holds what the trip needs beyond the tree:

  wheels/              the packages medsr imports and that machine lacks (pypng, pydicom), and
                       upstream Real-ESRGAN for the speed table (realesrgan 0.3.0; basicsr 1.4.2,
                       which PyPI has as source only: built here, pure Python)
  x4plus.safetensors   the published generator as medsr caches it here, each tensor in fp16 where
                       that is exact (the weights: the ncnn copy they come from stores fp16) and in
                       fp32 where not (the biases): the same values in half the bytes
  data/stare/          the 20 STARE images (the paper's retina set)          } lossless WebP:
  data/hrf/            18 HRF images (01-06 of each group) downscaled by 1/3 } 3/4 of PNG's bytes
  data/val/            4 CHASE_DB1 images (JPEG as published): the run's own validation
  data/cxr.png         one 1024x1024 NIH chest X-ray (validation set), for the speed table
  manifest.json        SHA-256 of every decoded image and of the generator's values (unpack.py
                       checks them there)

HRF at 1/3 (Lanczos, medsr's resize) has about the vessel calibre of STARE and CHASE_DB1. Beside
the generator (32 MiB) and the tree, no more fits in 64 MiB with room to spare: HRF 07-08 and HRF at
1/2, which the CPU models also saw, stay here.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file

from medsr.core.resize import resize_lanczos
from medsr.formats.io import image_files, read_image, write_image
from medsr.models import weights

LIMIT = 64 * 2**20  # what may travel in one call
DEVICE_PYTHON = "3.12"  # the device image's python3 (its torch, numpy, scipy, ... are used as they are)
MISSING_THERE = ("pypng", "pydicom")  # medsr's imports that the device image lacks (KINDS.md's list)
UPSTREAM = ("realesrgan==0.3.0", "basicsr==1.4.2")
HRF_GROUP_MAX = 6  # HRF's files are 01..08 of each group (healthy, glaucoma, diabetic retinopathy)
VAL = ("Image_01L.jpg", "Image_03R.jpg", "Image_05L.jpg", "Image_07R.jpg")
CXR = "cxr/NIH-ChestXray14/val/00000404_000.png"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")


def pixel_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes() + str(array.shape).encode()).hexdigest()


def values_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the fp32 values in key order: the same on both machines whatever the file layout."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode() + state[key].float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def wheels(out: Path) -> list[str]:
    out.mkdir(parents=True)
    pinned = [f"{name}=={version(name)}" for name in MISSING_THERE]  # the versions tested here
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(out),
                    *pinned, UPSTREAM[0]], check=True)
    # basicsr: source only on PyPI (its setup.py imports torch: built with this environment's)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), UPSTREAM[1]], check=True)
    return sorted(p.name for p in out.glob("*.whl"))


def generator(out: Path) -> dict:
    cached = weights.fetch(weights.KNOWN_MODELS["realesrgan-x4plus"], online=False)
    state = load_file(cached)
    carried = {k: v.half() if torch.equal(v.half().float(), v) else v for k, v in state.items()}
    save_file(carried, out)
    assert values_digest(load_file(out)) == values_digest(state)
    exact = sum(v.dtype == torch.float16 for v in carried.values())
    return {"file": out.name, "values_sha256": values_digest(state), "tensors": len(state), "fp16": exact,
            "cached_sha256": hashlib.sha256(cached.read_bytes()).hexdigest()}


def webp(pixels: np.ndarray, out: Path) -> str:
    """Write (H, W, C) uint8 as lossless WebP; the digest of what it decodes to (checked equal here)."""
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, "WEBP", lossless=True, quality=100, method=6, exact=True)
    out.write_bytes(buffer.getvalue())
    with PILImage.open(out) as im:
        decoded = np.asarray(im.convert(im.mode))
    if not np.array_equal(decoded, pixels):
        raise RuntimeError(f"{out}: WebP did not round-trip exactly")
    return pixel_digest(pixels)


def data(shared: Path, out: Path) -> dict[str, str]:
    digests = {}
    for folder in ("stare", "hrf", "val"):
        (out / folder).mkdir(parents=True)
    for path in image_files(shared / "retina/STARE/images"):
        with PILImage.open(path) as im:
            name = f"stare/{path.stem}.webp"
            digests[name] = webp(np.asarray(im.convert("RGB")), out / name)
    with tempfile.TemporaryDirectory() as tmp:
        for path in image_files(shared / "retina/HRF/images"):
            if int(path.stem.split("_")[0]) > HRF_GROUP_MAX:
                continue
            image = read_image(path)
            height, width = image.size
            small = replace(image, pixels=resize_lanczos(image.pixels, round(height / 3), round(width / 3)), alpha=None)
            png = Path(tmp) / f"{path.stem}_x0.333.png"
            write_image(png, small)  # medsr's own 8-bit rounding, as the CPU recipe's folder
            with PILImage.open(png) as im:
                digests[f"hrf/{png.stem}.webp"] = webp(np.asarray(im), out / "hrf" / f"{png.stem}.webp")
    for name in VAL:
        shutil.copyfile(shared / "retina/CHASE_DB1/images" / name, out / "val" / name)
        digests[f"val/{name}"] = hashlib.sha256((out / "val" / name).read_bytes()).hexdigest()
    shutil.copyfile(shared / CXR, out / "cxr.png")
    digests["cxr.png"] = hashlib.sha256((out / "cxr.png").read_bytes()).hexdigest()
    return digests


def travelling_bytes(repo: Path, carried: Path) -> tuple[int, int]:
    """(bytes of the working tree that travels, of which the shipped models)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            check=True, capture_output=True).stdout.decode().split("\0")
    paths = [repo / p for p in listed if p and (repo / p).is_file()]
    paths += [p for p in carried.rglob("*") if p.is_file()]
    models = sum(p.stat().st_size for p in paths if p.parent.name == "models" and p.suffix == ".safetensors"
                 and "src/medsr" in str(p))
    return sum(p.stat().st_size for p in paths), models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path(".gpu-trip"))
    args = parser.parse_args()
    repo = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], check=True, capture_output=True,
                               text=True).stdout.strip())
    if args.out.exists():
        sys.exit(f"{args.out}: exists; remove it to pack again")
    args.out.mkdir()
    manifest = {"wheels": wheels(args.out / "wheels"), "generator": generator(args.out / "x4plus.safetensors"),
                "images": data(args.shared, args.out / "data"), "torch_here": torch.__version__}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total, models = travelling_bytes(repo, args.out.resolve())
    print(f"{args.out}: {sum(p.stat().st_size for p in args.out.rglob('*') if p.is_file()) / 2**20:.1f} MiB")
    print(f"travels: {total / 2**20:.1f} MiB with the shipped models, {(total - models) / 2**20:.1f} MiB "
          f"without them (limit {LIMIT / 2**20:.0f} MiB)")
    if total - models > LIMIT:
        sys.exit("too large even without the shipped models")


if __name__ == "__main__":
    main()
