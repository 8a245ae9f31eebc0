import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from skimage.metrics import structural_similarity

from medsr.core import metrics
from medsr.core.kernels import gaussian_blur
from medsr.evaluation.evaluate import PROTOCOLS, find_samples, make_pair, read_annotation, read_any

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


def toolbox_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """The Real-ESRGAN toolbox's SSIM of one channel, written out: 11x11 Gaussian window (sigma 1.5),
    'valid' region, population statistics (BasicSR's ``_ssim``)."""
    taps = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    taps /= taps.sum()

    def filtered(image):
        rows = sliding_window_view(image, 11, axis=1) @ taps
        return sliding_window_view(rows, 11, axis=0) @ taps

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = filtered(x), filtered(y)
    var_x, var_y = filtered(x * x) - mu_x**2, filtered(y * y) - mu_y**2
    cov = filtered(x * y) - mu_x * mu_y
    return float((((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))).mean())


@pytest.mark.parametrize("data_range, dtype", [(255, np.uint8), (65535, np.uint16)])
def test_ssim_follows_the_toolbox_formula(data_range, dtype):
    rng = np.random.default_rng(0)
    a = rng.integers(0, data_range, (3, 48, 40)).astype(dtype)
    b = np.clip(a + rng.normal(0, data_range / 20, a.shape), 0, data_range).astype(dtype)
    expected = np.mean([toolbox_ssim(x, y, data_range) for x, y in zip(a.astype(float), b.astype(float), strict=True)])
    assert metrics.ssim(a, b, data_range=data_range, convention="realesrgan") == pytest.approx(expected, abs=1e-10)
    default = structural_similarity(a.astype(float), b.astype(float), data_range=data_range, channel_axis=0)
    assert metrics.ssim(a, b, data_range=data_range, convention="skimage") == pytest.approx(default, abs=1e-12)
    assert metrics.ssim(a, a, data_range=data_range) == pytest.approx(1.0)


def test_ssim_keeps_the_value_of_the_hand_written_version():
    """Regression: 0.96212... is what medsr's hand-written SSIM (before scikit-image did the work,
    commit d8df07e) gave for this pair."""
    rng = np.random.default_rng(7)
    a = rng.random((1, 32, 32)) * 255
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    assert metrics.ssim(a, b, data_range=255) == pytest.approx(0.9621208078423878, abs=1e-12)


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


# ---------------------------------------------------------------------------------------------
# Inside the anatomy (masks)


def test_psnr_inside_a_mask_by_hand():
    gt = np.full((1, 40, 40), 100.0)
    sr = gt.copy()
    sr[:, :, :10] += 50  # a wrong border: outside the mask
    sr[:, 10:, 10:] += 2  # inside: error 2 everywhere
    mask = np.zeros((40, 40), bool)
    mask[10:, 10:] = True
    # 10 log10(255^2 / 2^2) = 44.15 dB, from the definition
    assert metrics.psnr(sr, gt, data_range=255, mask=mask) == pytest.approx(10 * math.log10(255**2 / 4))
    assert metrics.psnr(sr, gt, data_range=255) < 30  # the border decides the whole-image number


def test_ssim_inside_a_mask_ignores_what_lies_outside():
    rng = np.random.default_rng(3)
    gt = rng.random((1, 64, 64)) * 255
    sr = gt.copy()
    sr[:, :, :16] = 0  # a wrong band at the left, more than a window (11 px) away from the mask
    mask = np.zeros((64, 64), bool)
    mask[:, 32:] = True
    assert metrics.ssim(sr, gt, data_range=255, mask=mask) == pytest.approx(1)
    assert metrics.ssim(sr, gt, data_range=255) < 0.8
    full = np.ones((64, 64), bool)  # the whole image as mask: the ordinary mean
    assert metrics.ssim(sr, gt, data_range=255, mask=full) == pytest.approx(metrics.ssim(sr, gt, data_range=255))


def test_thin_vessels_keep_narrow_branches_and_drop_wide_trunks():
    annotation = np.zeros((60, 60), bool)
    annotation[10:12, 5:55] = True  # 2 px wide
    annotation[30:37, 5:55] = True  # 7 px wide
    thin = metrics.thin_vessels(annotation, max_width=3)
    assert thin[10:12, 8:52].all()
    assert not thin[30:37].any()
    assert not (thin & ~annotation).any()


def test_thin_vessel_auc_sees_a_lost_branch_that_the_whole_auc_hides():
    """A picture with one wide and one narrow vessel: blurring away the narrow one barely moves the
    AUC over all vessels (the wide one holds most of the annotated pixels) but drops the thin one."""
    annotation = np.zeros((96, 96), bool)
    annotation[20:22, 4:92] = True
    annotation[50:60, 4:92] = True
    image = np.where(annotation, 0.3, 0.7)
    image = image + 0.02 * np.random.default_rng(4).standard_normal(image.shape)
    lost = image.copy()
    lost[18:24] = 0.7 + 0.02 * np.random.default_rng(5).standard_normal((6, 96))
    fov = np.ones_like(annotation)
    scores = {}
    for name, picture in (("kept", image), ("lost", lost)):
        vessels = metrics.vesselness(picture)
        scores[name] = (metrics.auc(vessels[fov], annotation[fov]), metrics.thin_vessel_auc(vessels, annotation, fov))
    assert scores["kept"][1] > 0.9 > 0.6 > scores["lost"][1]
    assert scores["kept"][0] - scores["lost"][0] < scores["kept"][1] - scores["lost"][1]


def test_chest_region_leaves_out_the_border_band():
    region = metrics.chest_region((100, 200))
    assert region[50, 100] and not region[2, 100] and not region[50, 5]
    assert region.mean() == pytest.approx(0.8 * 0.8, abs=0.02)
