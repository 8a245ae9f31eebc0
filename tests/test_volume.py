"""Volumes (issue 21): NIfTI in and out, DICOM series as one volume, no slice flicker."""

from dataclasses import replace

import nibabel
import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

import medsr
from medsr.cli import main
from medsr.core.image import ImageError
from medsr.formats.volume import Volume, as_dtype, read_volume, scaled_affine, write_volume
from medsr.nets.rrdbnet import rrdbnet

from .conftest import shared_image
from .test_dicom import make_dicom


class NearestNet(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


class Spy(nn.Module):
    """x2 nearest, recording the range of each input the network sees."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.eval()  # as prepared: the engine runs this module, not a copy

    def forward(self, x):
        self.seen.append((float(x.min()), float(x.max())))
        return F.interpolate(x, scale_factor=2, mode="bilinear")


def nearest():
    return medsr.SRModel(module=NearestNet(), scale=2, name="nearest-x2")


def tiny():
    torch.manual_seed(0)
    return medsr.SRModel(module=rrdbnet("tiny").eval(), scale=4, name="tiny")


def oblique_affine(spacing=(0.8, 0.9, 3.0)):
    """A rotation about two axes, anisotropic voxels, an offset: nothing lines up with anything."""
    a, b = 0.3, -0.5
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = [-90.5, 12.25, 40.0]
    return affine


def smooth_volume(shape, dtype=np.int16, low=-1000, high=2000, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.random(tuple(n // 4 + 2 for n in shape))
    values = np.kron(coarse, np.ones(tuple(4 for _ in shape)))[tuple(slice(0, n) for n in shape)]
    values = low + (high - low) * values
    return values.astype(dtype) if np.issubdtype(np.dtype(dtype), np.floating) else np.rint(values).astype(dtype)


def save_nifti(path, data, affine, **header):
    image = nibabel.Nifti1Image(data, affine)
    image.set_qform(affine, code=header.get("qform_code", 1))
    image.set_sform(affine, code=header.get("sform_code", 4))
    image.header.set_xyzt_units("mm", "msec")
    if "slope" in header:
        image.header.set_slope_inter(header["slope"], header["inter"])
    image.to_filename(str(path))
    return path


def corner(affine):
    return (affine @ np.array([-0.5, -0.5, -0.5, 1.0]))[:3]


# ---------------------------------------------------------------------------------------------
# NIfTI


def test_the_outer_corner_stays_put_with_an_oblique_affine(tmp_path):
    path = save_nifti(tmp_path / "v.nii.gz", smooth_volume((12, 16, 5)), oblique_affine())
    out = medsr.upscale(read_volume(path), model=nearest())
    assert out.data.shape == (24, 32, 5)
    np.testing.assert_allclose(corner(out.affine), corner(read_volume(path).affine), atol=1e-9)
    np.testing.assert_allclose(out.spacing, (0.4, 0.45, 3.0), rtol=1e-6)  # the file holds float32
    # the far corner too: the volume covers the same space
    far_in = read_volume(path).affine @ np.array([11.5, 15.5, 4.5, 1])
    np.testing.assert_allclose(out.affine @ np.array([23.5, 31.5, 4.5, 1]), far_in, atol=1e-9)


def test_scaled_affine_by_hand():
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    out = scaled_affine(affine, {0: 2, 1: 3})
    # voxel 0's centre was at 0; the first of two half-size voxels lies a quarter of the old voxel
    # (0.5 mm of 2) before it; of three third-size voxels, one third of the old (1 mm of 3)
    np.testing.assert_allclose(out, [[1, 0, 0, -0.5], [0, 1, 0, -1.0], [0, 0, 4, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_datatypes_round_trip_and_values_are_kept(tmp_path, dtype):
    limits = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    low, high = (limits.min, limits.max) if limits is not None and limits.bits <= 16 else (-500, 3000)
    data = smooth_volume((8, 12, 3), dtype=dtype, low=low, high=high)
    path = save_nifti(tmp_path / "v.nii", data, np.diag([1, 1, 2.5, 1]))
    out = medsr.upscale(read_volume(path), model=nearest())
    write_volume(tmp_path / "o.nii.gz", out)
    back = nibabel.load(tmp_path / "o.nii.gz")
    assert back.get_data_dtype() == np.dtype(dtype)
    expected = np.repeat(np.repeat(data, 2, axis=0), 2, axis=1)
    if limits is not None:
        np.testing.assert_array_equal(np.asarray(back.dataobj), expected)
    else:  # the network's float32 carries 24 bits of the volume's span
        np.testing.assert_allclose(np.asarray(back.dataobj), expected, rtol=0, atol=3500 * 2**-22)


def test_integers_are_rounded_and_never_wrap():
    values = np.array([-300.0, -128.4, 0.5, 1.5, 127.6, 200.0])  # rint: half to even
    np.testing.assert_array_equal(as_dtype(values, np.dtype(np.int8)), [-128, -128, 0, 2, 127, 127])
    assert as_dtype(values, np.dtype(np.float32)).dtype == np.float32


def test_4d_volumes_go_through_every_time_point(tmp_path):
    data = np.stack([smooth_volume((8, 8, 3), seed=t) for t in range(2)], axis=3)
    path = save_nifti(tmp_path / "v4.nii.gz", data, np.diag([1, 1, 4, 1.0]))
    out = medsr.upscale(read_volume(path), model=nearest())
    assert out.data.shape == (16, 16, 3, 2)
    np.testing.assert_array_equal(out.data[::2, ::2], data)


def test_scl_slope_and_header_codes_are_kept(tmp_path):
    data = smooth_volume((8, 8, 3), low=0, high=3000)
    path = save_nifti(tmp_path / "s.nii.gz", data, oblique_affine(), slope=2.0, inter=-1024.0, qform_code=2,
                      sform_code=4)
    volume = read_volume(path)
    np.testing.assert_allclose(volume.values, data * 2.0 - 1024)
    write_volume(tmp_path / "o.nii.gz", medsr.upscale(volume, model=nearest()))
    back = nibabel.load(tmp_path / "o.nii.gz")
    assert (float(back.dataobj.slope), float(back.dataobj.inter)) == (2.0, -1024.0)
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (2, 4)
    assert back.header.get_xyzt_units() == ("mm", "msec")
    np.testing.assert_allclose(back.get_fdata()[::2, ::2], data * 2.0 - 1024)
    assert nibabel.aff2axcodes(back.affine) == nibabel.aff2axcodes(volume.affine)


def test_a_qform_that_differs_from_the_sform_keeps_its_own_geometry(tmp_path):
    """Scanners write the scanner frame in the qform and a registered frame in the sform: each is
    scaled for the new grid; neither is replaced by the other."""
    data = smooth_volume((12, 16, 5))
    qform = oblique_affine()
    sform = oblique_affine((0.8, 0.9, 3.0)) @ np.diag([1.0, 1.0, 1.0, 1.0])
    sform[:3, 3] += [5.0, -3.0, 2.0]  # a registration: the same grid, moved
    image = nibabel.Nifti1Image(data, sform)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=2)
    image.to_filename(str(tmp_path / "v.nii.gz"))
    write_volume(tmp_path / "o.nii.gz", medsr.upscale(read_volume(tmp_path / "v.nii.gz"), model=nearest()))
    back = nibabel.load(tmp_path / "o.nii.gz").header
    scales = {0: 2.0, 1: 2.0}
    np.testing.assert_allclose(back.get_qform(), scaled_affine(qform, scales), atol=1e-5)
    np.testing.assert_allclose(back.get_sform(), scaled_affine(sform, scales), atol=1e-5)
    assert (int(back["qform_code"]), int(back["sform_code"])) == (1, 2)


def test_a_volume_without_orientation_stays_without(tmp_path):
    """Both codes 0 mean "no orientation known" (readers use the voxel sizes alone): the output must
    not claim an aligned frame (sform code 2) that the input never had."""
    image = nibabel.Nifti1Image(smooth_volume((12, 16, 5)), np.diag([0.8, 0.9, 3.0, 1.0]))
    image.set_qform(None, code=0)
    image.set_sform(None, code=0)
    image.header.set_zooms((0.8, 0.9, 3.0))
    image.to_filename(str(tmp_path / "v.nii.gz"))
    assert (int(nibabel.load(tmp_path / "v.nii.gz").header["sform_code"])) == 0
    write_volume(tmp_path / "o.nii.gz", medsr.upscale(read_volume(tmp_path / "v.nii.gz"), model=nearest()))
    back = nibabel.load(tmp_path / "o.nii.gz").header
    assert (int(back["qform_code"]), int(back["sform_code"])) == (0, 0)
    np.testing.assert_allclose(back.get_zooms(), (0.4, 0.45, 3.0), rtol=1e-6)
    # an affine given through the Python API says more than voxel sizes: it is written, as aligned
    placed = replace(read_volume(tmp_path / "v.nii.gz"), affine=oblique_affine())
    write_volume(tmp_path / "p.nii.gz", placed)
    back = nibabel.load(tmp_path / "p.nii.gz")
    assert int(back.header["sform_code"]) == 2
    np.testing.assert_allclose(back.affine, oblique_affine(), atol=1e-5)


def test_the_slice_axis_is_the_largest_spacing_and_isotropic_needs_a_choice(tmp_path):
    data = smooth_volume((6, 8, 10))
    anisotropic = Volume(data=data, affine=np.diag([3.0, 1, 1, 1]), source="a")
    assert medsr.upscale(anisotropic, model=nearest()).data.shape == (6, 16, 20)
    isotropic = Volume(data=data, affine=np.eye(4), source="iso.nii")
    with pytest.raises(ValueError, match=r"iso\.nii: voxel spacing 1 x 1 x 1 mm has no largest axis"):
        medsr.upscale(isotropic, model=nearest())
    assert medsr.upscale(isotropic, model=nearest(), axis=1).data.shape == (12, 8, 20)


def test_one_mapping_for_the_whole_volume_and_no_flicker(tmp_path):
    data = smooth_volume((16, 16, 4), low=0, high=1000)
    data[:, :, 0] //= 4  # a dark slice
    spy = Spy()
    out = medsr.upscale(Volume(data=data, affine=np.diag([1, 1, 5, 1.0])), model=medsr.SRModel(module=spy, scale=2))
    assert max(high for _, high in spy.seen[:1]) < 0.3  # the dark slice is seen dark, not stretched
    means_in = data.reshape(-1, 4).mean(axis=0)
    means_out = out.data.reshape(-1, 4).mean(axis=0)
    np.testing.assert_allclose(np.diff(means_out), np.diff(means_in), atol=1e-9)  # slice to slice: as the input


def test_bad_nifti_files_are_named(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(ImageError, match=r"broken\.nii\.gz: cannot read as NIfTI"):
        read_volume(tmp_path / "broken.nii.gz")
    nibabel.Nifti1Image(np.zeros((4, 4), np.int16), np.eye(4)).to_filename(str(tmp_path / "flat.nii"))
    with pytest.raises(ImageError, match=r"flat\.nii: 2 dimensions"):
        read_volume(tmp_path / "flat.nii")


def test_cli_upscales_and_describes_a_volume(tmp_path, capsys):
    save_file(tiny().module.state_dict(), tmp_path / "tiny.safetensors")
    path = save_nifti(tmp_path / "brain.nii.gz", smooth_volume((12, 12, 3)), oblique_affine())
    assert main(["upscale", str(path), "-o", str(tmp_path / "brain_x2.nii.gz"), "--outscale", "2",
                 "--model", str(tmp_path / "tiny.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "volume int16" in out and "values kept (projected" in out
    assert nibabel.load(tmp_path / "brain_x2.nii.gz").shape == (24, 24, 3)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "12 x 12 x 3" in out and "int16" in out and "slice axis:" in out and "orientation:" in out
    assert main(["upscale", str(path), "-o", str(tmp_path / "x.png")]) == 1
    assert "a volume is written as NIfTI" in capsys.readouterr().err
    iso = save_nifti(tmp_path / "iso.nii.gz", smooth_volume((8, 12, 16)), np.eye(4))
    assert main(["upscale", str(iso), "-o", str(tmp_path / "iso_x2.nii.gz"),
                 "--model", str(tmp_path / "tiny.safetensors")]) == 2  # the arguments: a usage error
    assert "is isotropic: there is no slice axis to take; give --axis" in capsys.readouterr().err
    assert main(["upscale", str(iso), "-o", str(tmp_path / "iso_x2.nii.gz"), "--outscale", "2", "--axis", "0",
                 "--model", str(tmp_path / "tiny.safetensors")]) == 0
    assert nibabel.load(tmp_path / "iso_x2.nii.gz").shape == (8, 24, 32)


# ---------------------------------------------------------------------------------------------
# DICOM series


def make_series(folder, count, *, low, high, series_uid, seed=0, spacing=2.5):
    """``count`` axial CT slices of one series, written in shuffled file order."""
    folder.mkdir(exist_ok=True)
    frame_of_reference = generate_uid()
    for index in np.random.default_rng(seed).permutation(count):
        stored = smooth_volume((32, 32), dtype=np.uint16, low=low, high=high, seed=seed * 100 + int(index))
        make_dicom(folder / f"{series_uid[-6:]}_{(index * 7919) % 1000:03d}.dcm", stored, photometric="MONOCHROME2",
                   Modality="CT", SeriesInstanceUID=series_uid, FrameOfReferenceUID=frame_of_reference,
                   ImagePositionPatient=[0, 0, float(index) * spacing], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                   InstanceNumber=int(index) + 1)


def test_a_folder_of_two_series_gives_two_new_series_each_with_one_mapping(tmp_path):
    a, b = generate_uid(), generate_uid()
    make_series(tmp_path / "in", 4, low=0, high=1000, series_uid=a)
    make_series(tmp_path / "in", 3, low=2000, high=4000, series_uid=b, seed=1)
    spy = Spy()
    plan = medsr.plan_outputs([tmp_path / "in"], tmp_path / "out")
    results = list(medsr.upscale_files(plan, model=medsr.SRModel(module=spy, scale=2)))
    assert len(results) == 7 and all(r.ok for r in results), [r.error for r in results]
    outputs = [pydicom.dcmread(r.target) for r in results]
    sources = {str(r.target): pydicom.dcmread(r.source) for r in results}
    new_series = {o.SeriesInstanceUID for o in outputs}
    assert len(new_series) == 2 and not new_series & {a, b}  # one new series per input series
    assert len({o.SOPInstanceUID for o in outputs}) == 7
    for result, out in zip(results, outputs, strict=True):
        source = sources[str(result.target)]
        assert out.InstanceNumber == source.InstanceNumber and out.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert float(out.ImagePositionPatient[2]) == float(source.ImagePositionPatient[2])  # same slice order
    # One mapping per series: only the brightest and darkest slices reach 1 and 0
    assert sum(high == 1 for _, high in spy.seen) == 2 and sum(low == 0 for low, _ in spy.seen) == 2
    for uid in (a, b):  # no flicker: slice-to-slice changes of the mean as in the input
        pairs = sorted((float(sources[str(r.target)].ImagePositionPatient[2]), sources[str(r.target)], o)
                       for r, o in zip(results, outputs, strict=True)
                       if sources[str(r.target)].SeriesInstanceUID == uid)
        means_in = [s.pixel_array.mean() for _, s, _ in pairs]
        means_out = [o.pixel_array.mean() for _, _, o in pairs]
        np.testing.assert_allclose(np.diff(means_out), np.diff(means_in), atol=1e-9)


def test_the_shared_dicom_series_is_one_volume(tmp_path):
    folder = shared_image("volumes/mr/VS-SEG-001_dicom_slices053-068")
    files = sorted(folder.iterdir())[:3]
    spy = Spy()
    plan = medsr.Plan(pairs=[(f, tmp_path / f"{f.name}.dcm") for f in files])
    results = list(medsr.upscale_files(plan, model=medsr.SRModel(module=spy, scale=2), tile=0))  # one call each
    assert all(r.ok for r in results), [r.error for r in results]
    assert len({pydicom.dcmread(r.target).SeriesInstanceUID for r in results}) == 1
    assert sum(high == 1 for _, high in spy.seen) == 1  # one mapping for the three slices


# ---------------------------------------------------------------------------------------------
# Real volumes


def test_a_real_ct_volume_keeps_hu_orientation_and_slice_means(tmp_path):
    path = shared_image("volumes/ct/thorax-BigBore_z040-099.nii.gz")
    volume = read_volume(path)
    part = replace(volume, data=volume.data[200:264, 200:264, 28:31])  # a 64x64x3 block, same affine
    out = medsr.upscale(part, model=tiny(), outscale=2)
    write_volume(tmp_path / "ct_x2.nii.gz", out)
    back = read_volume(tmp_path / "ct_x2.nii.gz")
    assert back.data.dtype == np.int16 and back.orientation == "LPS" and back.data.shape == (128, 128, 3)
    blocks = back.values.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(blocks, part.values)  # averages back exactly, in HU


# ---------------------------------------------------------------------------------------------
# evaluate --protocol volume-x2


def test_volume_protocol_on_a_folder_of_volumes(tmp_path, capsys):
    import json

    data = tmp_path / "vols"
    data.mkdir()
    save_nifti(data / "a.nii.gz", smooth_volume((32, 32, 5)), np.diag([1, 1, 3, 1.0]))
    save_nifti(data / "b.nii.gz", smooth_volume((24, 32, 4), dtype=np.float32, low=-1, high=5, seed=1), np.eye(4))
    save_file(tiny().module.state_dict(), tmp_path / "tiny.safetensors")
    args = ["evaluate", str(data), "--protocol", "volume-x2", "--baselines", "bicubic", "--slices", "2",
            "--model", str(tmp_path / "tiny.safetensors"), "--consistency", "both", "--figures", "1",
            "-o", str(tmp_path / "report")]
    assert main(args) == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["summary"]["bicubic"]["images"] == 4  # 2 slices of each volume
    assert set(summary["summary"]) == {"bicubic", "tiny.safetensors", "tiny.safetensors raw"}
    assert "box mean" in summary["settings"]["LR"] and "percentile" in summary["settings"]["PSNR/SSIM"]
    rows = (tmp_path / "report" / "per_image.csv").read_text().splitlines()
    assert any(row.startswith("b-k000,") for row in rows)  # isotropic b: slices across k
    assert np.isfinite(summary["summary"]["tiny.safetensors"]["mae"])


def test_the_volume_protocol_scores_a_perfect_model_perfectly(tmp_path):
    from medsr.evaluation import evaluate as ev

    data = smooth_volume((16, 16, 3))
    save_nifti(tmp_path / "v.nii.gz", data, np.diag([1, 1, 2, 1.0]))
    truth = {}

    def oracle(lr, size):  # knows the ground truth: the protocol must give it infinite PSNR and zero error
        return truth["gt"]

    samples = ev.find_slices(tmp_path, per_volume=1)
    options = ev.Options(protocol=ev.PROTOCOLS["volume-x2"], consistency="off")
    volume = read_volume(tmp_path / "v.nii.gz")
    low, high = volume.values.min(), volume.values.max()
    truth["gt"] = ((volume.values[:, :, samples[0].slice] - low) / (high - low))[None]
    [result] = ev.evaluate(samples, [ev.Model("oracle", oracle)], options)
    assert result.rows["oracle"]["mae"] < 1e-3 and result.rows["oracle"]["psnr"] > 80


# ---------------------------------------------------------------------------------------------
# Training on volumes


def test_training_samples_slices_of_volumes_and_resumes_exactly(tmp_path):
    from medsr.training import checkpoint
    from medsr.training.data import HRImages
    from medsr.training.train import finetune

    from .test_train import tiny as tiny_config

    data = tmp_path / "train"
    data.mkdir()
    volume = smooth_volume((40, 36, 4), low=-1000, high=1500)
    volume[:, :, 3] = 7  # a blank slice: left out
    save_nifti(data / "ct.nii.gz", volume, np.diag([0.8, 0.8, 3, 1.0]))
    images = HRImages(data, gt_size=32)
    assert images.items == [(data / "ct.nii.gz", k) for k in range(3)]
    batch = images.batch(2, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    assert batch.shape == (2, 3, 32, 32) and 0 <= batch.min() and batch.max() <= 1
    extra = ("loss.gan_weight=0", "model.d_warmup_iters=0")
    straight = finetune(tiny_config(data, *extra), tmp_path / "a")
    finetune(tiny_config(data, *extra, "run.iterations=2"), tmp_path / "b")
    rest = finetune(tiny_config(data, *extra), tmp_path / "b", resume=True)
    assert straight[2:] == rest
    assert checkpoint.load(tmp_path / "b" / "latest.pth")["data"][0]["files"][0] == "ct.nii.gz#0"


@pytest.mark.slow
def test_the_shipped_ct_model_still_beats_lanczos_projected_on_the_validation_block(tmp_path):
    """A guard: a worse ct-fidelity cannot replace this one unnoticed. Reference: its card's evaluation
    (docs/models/ct-fidelity.md) gave +3.09 dB [+2.93, +3.24] over lanczos-projected on 8 slices of the
    same block (slices 40-59 of the shared thorax CT, never trained on); two of them here (k000: +3.10),
    with a margin of 0.5 dB."""
    from medsr.evaluation import evaluate as ev

    volume = read_volume(shared_image("volumes/ct/thorax-BigBore_z040-099.nii.gz"))
    affine = volume.affine.copy()
    affine[:3, 3] += 40 * volume.affine[:3, 2]
    write_volume(tmp_path / "val.nii.gz", replace(volume, data=np.ascontiguousarray(volume.data[:, :, 40:60]),
                                                  affine=affine))
    samples = ev.find_slices(tmp_path, per_volume=2)
    models = ev.build_models(["lanczos-projected", "ct-fidelity"], tile=None, device="cpu", precision="fp32")
    results = list(ev.evaluate(samples, models, ev.Options(protocol=ev.PROTOCOLS["volume-x2"])))
    gain = np.mean([r.rows["ct-fidelity"]["psnr"] - r.rows["lanczos-projected"]["psnr"] for r in results])
    assert gain > 3.09 - 0.5, gain


def test_a_scaled_float_volume_keeps_its_datatype(tmp_path):
    data = smooth_volume((8, 8, 2), dtype=np.float32, low=0, high=10)
    path = save_nifti(tmp_path / "f.nii.gz", data, np.diag([1, 1, 3, 1.0]), slope=2.0, inter=-5.0)
    volume = read_volume(path)
    assert volume.data.dtype == np.float32  # nibabel hands scaled floats over as float64
    write_volume(tmp_path / "o.nii.gz", medsr.upscale(volume, model=nearest()))
    assert nibabel.load(tmp_path / "o.nii.gz").get_data_dtype() == np.float32
