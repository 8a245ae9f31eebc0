"""The fine-tuned medical models shipped inside the package (docs/models/)."""

import json
import struct

import numpy as np
import pytest
from PIL import Image as PILImage

import medsr
from medsr import weights
from medsr.cli import main
from medsr.upscale import model_for

from .conftest import random_image


@pytest.mark.parametrize("name", ["retina", "cxr"])
def test_packaged_models_load_strictly_in_fp16(name):
    path, spec = weights.resolve(name)
    assert path.parent == weights.PACKAGED_DIR and spec.packaged == f"{name}.safetensors"
    with open(path, "rb") as f:  # safetensors header: 8-byte length, then JSON with each tensor's dtype
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
    net = weights.load_model(name)
    assert net.name == name and sum(p.numel() for p in net.parameters()) == 16_697_987


def test_auto_picks_the_model_by_image_kind():
    gray = medsr.Image.from_array(random_image(8, 8, 1).squeeze())
    colour = medsr.Image.from_array(random_image(8, 8, 3))
    assert model_for(gray) == "cxr" and model_for(colour) == "retina"
    assert model_for(gray, "realesrgan-x4plus") == "realesrgan-x4plus"


@pytest.mark.slow
def test_cli_says_which_model_it_used(tmp_path, capsys):
    PILImage.fromarray(random_image(16, 16, 1).squeeze()).save(tmp_path / "gray.png")
    PILImage.fromarray(random_image(16, 16, 3)).save(tmp_path / "colour.png")
    assert main(["upscale", str(tmp_path / "gray.png"), str(tmp_path / "colour.png"), "-o", str(tmp_path / "out")]) == 0
    assert "with cxr (1), retina (1)" in capsys.readouterr().out
    out = medsr.read_image(tmp_path / "out" / "gray.png")
    assert out.is_gray and out.size == (64, 64) and np.ptp(out.pixels) > 0
