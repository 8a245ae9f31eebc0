"""bf16 on the CPU (issue 22): the network cast to bf16 for inference, bf16 autocast for training.

Correctness runs on every CPU (bf16 is emulated where it is not native, only slower); the choice of
bf16 by default needs a CPU with native bf16 and skips elsewhere, with the reason.
"""

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import medsr
from medsr.engine import devices, infer
from medsr.formats.io import read_image
from medsr.nets.rrdbnet import rrdbnet
from medsr.training import checkpoint
from medsr.training.train import build, finetune

from .conftest import random_image
from .test_train import TINY, tiny, train_dir  # noqa: F401 (a fixture)

NATIVE = devices.cpu_has_native_bf16()
needs_native = pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (AVX512-BF16 or AMX): "
                                                     "bf16 is emulated here and fp32 stays the default")


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return medsr.SRModel(module=rrdbnet("tiny").eval(), scale=4, name="tiny")


def test_cpu_bf16_casts_the_trunk_and_keeps_the_head_in_fp32(tiny_model):
    cpu = torch.device("cpu")
    prepared = infer._prepared(tiny_model.module, cpu, torch.bfloat16, head_dtype=torch.float32)
    assert prepared is not tiny_model.module
    head = {id(p) for m in prepared.head_modules() for p in m.parameters()}
    for p in prepared.parameters():
        assert p.dtype == (torch.float32 if id(p) in head else torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in tiny_model.module.parameters())  # the caller's, untouched
    assert infer._prepared(prepared, cpu, torch.bfloat16, head_dtype=torch.float32) is prepared  # ready as it is


@pytest.mark.parametrize("head_fp32", [True, False])
def test_bf16_output_is_close_to_fp32(tiny_model, monkeypatch, head_fp32):
    monkeypatch.setattr(infer, "BF16_HEAD_IN_FP32", head_fp32)
    lq = torch.from_numpy(np.moveaxis(random_image(24, 32, 3), 2, 0) / np.float32(255))
    fp32 = infer.upscale_tensor(tiny_model, lq, device="cpu", precision="fp32")
    bf16 = infer.upscale_tensor(tiny_model, lq, device="cpu", precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    # bf16 keeps 8 bits of mantissa: a relative error of 2**-9 per operation; a few levels of 255 at most
    assert (bf16 - fp32).abs().max() < 8 / 255 and (bf16 - fp32).abs().mean() < 1 / 255


def test_the_contract_holds_in_bf16(tmp_path, tiny_model):
    stored = np.rint(random_image(32, 40, 1, np.uint16)[..., 0] / 65535 * 3000 + 500).astype(np.uint16)
    PILImage.fromarray(stored).save(tmp_path / "in.png")
    sr = medsr.upscale(read_image(tmp_path / "in.png"), model=tiny_model, precision="bf16")
    medsr.write_image(tmp_path / "out.png", sr)
    with PILImage.open(tmp_path / "out.png") as im:
        out = np.asarray(im).astype(np.float64)
    np.testing.assert_array_equal(out.reshape(32, 4, 40, 4).mean(axis=(1, 3)), stored)  # exact, as in fp32


@needs_native
def test_auto_precision_is_bf16_on_a_cpu_with_native_bf16(tiny_model):
    assert infer.pick_precision("auto", torch.device("cpu"), tiny_model) == torch.bfloat16


def test_auto_precision_is_fp32_without_native_bf16(tiny_model, monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert infer.pick_precision("auto", torch.device("cpu"), tiny_model) == torch.float32


def test_auto_precision_respects_what_the_model_runs_in(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    fp32_only = medsr.SRModel(module=torch.nn.Identity(), scale=1, precisions=("fp32",))
    assert infer.pick_precision("auto", torch.device("cpu"), fp32_only) == torch.float32


# ---------------------------------------------------------------------------------------------
# Training


def test_cpu_training_runs_bf16_autocast_where_asked(train_dir, tmp_path):  # noqa: F811
    run = build(tiny(train_dir, "run.bf16=true"), tmp_path / "a")
    assert run.bf16 and next(run.net_g.parameters()).dtype == torch.float32  # master weights fp32
    off = build(tiny(train_dir, "run.bf16=false"), tmp_path / "b")
    assert not off.bf16
    auto = build(tiny(train_dir), tmp_path / "c")
    assert auto.bf16 == NATIVE  # None: where native


def test_bf16_training_resumes_exactly(train_dir, tmp_path, caplog):  # noqa: F811
    caplog.set_level("INFO", logger="medsr")
    extra = ("run.bf16=true", "loss.gan_weight=0", "model.d_warmup_iters=0")
    straight = finetune(tiny(train_dir, *extra), tmp_path / "a")
    first = finetune(tiny(train_dir, *extra, "run.iterations=2"), tmp_path / "b")
    torch.manual_seed(12345)
    rest = finetune(tiny(train_dir, *extra), tmp_path / "b", resume=True)
    assert first + rest == straight  # identical losses, to the last bit
    a, b = checkpoint.load(tmp_path / "a" / "latest.pth"), checkpoint.load(tmp_path / "b" / "latest.pth")
    assert all(torch.equal(a["net_g_ema"][k], b["net_g_ema"][k]) for k in a["net_g_ema"])
    assert all(v.dtype == torch.float32 for v in a["net_g_ema"].values())
    assert "device cpu: bf16 autocast (as run.bf16 says)" in caplog.text
