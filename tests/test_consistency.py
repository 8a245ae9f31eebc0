"""Values that stay measurements (issue 28): every output averages back to its input.

The contract tests read the written files back with pydicom, Pillow and tifffile (not medsr) and
average each s x s block of the output with NumPy, so they check medsr's projection and its own
measurement independently. Tolerances are the README's: |mean shift| <= 0.1% of the input's value
span, mean abs error <= 1%, at most 0.1% of output pixels beyond the input's range by more than 2%.
"""

import re

import numpy as np
import pydicom
import pytest
import tifffile
import torch
from PIL import Image as PILImage
from pydicom.data import get_testdata_file
from safetensors.torch import save_file
from torch import nn

import medsr
from medsr.cli import main
from medsr.core.consistency import Tolerance, area_matrix, average_back, enforce, measure
from medsr.engine.upscale import model_for
from medsr.formats.io import read_image
from medsr.nets.rrdbnet import rrdbnet

from .conftest import random_image
from .test_dicom import make_dicom

TOLERANCE = {"mean_shift": 0.1, "mean_abs_error": 1.0, "beyond": 0.1}  # README, "Values"


def averaged_back(lr: np.ndarray, sr: np.ndarray) -> dict[str, float]:
    """The contract's three numbers for stored arrays (H, W[, C]), computed here from scratch."""
    lr, sr = lr.astype(np.float64), sr.astype(np.float64)
    s = sr.shape[0] // lr.shape[0]
    assert sr.shape[0] == s * lr.shape[0] and sr.shape[1] == s * lr.shape[1]
    blocks = sr.reshape(lr.shape[0], s, lr.shape[1], s, *sr.shape[2:]).mean(axis=(1, 3))
    span = lr.max() - lr.min()
    beyond = np.mean((sr < lr.min() - 0.02 * span) | (sr > lr.max() + 0.02 * span))
    return {"mean_shift": 100 * (blocks - lr).mean() / span, "mean_abs_error": 100 * np.abs(blocks - lr).mean() / span,
            "beyond": 100 * beyond}


def assert_within(found: dict[str, float]) -> None:
    assert abs(found["mean_shift"]) <= TOLERANCE["mean_shift"], found
    assert found["mean_abs_error"] <= TOLERANCE["mean_abs_error"], found
    assert found["beyond"] <= TOLERANCE["beyond"], found


class DarkeningNet(nn.Module):
    """A foreign architecture that is anything but intensity-preserving: random convolutions and a
    pixel shuffle, output squeezed into the lower half of the range (a 20%+ shift before projection)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3 * 16, 3, padding=1),
                                  nn.PixelShuffle(4))

    def forward(self, x):
        return torch.sigmoid(self.body(x)) * 0.5


@pytest.fixture(params=["rrdbnet", "foreign"])
def any_model(request):
    if request.param == "rrdbnet":
        torch.manual_seed(0)
        return medsr.SRModel(module=rrdbnet("tiny").eval(), scale=4, name="tiny-rrdbnet")
    return medsr.SRModel(module=DarkeningNet().eval(), scale=4, name="darkening")


# ---------------------------------------------------------------------------------------------
# The operator and the projection


def test_the_area_operator_is_the_box_mean_at_integer_scales_and_weighs_areas_otherwise():
    np.testing.assert_allclose(area_matrix(2, 4), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    # x2.5: input pixel 0 covers output [0, 2.5): pixels 0 and 1 whole, half of pixel 2 (weights / 2.5)
    np.testing.assert_allclose(area_matrix(2, 5)[0], [0.4, 0.4, 0.2, 0, 0])
    assert np.allclose(area_matrix(7, 17).sum(axis=1), 1)
    sr = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    np.testing.assert_allclose(average_back(sr, (2, 2))[0], [[2.5, 4.5], [10.5, 12.5]])


def test_measure_on_a_hand_computed_case():
    lr = np.array([[[0.0, 1.0]]])  # span 1
    sr = np.array([[[0.1, 0.1, 1.1, 1.1], [0.1, 0.1, 1.1, 1.1]]])  # x2, everything 0.1 too bright
    found = measure(sr, lr)
    assert found.mean_shift == pytest.approx(10) and found.mean_abs_error == pytest.approx(10)
    assert found.beyond_range == pytest.approx(50)  # 1.1 > 1 + 2% of the span, in half the pixels
    assert found.exceeds() and not measure(np.kron(lr, np.ones((2, 2))), lr).exceeds()


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_projection_averages_back_exactly_and_stays_in_range(factor):
    rng = np.random.default_rng(factor)
    lr = rng.random((3, 9, 7)).astype(np.float32)
    sr = rng.random((3, 9 * factor, 7 * factor)).astype(np.float32) * 2 - 0.5  # far off, and out of range
    out = enforce(sr, lr)
    np.testing.assert_allclose(average_back(out, lr.shape[1:]), lr, atol=1e-6)
    assert out.min() >= lr.min() - 1e-7 and out.max() <= lr.max() + 1e-7


def test_projection_moves_an_unclipped_block_by_one_constant():
    lr = np.full((1, 2, 2), 0.5, np.float32)
    sr = np.array([[[0.4, 0.6, 0.3, 0.3], [0.5, 0.3, 0.3, 0.3], [0.5] * 4, [0.5] * 4]], np.float32)
    sr[0, :2, 2:] = [[0.7, 0.6], [0.6, 0.5]]
    out = enforce(sr, lr, bounds=(0, 1), smooth_rounds=0)  # the box step alone
    np.testing.assert_allclose(out[0, :2, :2], sr[0, :2, :2] + (0.5 - 0.45), atol=1e-6)  # mean was 0.45
    np.testing.assert_allclose(out[0, :2, 2:], sr[0, :2, 2:] - 0.1, atol=1e-6)  # mean was 0.6


def _steps_across_block_borders(image: np.ndarray, factor: int) -> float:
    """Mean |step| between horizontal neighbours across block borders over the mean within blocks."""
    steps = np.abs(np.diff(image[0], axis=1))
    border = (np.arange(steps.shape[1]) % factor) == factor - 1
    return float(steps[:, border].mean() / steps[:, ~border].mean())


def test_the_smooth_rounds_leave_no_block_grid():
    # A smooth network output that is off by a smooth error varying from one input pixel to the
    # next: the box step alone corrects each block by its own constant, a staircase; the smooth
    # rounds spread the correction.
    x = np.linspace(0, 1, 64)
    truth = (0.4 + 0.2 * x[None, :] * np.ones((64, 1)))[None]
    lr = truth.reshape(1, 16, 4, 16, 4).mean(axis=(2, 4)).astype(np.float32)
    error = torch.nn.functional.interpolate(torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)),
                                            scale_factor=4, mode="bilinear")[0].numpy()
    sr = (truth + 0.05 * error).astype(np.float32)
    box, smooth = enforce(sr, lr, bounds=(0, 1), smooth_rounds=0), enforce(sr, lr, bounds=(0, 1))
    for out in (box, smooth):
        np.testing.assert_allclose(average_back(out, lr.shape[1:]), lr, atol=1e-6)
    # measured: the network's output 1.10, the box step 1.36, the smooth rounds 1.01, the truth 1.00
    assert _steps_across_block_borders(box, 4) > 1.3  # a staircase at the block borders
    assert _steps_across_block_borders(smooth, 4) < 1.05  # steps as within blocks


def test_rounding_to_stored_levels_keeps_every_block_sum():
    rng = np.random.default_rng(1)
    lr = rng.integers(0, 4096, (1, 16, 16)) / 4095
    sr = np.clip(np.kron(lr, np.ones((4, 4))) + rng.normal(0, 0.05, (1, 64, 64)), 0, 1)
    out = enforce(sr.astype(np.float32), lr.astype(np.float32), levels=4095)
    stored = np.rint(out.astype(np.float64) * 4095)
    np.testing.assert_allclose(stored, out * 4095, atol=1e-3)  # on the levels
    block_sums = stored.reshape(16, 4, 16, 4).sum(axis=(1, 3))
    np.testing.assert_array_equal(block_sums, np.rint(lr[0] * 4095) * 16)


def test_non_integer_scales_average_back_with_area_weights():
    rng = np.random.default_rng(2)
    lr = rng.random((1, 10, 12)).astype(np.float32)
    sr = np.clip(rng.random((1, 25, 30)) * 0.3 + 0.6, 0, 1).astype(np.float32)  # x2.5, too bright
    before, found = measure(sr, lr), measure(enforce(sr, lr), lr)
    assert abs(before.mean_shift) > 10 and not found.exceeds(), found  # white noise: the hardest case


def test_tolerance_rejects_nonsense():
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="mean_shift"):
            Tolerance(mean_shift=bad)


# ---------------------------------------------------------------------------------------------
# The contract on every format, through the CLI, read back independently


def _gray12(seed=0):
    return np.rint(random_image(32, 40, 1, np.uint16, seed=seed)[..., 0] / 65535 * 3000 + 500).astype(np.uint16)


FILES = {
    "png8": (lambda p, a: PILImage.fromarray(a).save(p), ".png", lambda: random_image(32, 40, 1)[..., 0]),
    "png8-rgb": (lambda p, a: PILImage.fromarray(a).save(p), ".png", lambda: random_image(32, 40, 3)),
    "png12": (lambda p, a: PILImage.fromarray(a).save(p), ".png", _gray12),
    "png16": (lambda p, a: PILImage.fromarray(a).save(p), ".png", lambda: random_image(32, 40, 1, np.uint16)[..., 0]),
    "tiff8": (lambda p, a: tifffile.imwrite(p, a), ".tif", lambda: random_image(32, 40, 1)[..., 0]),
    "tiff12": (lambda p, a: tifffile.imwrite(p, a), ".tif", _gray12),
    "tiff16-rgb": (lambda p, a: tifffile.imwrite(p, a, photometric="rgb"), ".tif",
                   lambda: random_image(32, 40, 3, np.uint16)),
}


def _read_back(path):
    if path.suffix == ".tif":
        return tifffile.imread(path)
    with PILImage.open(path) as im:
        return np.asarray(im)


@pytest.mark.parametrize("kind", sorted(FILES))
@pytest.mark.parametrize("tile", [None, 16])  # whole, and tiles of 16 LR pixels
def test_every_format_averages_back(tmp_path, kind, tile, any_model):
    save, suffix, make = FILES[kind]
    stored = make()
    save(tmp_path / f"in{suffix}", stored)
    sr = medsr.upscale(read_image(tmp_path / f"in{suffix}"), model=any_model, tile=tile)
    medsr.write_image(tmp_path / f"out{suffix}", sr)
    found = averaged_back(stored, _read_back(tmp_path / f"out{suffix}"))
    assert found["mean_abs_error"] == 0 and found["beyond"] == 0, found  # integer scale: exact
    assert sr.consistency.mean_shift == pytest.approx(found["mean_shift"], abs=1e-3)  # medsr measures the same


@pytest.mark.parametrize("photometric, bits, signed", [("MONOCHROME2", 12, False), ("MONOCHROME2", 16, True),
                                                        ("MONOCHROME1", 12, False), ("MONOCHROME2", 16, False)])
def test_dicom_averages_back(tmp_path, photometric, bits, signed, any_model):
    values = _gray12().astype(np.int32)
    stored = (values - 2048 if signed else values).astype(np.int16 if signed else np.uint16)
    make_dicom(tmp_path / "in.dcm", stored, photometric=photometric, bits_stored=bits, PixelRepresentation=int(signed))
    sr = medsr.upscale(read_image(tmp_path / "in.dcm"), model=any_model)
    medsr.write_image(tmp_path / "out.dcm", sr)
    found = averaged_back(stored, pydicom.dcmread(tmp_path / "out.dcm").pixel_array)
    assert found["mean_abs_error"] == 0 and found["beyond"] == 0, found  # integer scale: exact


def test_rgb_dicom_averages_back(tmp_path, any_model):
    stored = random_image(32, 40, 3)
    make_dicom(tmp_path / "in.dcm", stored, photometric="RGB", bits_stored=8, Modality="XC")
    medsr.write_image(tmp_path / "out.dcm", medsr.upscale(read_image(tmp_path / "in.dcm"), model=any_model))
    assert_within(averaged_back(stored, pydicom.dcmread(tmp_path / "out.dcm").pixel_array))


def test_arrays_average_back_in_their_own_dtype(any_model):
    stored = _gray12()
    out = medsr.upscale(stored, model=any_model)
    assert out.dtype == np.uint16
    assert_within(averaged_back(stored, out))
    floats = stored.astype(np.float32) / 4095
    out = medsr.upscale(floats, model=any_model)
    assert out.dtype == np.float32
    found = averaged_back(floats, out)
    assert abs(found["mean_shift"]) < 1e-4 and found["mean_abs_error"] < 1e-3  # float: exact, no rounding


@pytest.mark.parametrize("outscale", [2, 3, 2.5])
def test_other_outscales_average_back_on_the_final_grid(outscale, any_model):
    stored = _gray12()
    image = medsr.upscale(medsr.Image.from_array(stored), model=any_model, outscale=outscale)
    out_h, out_w = round(32 * outscale), round(40 * outscale)
    assert image.size == (out_h, out_w)
    back = average_back(np.rint(image.pixels * image.steps), (32, 40))[0] + image.min_value
    span = stored.max() - stored.min()
    assert abs((back - stored).mean()) / span * 100 <= 0.1 and np.abs(back - stored).mean() / span * 100 <= 1


def test_a_stack_has_one_mapping_and_each_frame_averages_back(tmp_path, any_model):
    frames = np.stack([_gray12(0) // 4, _gray12(1)])  # a dark frame and a bright one
    tifffile.imwrite(tmp_path / "stack.tif", frames)
    plan = medsr.plan_outputs([tmp_path / "stack.tif"], tmp_path / "out.tif")
    [result] = list(medsr.upscale_files(plan, model=any_model))
    assert result.ok, result.error
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        back = [page.asarray() for page in tif.pages]
    span = frames.max() - frames.min()  # one span: the stack's
    for lr, sr in zip(frames, back, strict=True):
        blocks = sr.reshape(32, 4, 40, 4).astype(np.float64).mean(axis=(1, 3))
        assert abs((blocks - lr).mean()) / span * 100 <= 0.1
    assert abs(result.consistency.mean_shift) <= 0.1 and result.consistency.beyond_range == 0


# ---------------------------------------------------------------------------------------------
# Raw network: measured, refused beyond the tolerance unless asked


def test_a_raw_output_beyond_the_tolerance_is_given_raw_with_a_warning(tmp_path, caplog):
    """Asked for the raw network (consistency off), medsr gives it, measured, with a warning line
    (issue 37); projected (the default) an output always keeps the contract."""
    stored = _gray12()
    PILImage.fromarray(stored).save(tmp_path / "in.png")
    model = medsr.SRModel(module=DarkeningNet().eval(), scale=4, name="darkening")
    raw = medsr.upscale(read_image(tmp_path / "in.png"), model=model, consistency=False)
    assert raw.consistency.mean_shift < -5  # the raw network, measured
    assert any("in.png: model darkening: the raw output does not average back" in r.getMessage() and
               "mean shift -" in r.getMessage() for r in caplog.records)
    plan = medsr.plan_outputs([tmp_path / "in.png"], tmp_path / "out.png")
    [result] = list(medsr.upscale_files(plan, model=model, consistency=False))
    assert result.ok and result.consistency.mean_shift < -5 and (tmp_path / "out.png").exists()
    projected = medsr.upscale(read_image(tmp_path / "in.png"), model=model)
    assert abs(projected.consistency.mean_shift) < 0.1


def test_cli_options_and_summary(tmp_path, capsys):
    torch.manual_seed(0)
    save_file(rrdbnet("tiny").state_dict(), tmp_path / "tiny.safetensors")
    PILImage.fromarray(_gray12()).save(tmp_path / "in.png")
    args = ["upscale", str(tmp_path / "in.png"), "--model", str(tmp_path / "tiny.safetensors")]
    assert main([*args, "-o", str(tmp_path / "on.png")]) == 0
    out = capsys.readouterr().out
    assert "values kept (projected;" in out and re.search(r"worst of 1 file\(s\)\): mean shift [+-]0\.000%", out)
    assert main([*args, "-o", str(tmp_path / "off.png"), "--consistency", "off"]) == 0  # asked raw: given raw
    out = capsys.readouterr().out
    assert "the raw output does not average back to the input" in out and "raw network, not projected" in out
    assert main([*args, "-o", str(tmp_path / "half.png"), "--outscale", "0.5"]) == 2
    assert "below 1 an output cannot average back" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "half.png"), "--outscale", "0.5", "--consistency", "off"]) == 0
    assert "values kept" not in capsys.readouterr().out  # nothing to average back to
    assert read_image(tmp_path / "half.png").size == (16, 20)


# ---------------------------------------------------------------------------------------------
# The network's range and the model's domain


def test_the_network_sees_the_images_own_range():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append((float(x.min()), float(x.max())))
            return torch.nn.functional.interpolate(x, scale_factor=2)

    stored = np.linspace(30000, 34000, 32 * 32).reshape(32, 32).astype(np.uint16)  # a narrow band of 16 bits
    medsr.upscale(stored, model=medsr.SRModel(module=Spy(), scale=2, name="spy"))
    assert seen == [(0.0, 1.0)]


@pytest.mark.parametrize("modality, kind", [("CR", "chest-xray"), ("DX", "chest-xray"), ("MG", "chest-xray"),
                                           ("CT", "ct"), ("MR", "mr"), ("PT", "chest-xray")])
def test_auto_chooses_by_dicom_modality_and_says_why(tmp_path, modality, kind):
    from medsr.models.catalog import AUTO

    make_dicom(tmp_path / "a.dcm", _gray12(), photometric="MONOCHROME2", Modality=modality)
    image = read_image(tmp_path / "a.dcm")
    name, fidelity, why = model_for(image)
    assert (name, fidelity) == (AUTO[kind].model, None)
    assert f"DICOM Modality {modality}" in why and AUTO[kind].why in why
    if modality == "PT":
        assert "which no model is trained on" in why
    if kind == "chest-xray":  # with a fidelity, auto is the dial: the modality's two models blended
        assert model_for(image, "auto", 0.5)[:2] == ("cxr", 0.5)
    else:
        with pytest.raises(ValueError, match="fidelity applies to chest X-rays and fundus photographs"):
            model_for(image, "auto", 0.5)


def test_auto_for_a_volume_tells_ct_in_hounsfield_units_from_mr():
    from medsr.engine.upscale import volume_model
    from medsr.formats.volume import Volume
    from medsr.models.catalog import AUTO

    ct = Volume(data=np.full((8, 8, 2), -1000, np.int16), affine=np.eye(4))
    ct.data[2:6, 2:6] = 40  # soft tissue in air
    mr = Volume(data=np.abs(ct.data), affine=np.eye(4))
    chosen, why = volume_model("auto", volume=ct)
    assert chosen.name == AUTO["ct"].model and "CT in HU" in why
    chosen, why = volume_model("auto", volume=mr)
    assert chosen.name == AUTO["mr"].model and "MR" in why


def test_auto_takes_ophthalmic_photographs_as_fundus(tmp_path):
    from medsr.models.catalog import AUTO

    make_dicom(tmp_path / "op.dcm", random_image(32, 40, 3), photometric="RGB", bits_stored=8, Modality="OP")
    image = read_image(tmp_path / "op.dcm")
    assert model_for(image)[0] == AUTO["fundus"].model
    assert model_for(image, "auto", 0.25)[:2] == ("retina", 0.25)


def test_known_models_declare_their_domain():
    from medsr.models.catalog import KNOWN_MODELS

    for name in ("realesrgan-x4plus", "retina", "retina-fidelity", "cxr", "cxr-fidelity", "ct-fidelity"):
        assert KNOWN_MODELS[name].domain is not None
    cxr = KNOWN_MODELS["cxr-fidelity"]
    assert cxr.domain.mismatch(modality="CR", channels=1, bit_depth=8) is None


# ---------------------------------------------------------------------------------------------
# Real files, default settings, the shipped models (issue 28's table: -9.7% and -9.0% before)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_ct_and_mr_with_default_settings(tmp_path, name, capsys):
    path = get_testdata_file(name)
    assert main(["upscale", path, "-o", str(tmp_path / "out.dcm")]) == 0
    original, out = pydicom.dcmread(path), pydicom.dcmread(tmp_path / "out.dcm")
    assert_within(averaged_back(original.pixel_array, out.pixel_array))
    expected = "auto: DICOM Modality CT" if name == "CT_small.dcm" else "auto: DICOM Modality MR"
    assert expected in capsys.readouterr().out


@pytest.mark.slow
def test_the_general_model_keeps_values_too(tmp_path, x4plus):
    path = get_testdata_file("CT_small.dcm")  # before: +21.3% (issue 28)
    sr = medsr.upscale(read_image(path), model=x4plus)
    medsr.write_image(tmp_path / "out.dcm", sr)
    assert_within(averaged_back(pydicom.dcmread(path).pixel_array, pydicom.dcmread(tmp_path / "out.dcm").pixel_array))


# ---------------------------------------------------------------------------------------------
# evaluate: projected and raw side by side


def test_evaluate_scores_projected_and_raw_outputs(tmp_path, capsys):
    from medsr.core.resize import resize_bicubic
    from medsr.evaluation import evaluate as ev

    data = tmp_path / "data"
    data.mkdir()
    PILImage.fromarray(random_image(520, 520, 3)).save(data / "a.png")
    model = medsr.SRModel(module=DarkeningNet().eval(), scale=4, name="darkening")

    def run(lr, size):
        return medsr.upscale(medsr.Image(pixels=lr), model=model, outscale=size[0] / lr.shape[1], consistency=False,
                             allow_inconsistent=True).pixels

    models = [ev.Model("bicubic", lambda lr, size: resize_bicubic(lr, *size)),
              ev.Model("darkening", run, network=True)]
    [result] = ev.evaluate(ev.find_samples(data), models, ev.Options(protocol=ev.PROTOCOLS["retina-x2"],
                                                                     consistency="both"))
    assert list(result.rows) == ["bicubic", "darkening", "darkening raw"]
    assert measure(result.outputs["darkening raw"], result.lr).mean_shift < -5
    assert not measure(result.outputs["darkening"], result.lr).exceeds()
    assert result.rows["darkening"]["psnr"] > result.rows["darkening raw"]["psnr"] + 3
    np.testing.assert_array_equal(result.outputs["bicubic"], resize_bicubic(result.lr, 512, 512))  # as it was
    with pytest.raises(ValueError, match="consistency 'sometimes'"):
        ev.Options(protocol=ev.PROTOCOLS["retina-x2"], consistency="sometimes")
