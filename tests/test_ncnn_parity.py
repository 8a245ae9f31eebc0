"""Fidelity to the published model: our RRDBNet with the converted weights vs the ncnn runtime."""

import numpy as np
import pytest
import torch

from medsr.engine.infer import upscale_tensor
from medsr.formats.io import read_image
from medsr.models import ncnn, weights

from .conftest import shared_image


def run_ncnn(param, bin_, lq: np.ndarray) -> np.ndarray:
    ncnn = pytest.importorskip("ncnn")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = torch.get_num_threads()
    net.load_param(str(param))
    net.load_model(str(bin_))
    lq = np.ascontiguousarray(lq, np.float32)
    mat = ncnn.Mat(lq)  # keeps a pointer into ``lq``: both must stay alive until extract
    extractor = net.create_extractor()
    extractor.input("data", mat)
    _, out = extractor.extract("output")
    return np.array(out).copy()


@pytest.mark.slow
def test_matches_the_ncnn_runtime_within_two_grey_levels(x4plus):
    files = ncnn.ncnn_files(weights.KNOWN_MODELS["realesrgan-x4plus"])
    image = read_image(shared_image("retina/STARE/images/im0001.png"))
    lq = image.pixels[:, 200:264, 300:364]  # 64x64 crop with vessels
    ours = upscale_tensor(x4plus, torch.from_numpy(lq.copy()), tile=0).numpy()
    theirs = np.clip(run_ncnn(*files, lq), 0, 1)
    assert ours.shape == theirs.shape == (3, 256, 256)
    diff = np.abs(np.rint(ours * 255) - np.rint(theirs * 255))
    # docs/SOURCES.md section 3 measured 1 level on a 128x128 crop; the issue allows 2.
    assert diff.max() <= 2
    assert diff.mean() < 0.01
