"""Faults, hostile inputs and concurrency (issue 12): every case ends in a named error, and no run
loses or replaces another's work."""

import logging
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medsr.cli import main
from medsr.core import files
from medsr.engine import devices
from medsr.models import state_dicts
from medsr.training import checkpoint
from medsr.training.config import MAX_CONFIG_BYTES, build_config
from medsr.training.train import export, finetune

from .conftest import random_image
from .test_train import TINY


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", "data: batch_size 0: must be within 1..4096"),
    ("data.gt_size=0", "data: gt_size 0: must be within 8..4096"),
    ("data.gt_size=-32", "data: gt_size -32: must be within 8..4096"),
    ("data.pool_size=0", "data: pool_size 0: must be within"),
    ("run.save_every=0", "run: save_every 0: must be at least 1"),
    ("run.log_every=0", "run: log_every 0: must be at least 1"),
    ("run.val_every=0", "run: val_every 0: must be at least 1"),
    ("run.device=tpu", "run: device 'tpu': use auto, cpu, cuda or cuda:N"),
    ("model.ema_decay=2", "model: ema_decay 2.0: must be within 0..0.999999"),
    ("optim.lr_g=.nan", "optim: lr_g nan: must be within"),
    ("loss.gan_weight=-1", "loss: gan_weight -1.0: must be within"),
    ("degrade.sharpen.kernel_size=4", "kernel_size: 4 must be odd"),
])
def test_config_values_out_of_range_are_named(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config(overrides=(override,))


def test_config_file_problems_are_one_line_errors(tmp_path, capsys):
    cases = {
        tmp_path / "missing.yaml": "No such file",
        tmp_path: "not a file",
    }
    (tmp_path / "bad.yaml").write_text("run: [unclosed\n")
    cases[tmp_path / "bad.yaml"] = "not valid YAML"
    # 384 bytes that expand to 9^9 list items through aliases (the "billion laughs").
    levels = "abcdefghi"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip(levels, levels[1:], strict=False))
    (tmp_path / "bomb.yaml").write_text(bomb)
    cases[tmp_path / "bomb.yaml"] = "aliases"
    (tmp_path / "huge.yaml").write_text("#" * (MAX_CONFIG_BYTES + 1))
    cases[tmp_path / "huge.yaml"] = "a config is at most"
    for path, message in cases.items():
        code = main(["finetune", "-o", str(tmp_path / "run"), "--config", str(path), "--data", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err and len(err) < 500, (path, err)


def test_config_overrides_cannot_expand_aliases():
    with pytest.raises(ValueError, match="aliases"):
        build_config(overrides=("run.iterations=*a",))
    assert math.isclose(build_config(overrides=("model.ema_decay=0.99",)).model.ema_decay, 0.99)


# ---------------------------------------------------------------------------------------------
# fine-tuning runs


@pytest.fixture
def train_dir(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    for i in range(3):
        PILImage.fromarray(random_image(48, 40, 3, np.uint8, seed=i)).save(folder / f"{i}.png")
    return folder


def tiny(train_dir, *extra):
    return build_config(overrides=(*TINY, f"data.train={train_dir}", *extra))


def test_a_second_run_into_a_locked_folder_is_refused(train_dir, tmp_path):

    with files.folder_lock(tmp_path / "run"):  # as a first run holds it
        with pytest.raises(ValueError, match=r"another run is using this folder \(process \d+\)"):
            finetune(tiny(train_dir), tmp_path / "run")
    assert not (tmp_path / "run" / "latest.pth").exists()
    assert len(finetune(tiny(train_dir), tmp_path / "run")) == 4  # free again once the holder is gone


def test_resume_after_a_kill_keeps_one_log_row_per_iteration(train_dir, tmp_path, caplog):

    run = tmp_path / "run"
    finetune(tiny(train_dir, "run.iterations=3"), run)  # logs 1..3, saves at 2 and 3
    # As if killed after iteration 3 was logged but before it was saved, in the middle of a save:
    # put back the checkpoint of iteration 2 (the same run, stopped there) and a half-written file.
    finetune(tiny(train_dir, "run.iterations=2"), tmp_path / "two")
    checkpoint.save(run / "latest.pth", checkpoint.load(tmp_path / "two" / "latest.pth"))
    (run / ".latest.pth.999999.part.pth").write_bytes(b"half a checkpoint of a killed run")
    finetune(tiny(train_dir), run, resume=True)
    rows = [line.split(",")[:2] for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert len(rows) == len(set(map(tuple, rows)))  # no iteration logged twice
    assert sorted({int(i) for i, _ in rows}) == [1, 2, 3, 4]
    assert not (run / ".latest.pth.999999.part.pth").exists()
    with caplog.at_level(logging.INFO, logger="medsr"):
        assert finetune(tiny(train_dir), run, resume=True) == []
    assert "the run is finished (4 of 4 iterations)" in caplog.text


def test_export_refuses_non_finite_and_fp16_overflowing_weights(train_dir, tmp_path):

    finetune(tiny(train_dir, "run.iterations=2"), tmp_path / "run")
    state = checkpoint.load(tmp_path / "run" / "latest.pth")
    for value, message in ((float("nan"), "NaN or infinite"), (1e6, "beyond fp16")):
        state["net_g_ema"]["conv_last.bias"][0] = value
        checkpoint.save(tmp_path / "bad.pth", state)
        with pytest.raises(ValueError, match=message):
            export(tmp_path / "bad.pth", tmp_path / "m.safetensors")
        assert not (tmp_path / "m.safetensors").exists()
    assert torch.isfinite(checkpoint.load(tmp_path / "run" / "latest.pth")["net_g_ema"]["conv_last.bias"]).all()


# ---------------------------------------------------------------------------------------------
# weights: integrity and bounded resources


def test_a_bit_flipped_cache_file_is_derived_again(tmp_path):
    from medsr.models import weights

    state = {k: v for k, v in weights.rrdbnet("tiny").state_dict().items()}
    torch.save({"params_ema": state}, tmp_path / "tiny.pth")
    spec = weights.ModelSpec(name="flip-test", preset="tiny", description="test", url=(tmp_path / "tiny.pth").as_uri())
    path = weights.fetch(spec, online=True)
    assert (path.parent / (path.name + ".sha256")).read_text().strip() == files.sha256(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # one bit in the last weight
    path.write_bytes(bytes(data))
    again = weights.fetch(spec, online=True)  # re-downloaded and verified, not used as damaged
    assert again == path and files.sha256(again) != files.sha256(tmp_path / "tiny.pth")  # a safetensors copy
    assert torch.equal(state_dicts.load_generator(again).state_dict()["conv_last.bias"], state["conv_last.bias"])


def test_a_damaged_packaged_model_is_refused(tmp_path, monkeypatch):
    from medsr.models import weights

    spec = weights.KNOWN_MODELS["cxr"]
    copy = tmp_path / spec.packaged
    data = bytearray((weights.PACKAGED_DIR / spec.packaged).read_bytes())
    data[-2] ^= 0x01
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(weights, "PACKAGED_DIR", tmp_path)
    with pytest.raises(weights.WeightsError, match="is damaged .*reinstall medsr"):
        weights.load_model("cxr")


def test_hostile_checkpoints_are_refused_before_building(tmp_path):
    from medsr.models import weights

    small = {k: v for k, v in weights.rrdbnet("tiny").state_dict().items()}
    many = dict(small)
    for block in range(2, 20_000):  # a 20,000-block network, declared by names alone
        many[f"body.{block}.rdb1.conv1.weight"] = small["body.0.rdb1.conv1.weight"]
    torch.save(many, tmp_path / "many.pth")
    with pytest.raises(weights.WeightsError, match="need 1 to 64"):
        state_dicts.load_generator(tmp_path / "many.pth")
    # A small file whose tensor claims far more storage than the file holds.
    torch.save({"params": small}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(weights.WeightsError, match=r"cut\.pth: cannot read checkpoint"):
        state_dicts.load_generator(tmp_path / "cut.pth")


@pytest.mark.parametrize("outscale", ["inf", "nan", "2000", "-1", "0"])
def test_outscale_must_be_finite_and_at_most_16(tmp_path, outscale, capsys):
    PILImage.fromarray(random_image(8, 8, 3)).save(tmp_path / "a.png")
    code = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--outscale", outscale])
    err = capsys.readouterr().err
    assert code == 2 and "outscale" in err and "Traceback" not in err and not (tmp_path / "o.png").exists()


def test_unknown_device_is_a_usage_error(tmp_path, capsys):
    PILImage.fromarray(random_image(8, 8, 3)).save(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--device", "foo"]) == 2
    assert "device 'foo'" in capsys.readouterr().err


def test_an_image_too_large_for_memory_is_refused_by_name(tmp_path, tiny_net, monkeypatch):
    import medsr

    monkeypatch.setattr(devices, "available_memory", lambda: 600_000_000)  # 600 MB left
    with pytest.raises(medsr.ImageError, match=r"array: x4 .* needs about .* more than the .* available"):
        medsr.upscale(random_image(400, 400, 3), model=tiny_net)
    assert medsr.upscale(random_image(20, 20, 3), model=tiny_net).shape == (80, 80, 3)


# ---------------------------------------------------------------------------------------------
# training data


def test_bad_training_files_are_listed_at_start_or_skipped(train_dir, tmp_path, caplog):
    (train_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    PILImage.fromarray(random_image(20, 40, 3)).save(train_dir / "small.png")  # below the 32 px crop
    with pytest.raises(ValueError) as info:
        finetune(tiny(train_dir), tmp_path / "run")
    message = str(info.value)
    assert "2 of the training images cannot be used" in message and "data.skip_bad" in message
    assert "broken.png: cannot read the image header" in message and "small.png: 40x20 is smaller" in message
    assert not (tmp_path / "run" / "latest.pth").exists()
    with caplog.at_level(logging.WARNING, logger="medsr"):
        assert len(finetune(tiny(train_dir, "data.skip_bad=true"), tmp_path / "run")) == 4
    assert "left out" in caplog.text and "broken.png" in caplog.text


def test_missing_or_broken_validation_folder_fails_at_start(train_dir, tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        finetune(tiny(train_dir, f"data.val={tmp_path / 'nowhere'}"), tmp_path / "run")
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "x.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match="validation images cannot be used"):
        finetune(tiny(train_dir, f"data.val={tmp_path / 'val'}"), tmp_path / "run2")


def test_resume_after_a_training_file_was_removed(train_dir, tmp_path, caplog):
    finetune(tiny(train_dir, "run.iterations=2"), tmp_path / "run")  # half way through the first epoch
    (train_dir / "0.png").unlink()
    with caplog.at_level(logging.WARNING, logger="medsr"):
        assert len(finetune(tiny(train_dir), tmp_path / "run", resume=True)) == 2
    assert "the training images changed since the checkpoint" in caplog.text


def test_a_file_broken_during_the_run_keeps_the_last_iteration(train_dir, tmp_path, monkeypatch):
    from medsr.training import data

    calls = {"n": 0}
    real = data.read_image

    def failing(path, *args, **kwargs):
        calls["n"] += 1
        # a crop of a later iteration: the first 3 calls decode each training file once at start,
        # the next ones also fill the pool
        if calls["n"] == 3 + 7:
            raise data.ImageError(f"{path}: cannot decode (simulated)")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "read_image", failing)
    monkeypatch.setattr(data, "available_memory", lambda: 0)  # no room to keep images decoded: read per crop
    with pytest.raises(data.ImageError, match=r"stopped with iteration \d+ saved") as info:
        finetune(tiny(train_dir, "run.save_every=100"), tmp_path / "run")  # no save would come before 4
    saved = int(str(info.value).split("stopped with iteration ")[1].split()[0])
    assert saved >= 1 and checkpoint.load(tmp_path / "run" / "latest.pth")["iteration"] == saved


# ---------------------------------------------------------------------------------------------
# output side


def test_unwritable_outputs_are_found_before_any_model_runs(tmp_path, capsys, monkeypatch):
    import medsr
    from medsr.models import weights

    PILImage.fromarray(random_image(8, 8, 3)).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("a file where a folder should be")
    monkeypatch.setattr(weights, "load_model", lambda name: pytest.fail("a model was loaded"))
    code = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "file" / "out")])
    assert code == 1 and "is a file, not a folder" in capsys.readouterr().err
    readonly = tmp_path / "ro"
    readonly.mkdir(mode=0o555)
    if os.access(readonly, os.W_OK):  # root ignores permissions
        pytest.skip("running as root: a read-only folder is still writable")
    plan = medsr.plan_outputs([tmp_path / "a.png"], readonly / "sub")
    assert not plan.pairs and "is not writable" in plan.problems[0][1]


def test_an_output_that_is_a_folder_is_a_per_file_error(tmp_path, tiny_net):
    import medsr

    PILImage.fromarray(random_image(8, 8, 3)).save(tmp_path / "a.png")
    PILImage.fromarray(random_image(8, 8, 3)).save(tmp_path / "b.png")
    (tmp_path / "out" / "a.png").mkdir(parents=True)  # a folder named like the output
    plan = medsr.plan_outputs([tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "out")
    results = list(medsr.upscale_files(plan, model=tiny_net, overwrite=True))
    assert [r.ok for r in results] == [False, True]
    assert "a.png" in results[0].error and "Traceback" not in results[0].error


# ---------------------------------------------------------------------------------------------
# processes: kill -9 in a save, two runs into one folder


def _medsr(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "medsr.cli", *args]


@pytest.mark.slow
def test_kill_9_during_training_then_resume_continues_exactly(train_dir, tmp_path):
    import signal
    import subprocess
    import time

    # 20 saves: 19 chances to catch one half written; polling every 2 ms catches one in practice.
    sets = sum((["--set", s] for s in (*TINY, "run.iterations=20", "run.save_every=1")), [])
    straight = tmp_path / "straight"
    subprocess.run(_medsr("finetune", "-o", str(straight), "--data", str(train_dir), *sets), check=True,
                   capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    process = subprocess.Popen(_medsr("finetune", "-o", str(killed), "--data", str(train_dir), *sets),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # Wait until a save after the first is under way: a checkpoint exists and the next is half written.
    while time.time() < deadline and process.poll() is None and not (
            (killed / "latest.pth").exists() and list(killed.glob(".latest.pth.*.part*"))):
        time.sleep(0.002)
    assert process.poll() is None, "the run finished before a save could be caught; nothing was tested"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / "latest.pth").exists()
    iteration = checkpoint.load(killed / "latest.pth")["iteration"]
    assert iteration < 20  # killed before the end
    subprocess.run(_medsr("finetune", "-o", str(killed), "--resume"), check=True, capture_output=True, timeout=300)
    a, b = checkpoint.load(straight / "latest.pth"), checkpoint.load(killed / "latest.pth")
    assert b["iteration"] == 20
    assert all(torch.equal(a["net_g_ema"][k], b["net_g_ema"][k]) for k in a["net_g_ema"])
    assert not list(killed.glob(".*.part*"))  # the killed run's half-written file was cleaned up


@pytest.mark.slow
def test_two_concurrent_upscale_runs_write_each_file_once(tmp_path, tiny_net):
    import subprocess

    from safetensors.torch import save_file

    save_file(tiny_net.state_dict(), tmp_path / "tiny.safetensors")
    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        PILImage.fromarray(random_image(24, 24, 3, seed=i)).save(src / f"{i:02d}.png")
    command = _medsr("upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "tiny.safetensors"))
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    counts = [out.split("upscaled ")[1].split()[0] for out, _ in outputs]  # "5 file(s)" or "no files"
    written = sum(0 if count == "no" else int(count) for count in counts)
    reported = sum(err.count("already exists") for _, err in outputs)
    assert written == 12 and reported == 12  # each file written once; every overlap reported
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:02d}.png" for i in range(12)]


def test_a_bit_flipped_checkpoint_is_refused_on_resume_and_export(train_dir, tmp_path):
    finetune(tiny(train_dir, "run.iterations=2"), tmp_path / "run")
    path = tmp_path / "run" / "latest.pth"
    state = torch.load(path, weights_only=True)
    weight = state["net_g_ema"]["conv_first.weight"]
    weight.view(torch.int32)[0, 0, 0, 0] ^= 1 << 20  # one bit, as a failing disk or copy would flip it
    torch.save(state, path)
    with pytest.raises(ValueError, match="the checkpoint is damaged"):
        finetune(tiny(train_dir), tmp_path / "run", resume=True)
    with pytest.raises(ValueError, match="the checkpoint is damaged"):
        export(path, tmp_path / "m.safetensors")


def test_an_unreadable_subfolder_is_reported_not_skipped(tmp_path, tiny_net):
    import medsr

    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    PILImage.fromarray(random_image(8, 8, 3)).save(src / "a.png")
    PILImage.fromarray(random_image(8, 8, 3)).save(src / "locked" / "b.png")
    (src / "locked").chmod(0)
    try:
        if os.access(src / "locked", os.R_OK):
            pytest.skip("running as root: a folder without permissions is still readable")
        plan = medsr.plan_outputs([src], tmp_path / "out")
        assert [p[0].name for p in plan.pairs] == ["a.png"]
        assert any("locked: cannot list this folder" in message for _, message in plan.problems)
        assert not all(r.ok for r in medsr.upscale_files(plan, model=tiny_net))  # so the exit status is 1
    finally:
        (src / "locked").chmod(0o755)


def test_a_listing_error_is_reported_even_as_root(tmp_path, monkeypatch):
    from medsr.formats import io as medsr_io

    src = tmp_path / "in"
    src.mkdir()
    PILImage.fromarray(random_image(8, 8, 3)).save(src / "a.png")
    real_walk = os.walk

    def walk(top, onerror=None):  # what os.walk does with a folder it may not list
        onerror(PermissionError(13, "Permission denied", str(src / "locked")))
        yield from real_walk(top)

    monkeypatch.setattr(medsr_io.os, "walk", walk)
    with pytest.raises(ValueError, match="locked: cannot list this folder"):
        medsr_io.image_files(src)
    problems: list[str] = []
    assert [p.name for p in medsr_io.image_files(src, problems)] == ["a.png"] and len(problems) == 1


def test_full_disk_during_a_checkpoint_or_export_keeps_the_previous_file(train_dir, tmp_path):
    import subprocess

    from .test_values import _mount_tmpfs

    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "256k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        finetune(tiny(train_dir, "run.iterations=2"), tmp_path / "run")
        state = checkpoint.load(tmp_path / "run" / "latest.pth")
        (disk / "latest.pth").write_bytes(b"the previous checkpoint")
        (disk / "model.safetensors").write_bytes(b"the previous export")
        state["net_g_ema"]["filler"] = torch.zeros(200_000)  # 800 KB: more than the disk holds
        with pytest.raises(OSError, match=r"cannot write .*latest\.pth: No space left on device \(the previous "
                                          r"file is kept\)"):
            checkpoint.save(disk / "latest.pth", state)
        checkpoint.save(tmp_path / "big.pth", state)
        with pytest.raises(OSError, match="No space left on device"):
            export(tmp_path / "big.pth", disk / "model.safetensors", overwrite=True)
        assert (disk / "latest.pth").read_bytes() == b"the previous checkpoint"
        assert (disk / "model.safetensors").read_bytes() == b"the previous export"
        assert sorted(p.name for p in disk.iterdir()) == ["latest.pth", "model.safetensors"]  # no temporaries
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)  # lazy: a mapping may still hold it


def test_medsr_imports_where_fcntl_does_not_exist():
    """Windows has no fcntl (it has msvcrt, stood in for here by an empty module): every medsr module
    must import without fcntl."""
    import subprocess
    import sys

    # The standard library and PyTorch are imported as they are here; medsr then sees Windows (no
    # fcntl, an msvcrt) while its atomic-file module loads, and every module imports.
    script = ("import sys, types, pkgutil, importlib, subprocess, torch\n"
              "sys.modules['fcntl'] = None; sys.modules['msvcrt'] = types.ModuleType('msvcrt')\n"
              "real, sys.platform = sys.platform, 'win32'\n"
              "import medsr.core.files as files\n"
              "sys.platform = real\n"
              "assert not hasattr(files, 'fcntl') and files.msvcrt is sys.modules['msvcrt']\n"
              "import medsr\n"
              "for info in pkgutil.walk_packages(medsr.__path__, 'medsr.'): importlib.import_module(info.name)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_one_atomic_writer_keeps_names_suffixes_and_existing_files(tmp_path):
    seen = []
    files.write_atomic(tmp_path / "a.nii.gz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert seen[0].startswith(".a.nii.gz.") and seen[0].endswith(".part.nii.gz")  # writers choose formats by name
    with pytest.raises(FileExistsError, match="already exists"):
        files.write_atomic(tmp_path / "a.nii.gz", b"other", overwrite=False)
    assert (tmp_path / "a.nii.gz").read_bytes() == b"x"

    def refuse(tmp):
        raise ValueError("the check says no")
    with pytest.raises(ValueError, match="the check says no"):
        files.write_atomic(tmp_path / "b.png", b"data", verify=refuse)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]  # nothing half-written left behind
    (tmp_path / ".c.png.999999.part.png").write_bytes(b"left by a killed run")
    assert files.stale_temporaries(tmp_path) == [tmp_path / ".c.png.999999.part.png"]
