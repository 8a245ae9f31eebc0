"""Here, after the GPU trip: join the exported generator's pieces and check them.

Usage: python benchmarks/gpu_trip/rejoin.py FOLDER -o retina-gpu.safetensors

FOLDER is where the device tool put the trip's $OUT (its files_at). The pieces are joined in name
order, the whole is checked against the SHA-256 that model.json recorded there, and loaded as a
medsr model; nothing is written unless all of that holds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from safetensors import safe_open

from medsr.core import files
from medsr.models import weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    if args.output.exists():
        sys.exit(f"{args.output}: exists (kept); give another name")
    pieces = sorted(args.folder.glob("retina-gpu.safetensors.part*"))
    record = args.folder / "model.json"
    if not pieces or not record.is_file():
        sys.exit(f"{args.folder}: no retina-gpu.safetensors.part* pieces and model.json (did the export phase run?)")
    expected = json.loads(record.read_text())
    joined = b"".join(p.read_bytes() for p in pieces)
    digest = hashlib.sha256(joined).hexdigest()
    if digest != expected["sha256"]:
        sys.exit(f"{len(pieces)} pieces join to SHA-256 {digest[:12]}, the device recorded {expected['sha256'][:12]}")
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "retina-gpu.safetensors"
        candidate.write_bytes(joined)
        model = weights.load_model(candidate)  # an RRDBNet generator medsr can run, or an error
        with safe_open(candidate, "pt") as f:
            iteration = int(f.metadata()["iteration"])
    if iteration != expected["iteration"]:
        sys.exit(f"the file says iteration {iteration}, model.json {expected['iteration']}")
    phases = args.folder / "phases.jsonl"
    if phases.is_file():
        for line in phases.read_text().splitlines():
            print("phase {phase}: status {status} after {seconds} s".format(**json.loads(line)))
    files.write_atomic(args.output, joined, overwrite=False)
    print(f"{args.output}: {len(pieces)} pieces, SHA-256 {digest}, iteration {expected['iteration']}, "
          f"{model.architecture or 'RRDBNet'} x{model.scale}")


if __name__ == "__main__":
    main()
