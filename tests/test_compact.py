"""Compact networks with the data-consistency layer, interpolation as a model (the honest
baselines), and the contract training loop (issue 38). Every check here is on generated data."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

import medsr
from medsr.core.consistency import enforce
from medsr.core.resize import resize_bicubic, resize_lanczos
from medsr.evaluation import evaluate as ev
from medsr.nets.compact import COMPACT_PRESETS, CompactSR, compact, compact_from_state_dict, is_compact_state
from medsr.training import contract


def _block_means(image: np.ndarray, s: int) -> np.ndarray:
    """(H, W) -> (H/s, W/s): written out with reshape, independently of medsr's operator."""
    h, w = image.shape
    return image.reshape(h // s, s, w // s, s).mean(axis=(1, 3))


def _trained_looking(net: CompactSR) -> CompactSR:
    """A network whose last layer is not zero (a fresh one adds nothing to the bicubic start)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_consistency_layer_makes_block_means_equal_the_input(scale):
    net = _trained_looking(compact("tiny", channels=1, scale=scale))
    x = torch.rand(2, 1, 13, 17)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 1, 13 * scale, 17 * scale)
    back = np.stack([_block_means(plane[0].double().numpy(), scale) for plane in y])
    assert np.abs(back - x[:, 0].double().numpy()).max() < 1e-6
    without = CompactSR(channels=1, scale=scale, num_feat=8, num_conv=2, consistent=False)
    without.load_state_dict(net.state_dict())
    with torch.no_grad():  # the layer is what does it: without it the means drift
        assert (F.avg_pool2d(without(x), scale) - x).abs().max() > 1e-3


def test_a_fresh_network_starts_from_projected_bicubic():
    net = compact("tiny", channels=1, scale=2)
    x = torch.rand(1, 1, 16, 16)
    bicubic = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    expected = bicubic + F.interpolate(x - F.avg_pool2d(bicubic, 2), scale_factor=2, mode="nearest")
    with torch.no_grad():
        assert torch.allclose(net(x), expected, atol=1e-6)


def test_every_parameter_learns():
    net = compact("tiny")
    with torch.no_grad():
        net.body[-1].weight.normal_(0, 0.1)
    loss = F.l1_loss(net(torch.rand(2, 1, 12, 12)), torch.rand(2, 1, 24, 24))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in net.parameters())


def test_the_layout_is_srvggnetcompacts():
    # SRVGGNetCompact (realesr-general-x4v3): body.0 conv, body.1 PReLU, ..., body.{2n+2} the last conv
    net = compact("compact-s", channels=1, scale=2)
    num_feat, num_conv = COMPACT_PRESETS["compact-s"]
    keys = [k for k in net.state_dict() if k != "input_gain"]
    assert keys[:3] == ["body.0.weight", "body.0.bias", "body.1.weight"]
    assert keys[-2:] == [f"body.{2 * num_conv + 2}.weight", f"body.{2 * num_conv + 2}.bias"]
    assert net.state_dict()[keys[-2]].shape == (1 * 2 * 2, num_feat, 3, 3)
    state = net.state_dict()
    assert is_compact_state(state)
    # upstream's SRVGGNetCompact has the same keys but no input gain (nearest skip, gain 1): another
    # network, which medsr leaves to spandrel
    assert not is_compact_state({k: v for k, v in state.items() if k != "input_gain"})
    rebuilt = compact_from_state_dict(state)
    assert (rebuilt.num_feat, rebuilt.num_conv, rebuilt.scale, rebuilt.channels) == (num_feat, num_conv, 2, 1)


def test_a_compact_checkpoint_loads_and_runs_through_the_engine(tmp_path):
    net = _trained_looking(compact("tiny", channels=1, scale=2))
    path = tmp_path / "mine.safetensors"
    save_file({k: v.half().contiguous() for k, v in net.state_dict().items()}, path)
    model = medsr.load_model(path)
    assert (model.architecture, model.scale, model.in_channels) == ("CompactSR", 2, 1)
    image = (np.random.default_rng(0).random((30, 40)) * 4095).astype(np.uint16)
    out = medsr.upscale(image, model=model, outscale=2, value_range=(0, 4095))
    assert out.shape == (60, 80) and out.dtype == np.uint16
    assert np.array_equal(_block_means(out.astype(np.float64), 2), image)  # integer scale: exact


@pytest.mark.parametrize("name, resize", [("lanczos-projected", resize_lanczos), ("bicubic-projected", resize_bicubic)])
def test_interpolation_then_the_projection_is_a_model(name, resize):
    rng = np.random.default_rng(2)
    image = (rng.random((24, 20)) * 255).astype(np.uint8)
    out = medsr.upscale(image, model=name, outscale=2)
    assert np.array_equal(_block_means(out.astype(np.float64), 2), image)
    # the same as the interpolation followed by medsr's projection, computed here step by step
    pixels = image[None].astype(np.float32) / 255
    expected = enforce(resize(pixels, 48, 40), pixels, bounds=(pixels.min(), pixels.max()), levels=255)
    assert np.abs(out.astype(np.float64) - np.rint(expected[0] * 255)).max() <= 1


def test_evaluate_baselines_and_the_box_degradation():
    protocol = ev.with_degradation(ev.PROTOCOLS["retina-x2"], "box")
    rng = np.random.default_rng(3)
    image = medsr.Image(pixels=rng.random((3, 600, 520)).astype(np.float32))
    lr, gt = ev.make_pair(image, protocol)
    assert lr.shape == (3, 256, 256) and gt.shape == (3, 512, 512)
    assert np.abs(np.stack([_block_means(c.astype(np.float64), 2) for c in gt]) - lr).max() < 1e-6
    [model] = ev.build_models(["lanczos-projected"], tile=None, device="cpu")
    out = model.run(lr, gt.shape[1:])
    assert np.abs(np.stack([_block_means(c.astype(np.float64), 2) for c in out]) - lr).max() < 1e-5
    assert np.allclose(out, enforce(resize_lanczos(lr, 512, 512), lr))
    paper = ev.make_pair(image, ev.PROTOCOLS["retina-x2"])[0]
    assert np.abs(paper - lr).max() > 0.01  # the paper's operator is another one
    with pytest.raises(ValueError, match="degradation"):
        ev.Protocol(name="x", gt_size=8, scale=2, degradation="gauss")


def _volume(path, shape=(64, 64, 12), seed=0):
    """A smooth random volume of int16 'HU' with fine structure, 1 x 1 x 3 mm."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 1, shape)
    for axis in (0, 1):
        data = np.cumsum(data, axis=axis)
    data = (data - data.min()) / np.ptp(data) * 2000 - 1000 + rng.normal(0, 20, shape)
    nibabel.save(nibabel.Nifti1Image(data.astype(np.int16), np.diag([1.0, 1.0, 3.0, 1.0])), path)
    return path


def test_contract_training_validates_and_resumes_exactly(tmp_path):
    train = str(_volume(tmp_path / "a.nii.gz"))
    config = contract.ContractConfig(train=(f"{train}:0-8",), val=(f"{train}:9-11",), preset="tiny", gt_size=32,
                                     margin=4, batch_size=4, iterations=6, val_every=3, save_every=3, lr=1e-3)
    whole = contract.train(config, tmp_path / "whole")
    assert [h["iteration"] for h in whole.history] == [3, 6]
    assert {"model", "lanczos-projected"} <= set(whole.history[-1])
    # a run stopped at 3 and resumed gives the same weights as one that never stopped
    contract.train(config, tmp_path / "half", until=3)
    resumed = contract.train(config, tmp_path / "half", resume_from=tmp_path / "half" / "last.pt")
    for key, value in whole.net_g.state_dict().items():
        assert torch.equal(value, resumed.net_g.state_dict()[key]), key
    assert (tmp_path / "whole" / "best.pt").is_file()


def test_contract_config_refuses_bad_values():
    with pytest.raises(ValueError, match="preset"):
        contract.ContractConfig(train=("a.nii",), preset="huge")
    with pytest.raises(ValueError, match="gt_size"):
        contract.ContractConfig(train=("a.nii",), gt_size=33)
    with pytest.raises(ValueError, match="train"):
        contract.ContractConfig(train=())
    with pytest.raises(ValueError, match="iterations"):
        contract.ContractConfig(train=("a.nii",), iterations=0)
    assert contract.parse_entry("/data/ct.nii.gz:0-39") == (Path("/data/ct.nii.gz"), (0, 39))


def test_a_slice_block_outside_the_volume_is_refused(tmp_path):
    path = _volume(tmp_path / "v.nii.gz")
    with pytest.raises(ValueError, match="outside the volume's 0-11"):
        contract.volume_slices(f"{path}:5-20")
