"""The fine-tuned medical models shipped inside the package (docs/models/)."""

import json
import struct

import numpy as np
import pytest
from PIL import Image as PILImage

import medsr
from medsr.cli import main
from medsr.engine.upscale import model_for
from medsr.models import weights

from .conftest import random_image


@pytest.mark.parametrize("name", ["retina", "cxr", "retina-fidelity", "cxr-fidelity"])
def test_packaged_models_load_strictly_in_fp16(name):
    path, spec = weights.resolve(name)
    assert path.parent == weights.PACKAGED_DIR and spec.packaged == f"{name}.safetensors"
    with open(path, "rb") as f:  # safetensors header: 8-byte length, then JSON with each tensor's dtype
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
    model = weights.load_model(name)
    assert model.name == name and sum(p.numel() for p in model.module.parameters()) == 16_697_987
    assert (model.architecture, model.scale, model.in_channels, model.size_multiple) == ("RRDBNet", 4, 3, 1)
    assert model.sources == ((path, spec.sha256),)  # the file and the digest recorded in weights.py


def test_auto_picks_the_model_by_image_kind():
    gray = medsr.Image.from_array(random_image(8, 8, 1).squeeze())
    colour = medsr.Image.from_array(random_image(8, 8, 3))
    from medsr.models.catalog import AUTO

    assert model_for(gray)[0] == AUTO["chest-xray"].model and model_for(colour)[0] == AUTO["fundus"].model
    assert "a gray image" in model_for(gray)[2] and "a colour image" in model_for(colour)[2]
    assert model_for(gray, "auto", 1.0)[:2] == ("cxr", 1.0) and model_for(colour, "auto", 0.0)[:2] == ("retina", 0.0)
    assert model_for(gray, "realesrgan-x4plus") == ("realesrgan-x4plus", None, "as asked")


@pytest.mark.slow
def test_cli_says_which_model_it_used(tmp_path, capsys):
    PILImage.fromarray(random_image(16, 16, 1).squeeze()).save(tmp_path / "gray.png")
    PILImage.fromarray(random_image(16, 16, 3)).save(tmp_path / "colour.png")
    assert main(["upscale", str(tmp_path / "gray.png"), str(tmp_path / "colour.png"), "-o", str(tmp_path / "out")]) == 0
    from medsr.models.catalog import AUTO

    out = capsys.readouterr().out
    assert f"auto: a gray image; {AUTO['chest-xray'].why}" in out
    assert f"auto: a colour image; {AUTO['fundus'].why}" in out
    out = medsr.read_image(tmp_path / "out" / "gray.png")
    assert out.is_gray and out.size == (64, 64) and np.ptp(out.pixels) > 0


def test_fidelity_dial_blends_weights_and_reproduces_both_ends(tiny_pair):
    import torch

    sharp, faithful = tiny_pair["retina"], tiny_pair["retina-fidelity"]
    for fidelity, expected in ((0, sharp), (1, faithful)):
        state = weights.load_model("retina", fidelity=fidelity).module.state_dict()
        assert all(torch.equal(state[k], expected[k]) for k in expected)  # exactly, not a rounded blend
    half = weights.load_model("retina", fidelity=0.5)
    assert half.name == "retina (fidelity 0.5)" and len(half.sources) == 2  # both files blended
    for key in ("conv_first.weight", "conv_last.bias"):
        torch.testing.assert_close(half.module.state_dict()[key], (sharp[key] + faithful[key]) / 2)
    colour = random_image(8, 8, 3)
    a = medsr.upscale(colour, model="auto", fidelity=0.5)
    b = medsr.upscale(colour, model=half)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(weights.WeightsError, match="fidelity applies to the medical models"):
        weights.load_model("realesrgan-x4plus", fidelity=0.5)
    with pytest.raises(ValueError, match="must be within 0..1"):
        weights.load_model("retina", fidelity=1.5)


def test_the_shipped_dial_blends_the_two_models_weight_by_weight():
    import torch
    from safetensors.torch import load_file

    for modality in ("retina", "cxr"):  # the packaged files, read here without medsr's loader
        sharp = load_file(weights.PACKAGED_DIR / f"{modality}.safetensors")
        faithful = load_file(weights.PACKAGED_DIR / f"{modality}-fidelity.safetensors")
        blended = weights.load_model(modality, fidelity=0.25).module.state_dict()
        for key, value in blended.items():  # F = 0.25: a quarter of the fidelity model, three of the GAN
            expected = 0.25 * faithful[key].double() + 0.75 * sharp[key].double()
            torch.testing.assert_close(value.double(), expected, atol=1e-6, rtol=1e-5)
        ends = weights.load_model(modality, fidelity=1).module.state_dict()
        assert all(torch.equal(v, faithful[k].float()) for k, v in ends.items())
