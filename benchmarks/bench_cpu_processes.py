"""Whole processes, as a user runs them: `medsr upscale` (default settings, realesrgan-x4plus) against
the ncnn CPU runtime with the same weights, on a 160x160 fundus crop and a 512x512 chest X-ray crop.

Usage: python benchmarks/bench_cpu_processes.py [--repeats 1]

Each timing is a fresh process (start-up, model load, inference, writing) and the two programs
alternate on the same input, so a noisy machine affects both alike; the best of the repeats is
kept. Prints the CPU model and its vector extensions beside the ratios (ncnn time / medsr time:
above 1.0 means medsr is faster). Needs ../shared/data and the dev extras (ncnn).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
INPUTS = {  # name: (source, crop box in the source's pixels, downscale first)
    "fundus 160x160": (SHARED / "retina/HRF/images/01_h.jpg", (1760, 720, 2400, 1360), 4),
    "chest X-ray 512x512": (SHARED / "cxr/NIH-ChestXray14/val/00000404_000.png", (256, 256, 768, 768), 1),
}
NCNN = """
import sys, numpy as np, ncnn
from PIL import Image
from medsr.models import ncnn as medsr_ncnn, weights  # not the name of the runtime's module
param, bin_ = medsr_ncnn.ncnn_files(weights.KNOWN_MODELS["realesrgan-x4plus"])
net = ncnn.Net(); net.opt.use_vulkan_compute = False; net.opt.num_threads = int(sys.argv[3])
net.load_param(str(param)); net.load_model(str(bin_))
lq = np.asarray(Image.open(sys.argv[1]).convert("RGB"), np.float32).transpose(2, 0, 1) / 255
ex = net.create_extractor(); ex.input("data", ncnn.Mat(np.ascontiguousarray(lq)))
sr = np.clip(np.array(ex.extract("output")[1]), 0, 1)
Image.fromarray(np.rint(sr.transpose(1, 2, 0) * 255).astype(np.uint8)).save(sys.argv[2])
"""


def cpu_description() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    vector = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    count = sum(line.startswith("processor") for line in text.splitlines())
    return f"{model}, {count} CPUs, {' '.join(vector)}"


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command[:3])}... failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    threads = str(len([line for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("processor")]))
    medsr = str(Path(sys.executable).with_name("medsr"))
    print(f"CPU: {cpu_description()}")
    print("| input | medsr s | ncnn s | ncnn / medsr |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (source, box, down) in INPUTS.items():
            picture = Image.open(source).convert("RGB").crop(box)
            picture = picture.resize((picture.width // down, picture.height // down), Image.Resampling.LANCZOS)
            lr = Path(tmp) / "lr.png"
            picture.save(lr)
            best = {"medsr": float("inf"), "ncnn": float("inf")}
            for i in range(args.repeats):
                out = Path(tmp) / f"{name[:6]}-m{i}.png"
                best["medsr"] = min(best["medsr"], timed([medsr, "upscale", str(lr), "-o", str(out),
                                                          "--model", "realesrgan-x4plus"]))
                best["ncnn"] = min(best["ncnn"], timed([sys.executable, "-c", NCNN, str(lr),
                                                        str(Path(tmp) / f"{name[:6]}-n{i}.png"), threads]))
            print(f"| {name} | {best['medsr']:.1f} | {best['ncnn']:.1f} | {best['ncnn'] / best['medsr']:.2f} |")


if __name__ == "__main__":
    main()
