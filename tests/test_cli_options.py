"""Each command-line option the README names, exercised through ``main``: the option must change
what is computed or written in the way its help says."""

import json

import numpy as np
import pytest
from PIL import Image as PILImage
from safetensors.torch import save_file

from medsr.cli import main

from .conftest import random_image


@pytest.fixture
def tiny_file(tmp_path, tiny_net):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_net.state_dict(), path)
    return str(path)


def chest_folder(folder):
    """Two gray 'chest X-rays': one non-square (1100 x 1040), one square, smooth."""
    folder.mkdir()
    PILImage.fromarray(random_image(1040, 1100, 1, seed=1).squeeze()).save(folder / "a.png")
    PILImage.fromarray(random_image(1024, 1024, 1, seed=2).squeeze()).save(folder / "b.png")
    return folder


def summary_of(folder):
    return json.loads((folder / "summary.json").read_text())


def test_cxr_protocol_end_to_end_with_its_options(tmp_path, tiny_file, capsys):
    data = chest_folder(tmp_path / "cxr")
    common = ["evaluate", str(data), "--protocol", "cxr-x4", "--baselines", "bicubic,lanczos", "--model", tiny_file,
              "--max-images", "1", "--figures", "1"]
    assert main([*common, "--reference", "lanczos", "--fit", "crop", "--ssim", "skimage", "--blur-sigma", "0",
                 "--region", "100,120,64,64", "-o", str(tmp_path / "sharp")]) == 0
    sharp = summary_of(tmp_path / "sharp")
    settings = sharp["settings"]
    assert settings["images"] == 1 and settings["reference"] == "lanczos"  # --max-images, --reference
    assert settings["SSIM convention"] == "skimage" and "cropped to their centre square" in settings["fit"]
    assert "Gaussian blur sigma 0.0" in settings["LR"]
    assert "vs_reference" in sharp["statistics"]["bicubic"]["psnr"]  # paired against lanczos
    assert (tmp_path / "sharp" / "figures" / "a.png").exists()
    assert {"psnr_inside", "ssim_inside"} <= set(sharp["summary"]["bicubic"])  # the chest mask applies
    assert main([*common, "--fit", "crop", "-o", str(tmp_path / "blurred")]) == 0  # the default blur, sigma 1
    blurred = summary_of(tmp_path / "blurred")
    assert sharp["summary"]["bicubic"]["psnr"] > blurred["summary"]["bicubic"]["psnr"] + 1  # blur takes detail
    assert main([*common, "--ssim", "skimage", "--fit", "crop", "--blur-sigma", "0", "-o", str(tmp_path / "s2")]) == 0
    realesrgan = summary_of(tmp_path / "s2")["summary"]["bicubic"]["ssim"]
    assert main([*common, "--fit", "crop", "--blur-sigma", "0", "-o", str(tmp_path / "s3")]) == 0
    assert summary_of(tmp_path / "s3")["summary"]["bicubic"]["ssim"] != realesrgan  # two conventions, two numbers
    capsys.readouterr()


def test_bad_option_values_are_refused_before_work(tmp_path, tiny_file, capsys):
    data = chest_folder(tmp_path / "cxr")
    assert main(["evaluate", str(data), "--protocol", "cxr-x4", "--model", tiny_file, "--region", "5,5,0,9",
                 "-o", str(tmp_path / "r")]) == 2
    assert "--region '5,5,0,9'" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["upscale", str(data), "-o", str(tmp_path / "u"), "--model", tiny_file, "--ext", "xyz"]) == 2
    assert "cannot write that type" in capsys.readouterr().err and not (tmp_path / "u").exists()


@pytest.mark.slow
def test_evaluate_with_its_default_baselines_and_reference(tmp_path, capsys):
    """No --baselines, no --reference: bicubic, Lanczos, lanczos-projected and Real-ESRGAN x4plus, paired
    against lanczos-projected (what a network must beat once outputs are projected)."""
    (tmp_path / "data").mkdir()
    PILImage.fromarray(random_image(512, 512, 3, seed=4)).save(tmp_path / "data" / "eye.png")
    assert main(["evaluate", str(tmp_path / "data"), "--protocol", "retina-x2", "--precision", "fp32",
                 "--figures", "0", "-o", str(tmp_path / "report")]) == 0
    document = summary_of(tmp_path / "report")
    assert list(document["summary"]) == ["bicubic", "lanczos", "lanczos-projected", "realesrgan-x4plus"]
    assert document["settings"]["reference"] == "lanczos-projected"
    assert "vs_reference" in document["statistics"]["bicubic"]["psnr"]
    assert "paired against lanczos-projected" in capsys.readouterr().out


def test_upscale_tile_and_fidelity_options(tmp_path, tiny_pair):
    source = tmp_path / "eye.png"
    PILImage.fromarray(random_image(40, 48, 3, seed=5)).save(source)

    def run(out, *options):
        assert main(["upscale", str(source), "-o", str(tmp_path / out), "--precision", "fp32",
                     "--consistency", "off", "--allow-inconsistent", *options]) == 0  # a random tiny net
        return np.asarray(PILImage.open(tmp_path / out / "eye.png"), np.int16)

    whole, tiled = run("whole", "--model", "retina", "--tile", "0"), run("tiled", "--model", "retina", "--tile", "16")
    assert np.abs(whole - tiled).max() <= 1  # RRDBNet's exact tiling: at most a rounding level apart
    gan, half, fidelity = (run(f"f{f}", "--model", "retina", "--fidelity", f) for f in ("0", "0.5", "1"))
    assert np.abs(gan - whole).max() <= 1  # F = 0: the GAN model itself
    assert np.abs(half - gan).mean() > 0.1 and np.abs(half - fidelity).mean() > 0.1  # a blend of the two
    assert main(["upscale", str(source), "-o", str(tmp_path / "bad"), "--model", "retina", "--fidelity", "2"]) == 2


def test_degrade_preview_seed_and_scale(tmp_path):
    source = tmp_path / "hr.png"
    PILImage.fromarray(random_image(160, 160, 3, seed=6)).save(source)

    def sheet(name, *options):
        assert main(["degrade-preview", str(source), "-o", str(tmp_path / name), "--crop", "64", *options]) == 0
        return np.asarray(PILImage.open(tmp_path / name))

    first, again, other = sheet("a.png", "--seed", "3"), sheet("b.png", "--seed", "3"), sheet("c.png", "--seed", "4")
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    x2 = sheet("d.png", "--seed", "3", "--scale", "2")
    assert x2.shape != first.shape or not np.array_equal(x2, first)
    assert main(["degrade-preview", str(source), "-o", str(tmp_path / "a.png"), "--crop", "64"]) == 1  # kept
