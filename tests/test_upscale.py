import numpy as np
import pytest
from PIL import Image as PILImage
from safetensors.torch import save_file

import medsr
from medsr.cli import main
from medsr.formats.io import read_image

from .conftest import image_folder, random_image


@pytest.fixture
def tiny_model(tmp_path, tiny_net) -> str:
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_net.state_dict(), path)
    return str(path)


@pytest.mark.parametrize("dtype, channels", [(np.uint8, 1), (np.uint16, 1), (np.uint8, 3), (np.uint16, 4)])
def test_array_in_array_out_keeps_dtype_and_mode(tiny_net, dtype, channels):
    lq = random_image(12, 10, channels, dtype).squeeze()
    sr = medsr.upscale(lq, model=tiny_net)
    assert sr.dtype == dtype and sr.shape == (48, 40, *lq.shape[2:])


def test_outscale_resizes_after_the_network(tiny_net):
    lq = random_image(12, 10, 3)
    assert medsr.upscale(lq, model=tiny_net, outscale=2).shape == (24, 20, 3)
    assert medsr.upscale(lq, model=tiny_net, outscale=1.5).shape == (18, 15, 3)
    with pytest.raises(ValueError, match="outscale .*: must be a number above 0"):
        medsr.upscale(lq, model=tiny_net, outscale=-1)
    with pytest.raises(ValueError, match="outscale .*: must be a number above 0"):
        medsr.upscale(lq, model=tiny_net, outscale=0)


def test_constant_alpha_stays_constant(tiny_net):
    lq = random_image(12, 10, 4)
    lq[:, :, 3] = 200
    assert np.all(medsr.upscale(lq, model=tiny_net)[:, :, 3] == 200)


def test_float_array_in_float_out(tiny_net):
    lq = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    sr = medsr.upscale(lq, model=tiny_net)
    assert sr.dtype == np.float32 and 0 <= sr.min() and sr.max() <= 1


def test_16bit_gray_file_round_trip_through_the_cli(tmp_path, tiny_model):
    lq = random_image(16, 12, 1, np.uint16).squeeze()
    PILImage.fromarray(lq).save(tmp_path / "cxr16.png")
    assert main(["upscale", str(tmp_path / "cxr16.png"), "-o", str(tmp_path / "sr.png"), "--model", tiny_model]) == 0
    out = read_image(tmp_path / "sr.png")
    assert out.bit_depth == 16 and out.is_gray and out.size == (64, 48)
    with PILImage.open(tmp_path / "sr.png") as im:
        assert im.mode == "I;16"  # gray on disk, no colour channels to carry a tint


def make_folder(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    PILImage.fromarray(random_image(8, 8, 3)).save(src / "a.png")
    PILImage.fromarray(random_image(8, 8, 1).squeeze()).save(src / "sub" / "b.jpg")
    (src / "notes.txt").write_text("not an image, ignored")
    return src


def test_folder_in_folder_out(tmp_path, tiny_model, capsys):
    src = make_folder(tmp_path)
    code = main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", tiny_model, "--outscale", "2"])
    assert code == 0
    assert read_image(tmp_path / "out" / "a.png").size == (16, 16)
    assert read_image(tmp_path / "out" / "sub" / "b.jpg").is_gray
    assert "upscaled 2 file(s) with tiny.safetensors x2 fp32 on cpu" in capsys.readouterr().out


def test_existing_outputs_are_kept_and_reported(tmp_path, tiny_model, capsys):
    src = make_folder(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"precious")
    code = main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", tiny_model])
    captured = capsys.readouterr()
    assert code == 1
    assert "a.png: already exists (kept; the overwrite option replaces it)" in captured.err
    assert (tmp_path / "out" / "a.png").read_bytes() == b"precious"
    assert (tmp_path / "out" / "sub" / "b.jpg").exists()  # the batch went on
    assert "upscaled 1 file(s)" in captured.out and "1 failed" in captured.out
    assert main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", tiny_model, "--overwrite"]) == 0
    assert read_image(tmp_path / "out" / "a.png").size == (32, 32)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("broken.png", b"\x89PNG\r\n\x1a\n broken", "broken.png: not a PNG file"),
        ("empty.jpg", b"", "empty.jpg: empty file"),
    ],
)
def test_bad_file_in_a_batch_is_reported_and_skipped(tmp_path, tiny_model, capsys, name, content, message):
    src = make_folder(tmp_path)
    (src / name).write_bytes(content)
    code = main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", tiny_model])
    captured = capsys.readouterr()
    assert code == 1 and message in captured.err
    assert (tmp_path / "out" / "a.png").exists() and not (tmp_path / "out" / name).exists()


def test_pixel_limit_in_the_cli(tmp_path, tiny_model, capsys):
    PILImage.fromarray(random_image(40, 40, 3)).save(tmp_path / "big.png")
    code = main(["upscale", str(tmp_path / "big.png"), "-o", str(tmp_path / "o"), "--model", tiny_model,
                 "--max-pixels", "1000"])
    assert code == 1 and "big.png: 40x40 = 1,600 pixels exceeds the limit of 1,000" in capsys.readouterr().err


def test_output_planning_errors(tmp_path, tiny_model, capsys):
    src = make_folder(tmp_path)
    assert main(["upscale", str(src), "-o", str(tmp_path / "x.png"), "--model", tiny_model]) == 2  # the arguments
    assert "an output file name needs exactly one input file" in capsys.readouterr().err
    assert main(["upscale", str(src / "a.png"), "-o", str(src / "a.png"), "--model", tiny_model, "--overwrite"]) == 1
    assert "output would replace the input" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o"), "--model", tiny_model]) == 1
    assert "missing.png: no such file or folder" in capsys.readouterr().err
    PILImage.fromarray(random_image(8, 8, 3)).save(src / "a.jpg")
    assert main(["upscale", str(src), "-o", str(tmp_path / "o2"), "--model", tiny_model, "--ext", "tif"]) == 1
    assert "is also the output of" in capsys.readouterr().err


def test_bad_model_and_options(tmp_path, capsys):
    PILImage.fromarray(random_image(8, 8, 3)).save(tmp_path / "a.png")
    (tmp_path / "m.pth").write_bytes(b"junk")
    bad_model = str(tmp_path / "m.pth")
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", bad_model]) == 1
    assert "m.pth: cannot read checkpoint" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--precision", "fp16",
                 "--device", "cpu"]) == 2
    assert "fp16 inference is not supported on CPU" in capsys.readouterr().err


def test_weights_commands(tmp_path, tiny_model, capsys):
    assert main(["weights", "list"]) == 0
    assert "realesrgan-x4plus" in capsys.readouterr().out
    assert main(["weights", "info", tiny_model]) == 0
    out = capsys.readouterr().out
    params = sum(p.numel() for p in medsr.rrdbnet("tiny").parameters())
    assert "RRDBNet x4, 2 blocks, 8 features" in out and f"{params:,}" in out
    assert main(["weights", "fetch", "nope"]) == 1
    assert "nope: not a known model" in capsys.readouterr().err


def test_upscale_accepts_a_path_and_returns_an_image(tmp_path, tiny_net):
    PILImage.fromarray(random_image(8, 6, 3)).save(tmp_path / "a.png")
    sr = medsr.upscale(tmp_path / "a.png", model=tiny_net)
    assert isinstance(sr, medsr.Image) and sr.size == (32, 24)


def test_demo_figure_script(tmp_path, tiny_net):
    import subprocess
    import sys
    from pathlib import Path

    PILImage.fromarray(random_image(16, 16, 3)).save(tmp_path / "lr.png")
    medsr.write_image(tmp_path / "sr.png", medsr.upscale(tmp_path / "lr.png", model=tiny_net))
    script = Path(__file__).resolve().parents[1] / "examples" / "make_figure.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "lr.png"), str(tmp_path / "sr.png"),
                    "-o", str(tmp_path / "figure.png")], check=True, capture_output=True)
    with PILImage.open(tmp_path / "figure.png") as figure:
        assert figure.width == 3 * 64  # LR, bicubic, one SR


def _shard_folder(tmp_path):
    return image_folder(tmp_path / "in", 5, 8)


def test_shards_split_a_folder_and_together_cover_it(tmp_path, tiny_model, capsys, monkeypatch):
    src = _shard_folder(tmp_path)
    for k in range(2):
        assert main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", tiny_model,
                     "--shard", f"{k}/2"]) == 0
    out = capsys.readouterr().out
    assert "upscaled 3 file(s) (share 0 of 2)" in out and "upscaled 2 file(s) (share 1 of 2)" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}.png" for i in range(5)]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "2")  # --array=1-5:2: task 5 is the third share
    assert main(["upscale", str(src), "-o", str(tmp_path / "slurm"), "--model", tiny_model, "--shard", "auto"]) == 0
    assert sorted(p.name for p in (tmp_path / "slurm").iterdir()) == ["2.png"]
    # Without --shard, an array task (one folder per task, say) does the whole folder.
    assert main(["upscale", str(src), "-o", str(tmp_path / "all"), "--model", tiny_model]) == 0
    assert len(list((tmp_path / "all").iterdir())) == 5
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")  # not on the array's step: cannot be placed
    assert main(["upscale", str(src), "-o", str(tmp_path / "y"), "--model", tiny_model, "--shard", "auto"]) == 2
    assert main(["upscale", str(src), "-o", str(tmp_path / "x"), "--shard", "2/2"]) == 2


@pytest.mark.slow
def test_torchrun_with_two_processes_equals_one(tmp_path, tiny_model):
    import os
    import subprocess
    import sys

    src = _shard_folder(tmp_path)
    assert main(["upscale", str(src), "-o", str(tmp_path / "one"), "--model", tiny_model]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
            "-m", "medsr.cli", "upscale", str(src), "-o", str(tmp_path / "two"), "--model", tiny_model,
            "--precision", "fp32"]  # as this process runs (conftest), whatever the CPU
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("upscaled 5 file(s)") == 1  # rank 0 reports for both
    for i in range(5):
        one, two = (tmp_path / "one" / f"{i}.png").read_bytes(), (tmp_path / "two" / f"{i}.png").read_bytes()
        assert one == two
