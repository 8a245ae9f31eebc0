"""The engine with architectures other than RRDBNet: the model descriptor, generic overlap-blended
tiles, and foreign checkpoints through spandrel (skipped where spandrel cannot be imported)."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import medsr
from medsr.cli import main
from medsr.engine.infer import upscale_tensor
from medsr.models import model as model_module
from medsr.models.weights import WeightsError

from .conftest import random_image


class SmallSR(nn.Module):
    """Three 3x3 convolutions and a pixel shuffle: a reach of 3 LR pixels, so tiles with more
    context than that must reproduce the whole-image pass."""

    def __init__(self, scale: int, channels: int = 3) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(16, channels * scale**2, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.body(x), self.scale) + F.interpolate(x, scale_factor=self.scale)


def small_model(scale: int = 2, channels: int = 3, **fields) -> medsr.SRModel:
    torch.manual_seed(0)
    return medsr.SRModel(module=SmallSR(scale, channels), scale=scale, name="small", in_channels=channels,
                         out_channels=channels, **fields)


@pytest.mark.parametrize("scale,multiple", [(2, 1), (3, 2), (4, 4)])
def test_generic_tiles_have_no_seams(scale, multiple):
    model = small_model(scale, size_multiple=multiple)
    lq = torch.rand(3, 45, 38)  # odd sizes: padding to the size multiple, uneven tiles
    whole = upscale_tensor(model, lq, tile=0, device="cpu")
    tiled = upscale_tensor(model, lq, tile=16, context=8, overlap=4, device="cpu")
    assert whole.shape == (3, 45 * scale, 38 * scale)
    # A reach of 3 pixels within 8 of context: the same values, blended with weights summing to one
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    # and the whole pass is the module's own output, cropped
    padded = F.pad(lq[None], (0, -38 % multiple, 0, -45 % multiple), mode="replicate")
    with torch.no_grad():
        direct = model.module(padded)[0, :, : 45 * scale, : 38 * scale].clamp(0, 1)
    torch.testing.assert_close(whole, direct, atol=1e-6, rtol=0)


def test_gray_runs_through_an_rgb_model_and_a_gray_model_directly():
    gray = torch.rand(1, 20, 20)
    rgb_out = upscale_tensor(small_model(2), gray, device="cpu")
    with torch.no_grad():
        expected = small_model(2).module(gray[None].expand(-1, 3, -1, -1))[0].mean(0, keepdim=True).clamp(0, 1)
    torch.testing.assert_close(rgb_out, expected, atol=1e-6, rtol=0)
    assert upscale_tensor(small_model(2, channels=1), gray, device="cpu").shape == (1, 40, 40)
    with pytest.raises(ValueError, match="takes 1 channel"):
        upscale_tensor(small_model(2, channels=1), torch.rand(3, 20, 20), device="cpu")


def test_the_callers_model_is_not_changed_and_precisions_are_checked():
    model = small_model(2, precisions=("fp32",))
    model.module.train()
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    medsr.upscale(random_image(12, 12, 3), model=model)
    assert model.module.training and all(torch.equal(v, before[k]) for k, v in model.module.state_dict().items())
    with pytest.raises(ValueError, match="does not run in bf16"):
        upscale_tensor(model, torch.rand(3, 8, 8), device="cpu", precision="bf16")


def test_descriptor_rejects_what_the_engine_cannot_run():
    with pytest.raises(ValueError, match="channels in"):
        medsr.SRModel(module=nn.Identity(), scale=1, in_channels=3, out_channels=1)
    with pytest.raises(ValueError, match="scale 5"):
        medsr.SRModel(module=nn.Identity(), scale=5)
    with pytest.raises(ValueError, match="precisions"):
        medsr.SRModel(module=nn.Identity(), scale=1, precisions=("int8",))
    with pytest.raises(TypeError, match="wrap other networks"):
        medsr.upscale(random_image(8, 8, 3), model=nn.Identity())


def test_an_rrdbnet_described_by_hand_takes_its_facts_from_the_network():
    net = medsr.rrdbnet("tiny", scale=2).eval()
    by_hand = medsr.SRModel(module=net, scale=2, name="mine")
    assert by_hand.size_multiple == 2  # pixel-unshuffle by 2
    lq = torch.rand(3, 21, 20)  # odd: padded to whole cells
    torch.testing.assert_close(upscale_tensor(by_hand, lq, tile=16, context=8, device="cpu"),
                               upscale_tensor(net, lq, tile=16, context=8, device="cpu"))
    with pytest.raises(ValueError, match=r"scale=4 \(the network: 2\)"):
        medsr.SRModel(module=net, scale=4)
    with pytest.raises(ValueError, match=r"in_channels=1 \(the network: 3\)"):
        medsr.SRModel(module=net, scale=2, in_channels=1, out_channels=1)


def test_a_minimum_size_that_is_not_a_whole_number_of_cells():
    model = small_model(2, size_multiple=8, min_size=20)
    seen = []
    model.module.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[2:])))
    out = upscale_tensor(model, torch.rand(3, 10, 10), tile=0, device="cpu")
    assert out.shape == (3, 20, 20) and seen == [(24, 24)]  # 20 rounded up to whole cells of 8


def test_rrdbnet_descriptor(tiny_net):
    described = model_module.describe_rrdbnet(tiny_net)
    assert (described.scale, described.size_multiple, described.architecture, described.exact_tiles) == (
        4, 1, "RRDBNet", True)


def test_a_foreign_checkpoint_without_spandrel_is_a_clear_error(tmp_path, monkeypatch):
    torch.save(SmallSR(2).state_dict(), tmp_path / "other.pth")
    monkeypatch.setattr(model_module, "spandrel_import_problem", lambda: "spandrel is not installed (test)")
    with pytest.raises(WeightsError, match=r"other\.pth: not an RRDBNet checkpoint.*spandrel is not installed"):
        medsr.load_model(tmp_path / "other.pth")
    image = tmp_path / "in.png"
    medsr.write_image(image, medsr.Image.from_array(random_image(8, 8, 3)))
    assert main(["upscale", str(image), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "other.pth")]) == 1


# ---------------------------------------------------------------------------------------------
# Foreign architectures through spandrel (medsr[zoo])

def needs_spandrel(test):
    """Marked ``zoo``: `make test-zoo` (CI too) runs these where spandrel imports; elsewhere they skip."""
    problem = model_module.spandrel_import_problem()
    skip = pytest.mark.skipif(problem is not None, reason=f"{problem}; `make test-zoo` runs these")
    return pytest.mark.zoo(skip(test))


def compact_checkpoint(path):
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(1)
    torch.save({"params": Compact(num_feat=8, num_conv=2, upscale=4).state_dict()}, path)  # upstream's wrapping


def swinir_checkpoint(path):
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(2)
    net = SwinIR(upscale=2, img_size=16, window_size=4, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2,
                 upsampler="pixelshuffledirect")
    torch.save(net.state_dict(), path)


@needs_spandrel
def test_two_foreign_architectures_load_and_upscale(tmp_path, capsys):
    compact_checkpoint(tmp_path / "compact.pth")
    swinir_checkpoint(tmp_path / "swinir.pth")
    compact, swinir = medsr.load_model(tmp_path / "compact.pth"), medsr.load_model(tmp_path / "swinir.pth")
    assert (compact.architecture, compact.scale, compact.exact_tiles) == ("RealESRGAN Compact", 4, False)
    assert (swinir.architecture, swinir.scale, swinir.precisions[0]) == ("SwinIR", 2, "fp32")
    assert compact.sources[0][0] == tmp_path / "compact.pth" and len(compact.sources[0][1]) == 64
    assert (compact.tiling, swinir.tiling) == ("supported", "discouraged")  # spandrel's advice, carried over
    lq = torch.rand(3, 30, 27)
    for model in (compact, swinir):
        whole = upscale_tensor(model, lq, tile=0, device="cpu")
        assert whole.shape == (3, 30 * model.scale, 27 * model.scale) and whole.std() > 0
    # Compact is convolutional (a reach of 3 pixels): tiles reproduce the whole pass
    torch.testing.assert_close(upscale_tensor(compact, lq, tile=16, context=8, overlap=4, device="cpu"),
                               upscale_tensor(compact, lq, tile=0, device="cpu"), atol=1e-5, rtol=0)
    # Through the CLI, gray and colour, x2 from the x4 model and the native x2
    image = tmp_path / "in" / "gray.png"
    image.parent.mkdir()
    medsr.write_image(image, medsr.Image.from_array(random_image(20, 24, 1).squeeze()))
    for name, outscale in (("compact.pth", "2"), ("swinir.pth", "2")):
        out = tmp_path / f"out-{name}"
        assert main(["upscale", str(image.parent), "-o", str(out), "--model", str(tmp_path / name),
                     "--outscale", outscale]) == 0
        written = medsr.read_image(out / "gray.png")
        assert written.is_gray and written.size == (40, 48)
    assert "swinir.pth" in capsys.readouterr().out
    # and in evaluate, beside a baseline
    data = tmp_path / "data"
    data.mkdir()
    medsr.write_image(data / "a.png", medsr.Image.from_array(random_image(520, 520, 3)))
    assert main(["evaluate", str(data), "--protocol", "retina-x2", "--baselines", "bicubic", "--figures", "0",
                 "--model", str(tmp_path / "swinir.pth"), "-o", str(tmp_path / "report")]) == 0
    assert "| swinir.pth | 1 |" in capsys.readouterr().out


@needs_spandrel
def test_a_damaged_foreign_checkpoint_is_a_clear_error(tmp_path):
    # an old-format ESRGAN file cut short: spandrel recognises it, then fails to build it
    torch.save({"model.0.weight": torch.rand(64, 3, 3, 3), "model.0.bias": torch.rand(64),
                "model.1.sub.0.RDB1.conv1.0.weight": torch.rand(32, 64, 3, 3)}, tmp_path / "cut.pth")
    with pytest.raises(WeightsError, match=r"cut\.pth: "):
        medsr.load_model(tmp_path / "cut.pth")


@needs_spandrel
def test_swinir_tiles_stay_close_to_the_whole_pass(tmp_path):
    """Attention reaches further than its windows, so tiles are not exact: bound the difference."""
    swinir_checkpoint(tmp_path / "swinir.pth")
    model = medsr.load_model(tmp_path / "swinir.pth")
    lq = torch.from_numpy(random_image(48, 48, 3).transpose(2, 0, 1).astype(np.float32) / 255)
    whole = upscale_tensor(model, lq, tile=0, device="cpu")
    tiled = upscale_tensor(model, lq, tile=24, context=12, overlap=8, device="cpu")
    assert (tiled - whole).abs().max() * 255 <= 2


@pytest.mark.parametrize("tiling, tile, whole", [("supported", 16, False), ("discouraged", None, True),
                                                 ("discouraged", 16, False), ("internal", 16, True)])
def test_spandrels_tiling_advice_is_followed(tiling, tile, whole):
    """An architecture that tiles itself ("internal") always sees the whole image; one whose tiles
    change the output ("discouraged") sees it whole unless a tile size is asked for."""
    from medsr.engine.infer import upscale_tensor
    from medsr.models.model import SRModel

    seen = []

    class Nearest(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    model = SRModel(module=Nearest(), scale=2, name="nearest", architecture="Nearest", tiling=tiling)
    out = upscale_tensor(model, torch.rand(3, 100, 90), tile=tile, context=8, overlap=4, device="cpu",
                         precision="fp32", budget_bytes=1 << 30)
    assert out.shape == (3, 200, 180)
    assert (seen == [(100, 90)]) is whole, seen
