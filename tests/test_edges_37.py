"""Edges found by a newcomer and a red team (issue 37): each case ends in a defined result, with
the file or argument named, before any work where the problem is in the arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medsr.cli import main
from medsr.core.image import ReadOptions


def _png(path, size=(16, 16), seed=0):
    PILImage.fromarray((np.random.default_rng(seed).random(size) * 255).astype(np.uint8)).save(path)
    return path


class _Brighter(torch.nn.Module):
    """A 'network' whose output is the input replicated and brightened: far beyond the contract."""

    def forward(self, x):
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest").mul(0.5).add(0.4)


def _brighter():
    import medsr

    return medsr.SRModel(module=_Brighter(), scale=2, name="brighter", in_channels=1, out_channels=1)


def test_consistency_off_gives_the_raw_network_with_its_numbers(tmp_path, caplog):
    import medsr

    source = _png(tmp_path / "a.png")
    model = _brighter()
    out = medsr.upscale(source, model=model, consistency=False)  # asked raw: given raw, not refused
    assert out.consistency is not None and out.consistency.mean_abs_error > 1
    assert any("does not average back" in r.getMessage() and "raw" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("baselines, message", [("nothing", "nothing: neither a checkpoint file nor a known model"),
                                                ("", "no methods to evaluate")])
def test_evaluate_with_no_or_unknown_methods_is_a_usage_error(tmp_path, capsys, baselines, message):
    folder = tmp_path / "d"
    folder.mkdir()
    _png(folder / "big.png", (520, 520))
    assert main(["evaluate", str(folder), "--protocol", "retina-x2", "--baselines", baselines,
                 "-o", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_negative_max_pixels_is_refused_before_work(tmp_path, capsys):
    with pytest.raises(ValueError, match="max_pixels -5: must be a whole number of at least 1"):
        ReadOptions(max_pixels=-5)
    assert main(["upscale", str(_png(tmp_path / "a.png")), "-o", str(tmp_path / "b.png"), "--max-pixels", "-5"]) == 2
    assert "max_pixels -5" in capsys.readouterr().err and not (tmp_path / "b.png").exists()


def test_a_folder_to_one_file_name_is_a_usage_error(tmp_path, capsys):
    folder = tmp_path / "f"
    folder.mkdir()
    _png(folder / "a.png")
    assert main(["upscale", str(folder), "-o", str(tmp_path / "x.png")]) == 2
    assert "an output file name needs exactly one input file" in capsys.readouterr().err


def test_non_floating_weights_are_refused_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    import medsr
    from medsr.nets.rrdbnet import rrdbnet

    state = {k: (v * 100).to(torch.int32) for k, v in rrdbnet("tiny").state_dict().items()}
    save_file(state, tmp_path / "ints.safetensors")
    with pytest.raises(medsr.WeightsError, match=r"ints\.safetensors: tensor .* holds int32 values; weights must be "
                                                 r"floating point"):
        medsr.load_model(tmp_path / "ints.safetensors")


HUGE = ("run:\n  iterations: " + "9" * 400 + "\n", "run: iterations 999999999999...(400 digits)")
DEEP = ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply")


@pytest.mark.parametrize("text, message", [HUGE, DEEP])
def test_hostile_yaml_configs_are_refused_with_status_2(tmp_path, capsys, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    data = tmp_path / "data"
    data.mkdir()
    assert main(["finetune", "--preset", "tiny", "--data", str(data), "--config", str(config),
                 "-o", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


def test_a_huge_integer_in_set_names_the_option(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    assert main(["finetune", "--preset", "tiny", "--data", str(data), "--set", "run.iterations=" + "9" * 5000,
                 "-o", str(tmp_path / "run")]) == 2
    assert "--set run.iterations: Exceeds the limit" in capsys.readouterr().err


def test_a_dicom_whose_header_contradicts_itself_is_refused_on_reading(tmp_path):
    """MONOCHROME2 declared with 3 samples per pixel: the error names the input, not an output."""
    import pydicom

    from medsr.core.image import ImageError
    from medsr.formats.io import read_image
    from tests.test_dicom import make_dicom

    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", bits_stored=8)
    ds = pydicom.dcmread(tmp_path / "rgb.dcm")
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(tmp_path / "liar.dcm")
    with pytest.raises(ImageError, match=r"liar\.dcm: MONOCHROME2 with 3 samples per pixel \(it needs 1\)"):
        read_image(tmp_path / "liar.dcm")


def test_a_gzip_volume_with_a_crc_error_is_refused(tmp_path):
    import gzip

    import nibabel

    from medsr.core.image import ImageError
    from medsr.formats.volume import read_volume

    data = np.random.default_rng(0).integers(0, 1000, (16, 16, 4)).astype(np.int16)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii.gz")
    raw = bytearray((tmp_path / "v.nii.gz").read_bytes())
    raw[-8] ^= 0xFF  # the gzip trailer's CRC-32: the data decompress, the check fails
    (tmp_path / "bad.nii.gz").write_bytes(bytes(raw))
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(bytes(raw))
    with pytest.raises(ImageError, match=r"bad\.nii\.gz: .*(CRC|damaged)"):
        read_volume(tmp_path / "bad.nii.gz")


def test_a_volume_run_under_auto_says_why_once_and_never_as_asked(tmp_path, capsys):
    import nibabel

    data = np.random.default_rng(0).integers(-1024, 1000, (12, 12, 2)).astype(np.int16)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([0.5, 0.5, 3.0, 1.0])), tmp_path / "ct.nii.gz")
    assert main(["upscale", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "ct_x2.nii.gz"), "--outscale", "2",
                 "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "as asked" not in out
    assert "auto: a volume with values below -500 (CT in HU)" in out


def test_a_12_bit_dicom_written_as_png_keeps_its_stored_values(tmp_path):
    import medsr
    from tests.test_dicom import make_dicom

    stored = (np.random.default_rng(0).random((16, 16)) * 4095).astype(np.uint16)
    make_dicom(tmp_path / "c.dcm", stored, photometric="MONOCHROME2", bits_stored=12)
    medsr.write_image(tmp_path / "c.png", medsr.read_image(tmp_path / "c.dcm"))
    with PILImage.open(tmp_path / "c.png") as im:
        assert np.array_equal(np.asarray(im), stored)  # 0..4095, not scaled to 65535
    assert medsr.read_image(tmp_path / "c.png").max_value == 4095


def test_a_pgm_with_maxval_4095_is_written_back_with_4095(tmp_path):
    import medsr

    stored = (np.random.default_rng(0).random((8, 8)) * 4095).astype(">u2")
    (tmp_path / "p.pgm").write_bytes(b"P5\n8 8\n4095\n" + stored.tobytes())
    medsr.write_image(tmp_path / "q.pgm", medsr.read_image(tmp_path / "p.pgm"))
    data = (tmp_path / "q.pgm").read_bytes()
    assert data.startswith(b"P5\n8 8\n4095\n")
    assert np.array_equal(np.frombuffer(data[len(b"P5\n8 8\n4095\n"):], ">u2").reshape(8, 8), stored)


def test_a_checkpoint_whose_optimiser_state_changed_is_refused(tmp_path):
    """The networks' digest alone let a damaged optimiser state resume and blow the loss up."""
    from medsr.training import checkpoint

    net = torch.nn.Linear(4, 4)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    checkpoint.save(tmp_path / "c.pt", {"net_g": net.state_dict(), "optim_g": optimizer.state_dict(), "iteration": 1})
    assert checkpoint.load(tmp_path / "c.pt")["iteration"] == 1
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    raw["optim_g"]["state"][0]["exp_avg_sq"][0, 0] += 1e6  # a flipped high bit, in the moments
    torch.save(raw, tmp_path / "d.pt")
    with pytest.raises(ValueError, match=r"d\.pt: the checkpoint is damaged"):
        checkpoint.load(tmp_path / "d.pt")


def test_progress_lines_without_a_terminal(tmp_path, capsys, monkeypatch):
    """Under nohup or Slurm (no terminal) a volume run says how far it is, per slice, with the rate."""
    import nibabel

    from medsr.cli import common

    monkeypatch.setattr(common, "PLAIN_EVERY", 0.0)
    data = np.random.default_rng(0).integers(0, 1000, (12, 12, 3)).astype(np.int16)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([0.5, 0.5, 3.0, 1.0])), tmp_path / "v.nii.gz")
    assert main(["upscale", str(tmp_path / "v.nii.gz"), "-o", str(tmp_path / "w.nii.gz"), "--outscale", "2",
                 "--model", "lanczos-projected"]) == 0
    out = capsys.readouterr().out
    assert "v.nii.gz: 1/3 slices, " in out and "v.nii.gz: 3/3 slices, " in out and "s left" in out


def test_volumes_that_cannot_be_scans_are_refused_on_reading(tmp_path):
    import nibabel

    from medsr.core.image import ImageError
    from medsr.formats.volume import read_volume

    rgb = np.zeros((8, 8, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nibabel.save(nibabel.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    with pytest.raises(ImageError, match=r"rgb\.nii\.gz: datatype .* is not supported"):
        read_volume(tmp_path / "rgb.nii.gz")
    header = nibabel.Nifti1Header()
    header.set_data_dtype(np.int16)
    header["sform_code"], header["qform_code"] = 2, 0
    header["srow_x"], header["srow_y"], header["srow_z"] = [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 3, 0]  # a voxel size of 0
    nibabel.save(nibabel.Nifti1Image(np.ones((8, 8, 3), np.int16), None, header), tmp_path / "zero.nii.gz")
    with pytest.raises(ImageError, match=r"zero\.nii\.gz: its affine is singular"):
        read_volume(tmp_path / "zero.nii.gz")
    assert main(["info", str(tmp_path / "rgb.nii.gz")]) == 1  # named, no traceback


def test_evaluate_volumes_reports_a_broken_one_and_evaluates_the_rest(tmp_path, capsys):
    import json

    import nibabel

    folder = tmp_path / "vols"
    folder.mkdir()
    data = np.cumsum(np.random.default_rng(0).normal(0, 50, (16, 16, 4)), axis=0).astype(np.int16)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), folder / "good.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"not a volume")
    assert main(["evaluate", str(folder), "--protocol", "volume-x2", "--baselines", "bicubic,lanczos-projected",
                 "--slices", "2", "--figures", "0", "-o", str(tmp_path / "report")]) == 1
    captured = capsys.readouterr()
    assert "broken.nii.gz: cannot read as NIfTI" in captured.err
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["settings"]["images"] == 2 and summary["settings"]["skipped"] == 1
    blank = tmp_path / "blank"
    blank.mkdir()
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 8, 3), np.int16), np.diag([1.0, 1.0, 3.0, 1.0])),
                 blank / "empty.nii.gz")
    assert main(["evaluate", str(blank), "--protocol", "volume-x2", "-o", str(tmp_path / "r2")]) == 2
    assert "empty.nii.gz: every slice holds a single value" in capsys.readouterr().err


def test_an_isotropic_volume_without_axis_is_a_usage_error_naming_the_option(tmp_path, capsys):
    import nibabel

    data = np.random.default_rng(0).integers(0, 100, (8, 8, 8)).astype(np.int16)
    image = nibabel.Nifti1Image(data, np.eye(4))
    image.header.set_xyzt_units(xyz=0)  # units not stated
    nibabel.save(image, tmp_path / "iso.nii.gz")
    assert main(["upscale", str(tmp_path / "iso.nii.gz"), "-o", str(tmp_path / "out.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "1 x 1 x 1 (units not stated) is isotropic" in err and "--axis 0, 1 or 2" in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_float_volume_is_not_called_16_bit(caplog):
    import medsr
    from medsr.engine import upscale as engine
    from medsr.formats.volume import Volume

    engine._warn_once.cache_clear()
    volume = Volume(data=np.random.default_rng(0).normal(0, 1, (16, 16, 2)).astype(np.float32),
                    affine=np.diag([1.0, 1.0, 3.0, 1.0]))
    medsr.upscale(volume, model="mri-fidelity", outscale=2, precision="fp32", device="cpu")
    said = " ".join(r.getMessage() for r in caplog.records if "outside it" in r.getMessage())
    assert "floating-point values" in said and "16-bit" not in said
