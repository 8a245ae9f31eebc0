import json

import numpy as np
import pytest
from PIL import Image as PILImage
from safetensors.torch import save_file

from medsr.cli import main
from medsr.core.image import Image
from medsr.evaluation.evaluate import PROTOCOLS, find_samples, make_pair, read_any

from .conftest import random_image, shared_image


@pytest.mark.parametrize("name, lr, gt", [("retina-x2", 256, 512), ("cxr-x4", 256, 1024)])
def test_protocol_sizes(name, lr, gt):
    image = Image(pixels=np.random.default_rng(0).random((3, 1100, 1030)).astype(np.float32))
    low, high = make_pair(image, PROTOCOLS[name])
    assert low.shape == (3, lr, lr) and high.shape == (3, gt, gt)
    assert 0 <= low.min() and low.max() <= 1


def test_layouts_with_annotations(tmp_path):
    drive = tmp_path / "DRIVE" / "test"
    (drive / "images").mkdir(parents=True)
    (drive / "1st_manual").mkdir()
    PILImage.fromarray(random_image(40, 40, 3)).save(drive / "images" / "01_test.tif")
    PILImage.fromarray(random_image(40, 40, 1).squeeze()).save(drive / "1st_manual" / "01_manual1.gif")
    samples = find_samples(drive)
    assert [(s.name, s.annotation.name) for s in samples] == [("01_test", "01_manual1.gif")]
    stare = find_samples(shared_image("retina/STARE"))
    assert len(stare) == 20 and stare[0].annotation.name == "im0001.ah.png"
    chase = find_samples(shared_image("retina/CHASE_DB1"))
    assert len(chase) == 14 and chase[0].annotation.name == "Image_01L_1stHO.png"
    assert read_any(drive / "1st_manual" / "01_manual1.gif").pixels.shape == (3, 40, 40)


def test_evaluate_end_to_end(tmp_path, tiny_net, capsys):
    data = tmp_path / "data"
    data.mkdir()
    PILImage.fromarray(random_image(600, 520, 3)).save(data / "a.png")
    PILImage.fromarray(random_image(520, 560, 1, np.uint16).squeeze()).save(data / "b16.png")  # mixed sizes
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    save_file(tiny_net.state_dict(), tmp_path / "tiny.safetensors")
    args = ["evaluate", str(data), "--protocol", "retina-x2", "--baselines", "bicubic,lanczos",
            "--model", str(tmp_path / "tiny.safetensors"), "-o", str(tmp_path / "report")]
    assert main(args) == 1  # one file failed
    captured = capsys.readouterr()
    assert "broken.png: not a PNG file" in captured.err
    assert "| bicubic | 2 |" in captured.out and "| tiny.safetensors | 2 |" in captured.out
    assert "paired against bicubic" in captured.out  # realesrgan-x4plus, the default reference, is absent
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    paired = summary["statistics"]["tiny.safetensors"]["psnr"]["vs_reference"]
    assert paired["n"] == 2 and len(paired["ci95"]) == 2
    assert summary["settings"]["command"] == "medsr " + " ".join(args)
    assert "SHA-256" in summary["settings"]["models"]
    assert summary["settings"]["skipped"] == 1 and summary["settings"]["LPIPS"].startswith("unavailable")
    assert summary["summary"]["lanczos"]["psnr"] > 10
    rows = (tmp_path / "report" / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("image,model,psnr,ssim") and len(rows) == 1 + 2 * 3
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page and "unavailable" in page
    assert (tmp_path / "report" / "figures" / "a.png").exists()
    # Deterministic: a second run writes the same numbers.
    assert main([*args[:-1], str(tmp_path / "again")]) == 1
    assert (tmp_path / "again" / "per_image.csv").read_text() == (tmp_path / "report" / "per_image.csv").read_text()
    assert main(args) == 2 and "already exists" in capsys.readouterr().err


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM), reason="headless check needs Debian's chromium")
def test_report_renders_in_headless_chromium(tmp_path):
    import subprocess

    data = tmp_path / "data"
    data.mkdir()
    PILImage.fromarray(random_image(600, 520, 3)).save(data / "a.png")
    assert main(["evaluate", str(data), "--protocol", "retina-x2", "--baselines", "bicubic,lanczos",
                 "--figures", "1", "-o", str(tmp_path / "report")]) == 0
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
                    (tmp_path / "report" / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    picture = np.asarray(PILImage.open(shot).convert("L"))
    assert picture.shape == (1600, 1200)
    assert (picture < 128).mean() > 0.01  # text, tables and the figure drew something dark


def test_fidelity_entries_and_the_dial_figure(tmp_path, capsys, tiny_pair):
    data = tmp_path / "data"
    data.mkdir()
    PILImage.fromarray(random_image(520, 520, 3)).save(data / "a.png")
    args = ["evaluate", str(data), "--protocol", "retina-x2", "--baselines", "bicubic", "--figures", "0",
            "-o", str(tmp_path / "report")]
    for fidelity in ("0", "0.5", "1"):
        args += ["--model", f"retina@{fidelity}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| retina@0.5 | 1 |" in out and "| retina@1 | 1 |" in out
    dial = PILImage.open(tmp_path / "report" / "figures" / "fidelity-dial.png")
    assert dial.size == (840, 300) and len(np.unique(np.asarray(dial).reshape(-1, 3), axis=0)) > 3  # drawn, not blank
    assert main([*args[:-2], "--model", "retina@x", "-o", str(tmp_path / "bad")]) == 2
    assert "after @ give a fidelity" in capsys.readouterr().err


def test_only_valid_inputs_are_scored(tmp_path, tiny_net, capsys):
    data = tmp_path / "data"
    data.mkdir()
    PILImage.fromarray(random_image(600, 520, 3)).save(data / "ok.png")
    PILImage.fromarray(random_image(200, 200, 3)).save(data / "small.png")  # below retina-x2's 512
    PILImage.fromarray(np.full((600, 600, 3), 90, np.uint8)).save(data / "flat.png")
    PILImage.fromarray(random_image(1, 1, 3)).save(data / "dot.png")
    args = ["evaluate", str(data), "--protocol", "retina-x2", "--baselines", "bicubic", "--figures", "0",
            "-o", str(tmp_path / "r")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "small.png: 200x200 is smaller than the protocol's 512x512 ground truth; skipped" in err
    assert "dot.png: 1x1 is smaller" in err and "flat.png: a constant image; skipped" in err
    text = (tmp_path / "r" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))  # strict JSON
    assert summary["summary"]["bicubic"]["images"] == 1 and summary["summary"]["bicubic"]["lpips"] is None
    assert "resized to the square" in summary["settings"]["fit"]
    image = Image(pixels=np.random.default_rng(0).random((3, 600, 520)).astype(np.float32))
    resized, cropped = make_pair(image, PROTOCOLS["retina-x2"])[1], make_pair(image, PROTOCOLS["retina-x2"], "crop")[1]
    assert resized.shape == cropped.shape == (3, 512, 512) and not np.allclose(resized, cropped)


def test_model_labels_are_unique(tmp_path, tiny_net, capsys):
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        save_file(tiny_net.state_dict(), tmp_path / run / "latest.safetensors")
    data = tmp_path / "data"
    data.mkdir()
    PILImage.fromarray(random_image(520, 520, 3)).save(data / "x.png")
    a, b = str(tmp_path / "a" / "latest.safetensors"), str(tmp_path / "b" / "latest.safetensors")
    base = ["evaluate", str(data), "--protocol", "retina-x2", "--baselines", "bicubic", "--figures", "0"]
    assert main([*base, "--model", a, "--model", b, "-o", str(tmp_path / "r1")]) == 0
    summary = json.loads((tmp_path / "r1" / "summary.json").read_text())["summary"]
    assert a in summary and b in summary  # the paths, as the file names collide
    assert main([*base, "--model", f"first={a}", "--model", f"second={b}", "-o", str(tmp_path / "r2")]) == 0
    assert {"first", "second"} <= set(json.loads((tmp_path / "r2" / "summary.json").read_text())["summary"])
    assert main([*base, "--model", f"same={a}", "--model", f"same={b}", "-o", str(tmp_path / "r3")]) == 2
    assert "appear twice" in capsys.readouterr().err


def test_paper_table_is_printed_beside_the_measured_values(tmp_path, tiny_net, capsys):
    data = tmp_path / "data"
    data.mkdir()
    PILImage.fromarray(random_image(520, 520, 3)).save(data / "x.png")
    save_file(tiny_net.state_dict(), tmp_path / "mine.safetensors")
    assert main(["evaluate", str(data), "--protocol", "retina-x2", "--baselines", "bicubic", "--figures", "0",
                 "--model", str(tmp_path / "mine.safetensors"), "--paper-table", "-o", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    # Values of the paper's Table 1 (Aghelan & Rouhani, arXiv 2211.00577).
    assert "| Real-ESRGAN | 35.33 | 0.8866 | - | - |" in out
    assert "| fine-tuned (here: mine.safetensors) | 34.21 | 0.8923 |" in out and "DRIVE" in out


@pytest.mark.slow
def test_torchrun_evaluate_with_two_processes_equals_one(tmp_path, tiny_net):
    import os
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):  # an odd count: the shares differ in size
        PILImage.fromarray(random_image(520, 520, 3, seed=i)).save(data / f"{i}.png")
    (data / "3.png").write_bytes(b"broken")  # a failure in the second rank's share
    save_file(tiny_net.state_dict(), tmp_path / "tiny.safetensors")
    common = ["evaluate", str(data), "--protocol", "retina-x2", "--baselines", "bicubic",
              "--model", str(tmp_path / "tiny.safetensors"), "--figures", "3",
              "--precision", "fp32", "--tile", "0"]  # as this process runs, whatever the CPU and its free memory
    assert main([*common, "-o", str(tmp_path / "one")]) == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
            "-m", "medsr.cli", *common, "-o", str(tmp_path / "two")]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]  # rank 0 counts the failure of rank 1
    assert result.stdout.count("report: ") == 1 and "(4 images, 1 skipped)" in result.stdout, result.stderr[-3000:]
    for name in ("per_image.csv", "figures/0.png", "figures/1.png", "figures/2.png"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    one, two = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert one["summary"] == two["summary"] and one["statistics"] == two["statistics"]


def test_a_model_that_overflows_on_one_image_skips_that_image(tmp_path, capsys):
    """A non-finite output is reported for its image (no traceback) and the others are scored."""
    import torch

    from medsr.evaluation import evaluate as ev
    from medsr.models.model import SRModel

    class BlowsUpOnBright(torch.nn.Module):
        def forward(self, x):
            up = torch.nn.functional.interpolate(x, scale_factor=2)
            return up / (x.mean() < 0.5)  # inf for a mostly bright image (the network sees min..max as 0..1)

    for name, value, other in (("dark", 60, 200), ("bright", 200, 60)):
        pixels = np.full((520, 520), value, np.uint8) + random_image(520, 520, 1).squeeze() // 8
        pixels[:40, :40] = other
        PILImage.fromarray(pixels).save(tmp_path / f"{name}.png")
    model = SRModel(module=BlowsUpOnBright(), scale=2, name="fragile")
    models = [ev.Model("fragile", lambda lr, size: medsr_upscale(lr, size, model))]
    errors = []
    options = ev.Options(protocol=PROTOCOLS["retina-x2"])
    results = list(ev.evaluate(ev.find_samples(tmp_path), models, options, on_error=errors.append))
    assert [r.sample.name for r in results] == ["dark"]
    assert len(errors) == 1 and "bright.png" in errors[0] and "non-finite" in errors[0]


def medsr_upscale(lr, size, model):
    import medsr

    return medsr.upscale(Image(pixels=lr, source="lr"), model=model, outscale=size[0] / lr.shape[1]).pixels


def test_evaluate_says_what_runs(tmp_path):
    from medsr.evaluation import evaluate as ev

    PILImage.fromarray(random_image(520, 520, 3)).save(tmp_path / "a.png")
    models = ev.build_models(["bicubic", "lanczos"], tile=None, device="cpu")
    steps = []
    list(ev.evaluate(ev.find_samples(tmp_path), models, ev.Options(protocol=PROTOCOLS["retina-x2"]),
                     on_step=steps.append))
    assert steps == ["a: bicubic", "a: lanczos"]


def _wrong_outside(mask_rows: slice):
    """A model: bicubic, with the rows ``mask_rows`` of its output inverted."""
    from medsr.core.resize import resize_bicubic

    def run(lr, size):
        out = resize_bicubic(lr, *size)
        out[:, mask_rows] = 1 - out[:, mask_rows]
        return out
    return run


def test_chest_metrics_inside_the_anatomy_ignore_the_border_band(tmp_path):
    from medsr.core.resize import resize_bicubic
    from medsr.evaluation.evaluate import Model, Options, Sample, evaluate_sample

    yy, xx = np.mgrid[:1024, :1024] / 1024
    chest = (40 + 160 * np.sin(np.pi * yy) * np.sin(np.pi * xx) ** 2).astype(np.uint8)  # smooth, bicubic does well
    PILImage.fromarray(chest).save(tmp_path / "chest.png")
    models = [Model("bicubic", lambda lr, size: resize_bicubic(lr, *size)),
              Model("label-wrong", _wrong_outside(slice(0, 60)))]  # the top 60 rows: where a burned-in label sits
    rows = evaluate_sample(Sample(name="chest", image=tmp_path / "chest.png"), models,
                           Options(protocol=PROTOCOLS["cxr-x4"])).rows
    assert rows["label-wrong"]["psnr"] < rows["bicubic"]["psnr"] - 0.2
    assert rows["label-wrong"]["psnr_inside"] == rows["bicubic"]["psnr_inside"]
    assert rows["label-wrong"]["ssim_inside"] == rows["bicubic"]["ssim_inside"]


def test_retina_rows_have_the_anatomy_and_thin_vessel_measures(tmp_path):
    from medsr.core.resize import resize_bicubic
    from medsr.evaluation.evaluate import Model, Options, evaluate_sample

    (tmp_path / "images").mkdir()
    (tmp_path / "manual").mkdir()
    yy, xx = np.mgrid[:600, :600]
    disc = (yy - 300) ** 2 + (xx - 300) ** 2 < 270**2
    vessels = (np.abs(yy - 200) < 2) | (np.abs(xx - 320) < 9)  # a thin and a wide vessel
    fundus = np.zeros((600, 600, 3), np.uint8)
    fundus[disc] = (180, 90, 40)
    fundus[disc & vessels] = (120, 40, 20)
    PILImage.fromarray(fundus).save(tmp_path / "images" / "eye.png")
    PILImage.fromarray((vessels * 255).astype(np.uint8)).save(tmp_path / "manual" / "eye_1stHO.png")
    [sample] = find_samples(tmp_path)
    models = [Model("bicubic", lambda lr, size: resize_bicubic(lr, *size)),
              Model("corner-wrong", _wrong_outside(slice(0, 20)))]  # outside the disc
    rows = evaluate_sample(sample, models, Options(protocol=PROTOCOLS["retina-x2"])).rows
    assert rows["corner-wrong"]["psnr"] < rows["bicubic"]["psnr"]
    assert rows["corner-wrong"]["psnr_inside"] == rows["bicubic"]["psnr_inside"]
    assert 0.5 < rows["bicubic"]["thin_vessel_auc"] <= 1
    assert rows["ground truth"]["thin_vessel_auc"] > 0.9


@pytest.mark.zoo
def test_lpips_column_where_its_package_and_weights_are_present(tmp_path, monkeypatch, capsys):
    """The LPIPS plumbing: with the lpips package and an AlexNet file in torch hub's cache, the column
    is computed (0 for the ground truth itself, finite and positive otherwise). The ImageNet AlexNet
    cannot be downloaded here: a randomly initialised one in torchvision's layout stands in, so the
    values are not LPIPS's published ones. `make test-zoo` runs this (lpips needs torchvision)."""
    lpips = pytest.importorskip("lpips", reason="the lpips package is not installed; `make test-zoo` has it")
    torchvision = pytest.importorskip("torchvision")
    from medsr.evaluation import evaluate as ev

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    score, status = ev.lpips_metric()
    assert score is None and ev.ALEXNET_FILE in status  # no weights: unavailable, and why
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    import torch
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), checkpoints / ev.ALEXNET_FILE)
    score, status = ev.lpips_metric()
    assert status == "computed: LPIPS (AlexNet)" and lpips is not None
    gt = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    assert score(gt, gt) == pytest.approx(0, abs=1e-6)
    assert score(np.clip(gt + 0.2, 0, 1), gt) > 0
    data = tmp_path / "data"
    data.mkdir()
    PILImage.fromarray(random_image(512, 512, 3)).save(data / "a.png")
    assert main(["evaluate", str(data), "--protocol", "retina-x2", "--baselines", "bicubic", "--reference", "bicubic",
                 "--figures", "0", "-o", str(tmp_path / "report")]) == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["settings"]["LPIPS"] == "computed: LPIPS (AlexNet)"
    assert summary["summary"]["bicubic"]["lpips"] > 0
