"""CUDA paths (issue 14): inference precisions against the CPU, tiling, the CUDA memory budget, a
training step in bf16 autocast and channels-last, resume, and torchrun with NCCL.

Marked ``gpu`` and skipped without a CUDA device (CI has none). The tolerances on reduced precision
are first bounds, not measurements: each test prints what it measured, for docs/TRAINING.md. To
check the tests' own logic on a machine without a GPU: ``MEDSR_TEST_DEVICE=cpu pytest -m gpu``
(reduced-precision and NCCL cases then skip).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from medsr.engine import infer
from medsr.engine.infer import upscale_tensor
from medsr.training import checkpoint
from medsr.training.train import build, finetune, train_step

from .conftest import shared_image
from .test_train import TINY, tiny, train_dir  # noqa: F401 (a fixture)

DEVICE = os.environ.get("MEDSR_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU")]
needs_cuda = pytest.mark.skipif(DEVICE != "cuda", reason="CUDA only")


def real_crop(size: int) -> torch.Tensor:
    from medsr.formats.io import read_image

    path = shared_image("retina/STARE/images/im0004.png")
    return torch.from_numpy(read_image(path).pixels[:, 200 : 200 + size, 300 : 300 + size].copy())


@pytest.mark.parametrize("precision,max_levels,mean_levels", [("fp32", 2, 0.05), ("bf16", 24, 1.5), ("fp16", 8, 0.5)])
def test_inference_precisions_against_cpu_fp32(x4plus, precision, max_levels, mean_levels):
    if DEVICE != "cuda":
        pytest.skip("compares CUDA with the CPU (on the CPU it would compare the CPU with itself)")
    lq = real_crop(64)
    reference = upscale_tensor(x4plus, lq, tile=0, device="cpu", precision="fp32")
    out = upscale_tensor(x4plus, lq, tile=0, device=DEVICE, precision=precision)
    levels = (out - reference).abs() * 255
    print(f"{precision} on {DEVICE} vs CPU fp32: max {levels.max():.3f}, mean {levels.mean():.4f} levels of 255")
    # fp32 on CUDA: TF32 convolutions (PyTorch's default on Ampere and later) differ slightly
    assert levels.max() <= max_levels and levels.mean() <= mean_levels


def test_tiles_equal_the_whole_image(x4plus):
    lq = real_crop(96)
    whole = upscale_tensor(x4plus, lq, tile=0, device=DEVICE, precision="fp32")
    tiled = upscale_tensor(x4plus, lq, tile=48, context=24, overlap=16, device=DEVICE, precision="fp32")
    rounded = (torch.round(tiled * 255) - torch.round(whole * 255)).abs()
    print(f"tiled vs whole on {DEVICE}: max {rounded.max():.0f} levels")
    assert rounded.max() <= 1


@needs_cuda
def test_auto_tile_keeps_a_2048_image_within_a_small_cuda_budget(tiny_net):
    """A 256 MiB budget: far below a large card's free memory, so the automatic tile size must split
    the image, and the peak must stay within the budget."""
    device = torch.device(DEVICE)
    budget = 256 << 20
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    calls = []
    out = upscale_tensor(tiny_net, torch.rand(3, 2048, 2048), device=device, precision="bf16", budget_bytes=budget,
                         progress=lambda done, total: calls.append(total))
    peak = torch.cuda.max_memory_allocated(device) - before
    print(f"2048x2048 x4, tiny net: tile {infer.auto_tile(budget, torch.bfloat16)}, {calls[-1]} tiles, "
          f"peak {peak / 2**20:.0f} MiB of a {budget / 2**20:.0f} MiB budget (the output itself included)")
    assert out.shape == (3, 8192, 8192) and calls[-1] > 1
    output_bytes = out.numel() * out.element_size()
    assert peak <= budget + output_bytes  # the activations within the budget; the whole output is kept


def test_training_step_in_bf16_and_channels_last(train_dir, tmp_path):  # noqa: F811
    config = tiny(train_dir, f"run.device={DEVICE}", "run.bf16=true", "run.channels_last=true")
    run = build(config, tmp_path / "run")
    logs, _, _ = train_step(run)
    print(f"one step on {DEVICE}, bf16 autocast, channels-last: {logs}")
    assert all(np.isfinite(v) for v in logs.values())
    for name, net in (("G", run.net_g), ("D", run.net_d)):
        for key, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name} {key}"


def test_resume_on_the_device(train_dir, tmp_path):  # noqa: F811
    """Bit-exact where the kernels are deterministic; cuDNN may pick non-deterministic algorithms,
    so on CUDA the losses must agree to 1e-4 relative, and the test says whether they were exact."""
    extra = (f"run.device={DEVICE}",)
    straight = finetune(tiny(train_dir, *extra), tmp_path / "a")
    first = finetune(tiny(train_dir, *extra, "run.iterations=2"), tmp_path / "b")
    rest = finetune(tiny(train_dir, *extra), tmp_path / "b", resume=True)
    exact = first + rest == straight
    print(f"resume on {DEVICE}: {'bit-exact' if exact else 'not bit-exact'}; {first + rest} vs {straight}")
    for resumed, uninterrupted in zip(first + rest, straight, strict=True):
        for key, value in uninterrupted.items():
            assert resumed[key] == pytest.approx(value, rel=1e-4)
    assert checkpoint.load(tmp_path / "b" / "latest.pth")["iteration"] == 4


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per process: two GPUs for two")
def test_torchrun_with_nccl_two_processes_agree_and_resume(train_dir, tmp_path):  # noqa: F811
    def run(folder, *extra):
        args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                "-m", "medsr.cli", "finetune", "-o", str(folder), *extra]
        result = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    settings = sum((["--set", s] for s in (*TINY, "run.device=cuda")), [])
    result = run(tmp_path / "ddp", "--data", str(train_dir), *settings)
    assert "the 2 processes' networks agree" in result.stdout + result.stderr
    run(tmp_path / "split", "--data", str(train_dir), *settings, "--set", "run.iterations=2")
    run(tmp_path / "split", "--resume", "--set", "run.iterations=4")
    straight, resumed = (checkpoint.load(tmp_path / name / "latest.pth") for name in ("ddp", "split"))
    assert resumed["iteration"] == 4 and len(resumed["rng"]) == 2
    for key, value in straight["net_g_ema"].items():  # cuDNN may pick non-deterministic kernels
        torch.testing.assert_close(resumed["net_g_ema"][key], value, rtol=1e-4, atol=1e-5)
