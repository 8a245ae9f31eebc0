import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from medsr import metrics
from medsr.evaluate import PROTOCOLS, find_samples, make_pair, read_annotation, read_any
from medsr.kernels import gaussian_blur

from .conftest import shared_image


def test_psnr_by_hand():
    a, b = np.zeros((2, 2)), np.array([[0.0, 0.0], [0.0, 10.0]])
    # MSE = 100 / 4 = 25: 10 log10(255^2 / 25) = 10 log10(2601).
    assert metrics.psnr(a, b, data_range=255) == pytest.approx(10 * math.log10(2601))
    # The same error in a 16-bit image is far smaller relative to the range.
    assert metrics.psnr(a, b, data_range=65535) == pytest.approx(10 * math.log10(65535**2 / 25))
    assert metrics.psnr(b, b, data_range=255) == math.inf


def test_ssim_of_constant_images_by_hand():
    a, b = np.full((16, 16), 100.0), np.full((16, 16), 110.0)
    c1 = (0.01 * 255) ** 2
    # No variance: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)
    assert metrics.ssim(a, b, data_range=255) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("data_range, dtype", [(255, np.uint8), (65535, np.uint16)])
def test_ssim_is_pinned_to_scikit_image(data_range, dtype):
    rng = np.random.default_rng(0)
    a = rng.integers(0, data_range, (3, 48, 40)).astype(dtype)
    b = np.clip(a + rng.normal(0, data_range / 20, a.shape), 0, data_range).astype(dtype)
    ours = metrics.ssim(a, b, data_range=data_range, convention="realesrgan")
    theirs = structural_similarity(a.astype(float), b.astype(float), data_range=data_range, gaussian_weights=True,
                                   sigma=1.5, use_sample_covariance=False, channel_axis=0)
    assert ours == pytest.approx(theirs, abs=1e-10)
    default = structural_similarity(a.astype(float), b.astype(float), data_range=data_range, channel_axis=0)
    assert metrics.ssim(a, b, data_range=data_range, convention="skimage") == pytest.approx(default, abs=1e-12)
    assert metrics.ssim(a, a, data_range=data_range) == pytest.approx(1.0)


def test_y_channel_and_border():
    white = np.full((3, 20, 20), 255.0)
    assert metrics.luma(white, 255)[0, 0, 0] == pytest.approx(235.0, abs=1e-3)  # BT.601 white
    a, b = np.zeros((1, 20, 20)), np.zeros((1, 20, 20))
    b[0, 0, 0] = 50  # only in the border
    assert metrics.psnr(a, b, data_range=255, crop_border=2) == math.inf


def test_auc_by_hand():
    # The textbook example: 3 of the 4 positive/negative pairs are ordered correctly.
    assert metrics.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert metrics.auc(np.ones(6), np.array([0, 1, 0, 1, 0, 1])) == pytest.approx(0.5)  # ties count half
    assert math.isnan(metrics.auc(np.ones(3), np.zeros(3)))


def test_band_detail_tells_blur_from_invention():
    rng = np.random.default_rng(1)
    gt = gaussian_blur(torch.from_numpy(rng.random((1, 1, 128, 128))), 5, 0.7)[0, 0].numpy()
    same = metrics.band_detail(gt, gt)
    assert all(b["kept"] == pytest.approx(1) and b["invented"] == pytest.approx(0, abs=1e-12) for b in same)
    blurred = gaussian_blur(torch.from_numpy(gt)[None, None], 9, 1.5)[0, 0].numpy()
    blur = metrics.band_detail(blurred, gt)
    assert blur[-1]["kept"] < 0.2 and blur[-1]["invented"] < 0.01  # detail lost, nothing invented
    sharpened = gt + 0.5 * (gt - blurred)  # stronger, but coherent with GT
    sharp = metrics.band_detail(sharpened, gt)
    assert sharp[-1]["kept"] > 1 and sharp[-1]["invented"] < 0.01
    textured = gt + 0.05 * rng.standard_normal(gt.shape)
    assert metrics.band_detail(textured, gt)[-1]["invented"] > 0.1  # incoherent energy: invented


def stare_pair(name: str):
    sample = next(s for s in find_samples(shared_image("retina/STARE")) if s.name == name)
    _, gt = make_pair(read_any(sample.image), PROTOCOLS["retina-x2"])
    return gt, read_annotation(sample.annotation, 512)


def test_fidelity_metrics_rank_a_blurred_fundus_below_the_original():
    gt, annotation = stare_pair("im0001")
    fov = metrics.field_of_view(gt)
    gt_vessels = metrics.vesselness(gt[1])
    scores = []
    for sigma in (0, 1.5, 3):
        image = gt if sigma == 0 else gaussian_blur(torch.from_numpy(gt)[None], 15, sigma)[0].numpy()
        vessels = metrics.vesselness(image[1])
        scores.append((metrics.vessel_agreement(vessels, gt_vessels, fov), metrics.auc(vessels[fov], annotation[fov]),
                       metrics.band_detail(image[1], gt[1])[1]["kept"]))
    for column in range(3):
        assert scores[0][column] > scores[1][column] > scores[2][column], (column, scores)


def test_invented_texture_on_a_real_fundus_is_flagged():
    gt, _ = stare_pair("im0002")
    rng = np.random.default_rng(2)
    texture = gaussian_blur(torch.from_numpy(rng.standard_normal((1, 1, 512, 512))), 3, 0.6)[0, 0].numpy()
    textured = np.clip(gt[1] + 0.03 * texture, 0, 1)
    original, added = metrics.band_detail(gt[1], gt[1]), metrics.band_detail(textured, gt[1])
    assert added[1]["invented"] > original[1]["invented"] + 0.1
    assert added[2]["invented"] > original[2]["invented"] + 0.1
