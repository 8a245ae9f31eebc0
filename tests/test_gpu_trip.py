"""The GPU trip's scripts (benchmarks/gpu_trip): they run for real only where a GPU is lent, so the
parts that can rot unseen run here on generated files: packing and unpacking with their digests,
keeping the shipped models out of what travels, and rejoining the pieces that come back."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file

from medsr.models import weights
from medsr.nets.rrdbnet import rrdbnet

from .conftest import random_image

TRIP = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_trip"
sys.path.insert(0, str(TRIP))
import prepare  # noqa: E402
import rejoin  # noqa: E402
import unpack  # noqa: E402


@pytest.fixture
def shared(tmp_path):
    """A stand-in for ../shared/data with the files the trip packs (generated colour images)."""
    root = tmp_path / "shared"
    files = {"retina/STARE/images/im0001.png": 40, "retina/STARE/images/im0004.png": 40,
             "retina/HRF/images/01_h.jpg": 96, "retina/HRF/images/07_g.jpg": 96,  # 07: not packed
             **{f"retina/CHASE_DB1/images/{name}": 48 for name in prepare.VAL}, prepare.CXR: 300}
    for seed, (name, size) in enumerate(files.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(random_image(size, size, 3, seed=seed)).save(root / name)
    return root


@pytest.fixture
def packed(shared, tmp_path, monkeypatch):
    """What prepare.py packs, without the wheels (they need the network) and with a tiny generator
    standing in for x4plus (fp16 weights, one fp32 bias: the mixed file the trip carries)."""
    torch.manual_seed(0)
    state = {k: v.half().float() for k, v in rrdbnet("tiny").state_dict().items()}
    state["conv_last.bias"] = torch.tensor([0.1, 0.2, 0.3])  # not exact in fp16
    cached = tmp_path / "cached.safetensors"
    save_file(state, cached)
    monkeypatch.setattr(weights, "fetch", lambda spec, online=None: cached)
    out = tmp_path / ".gpu-trip"
    out.mkdir()
    manifest = {"generator": prepare.generator(out / "x4plus.safetensors"),
                "images": prepare.data(shared, out / "data")}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out, state


def test_unpack_gives_back_what_was_packed(packed, shared, tmp_path, monkeypatch):
    out, state = packed
    carried = load_file(out / "x4plus.safetensors")
    assert carried["conv_last.bias"].dtype == torch.float32 and carried["conv_first.weight"].dtype == torch.float16
    assert sorted(p.name for p in (out / "data" / "hrf").iterdir()) == ["01_h_x0.333.webp"]
    work = tmp_path / "work"
    monkeypatch.setattr(sys, "argv", ["unpack.py", str(out), str(work)])
    unpack.main()
    stare = np.asarray(PILImage.open(work / "shared/retina/STARE/images/im0004.png"))
    np.testing.assert_array_equal(stare, np.asarray(PILImage.open(shared / "retina/STARE/images/im0004.png")))
    assert sorted(p.name for p in (work / "train").iterdir()) == ["01_h_x0.333.png", "im0001.png", "im0004.png"]
    with PILImage.open(work / "train/01_h_x0.333.png") as hrf:
        assert hrf.size == (32, 32)  # 96 / 3
    assert sorted(p.name for p in (work / "val").iterdir()) == sorted(prepare.VAL)
    assert PILImage.open(work / "cxr-256.png").size == (256, 256)
    unpacked = load_file(work / "home/models/realesrgan-x4plus.safetensors")
    assert all(torch.equal(unpacked[k], v) for k, v in state.items())


def test_unpack_refuses_a_file_that_changed(packed, tmp_path, monkeypatch):
    out, _ = packed
    victim = out / "data" / "stare" / "im0001.webp"
    pixels = np.asarray(PILImage.open(victim)).copy()
    pixels[0, 0] ^= 1
    PILImage.fromarray(pixels).save(victim, "WEBP", lossless=True, exact=True)
    monkeypatch.setattr(sys, "argv", ["unpack.py", str(out), str(tmp_path / "work")])
    with pytest.raises(SystemExit, match="stare/im0001.webp: decoded to"):
        unpack.main()


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_travel_keeps_the_shipped_models_out_and_puts_them_back(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src/medsr/models").mkdir(parents=True)
    (repo / "benchmarks/gpu_trip").mkdir(parents=True)
    shutil.copy(TRIP / "travel.sh", repo / "benchmarks/gpu_trip/travel.sh")
    (repo / "src/medsr/models/retina.safetensors").write_bytes(b"weights")
    (repo / "README.md").write_text("medsr\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    travelling = ["ls-files", "--cached", "--others", "--exclude-standard"]
    subprocess.run(["bash", "benchmarks/gpu_trip/travel.sh", "light"], cwd=repo, check=True, capture_output=True)
    assert "src/medsr/models/retina.safetensors" not in _git(repo, *travelling)
    assert (repo / "src/medsr/models/retina.safetensors").read_bytes() == b"weights"  # still here
    subprocess.run(["bash", "benchmarks/gpu_trip/travel.sh", "restore"], cwd=repo, check=True, capture_output=True)
    assert "src/medsr/models/retina.safetensors" in _git(repo, *travelling)
    assert _git(repo, "status", "--porcelain") == ""


def _pieces(folder, tmp_path, *, iteration=7):
    torch.manual_seed(0)
    model = tmp_path / "model.safetensors"
    save_file({k: v.half() for k, v in rrdbnet("tiny").state_dict().items()}, model,
              metadata={"iteration": str(iteration)})
    data = model.read_bytes()
    folder.mkdir()
    third = len(data) // 3
    for i, piece in enumerate((data[:third], data[third : 2 * third], data[2 * third :])):
        (folder / f"retina-gpu.safetensors.part{i:02d}").write_bytes(piece)
    (folder / "model.json").write_text(json.dumps({"iteration": iteration, "sha256": hashlib.sha256(data).hexdigest()}))
    return data


def test_rejoin_checks_the_pieces_against_the_record(tmp_path, monkeypatch):
    data = _pieces(tmp_path / "back", tmp_path)
    monkeypatch.setattr(sys, "argv", ["rejoin.py", str(tmp_path / "back"), "-o", str(tmp_path / "m.safetensors")])
    rejoin.main()
    assert (tmp_path / "m.safetensors").read_bytes() == data
    (tmp_path / "back" / "retina-gpu.safetensors.part01").unlink()  # a piece that did not come back
    monkeypatch.setattr(sys, "argv", ["rejoin.py", str(tmp_path / "back"), "-o", str(tmp_path / "n.safetensors")])
    with pytest.raises(SystemExit, match="2 pieces join to SHA-256"):
        rejoin.main()
    assert not (tmp_path / "n.safetensors").exists()


def test_trip_script_parses():
    subprocess.run(["bash", "-n", str(TRIP / "trip.sh")], check=True)
