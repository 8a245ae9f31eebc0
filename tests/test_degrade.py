import math
from dataclasses import replace

import pytest
import torch

from medsr.training.degrade import (
    BlurConfig,
    DegradeConfig,
    PairPool,
    StageConfig,
    _Draw,
    add_noise,
    apply,
    degrade,
    sample,
    sample_kernel,
    second_stage,
    sharpen,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth(batch: int = 2, channels: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    base = torch.rand(batch, channels, size // 8, size // 8, generator=gen(seed))
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


def forced(**changes) -> DegradeConfig:
    """Default config with the same changes applied to both stages."""
    return DegradeConfig(first=replace(StageConfig(), **changes), second=replace(second_stage(), **changes))


def test_defaults_are_the_official_values():
    config = DegradeConfig()
    assert config.first.blur.family_probs == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    assert (config.first.blur.sigma, config.second.blur.sigma) == ((0.2, 3.0), (0.2, 1.5))
    assert (config.first.resize_probs, config.second.resize_probs) == ((0.2, 0.7, 0.1), (0.3, 0.4, 0.3))
    assert (config.first.resize_range, config.second.resize_range) == ((0.15, 1.5), (0.3, 1.2))
    assert (config.first.noise_sigma, config.second.noise_sigma) == ((1, 30), (1, 25))
    assert (config.first.poisson_scale, config.second.poisson_scale) == ((0.05, 3), (0.05, 2.5))
    assert (config.first.blur_prob, config.second.blur_prob, config.final_sinc_prob) == (1.0, 0.8, 0.8)
    assert config.sharpen.kernel_size == 51 and config.sharpen.sigma == 8 and config.sharpen.weight == 0.5


@pytest.mark.parametrize("probs, kind, low, high", [((1, 0, 0), "up", 1, 1.5), ((0, 1, 0), "down", 0.15, 1),
                                                    ((0, 0, 1), "keep", 1, 1)])
def test_resize_branches(probs, kind, low, high):
    config = DegradeConfig(first=StageConfig(resize_probs=probs))
    for seed in range(20):
        stage = sample(2, config, gen(seed)).first
        assert stage.resize == kind and low <= stage.resize_scale <= high


def test_noise_kind_gray_and_blur_branches():
    for p, kind in ((1.0, "gaussian"), (0.0, "poisson")):
        params = sample(4, forced(gaussian_noise_prob=p, gray_noise_prob=p, blur_prob=p), gen(1))
        for stage in (params.first, params.second):
            assert stage.noise == kind and all(g == bool(p) for g in stage.gray_noise) and stage.blur == bool(p)


def test_sinc_and_final_branches():
    config = DegradeConfig(first=StageConfig(blur=BlurConfig(sinc_prob=1.0)), final_sinc_prob=0.0,
                           resize_then_jpeg_prob=1.0)
    params = sample(8, config, gen(2))
    assert all(k.family == "sinc" for k in params.first.kernels)
    for k in params.first.kernels:  # small kernels cannot hold low cutoffs
        assert (math.pi / 3 if k.size < 13 else math.pi / 5) <= k.cutoff <= math.pi
    assert all(k.family == "pulse" for k in params.final_kernels) and params.resize_then_jpeg
    params = sample(8, replace(config, final_sinc_prob=1.0, resize_then_jpeg_prob=0.0), gen(2))
    assert all(k.family == "sinc" for k in params.final_kernels) and not params.resize_then_jpeg


def test_sampled_values_stay_in_their_ranges():
    config = DegradeConfig()
    draw = _Draw(gen(3))
    kernels = [sample_kernel(config.first.blur, draw) for _ in range(400)]
    assert {k.size for k in kernels} == set(range(7, 22, 2))
    assert {k.family for k in kernels} == {"iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso",
                                            "plateau_aniso", "sinc"}
    for k in kernels:
        if k.family != "sinc":
            assert 0.2 <= k.sigma_x <= 3 and 0.2 <= k.sigma_y <= 3
        if k.family.startswith("generalized"):
            assert 0.5 <= k.beta <= 4
        if k.family.startswith("plateau"):
            assert 1 <= k.beta <= 2
    for seed in range(30):
        params = sample(5, config, gen(seed))
        for stage, cfg in ((params.first, config.first), (params.second, config.second)):
            bounds = cfg.noise_sigma if stage.noise == "gaussian" else cfg.poisson_scale
            assert all(bounds[0] <= v <= bounds[1] for v in stage.noise_levels)
            assert all(30 <= q <= 95 for q in stage.jpeg_quality)


def test_gaussian_noise_statistics():
    images = torch.full((2, 3, 256, 256), 0.5)
    params = sample(2, forced(gaussian_noise_prob=1.0, gray_noise_prob=0.0), gen(4)).first
    stage = replace(params, noise_levels=(10.0, 20.0), gray_noise=(False, True))
    noisy = add_noise(images, stage, gen(5)) - 0.5
    assert noisy[0].std().item() == pytest.approx(10 / 255, rel=0.03)
    assert noisy[1].std().item() == pytest.approx(20 / 255, rel=0.03)
    assert abs(noisy.mean().item()) < 1e-3
    assert not torch.equal(noisy[0, 0], noisy[0, 1])  # colour noise differs per channel
    assert torch.equal(noisy[1, 0], noisy[1, 1])  # gray noise is the same in every channel


def test_poisson_noise_statistics():
    ramp = (torch.arange(256.0) / 255).repeat(256, 1)  # 256 distinct 8-bit values -> 256 levels
    images = ramp.expand(1, 3, 256, 256).clone()
    stage = replace(sample(1, forced(gaussian_noise_prob=0.0), gen(6)).first, noise_levels=(2.0,), gray_noise=(False,))
    noise = add_noise(images, stage, gen(7)) - images
    inside = (ramp > 0.2) & (ramp < 0.8)  # away from clipping at 0 and 1
    # Var(scale * (Poisson(256 x) / 256 - x)) = scale^2 x / 256.
    expected = 4 * ramp[inside].mean() / 256
    assert noise[:, :, inside].var().item() == pytest.approx(expected.item(), rel=0.05)


@pytest.mark.parametrize("scale, size, lq_size", [(4, 64, 16), (2, 64, 32), (4, 70, 17)])
def test_output_sizes(scale, size, lq_size):
    lq, gt_usm, _ = degrade(smooth(size=size), DegradeConfig(scale=scale), gen(8))
    assert lq.shape == (2, 3, lq_size, lq_size) and gt_usm.shape == (2, 3, size, size)


def test_same_seed_same_batch_and_apply_is_deterministic():
    gt = smooth()
    lq1, _, params = degrade(gt, DegradeConfig(), gen(9))
    lq2, _, _ = degrade(gt, DegradeConfig(), gen(9))
    lq3, _, _ = degrade(gt, DegradeConfig(), gen(10))
    assert torch.equal(lq1, lq2) and not torch.equal(lq1, lq3)
    assert torch.equal(apply(gt, params, DegradeConfig())[0], lq1)


def test_gray_and_16bit_ground_truth_pass_through():
    gt16 = torch.round(smooth(channels=1) * 65535) / 65535
    lq, gt_usm, _ = degrade(gt16, DegradeConfig(), gen(11))
    assert lq.shape[1] == 1 and gt_usm.shape[1] == 1
    assert torch.equal(lq, torch.round(lq * 255) / 255)  # LQ on 8-bit levels
    assert not torch.equal(gt_usm, torch.round(gt_usm * 255) / 255)  # GT keeps its precision


def test_a_clean_chain_reduces_to_a_resize():
    clean = dict(blur_prob=0.0, resize_probs=(0, 0, 1), gaussian_noise_prob=1.0, noise_sigma=(0.0, 0.0),
                 jpeg_quality=(100, 100))
    config = replace(forced(**clean), final_sinc_prob=0.0, resize_modes=("area",))
    config = replace(config, sharpen=replace(config.sharpen, weight=0.0))
    gt = smooth(channels=1, size=64)  # gray: no JPEG chroma subsampling in the way
    lq, gt_usm, _ = degrade(gt, config, gen(12))
    torch.testing.assert_close(gt_usm, gt)
    expected = torch.nn.functional.interpolate(gt, size=(16, 16), mode="area")
    assert (lq - expected).abs().max() < 4 / 255  # JPEG at quality 100 plus 8-bit rounding


def test_sharpening_raises_edge_contrast_only_above_the_threshold():
    step = torch.zeros(1, 1, 64, 64)
    step[..., 32:] = 0.8
    sharp = sharpen(step + 0.1, DegradeConfig().sharpen)
    assert sharp[0, 0, 32, 34] > 0.9 and sharp[0, 0, 32, 29] < 0.1  # overshoot on both sides
    flat = torch.full((1, 1, 64, 64), 0.3)
    torch.testing.assert_close(sharpen(flat, DegradeConfig().sharpen), flat)


def test_runs_on_the_batch_device_without_cuda_calls():
    lq, _, _ = degrade(smooth().to("cpu"), DegradeConfig(), gen(13))
    assert lq.device.type == "cpu"


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="resize_probs"):
        StageConfig(resize_probs=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="sizes"):
        BlurConfig(sizes=(6, 21))
    with pytest.raises(ValueError, match="kernel_pad"):
        DegradeConfig(kernel_pad=15)
    with pytest.raises(TypeError):
        StageConfig(noise_range=(1, 2))  # type: ignore[call-arg]  # unknown key


def test_pool_mixes_batches_and_checks_its_size():
    with pytest.raises(ValueError, match="pool size 180 must be a multiple of the batch size 7"):
        PairPool(size=180, batch_size=7, generator=gen(0))
    pool = PairPool(size=6, batch_size=2, generator=gen(0))
    seen = []
    for i in range(3):  # filling: batches come back unchanged
        batch = torch.full((2, 1), float(i))
        assert torch.equal(pool.exchange(batch)[0], batch)
        seen.append(i)
    outs = [pool.exchange(torch.full((2, 1), float(i)))[0] for i in range(3, 12)]
    values = torch.cat(outs).flatten().tolist()
    assert set(values) <= set(range(12)) and len(set(values)) > 2
    state = pool.state_dict()
    clone = PairPool(size=6, batch_size=2, generator=gen(5))
    clone.load_state_dict(state)
    pool.generator, clone.generator = gen(9), gen(9)
    assert torch.equal(pool.exchange(torch.zeros(2, 1))[0], clone.exchange(torch.zeros(2, 1))[0])


def test_preview_sheet_from_the_cli(tmp_path, capsys):
    from PIL import Image as PILImage

    from medsr.cli import main

    rgb = (torch.rand(3, 70, 66, generator=gen(14)).permute(1, 2, 0).numpy() * 255).astype("uint8")
    PILImage.fromarray(rgb).save(tmp_path / "in.png")
    args = ["degrade-preview", str(tmp_path / "in.png"), "-o", str(tmp_path / "sheet.png"), "--n", "3", "--crop", "64"]
    assert main(args) == 0
    with PILImage.open(tmp_path / "sheet.png") as sheet:
        assert sheet.width == 2 * (64 + 4)  # 1 ground truth + 3 samples in a 2 x 2 grid
    assert "3 degraded samples of a 64x64 crop" in capsys.readouterr().out
    assert main(args) == 1 and "already exists" in capsys.readouterr().err
    assert main([*args[:3], str(tmp_path / "sheet.tif")]) == 2


def test_describe_names_each_stage_and_a_gray_sheet_renders():
    from medsr.core.image import Image
    from medsr.evaluation.figures import degradation_sheet

    config = forced(gaussian_noise_prob=1.0, gray_noise_prob=1.0)
    lines = sample(1, config, gen(3)).describe(0)
    assert lines[0].startswith("1: ") and lines[1].startswith("2: ") and "final" in lines[2]
    assert "gauss s=" in lines[0] and lines[0].endswith("gray")
    sheet = degradation_sheet(Image(pixels=torch.rand(1, 80, 80, generator=gen(15)).numpy()), n=2, crop=64)
    assert sheet.size[0] == 2 * (64 + 4)
