"""Every edge a user hits (issue 25): arguments checked before work, each case a one-line error."""

import sys

import pytest
from PIL import Image as PILImage

import medsr
from medsr.cli import main
from medsr.evaluate import PROTOCOLS, with_blur

from .conftest import random_image


@pytest.fixture
def one_image(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        PILImage.fromarray(random_image(520, 520, 3, seed=i)).save(data / f"{i}.png")
    return data


@pytest.mark.parametrize("tile", [-5, 2.5, True, "64"])
def test_a_bad_tile_is_refused_before_any_model_loads(tile, monkeypatch):
    module = sys.modules["medsr.upscale"]  # the module, not the function medsr.upscale
    monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("the model loaded before the tile check"))
    with pytest.raises(ValueError, match=r"tile .*: give None \(automatic\), 0 \(the whole image\) or a positive"):
        medsr.upscale(random_image(8, 8, 1)[..., 0], tile=tile)


@pytest.mark.parametrize("sigma", [-1, float("nan"), float("inf")])
def test_a_nonsense_blur_is_refused(sigma):
    with pytest.raises(ValueError, match="blur sigma .*: must be a finite number >= 0"):
        with_blur(PROTOCOLS["retina-x2"], sigma)


@pytest.mark.parametrize("args, message", [
    (["--max-images", "-1"], "need 0 or more images"),
    (["--blur-sigma", "nan"], "blur sigma nan"),
    (["--region", "a,b,c,d"], "--region 'a,b,c,d': give X,Y,W,H"),
    (["--region", "500,500,64,64"], "within the 512x512 ground truth"),
])
def test_evaluate_arguments_are_checked_before_any_image(one_image, tmp_path, capsys, args, message):
    assert main(["evaluate", str(one_image), "--protocol", "retina-x2", "--baselines", "bicubic",
                 "-o", str(tmp_path / "report"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1  # one line
    assert not (tmp_path / "report").exists()  # no work was done


def test_max_images_keeps_what_it_says(one_image, tmp_path, capsys):
    assert main(["evaluate", str(one_image), "--protocol", "retina-x2", "--baselines", "bicubic", "--max-images",
                 "2", "--figures", "0", "-o", str(tmp_path / "report")]) == 0
    assert "(2 images, 0 skipped)" in capsys.readouterr().out
