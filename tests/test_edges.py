"""Every edge a user hits (issue 25): arguments checked before work, each case a one-line error."""

import importlib
import sys

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image as PILImage

import medsr
from medsr.cli import main
from medsr.evaluation.evaluate import PROTOCOLS, with_blur

from .conftest import image_folder, random_image


@pytest.fixture
def one_image(tmp_path):
    return image_folder(tmp_path / "data", 2, 520)


@pytest.mark.parametrize("tile", [-5, 2.5, True, "64"])
def test_a_bad_tile_is_refused_before_any_model_loads(tile, monkeypatch):
    module = importlib.import_module("medsr.engine.upscale")  # the module, not the function medsr.upscale
    monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("the model loaded before the tile check"))
    with pytest.raises(ValueError, match=r"tile .*: give None \(automatic\), 0 \(the whole image\) or a positive"):
        medsr.upscale(random_image(8, 8, 1)[..., 0], tile=tile)


@pytest.mark.parametrize("sigma", [-1, float("nan"), float("inf")])
def test_a_nonsense_blur_is_refused(sigma):
    with pytest.raises(ValueError, match="blur sigma .*: must be a finite number >= 0"):
        with_blur(PROTOCOLS["retina-x2"], sigma)


@pytest.mark.parametrize("args, message", [
    (["--max-images", "-1"], "need 0 or more images"),
    (["--blur-sigma", "nan"], "blur sigma nan"),
    (["--region", "a,b,c,d"], "--region 'a,b,c,d': give X,Y,W,H"),
    (["--region", "500,500,64,64"], "within the 512x512 ground truth"),
])
def test_evaluate_arguments_are_checked_before_any_image(one_image, tmp_path, capsys, args, message):
    assert main(["evaluate", str(one_image), "--protocol", "retina-x2", "--baselines", "bicubic",
                 "-o", str(tmp_path / "report"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1  # one line
    assert not (tmp_path / "report").exists()  # no work was done


def test_max_images_keeps_what_it_says(one_image, tmp_path, capsys):
    assert main(["evaluate", str(one_image), "--protocol", "retina-x2", "--baselines", "bicubic", "--max-images",
                 "2", "--figures", "0", "-o", str(tmp_path / "report")]) == 0
    assert "(2 images, 0 skipped)" in capsys.readouterr().out


def test_a_per_file_error_is_printed_once(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["upscale", str(tmp_path / "broken.png"), "-o", str(tmp_path / "out.png")]) == 1
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("broken.png: not a PNG file") == 1


def test_info_says_what_upscale_would_do_with_a_dicom_file(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    ct, rgb32 = get_testdata_file("CT_small.dcm"), get_testdata_file("SC_rgb_rle_32bit.dcm")
    assert main(["info", ct]) == 0
    out = capsys.readouterr().out
    assert "stored values:       128..2191" in out  # pydicom's CT_small: stored 128..2191 (issue 28)
    from medsr.models.catalog import AUTO

    assert f"model (auto):        {AUTO['ct'].model} (auto: DICOM Modality CT; {AUTO['ct'].why})" in out
    assert main(["info", rgb32]) == 1
    assert "32 bits allocated per sample is not supported" in capsys.readouterr().err


def test_the_summary_of_a_run_where_nothing_was_upscaled(tmp_path, capsys):
    assert main(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out.png")]) == 1
    out = capsys.readouterr().out
    assert "upscaled no files" in out and "with none" not in out


def test_dicom_values_are_described_by_their_stored_range(tmp_path):
    from medsr.engine.batch import describe_values
    from medsr.formats.io import read_image

    from .test_dicom import make_dicom

    make_dicom(tmp_path / "a.dcm", (random_image(16, 16, 1, np.uint16)[..., 0] >> 4), bits_stored=12)
    assert describe_values(read_image(tmp_path / "a.dcm")) == "gray, DICOM: 12 bits stored, 0..4095"


@pytest.mark.parametrize("change", ["data.gt_size=64", "model.preset=x4plus", "loss.gan_weight=0"])
def test_resume_with_a_changed_shape_is_a_one_line_error(tmp_path, capsys, change):
    from .test_train import TINY

    data = tmp_path / "hr"
    data.mkdir()
    PILImage.fromarray(random_image(72, 72, 3)).save(data / "a.png")
    args = ["finetune", "-o", str(tmp_path / "run"), "--data", str(data), *sum((["--set", o] for o in TINY), [])]
    assert main([*args, "--set", "run.iterations=1"]) == 0
    capsys.readouterr()
    resume = ["finetune", "-o", str(tmp_path / "run"), "--resume", "--set", change, "--set", "run.iterations=2"]
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert "a resumed run keeps what its checkpoint was made with; changed: " + change.split("=")[0] in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_truncated_training_image_is_found_when_the_run_starts(tmp_path, caplog):
    from medsr.training.data import HRImages

    data = tmp_path / "hr"
    data.mkdir()
    PILImage.fromarray(random_image(64, 64, 3)).save(data / "good.png")
    PILImage.fromarray(random_image(64, 64, 3, seed=1)).save(data / "cut.png")
    whole = (data / "cut.png").read_bytes()
    (data / "cut.png").write_bytes(whole[: len(whole) // 3])  # the header reads; the pixels do not
    with pytest.raises(ValueError, match=r"1 of the training images cannot be used(.|\n)*cut\.png"):
        HRImages(data, gt_size=32)
    assert [p.name for p, _ in HRImages(data, gt_size=32, skip_bad=True).items] == ["good.png"]


# ---------------------------------------------------------------------------------------------
# DICOM output details and early errors


def _identity():
    return medsr.SRModel(module=torch.nn.Identity().eval(), scale=1, name="identity")


def test_dicom_output_keeps_number_of_frames_and_appends_the_derivation(tmp_path):
    from .test_dicom import make_dicom

    ds = make_dicom(tmp_path / "nm.dcm", random_image(16, 16, 1, np.uint16)[..., 0] >> 4, photometric="MONOCHROME2",
                    DerivationDescription="motion corrected")
    ds.NumberOfFrames = 1  # as single-frame NM files state it (set_pixel_data leaves it out)
    ds.save_as(tmp_path / "nm.dcm", enforce_file_format=True)
    medsr.write_image(tmp_path / "out.dcm", medsr.upscale(medsr.read_image(tmp_path / "nm.dcm"), model=_identity()))
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert int(out.NumberOfFrames) == 1
    assert out.DerivationDescription.startswith("motion corrected; medsr")


def test_a_dataset_with_empty_uids_is_written_with_those_of_its_file_meta(tmp_path):
    from .test_dicom import make_dicom

    ds = make_dicom(tmp_path / "anon.dcm", random_image(16, 16, 1, np.uint16)[..., 0] >> 4, photometric="MONOCHROME2")
    ds.SOPClassUID, ds.SOPInstanceUID = "", ""  # anonymised: the file meta keeps them
    ds.save_as(tmp_path / "anon.dcm", enforce_file_format=True)
    medsr.write_image(tmp_path / "out.dcm", medsr.upscale(medsr.read_image(tmp_path / "anon.dcm"), model=_identity()))
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID and out.SOPInstanceUID


def test_an_empty_array_is_named_in_medsrs_words():
    with pytest.raises(medsr.ImageError, match=r"an empty array of shape \(0, 8\)"):
        medsr.upscale(np.zeros((0, 8), np.uint8), model=_identity())


def test_a_network_returning_the_wrong_size_is_named():
    class Wrong(torch.nn.Module):
        def forward(self, x):
            return x  # claims x2, gives x1

    model = medsr.SRModel(module=Wrong().eval(), scale=2, name="wrong")
    from medsr.core.image import OutputError

    wording = r"model wrong: the network gave 16x16 for a 16x16 input; a x2 model must give 32x32"
    with pytest.raises(OutputError, match=wording):
        medsr.upscale(random_image(16, 16, 1)[..., 0], model=model)


def test_demo_figure_labels_grow_with_the_panels(tmp_path):
    import subprocess
    from pathlib import Path

    PILImage.fromarray(random_image(160, 160, 3)).save(tmp_path / "lr.png")
    PILImage.fromarray(random_image(640, 640, 3)).save(tmp_path / "sr.png")  # a 4x output's size
    script = Path(__file__).resolve().parents[1] / "examples" / "make_figure.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "lr.png"), str(tmp_path / "sr.png"),
                    "--labels", "model", "-o", str(tmp_path / "figure.png")], check=True, capture_output=True)
    with PILImage.open(tmp_path / "figure.png") as figure:
        top = figure.height - 2 * 640  # the label band above the panel and its square magnified region
        band = np.asarray(figure.convert("L"))[:top, :640]
    rows = np.flatnonzero((band < 128).any(axis=1))
    assert top >= 32 and rows[-1] - rows[0] >= 14  # text at least 14 px tall on a 640 px panel (was 10)


# ---------------------------------------------------------------------------------------------
# Files whose pixels were silently wrong


def _exif_orientation(value: int) -> bytes:
    exif = PILImage.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def test_a_16bit_png_with_exif_orientation_6_is_read_upright(tmp_path):
    stored = (np.arange(12 * 20, dtype=np.uint16).reshape(12, 20) * 200)  # 20 wide, 12 tall
    PILImage.fromarray(stored).save(tmp_path / "o6.png", exif=_exif_orientation(6))
    image = medsr.read_image(tmp_path / "o6.png")
    # orientation 6: the stored picture is shown turned 90 degrees clockwise (Pillow's exif_transpose)
    np.testing.assert_array_equal(image.to_array(), np.rot90(stored, -1))


def test_a_tiff_with_orientation_6_is_read_upright(tmp_path):
    import tifffile

    stored = random_image(12, 20, 1, np.uint16)[..., 0]
    tifffile.imwrite(tmp_path / "o6.tif", stored, extratags=[(274, 3, 1, 6, True)])  # Orientation = 6
    np.testing.assert_array_equal(medsr.read_image(tmp_path / "o6.tif").to_array(), np.rot90(stored, -1))


@pytest.mark.parametrize("name, pixels", [("o6.jpg", random_image(12, 20, 3)),
                                          ("o6-16bit.png", random_image(12, 20, 1, np.uint16)[..., 0])])
def test_a_turned_picture_keeps_its_resolution_on_the_right_axes(tmp_path, name, pixels):
    """Orientations 5-8 swap width and height, so the horizontal and vertical resolutions swap too:
    72 x 300 dpi stored sideways is 300 x 72 dpi upright (and written so)."""
    PILImage.fromarray(pixels).save(tmp_path / name, exif=_exif_orientation(6), dpi=(72, 300))
    image = medsr.read_image(tmp_path / name)
    assert tuple(round(v) for v in image.meta["dpi"]) == (300, 72)
    medsr.write_image(tmp_path / "out.png", image)
    with PILImage.open(tmp_path / "out.png") as out:
        assert tuple(round(v) for v in out.info["dpi"]) == (300, 72)


def test_an_animated_png_is_refused_not_cut_to_its_first_frame(tmp_path):
    frames = [PILImage.fromarray(random_image(16, 16, 3, seed=i)) for i in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    with pytest.raises(medsr.ImageError, match=r"anim\.png: an animated PNG of 3 frames"):
        medsr.read_image(tmp_path / "anim.png")


def test_a_cmyk_tiff_read_through_tifffile_becomes_rgb(tmp_path):
    import tifffile

    cmyk = np.zeros((8, 8, 4), np.uint8)
    cmyk[..., 1] = 255  # full magenta, no black: red and blue stay, green goes
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    image = medsr.read_image(tmp_path / "cmyk.tif")
    assert image.alpha is None and image.pixels.shape[0] == 3
    np.testing.assert_array_equal(image.to_array()[0, 0], [255, 0, 255])


def _with_iccp(data: bytes, profile: bytes) -> bytes:
    """A PNG with an iCCP chunk after its IHDR (PNG spec 11.3.3.3: name, 0, method 0, zlib data)."""
    import struct
    import zlib

    body = b"icc\x00\x00" + zlib.compress(profile)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    return data[:33] + chunk + data[33:]  # 8-byte signature + 25-byte IHDR chunk


def test_a_16bit_rgb_png_keeps_its_icc_profile(tmp_path):
    import png
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    stored = random_image(8, 8, 3, np.uint16)
    with open(tmp_path / "plain.png", "wb") as f:
        png.Writer(8, 8, greyscale=False, bitdepth=16).write(f, stored.reshape(8, 24))
    (tmp_path / "in.png").write_bytes(_with_iccp((tmp_path / "plain.png").read_bytes(), profile))
    with PILImage.open(tmp_path / "in.png") as im:
        assert im.info["icc_profile"] == profile  # the input is as intended
    medsr.write_image(tmp_path / "out.png", medsr.upscale(medsr.read_image(tmp_path / "in.png"), model=_identity()))
    with PILImage.open(tmp_path / "out.png") as written:
        assert written.info.get("icc_profile") == profile
    with open(tmp_path / "out.png", "rb") as f:
        assert png.Reader(file=f).read()[3]["bitdepth"] == 16


def test_anonymised_files_without_a_series_uid_are_not_merged_into_one_series(tmp_path):
    from .test_dicom import make_dicom

    uids = set()
    for name in ("a", "b"):
        make_dicom(tmp_path / f"{name}.dcm", random_image(8, 8, 1, np.uint16)[..., 0] >> 4, photometric="MONOCHROME2",
                   SeriesInstanceUID="")
        sr = medsr.upscale(medsr.read_image(tmp_path / f"{name}.dcm"), model=_identity())
        medsr.write_image(tmp_path / f"{name}_out.dcm", sr)
        uids.add(pydicom.dcmread(tmp_path / f"{name}_out.dcm").SeriesInstanceUID)
    assert len(uids) == 2
