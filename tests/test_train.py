"""Fine-tuning: networks and their official layouts, the loop, exact resume, config, DDP."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medsr.cli import main
from medsr.core import files
from medsr.models import pretrained, state_dicts
from medsr.models.weights import WeightsError
from medsr.nets.unet import unet_discriminator
from medsr.nets.vgg import VGG19Features
from medsr.training import checkpoint
from medsr.training.config import build_config
from medsr.training.train import build, finetune, train_step

from .conftest import random_image

TINY = ("model.preset=tiny", "model.init_g=scratch", "model.d_warmup_iters=1", "loss.perceptual_weight=0",
        "data.batch_size=2", "data.pool_size=4", "data.gt_size=32", "run.iterations=4", "run.log_every=1",
        "run.save_every=2", "run.image_every=2")


@pytest.fixture
def train_dir(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    PILImage.fromarray(random_image(48, 40, 3)).save(folder / "a.png")
    PILImage.fromarray(random_image(40, 56, 3, seed=1)).save(folder / "b.jpg")
    PILImage.fromarray(random_image(36, 34, 1, np.uint16, seed=2).squeeze()).save(folder / "c16.png")
    return folder


def tiny(train_dir, *extra: str):
    return build_config(overrides=(*TINY, f"data.train={train_dir}", *extra))


def torchvision_vgg_file(path) -> str:
    """A VGG19 file in torchvision's layout (random weights; the real ones cannot be downloaded here)."""
    torch.manual_seed(0)
    state = VGG19Features().state_dict()
    state["classifier.0.weight"] = torch.zeros(2, 2)  # present in torchvision files, ignored
    torch.save(state, path)
    return str(path)


def test_discriminator_matches_the_official_layout(tmp_path):
    net = unet_discriminator("x4plus")
    # 4,376,897 parameters: docs/SOURCES.md section 1 (the official RealESRGAN_x4plus_netD.pth).
    assert sum(p.numel() for p in net.parameters()) == 4_376_897
    keys = set(net.state_dict())
    assert {"conv0.weight", "conv0.bias", "conv1.weight_orig", "conv1.weight_u", "conv1.weight_v",
            "conv9.weight", "conv9.bias"} <= keys and "conv1.bias" not in keys
    torch.save({"params": net.state_dict()}, tmp_path / "netD.pth")
    loaded = pretrained.load_discriminator(tmp_path / "netD.pth")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    assert net(torch.rand(1, 3, 32, 48)).shape == (1, 1, 32, 48)


def test_vgg_loads_a_torchvision_layout_and_never_substitutes(tmp_path, monkeypatch):
    path = torchvision_vgg_file(tmp_path / "vgg19-dcbb9e9d.pth")
    vgg = pretrained.load_vgg19(path, layers=("conv1_2", "conv5_4"))
    keys = list(vgg.state_dict())
    assert len(keys) == 32 and keys[0] == "features.0.weight" and keys[-1] == "features.34.bias"  # 16 convs
    assert set(vgg(torch.rand(1, 3, 32, 32))) == {"conv1_2", "conv5_4"}
    with pytest.raises(WeightsError, match="missing.pth: VGG19 weights file not found"):
        pretrained.load_vgg19(tmp_path / "missing.pth", layers=("conv1_2",))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(WeightsError, match=r"vgg19-dcbb9e9d\.pth not found .*perceptual_weight=0"):
        pretrained.load_vgg19(None, layers=("conv1_2",), online=False)


def test_every_parameter_gets_a_gradient_and_nothing_is_nan(train_dir, tmp_path):
    vgg = torchvision_vgg_file(tmp_path / "vgg.pth")
    run = build(tiny(train_dir, "loss.perceptual_weight=1.0", f"loss.vgg_weights={vgg}"), tmp_path / "run")
    logs, lq, sr = train_step(run)
    assert set(logs) == {"l_pix", "l_percep", "l_gan", "l_d_real", "l_d_fake"}
    assert all(np.isfinite(v) for v in logs.values())
    for name, net in (("G", run.net_g), ("D", run.net_d)):
        for key, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name} {key}"
    assert lq.shape == (2, 3, 8, 8) and sr.shape == (2, 3, 32, 32)


def test_smoke_run_export_and_upscale(train_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["finetune", "-o", str(run_dir), "--data", str(train_dir), "--val", str(train_dir),
                 *sum((["--set", s] for s in (*TINY, "run.val_every=2")), [])])
    assert code == 0
    out = capsys.readouterr().out
    assert "iter 4/4" in out and "validation" in out and "D warm-up 1/1" in out
    assert (run_dir / "config.yaml").exists() and (run_dir / "log.csv").exists()
    state = checkpoint.load(run_dir / "latest.pth")
    assert state["iteration"] == 4 and state["config"]["model"]["preset"] == "tiny"
    assert main(["export", str(run_dir / "latest.pth"), "-o", str(tmp_path / "m.safetensors")]) == 0
    net = state_dicts.load_generator(tmp_path / "m.safetensors")
    assert all(torch.equal(net.state_dict()[k], v.half().float()) for k, v in state["net_g_ema"].items())
    assert main(["upscale", str(train_dir / "a.png"), "-o", str(tmp_path / "sr.png"),
                 "--model", str(tmp_path / "m.safetensors")]) == 0
    with pytest.raises(ValueError, match="holds a run already"):
        finetune(tiny(train_dir), run_dir)


def test_resume_equals_an_uninterrupted_run(train_dir, tmp_path):
    vgg = torchvision_vgg_file(tmp_path / "vgg.pth")
    extra = ("loss.perceptual_weight=1.0", f"loss.vgg_weights={vgg}")
    straight = finetune(tiny(train_dir, *extra), tmp_path / "a")
    first = finetune(tiny(train_dir, *extra, "run.iterations=2"), tmp_path / "b")
    # A new process would start with other global RNG state: scramble it to show it is restored.
    torch.manual_seed(12345)
    np.random.seed(54321)
    rest = finetune(tiny(train_dir, *extra), tmp_path / "b", resume=True)
    assert len(straight) == 4 and len(first) == 2 and len(rest) == 2
    assert first + rest == straight  # identical losses, to the last bit
    a, b = checkpoint.load(tmp_path / "a" / "latest.pth"), checkpoint.load(tmp_path / "b" / "latest.pth")
    assert all(torch.equal(a["net_g_ema"][k], b["net_g_ema"][k]) for k in a["net_g_ema"])


def test_config_errors_name_the_key(train_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown config key 'run.iteration'"):
        build_config(overrides=("run.iteration=5",))
    with pytest.raises(ValueError, match="'data.batch_size': expected int"):
        build_config(overrides=("data.batch_size=ten",))
    with pytest.raises(ValueError, match="pool_size 180 must be a multiple of data.batch_size 7"):
        build_config(overrides=("data.batch_size=7",))
    (tmp_path / "bad.yaml").write_text("loss:\n  gan_wieght: 0.2\n")
    with pytest.raises(ValueError, match="unknown config key 'loss.gan_wieght'"):
        build_config(yaml_file=tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="unknown preset 'brain'"):
        build_config(preset="brain")
    assert build_config(preset="cxr").run.iterations == 16600
    assert build_config(preset="retina").data.batch_size == 10


def test_missing_vgg_stops_the_run_with_the_file_name(train_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(WeightsError, match="vgg19-dcbb9e9d.pth"):
        finetune(tiny(train_dir, "loss.perceptual_weight=1.0"), tmp_path / "run")


def test_prepare_multiscale_and_crops(train_dir, tmp_path, capsys):
    assert main(["prepare", "multiscale", str(train_dir), "-o", str(tmp_path / "ms"), "--shortest-side", "20"]) == 0
    files = sorted(p.name for p in (tmp_path / "ms").iterdir())
    assert len(files) == 15 and "a_x0.5.png" in files and "b_s20.png" in files  # JPEG written as PNG
    assert PILImage.open(tmp_path / "ms" / "a_x0.333.png").size == (13, 16)
    assert PILImage.open(tmp_path / "ms" / "c16_x0.75.png").mode == "I;16"  # 16-bit kept
    assert main(["prepare", "crops", str(train_dir), "-o", str(tmp_path / "cr"), "--size", "32", "--step", "16"]) == 0
    crops = sorted((tmp_path / "cr").iterdir())
    # a: 48x40 -> rows [0, 16], cols [0, 8]; b: 40x56 -> rows [0, 8], cols [0, 16, 24]; c: 36x34 -> [0, 4] x [0, 2]
    assert len(crops) == 4 + 6 + 4
    assert all(PILImage.open(p).size[0] <= 32 for p in crops)
    assert main(["prepare", "crops", str(train_dir), "-o", str(tmp_path / "cr")]) == 2
    assert "already exists" in capsys.readouterr().err


def torchrun_finetune(run_dir, train_dir, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
            "-m", "medsr.cli", "finetune", "-o", str(run_dir), *extra]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_cpu_processes_with_gloo_agree_and_resume_exactly(train_dir, tmp_path):
    settings = [*sum((["--set", s] for s in TINY), [])]
    result = torchrun_finetune(tmp_path / "ddp", train_dir, "--data", str(train_dir), *settings)
    state = checkpoint.load(tmp_path / "ddp" / "latest.pth")
    assert state["iteration"] == 4 and len(state["rng"]) == 2
    assert state["rng"][0]["generators"]["crop"].ne(state["rng"][1]["generators"]["crop"]).any()
    assert result.stdout.count("iter 4/4") == 1  # rank 0 alone reports
    # every save compares the two processes' networks (DDP must keep them equal)
    assert "iteration 4: the 2 processes' networks agree" in result.stdout + result.stderr
    # two iterations, then a resumed two-process run: the same weights as the run without a stop
    torchrun_finetune(tmp_path / "split", train_dir, "--data", str(train_dir), *settings, "--set", "run.iterations=2")
    torchrun_finetune(tmp_path / "split", train_dir, "--resume", "--set", "run.iterations=4")
    resumed = checkpoint.load(tmp_path / "split" / "latest.pth")
    assert resumed["iteration"] == 4
    assert all(torch.equal(state["net_g_ema"][k], resumed["net_g_ema"][k]) for k in state["net_g_ema"])
    assert all(torch.equal(state["net_d"][k], resumed["net_d"][k]) for k in state["net_d"])


def test_pixel_only_run_has_no_discriminator_and_resumes_exactly(train_dir, tmp_path):
    # The fidelity recipe (Real-ESRNet stage): gan_weight 0 means no discriminator at all.
    extra = ("loss.gan_weight=0", "model.d_warmup_iters=0", "degrade.sharpen.weight=0")
    run = build(tiny(train_dir, *extra), tmp_path / "built")
    assert run.net_d is None and run.optim_d is None
    logs, _, _ = train_step(run)
    assert set(logs) == {"l_pix"} and np.isfinite(logs["l_pix"])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in run.net_g.parameters())
    straight = finetune(tiny(train_dir, *extra), tmp_path / "a")
    finetune(tiny(train_dir, *extra, "run.iterations=2"), tmp_path / "b")
    rest = finetune(tiny(train_dir, *extra), tmp_path / "b", resume=True)
    assert straight[2:] == rest
    assert checkpoint.load(tmp_path / "b" / "latest.pth")["net_d"] is None


def test_fidelity_presets_are_pixel_only():
    for name in ("retina-fidelity", "cxr-fidelity"):
        config = build_config(preset=name)
        assert config.loss.gan_weight == 0 and config.loss.perceptual_weight == 0
        assert config.degrade.sharpen.weight == 0  # the target is the true ground truth
    with pytest.raises(ValueError, match="init_d"):
        build_config(overrides=("loss.gan_weight=0", "model.init_d=netD.pth"))


@pytest.mark.slow
def test_finetuning_starts_from_the_published_generator(x4plus, train_dir, tmp_path, monkeypatch):
    """The paper's recipe: init_g=realesrgan-x4plus. The run's generator and its EMA start as the
    published weights, and a step moves the generator away from them, a little."""
    from medsr.training.train import init_pretrained

    monkeypatch.setenv("MEDSR_OFFLINE", "1")  # the ncnn copy, converted (as the x4plus fixture did)
    config = build_config(overrides=("model.preset=x4plus", "model.init_g=realesrgan-x4plus", "model.d_warmup_iters=0",
                                     "loss.perceptual_weight=0", "loss.gan_weight=0", "data.batch_size=1",
                                     "data.pool_size=1", "data.gt_size=32", "run.iterations=1",
                                     f"data.train={train_dir}"))
    run = build(config, tmp_path / "run")
    init_pretrained(run)
    published = x4plus.module.state_dict()
    assert all(torch.equal(run.net_g.state_dict()[k], v) for k, v in published.items())
    assert all(torch.equal(run.net_g_ema.state_dict()[k], v) for k, v in published.items())
    logs, _, _ = train_step(run)
    assert np.isfinite(logs["l_pix"])
    moved = max((run.net_g.state_dict()[k] - v).abs().max().item() for k, v in published.items())
    assert 0 < moved < 1e-2  # one Adam step of 2e-4 per weight at most, roughly


def test_training_images_are_decoded_once_and_batches_do_not_change(train_dir, monkeypatch):
    """A GPU step takes milliseconds: decoding every crop's whole image again (as before) made the
    data the bottleneck. Images are kept decoded within a memory budget; the batches stay the same."""
    from medsr.training import data

    def batches(budget: int) -> tuple[list[torch.Tensor], int]:
        reads = []
        real_read = data.read_image
        monkeypatch.setattr(data, "read_image", lambda path: reads.append(path) or real_read(path))
        images = data.HRImages(train_dir, gt_size=32, cache_bytes=budget)
        order, crop = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        out = [images.batch(2, order, crop) for _ in range(6)]  # 12 crops: 4 epochs of 3 images
        return out, len(reads)

    cached, cached_reads = batches(budget=1 << 30)
    uncached, uncached_reads = batches(budget=0)
    assert all(torch.equal(a, b) for a, b in zip(cached, uncached, strict=True))
    assert cached_reads == 3  # the check at the start (one read each), then never again
    assert uncached_reads == 3 + 12  # without room: every crop reads its image
    half, half_reads = batches(budget=48 * 40 * 3 * 4)  # room for a.png alone (float32 RGB)
    assert all(torch.equal(a, b) for a, b in zip(half, uncached, strict=True))
    assert 3 < half_reads < 15


def test_export_is_byte_for_byte_reproducible(train_dir, tmp_path):
    """The same checkpoint exports to the same bytes in every process, so that a digest of an export
    can be checked by exporting again (safetensors writes its metadata in a per-process hash order)."""
    finetune(tiny(train_dir), tmp_path / "run")
    digests = set()
    for i in range(6):  # the old two keys came out in one order in all 6 only once in 32
        out = tmp_path / f"m{i}.safetensors"
        subprocess.run([sys.executable, "-m", "medsr.cli", "export", str(tmp_path / "run" / "latest.pth"),
                        "-o", str(out)], check=True, capture_output=True)
        digests.add(files.sha256(out))
    assert len(digests) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_saves_where_it_stopped_and_resumes_exactly(train_dir, tmp_path, sig):
    """Ctrl-C or a scheduler's SIGTERM (a time limit) ends the iteration under way, saves, and exits
    with 130; resuming then gives the iterations of a run that never stopped."""
    settings = (*TINY, "run.iterations=60", "run.save_every=1000", "run.bf16=false", f"data.train={train_dir}")
    straight = finetune(build_config(overrides=settings), tmp_path / "a")
    args = [sys.executable, "-m", "medsr.cli", "finetune", "-o", str(tmp_path / "b"),
            *sum((["--set", s] for s in settings), [])]
    # a background shell starts its jobs with SIGINT ignored, and an ignored signal stays ignored
    default = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default) as proc:
        for line in proc.stdout:
            if line.startswith("iter 3/"):
                proc.send_signal(sig)
                break
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped = checkpoint.load(tmp_path / "b" / "latest.pth")["iteration"]
    assert 3 <= stopped < 60 and f"stopped at iteration {stopped}" in out
    rest = finetune(build_config(overrides=settings), tmp_path / "b", resume=True)
    assert rest == straight[stopped:]


def _signal_at(monkeypatch, iteration: int, sig: int) -> None:
    from medsr.training import train

    real_step = train.train_step

    def step(run):
        if run.iteration == iteration:
            os.kill(os.getpid(), sig)
        return real_step(run)

    monkeypatch.setattr(train, "train_step", step)


def test_a_signal_in_process_stops_after_its_iteration_and_handlers_come_back(train_dir, tmp_path, monkeypatch):
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (not a background job)
    try:
        before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        _signal_at(monkeypatch, 2, signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            finetune(tiny(train_dir, "run.save_every=1000"), tmp_path / "run")
        assert checkpoint.load(tmp_path / "run" / "latest.pth")["iteration"] == 2
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    finally:
        signal.signal(signal.SIGINT, outer)


def test_an_ignored_signal_stays_ignored(train_dir, tmp_path, monkeypatch):
    """A run started with SIGINT ignored (a background job of a script) is not stopped by one."""
    _signal_at(monkeypatch, 2, signal.SIGINT)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert len(finetune(tiny(train_dir), tmp_path / "run")) == 4
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
