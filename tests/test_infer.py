import numpy as np
import pytest
import torch

from medsr.engine.infer import HEAD_BYTES_PER_PIXEL, _ramps, _spans, auto_tile, pick_precision, upscale_tensor
from medsr.formats.io import read_image
from medsr.nets.rrdbnet import rrdbnet

from .conftest import shared_image

# The tiny preset's receptive field is under 40 LR pixels (2 RRDBs of 15 convs, plus 6 more convs),
# so tiles with that much context must reproduce the whole-image pass to float rounding.
TINY_REACH = 40


@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 8), (97, 40, 16), (64, 64, 8), (33, 16, 4)])
def test_spans_cover_and_ramps_sum_to_one(length, tile, overlap):
    spans = _spans(length, tile, overlap)
    covered = np.zeros(length, int)
    for start, stop in spans:
        covered[start:stop] += 1
    assert covered.min() >= 1 and spans[0][0] == 0 and spans[-1][1] == length
    total = torch.zeros(length * 4)
    for (start, stop), w in zip(spans, _ramps(spans, length, 4), strict=True):
        assert (w > 0).all()
        total[start * 4 : stop * 4] += w
    torch.testing.assert_close(total, torch.ones_like(total))


@pytest.mark.parametrize("scale, size", [(4, (50, 37)), (2, (45, 62)), (1, (41, 30))])
def test_tiled_equals_whole_with_full_context(scale, size):
    torch.manual_seed(0)
    net = rrdbnet("tiny", scale=scale).eval()
    lq = torch.rand(3, *size)
    whole = upscale_tensor(net, lq, tile=0)
    tiled = upscale_tensor(net, lq, tile=16, context=TINY_REACH, overlap=4)
    assert whole.shape == (3, size[0] * scale, size[1] * scale)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_head_strips_are_exact():
    torch.manual_seed(0)
    net = rrdbnet("tiny").eval()
    lq = torch.rand(3, 30, 26)
    whole = upscale_tensor(net, lq, tile=0)
    # A budget that fits 3 feature rows of the head at a time: 10 strips.
    strips = upscale_tensor(net, lq, tile=0, budget_bytes=HEAD_BYTES_PER_PIXEL * 26 * 3)
    torch.testing.assert_close(strips, whole, atol=1e-6, rtol=0)


def test_short_context_differs_so_the_test_above_can_fail():
    torch.manual_seed(0)
    net = rrdbnet("tiny").eval()
    lq = torch.rand(3, 48, 48)
    whole = upscale_tensor(net, lq, tile=0)
    tiled = upscale_tensor(net, lq, tile=16, context=0, overlap=4)
    assert (tiled - whole).abs().max() > 1e-3


def test_gray_input_is_the_mean_of_the_rgb_output(tiny_net):
    gray = torch.rand(1, 20, 24)
    out_gray = upscale_tensor(tiny_net, gray, tile=0)
    with torch.no_grad():
        expected = tiny_net(gray.expand(3, -1, -1)[None])[0].mean(0).clamp(0, 1)
    assert out_gray.shape == (1, 80, 96)
    torch.testing.assert_close(out_gray[0], expected, atol=1e-6, rtol=0)


def test_progress_is_reported_per_tile(tiny_net):
    calls = []
    upscale_tensor(tiny_net, torch.rand(3, 40, 40), tile=16, overlap=4, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] == len(calls) >= 4


def test_auto_tile_follows_the_budget():
    small = auto_tile(256 << 20)
    large = auto_tile(4 << 30)
    assert 64 <= small < large and small % 8 == 0 and large % 8 == 0


def test_precision_choices():
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) == torch.float32
    assert pick_precision("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 inference is not supported on CPU"):
        pick_precision("fp16", cpu)
    with pytest.raises(ValueError, match="unknown precision"):
        pick_precision("fp8", cpu)


@pytest.mark.slow
def test_tiled_matches_whole_image_on_the_published_model(x4plus):
    """The seamless-tiling promise with the real weights: at most 1 grey level on 8-bit output."""
    image = read_image(shared_image("retina/STARE/images/im0004.png"))
    # A 64x320 strip across vessels: five tiles side by side, each seeing 64 (default) context
    # pixels, far less than the ~350-pixel reach of the network.
    lq = torch.from_numpy(image.pixels[:, 260:324, 150:470].copy())
    whole = upscale_tensor(x4plus, lq, tile=0)
    tiled = upscale_tensor(x4plus, lq, tile=96)
    diff = (torch.round(tiled * 255) - torch.round(whole * 255)).abs()
    assert diff.max() <= 1


def test_inference_leaves_the_callers_module_as_it_was(tiny_net):
    import medsr

    tiny_net.train()
    before = {k: (v.clone(), v.stride()) for k, v in tiny_net.state_dict().items()}
    medsr.upscale(np.zeros((8, 8, 3), np.uint8) + 100, model=tiny_net)
    assert tiny_net.training
    for key, (value, stride) in before.items():
        assert torch.equal(tiny_net.state_dict()[key], value) and tiny_net.state_dict()[key].stride() == stride


def test_named_models_are_read_once_and_built_apart(tiny_pair, monkeypatch):
    from medsr.models import weights

    reads = []
    real = weights.load_generator
    monkeypatch.setattr(weights, "load_generator", lambda *a, **k: reads.append(a) or real(*a, **k))
    first, second = weights.load_model("retina"), weights.load_model("retina")
    assert len(reads) <= 1 and first.module is not second.module
    with torch.no_grad():
        first.module.conv_last.bias.add_(1)
    assert not torch.equal(first.module.conv_last.bias, second.module.conv_last.bias)


def test_cpu_budget_follows_the_available_memory(monkeypatch):
    from medsr.engine import devices, infer

    for available, expected in ((None, 2 << 30), (2 << 30, 1 << 30), (20 << 30, 5 << 30), (200 << 30, 16 << 30)):
        monkeypatch.setattr(devices, "available_memory", lambda a=available: a)
        assert infer.memory_budget(torch.device("cpu")) == expected
    assert auto_tile(5 << 30) > auto_tile(2 << 30) == 592  # 592: the figure of the 2 GiB budget (BENCHMARKS.md)


def test_freed_memory_is_kept_for_reuse_unless_the_user_tuned_the_allocator():
    """Large allocations would otherwise be fresh mappings, a page fault per 4 KiB on every use. In
    fresh processes: what the heap holds from earlier tests would serve allocations without faults."""
    import os
    import subprocess
    import sys

    from medsr.engine import infer

    if infer._glibc() is None:
        pytest.skip("not glibc: nothing to set")
    script = """
import resource, torch
from medsr.engine import infer

def faults_of_ten_allocations(size):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.ones(size)  # written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_of_ten_allocations(16 << 20)  # 64 MiB
kept = infer.keep_freed_memory()
faults_of_ten_allocations(16 << 20)  # the first allocation grows the heap
reused = faults_of_ten_allocations(16 << 20), faults_of_ten_allocations(1 << 20)  # 64 and 4 MiB
infer.return_freed_memory()
print(default, kept, *reused)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    default, kept, reused_64, reused_4 = (int(v) if v.isdigit() else v for v in result.stdout.split())
    # glibc's default maps each block afresh: a fault per page, 4 KiB (163,840 for ten 64 MiB blocks)
    # or 2 MiB where the kernel backs them with transparent huge pages (320): counted relative to it
    assert default >= 10 * 64 // 2  # at least a fault per huge page of each block
    assert kept == "True" and reused_64 * 5 < default and reused_4 * 20 < default
    tuned = {**env, "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=tuned)
    assert result.stdout.split()[1] == "False"  # the user's settings are left alone


def test_a_prepared_copy_is_reused_until_the_weights_change():
    from medsr.engine import infer

    net = rrdbnet("tiny")  # in training mode: every call needs a prepared (eval) copy
    first = infer._prepared(net, torch.device("cpu"), torch.bfloat16)
    assert first is not net and infer._prepared(net, torch.device("cpu"), torch.bfloat16) is first
    with torch.no_grad():
        next(net.parameters()).add_(1.0)  # an optimiser step: in place
    again = infer._prepared(net, torch.device("cpu"), torch.bfloat16)
    assert again is not first
    torch.testing.assert_close(next(again.parameters()).float(), next(net.parameters()).bfloat16().float())
    assert net.training and next(net.parameters()).dtype == torch.float32  # the caller's network unchanged


def _fake_cgroups(root, proc_line: str, files: dict[str, str]):
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "self-cgroup").write_text(proc_line)
    return root / "self-cgroup"


@pytest.mark.parametrize("version", ["v2", "v1", "v1-parent", "namespace"])
def test_available_memory_respects_the_cgroup_limit(tmp_path, monkeypatch, version):
    """In a container or a SLURM job the limit is the cgroup's, not the host's free memory that psutil
    reports; page cache (file pages the kernel reclaims) does not count as used. Numbers made up here:
    each case leaves 2 GiB of room."""
    from medsr.engine import devices

    gib = 1 << 30
    if version == "v2":  # the job's step (4 GiB) inside a job without a limit
        proc = _fake_cgroups(tmp_path, "0::/job/step\n", {
            "job/memory.max": "max\n",
            "job/step/memory.max": f"{4 * gib}\n", "job/step/memory.current": f"{3 * gib}\n",
            "job/step/memory.stat": f"anon 1\ninactive_file {gib // 2}\nactive_file {gib // 2}\n"})
    elif version == "v1":  # v1 counts the group's own pages and, as total_*, its children's
        proc = _fake_cgroups(tmp_path, "4:memory:/job\n1:cpu:/\n", {
            "memory/memory.limit_in_bytes": "9223372036854771712\n",
            "memory/job/memory.limit_in_bytes": f"{5 * gib}\n",
            "memory/job/memory.usage_in_bytes": f"{4 * gib}\n",
            "memory/job/memory.stat": f"inactive_file 7\nactive_file 7\ntotal_inactive_file {gib // 4}\n"
                                      f"total_active_file {3 * gib // 4}\n"})
    elif version == "v1-parent":  # the parent's limit is the lower one
        proc = _fake_cgroups(tmp_path, "4:memory:/job/step\n", {
            "memory/job/memory.limit_in_bytes": f"{3 * gib}\n", "memory/job/memory.usage_in_bytes": f"{gib}\n",
            "memory/job/memory.stat": "total_inactive_file 0\n",
            "memory/job/step/memory.limit_in_bytes": f"{8 * gib}\n",
            "memory/job/step/memory.usage_in_bytes": f"{gib}\n",
            "memory/job/step/memory.stat": "total_active_file 0\n"})
    else:  # a cgroup namespace: the listed path is not under the mount, whose root is the group itself
        proc = _fake_cgroups(tmp_path, "0::/some/host/path\n", {
            "memory.max": f"{3 * gib}\n", "memory.current": f"{gib}\n", "memory.stat": "inactive_file 0\n"})
    monkeypatch.setattr(devices, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(devices, "PROC_CGROUP", proc)
    monkeypatch.setattr(devices.psutil, "virtual_memory", lambda: type("M", (), {"available": 100 * gib}))
    assert devices.available_memory() == 2 * gib
    monkeypatch.setattr(devices, "PROC_CGROUP", tmp_path / "absent")
    assert devices.available_memory() == 100 * gib  # no cgroup information: psutil's figure
