"""On the device machine: unpack what prepare.py packed, checking every digest.

Usage: python3 benchmarks/gpu_trip/unpack.py CARRIED WORK

Writes under WORK: shared/retina/STARE/images/*.png (where the tests look for STARE, through
MEDSR_SHARED_DATA), train/ (the STARE files and HRF at 1/3), val/ (CHASE_DB1), cxr.png and its
centre 256 x 256 (cxr-256.png, for the smoke test), and
home/models/realesrgan-x4plus.safetensors (fp32, medsr's cache: MEDSR_HOME). Exits 1 at the first
digest that differs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from prepare import pixel_digest, values_digest  # the same digests on both machines
from safetensors.torch import load_file, save_file


def main() -> None:
    carried, work = Path(sys.argv[1]), Path(sys.argv[2])
    manifest = json.loads((carried / "manifest.json").read_text())
    stare, train, val = work / "shared/retina/STARE/images", work / "train", work / "val"
    for folder in (stare, train, val, work / "home/models"):
        folder.mkdir(parents=True, exist_ok=True)
    for name, digest in manifest["images"].items():
        source = carried / "data" / name
        if name.endswith(".webp"):
            with PILImage.open(source) as im:
                pixels = np.asarray(im)
            found = pixel_digest(pixels)
            target = (stare if name.startswith("stare/") else train) / f"{Path(name).stem}.png"
            PILImage.fromarray(pixels).save(target)
            if name.startswith("stare/"):
                (train / target.name).symlink_to(target)
        else:
            found = hashlib.sha256(source.read_bytes()).hexdigest()
            shutil.copyfile(source, (val if name.startswith("val/") else work) / Path(name).name)
        if found != digest:
            sys.exit(f"{name}: decoded to {found[:12]}, packed as {digest[:12]}")
    with PILImage.open(work / "cxr.png") as im:
        left, top = (im.width - 256) // 2, (im.height - 256) // 2
        im.crop((left, top, left + 256, top + 256)).save(work / "cxr-256.png")
    state = {k: v.float() for k, v in load_file(carried / "x4plus.safetensors").items()}
    if values_digest(state) != manifest["generator"]["values_sha256"]:
        sys.exit("x4plus.safetensors: the values differ from those packed")
    save_file(state, work / "home/models/realesrgan-x4plus.safetensors")
    print(f"unpacked {len(manifest['images'])} images and the generator ({len(state)} tensors) into {work}")


if __name__ == "__main__":
    main()
