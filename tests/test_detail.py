"""Detail and consistency maps (issue 16)."""

import numpy as np
from PIL import Image as PILImage

from medsr.cli import main
from medsr.core.resize import resize_bicubic, resize_lanczos
from medsr.engine.detail import detail_maps
from medsr.formats.io import read_image

from .conftest import random_image


def smooth(height, width, channels=3, seed=0):
    return random_image(height, width, channels, seed=seed).transpose(2, 0, 1).astype(np.float32) / 255


def test_plain_interpolation_adds_no_detail():
    lr = smooth(24, 20)
    maps = detail_maps(resize_lanczos(lr, 96, 80), lr)  # the reference itself: exactly nothing added
    assert maps.detail.shape == (96, 80) and np.abs(maps.detail).max() == 0 and maps.detail_score == 0
    # Another kernel adds a little at the hard edges of this blocky test image (1.6 levels RMS when
    # this test was written; real images: docs/DETAIL_MAPS.md), far below what models add.
    bicubic = detail_maps(resize_bicubic(lr, 96, 80), lr)
    assert 0 < bicubic.detail_score < 2.5


def test_a_perfect_downscale_is_fully_consistent():
    hr = smooth(96, 80, seed=1)
    lr = resize_lanczos(hr, 24, 20)
    maps = detail_maps(hr, lr)
    assert maps.consistency.shape == (24, 20) and np.abs(maps.consistency).max() == 0
    assert maps.detail_score > 1  # the HR image has detail the LR lost: the map shows it


def test_invented_texture_shows_in_detail_but_hardly_in_consistency():
    lr = 0.2 + 0.6 * smooth(32, 32, seed=2)  # room for the texture: no clipping at black or white
    sr = resize_lanczos(lr, 128, 128)
    texture = np.where(np.arange(128) % 2, 0.05, -0.05)  # finest stripes: nothing of them survives at 1/4 size
    maps = detail_maps(np.clip(sr + texture[None, None, :], 0, 1).astype(np.float32), lr)
    assert maps.detail_score > 8 and maps.consistency_score < maps.detail_score / 4


def test_cli_writes_maps_and_scores(tmp_path, tiny_net, capsys):
    from safetensors.torch import save_file

    save_file(tiny_net.state_dict(), tmp_path / "tiny.safetensors")
    PILImage.fromarray(random_image(16, 12, 1).squeeze()).save(tmp_path / "a.png")
    code = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model",
                 str(tmp_path / "tiny.safetensors"), "--detail-map"])
    out = capsys.readouterr().out
    assert code == 0 and "detail" in out and "consistency" in out
    assert read_image(tmp_path / "out" / "a.png.detail.png").size == (64, 48)
    assert read_image(tmp_path / "out" / "a.png.consistency.png").size == (16, 12)


def test_dial_figure_script(tmp_path, tiny_pair, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    PILImage.fromarray(random_image(16, 16, 3)).save(tmp_path / "lr.png")
    script = Path(__file__).resolve().parents[1] / "examples" / "make_dial_figure.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "lr.png"), "--model", "retina",
                                      "-o", str(tmp_path / "dial.jpg")])
    runpy.run_path(str(script), run_name="__main__")  # in this process, where the tiny pair stands in
    with PILImage.open(tmp_path / "dial.jpg") as figure:
        assert figure.size == (3 * 320, 24 + 2 * 320)
