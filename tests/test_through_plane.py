"""Thick slices to thin (issue 33): the slice axis resampled by an integer factor, each input slice
the mean of the output slices it covers, the volume's outer faces where they were, bad input refused
with the reason. Generated volumes only."""

from __future__ import annotations

import nibabel
import numpy as np
import pytest
import torch

import medsr
from medsr.cli import main
from medsr.core.image import ImageError
from medsr.engine.through_plane import check_through_plane, through_plane_factor
from medsr.formats.volume import Volume
from medsr.models.model import describe_compact
from medsr.nets.compact import compact


def _thick(path=None, shape=(20, 24, 6), spacing=(0.8, 0.8, 3.2), dtype=np.int16, affine=None):
    rng = np.random.default_rng(0)
    data = np.cumsum(np.cumsum(rng.normal(0, 1, shape), 0), 1) * 40
    data = data.astype(dtype) if np.issubdtype(dtype, np.integer) else data.astype(dtype)
    affine = np.diag([*spacing, 1.0]) if affine is None else affine
    affine = affine.copy()
    affine[:3, 3] = (-10.0, 5.0, 30.0)
    if path is None:
        return Volume(data=data, affine=affine)
    nibabel.save(nibabel.Nifti1Image(data, affine), path)
    return path


def _model():
    torch.manual_seed(0)
    net = compact("tiny", channels=1, scale=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return describe_compact(net.eval(), name="tiny-compact")


def _faces(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinates of the outer corners (index -0.5 and n - 0.5 on every axis)."""
    corners = np.array([[-0.5, -0.5, -0.5, 1], [shape[0] - 0.5, shape[1] - 0.5, shape[2] - 0.5, 1]])
    return (affine @ corners.T).T[:, :3]


@pytest.mark.parametrize("model", ["network", "lanczos-projected"])
def test_each_input_slice_is_the_mean_of_its_output_slices(tmp_path, model):
    source = _thick(tmp_path / "t.nii.gz")
    chosen = _model() if model == "network" else model
    out = medsr.upscale(source, model=chosen, through_plane=True, device="cpu", precision="fp32")
    data = nibabel.load(source).get_fdata()
    assert out.data.shape == (20, 24, 24) and out.data.dtype == np.int16
    assert np.array_equal(out.data.reshape(20, 24, 6, 4).astype(np.float64).mean(axis=3), data)  # exact
    assert out.spacing == pytest.approx((0.8, 0.8, 0.8))
    assert np.allclose(_faces(out.affine, out.data.shape), _faces(nibabel.load(source).affine, data.shape))
    medsr.write_volume(tmp_path / "out.nii.gz", out)
    written = nibabel.load(tmp_path / "out.nii.gz")
    assert written.header.get_zooms() == pytest.approx((0.8, 0.8, 0.8))


def test_the_network_changes_what_lanczos_gives(tmp_path):
    volume = _thick()
    by_net = medsr.upscale(volume, model=_model(), through_plane=True, device="cpu", precision="fp32")
    by_lanczos = medsr.upscale(volume, model="lanczos-projected", through_plane=True)
    assert not np.array_equal(by_net.data, by_lanczos.data)


def test_the_factor_comes_from_the_spacing():
    volume = _thick()
    assert through_plane_factor(volume, 2) == 4  # 3.2 mm slices to the 0.8 mm in-plane spacing
    assert through_plane_factor(volume, 2, spacing=1.6) == 2
    out = medsr.upscale(volume, model="lanczos-projected", through_plane=True, spacing=1.6)
    assert out.data.shape == (20, 24, 12)
    out = medsr.upscale(volume, model="lanczos-projected", through_plane=True, outscale=3)
    assert out.data.shape == (20, 24, 18)
    with pytest.raises(ValueError, match="not both"):
        medsr.upscale(volume, model="lanczos-projected", through_plane=True, outscale=2, spacing=1.6)


def test_bad_volumes_are_refused_with_the_reason():
    with pytest.raises(ImageError, match="isotropic: there are no thick slices to make thin"):
        check_through_plane(_thick(spacing=(1.0, 1.0, 1.0)), None, None)
    sheared = np.diag([0.8, 0.8, 3.2, 1.0])
    sheared[1, 2] = 0.5  # the slice axis leans: gantry tilt
    with pytest.raises(ImageError, match="not at right angles"):
        check_through_plane(_thick(affine=sheared), None, None)
    with pytest.raises(ValueError, match="gaps or overlaps"):
        check_through_plane(_thick(), None, 2.0)
    with pytest.raises(ValueError, match="slice thickness -1"):
        check_through_plane(_thick(), None, -1.0)
    with pytest.raises(ValueError, match="at most the volume's 19.2 mm"):
        check_through_plane(_thick(), None, 50.0)
    with pytest.raises(ImageError, match="no thinner slices to make"):
        through_plane_factor(_thick(spacing=(0.8, 0.8, 1.0)), 2)
    with pytest.raises(ValueError, match="through_plane takes a volume"):
        medsr.upscale(np.zeros((8, 8), np.uint8), through_plane=True)


def test_through_plane_on_the_command_line(tmp_path, capsys):
    source = _thick(tmp_path / "t.nii.gz")
    from PIL import Image as PILImage

    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat.png")
    assert main(["upscale", str(source), "-o", str(tmp_path / "thin.nii.gz"), "--through-plane",
                 "--model", "lanczos-projected"]) == 0
    assert nibabel.load(tmp_path / "thin.nii.gz").shape == (20, 24, 24)
    assert "x4 across the slices" in capsys.readouterr().out
    assert main(["upscale", str(source), "-o", str(tmp_path / "x.nii.gz"), "--spacing", "1"]) == 2
    assert "--spacing and --slice-thickness apply to --through-plane" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "flat.png"), "-o", str(tmp_path / "o.png"), "--through-plane"]) == 1
    assert "through-plane super-resolution takes NIfTI volumes" in capsys.readouterr().err


def test_the_volume_z_protocol(tmp_path, capsys):
    import json

    from medsr.evaluation import volume_z

    folder = tmp_path / "vols"
    folder.mkdir()
    _thick(folder / "a.nii.gz", shape=(16, 18, 16), spacing=(1.0, 1.0, 1.0))
    (folder / "broken.nii.gz").write_bytes(b"not a volume")
    case = volume_z.make_case(folder / "a.nii.gz", 4, axis=2)
    assert case.thick.data.shape == (16, 18, 4) and case.thick.spacing == pytest.approx((1.0, 1.0, 4.0))
    thin = volume_z.interpolate(case, "lanczos", 4, projected=True)
    back = thin.reshape(16, 18, 4, 4).mean(axis=3)
    assert np.abs(back - case.thick.data).max() < 1e-3 * np.ptp(case.truth)  # the projection along the slices
    assert main(["evaluate", str(folder), "--protocol", "volume-z", "--factor", "4", "--axis", "2",
                 "--model", "lanczos-projected", "-o", str(tmp_path / "report")]) == 1  # one volume broken
    out = capsys.readouterr()
    assert "broken.nii.gz" in out.err and "| a | lanczos-projected | " in out.out
    found = json.loads((tmp_path / "report" / "summary.json").read_text())["volumes"]["a"]
    assert set(found) == {"cubic", "lanczos", "cubic-projected", "lanczos-projected"}
    assert found["lanczos-projected"]["psnr"] > found["cubic"]["psnr"] - 3  # sane numbers, same units
