"""Every value honest: value ranges, gray in colour files, orientation, colour profiles, and no wrong
or truncated output written (issue 11)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image as PILImage
from PIL import ImageCms
from safetensors.torch import save_file

import medsr
from medsr.cli import main
from medsr.core.image import OutputError, ReadOptions
from medsr.engine.upscale import model_for
from medsr.formats.io import Image, ImageError, read_image, write_image
from medsr.nets.rrdbnet import rrdbnet

from .conftest import random_image, shared_image
from .test_dicom import make_dicom, nearest_model


@pytest.fixture
def tiny_model(tmp_path, tiny_net) -> str:
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_net.state_dict(), path)
    return str(path)


@pytest.fixture
def cxr8() -> np.ndarray:
    """A 48x48 crop of a real NIH chest X-ray (8-bit gray)."""
    path = shared_image("cxr/NIH-ChestXray14/val")
    with PILImage.open(sorted(path.glob("*.png"))[0]) as im:
        return np.asarray(im.convert("L"))[400:448, 400:448].copy()


# ---------------------------------------------------------------------------------------------
# value ranges


@pytest.mark.slow
def test_12bit_in_16bit_gives_the_8bit_result(tmp_path, cxr8, capsys):
    # How digital X-rays are often stored: 12-bit values 0..4095 in a 16-bit PNG. The shipped cxr
    # model (the default for gray images) runs on both.
    cxr12 = np.rint(cxr8.astype(np.float64) * 4095 / 255).astype(np.uint16)
    PILImage.fromarray(cxr8).save(tmp_path / "x8.png")
    PILImage.fromarray(cxr12).save(tmp_path / "x12.png")
    assert main(["info", str(tmp_path / "x12.png")]) == 0
    assert f"0..4095 (data: maximum {cxr12.max()} fits 12 bits)" in capsys.readouterr().out
    for name in ("x8", "x12"):
        assert main(["upscale", str(tmp_path / f"{name}.png"), "-o", str(tmp_path / f"{name}_sr.png")]) == 0
    summary = capsys.readouterr().out
    assert "gray, values 0..4095 (data: maximum" in summary and "gray, values 0..255 (8-bit file)" in summary
    with PILImage.open(tmp_path / "x12_sr.png") as im, PILImage.open(tmp_path / "x8_sr.png") as im8:
        sr12, sr8 = np.asarray(im).astype(np.float64), np.asarray(im8).astype(np.float64)
    assert im.mode == "I;16" and sr12.max() <= 4095  # same container, same range
    assert sr12.max() > 2048  # the picture keeps its brightness: not divided by 65535
    assert np.abs(sr12 * 255 / 4095 - sr8).max() <= 2  # issue 11: "within a couple of levels"


def test_range_option_full_and_explicit(tmp_path, cxr8, tiny_model, capsys):
    cxr12 = (cxr8.astype(np.uint16) * 16).astype(np.uint16)
    PILImage.fromarray(cxr12).save(tmp_path / "x.png")
    assert read_image(tmp_path / "x.png", ReadOptions(value_range="full")).value_range == (0, 65535)
    image = read_image(tmp_path / "x.png", ReadOptions(value_range=(0, 8191)))
    assert image.value_range == (0, 8191) and image.range_reason == "as given"
    with pytest.raises(ImageError, match="outside the given range 0..1000"):
        read_image(tmp_path / "x.png", ReadOptions(value_range=(0, 1000)))
    assert main(["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "o.png"), "--model", tiny_model,
                 "--range", "0,1000"]) == 1
    assert "outside the given range" in capsys.readouterr().err and not (tmp_path / "o.png").exists()
    assert main(["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "o.png"), "--range", "9,3"]) == 2


def test_png_sbit_and_tiff_max_sample_value_declare_the_range(tmp_path):
    import png

    values = np.array([[0, 100, 1000]], np.uint16)  # 10-bit by the data rule, 12-bit by the file
    writer = png.Writer(3, 1, greyscale=True, bitdepth=16)
    with open(tmp_path / "raw.png", "wb") as f:
        writer.write(f, values)
    chunks = list(png.Reader(filename=str(tmp_path / "raw.png")).chunks())
    chunks.insert(1, (b"sBIT", bytes([12])))
    with open(tmp_path / "sbit.png", "wb") as f:
        png.write_chunks(f, chunks)
    image = read_image(tmp_path / "sbit.png")
    assert image.value_range == (0, 4095) and image.range_reason == "PNG sBIT: 12 significant bits"
    assert image.to_array().tolist() == values.tolist()  # raw values, not shifted down by sBIT
    tifffile.imwrite(tmp_path / "t.tif", values, extratags=[(281, "H", 1, (4095,), True)])
    assert read_image(tmp_path / "t.tif").value_range == (0, 4095)
    write_image(tmp_path / "back.tif", image)  # the range is written down again
    assert read_image(tmp_path / "back.tif").range_reason == "TIFF MaxSampleValue 4095"


def test_arrays_12bit_and_floats():
    # Pixel repetition as the "model": values must come back exactly, in the array's own range.
    array12 = (random_image(12, 10, 1, np.uint8).squeeze().astype(np.uint16) * 16)
    assert Image.from_array(array12).value_range == (0, 4095)
    sr = medsr.upscale(array12, model=nearest_model())
    assert sr.dtype == np.uint16 and np.array_equal(sr[::4, ::4], array12)
    hu = np.linspace(-1000, 3000, 120, dtype=np.float32).reshape(12, 10)
    with pytest.raises(ImageError, match=r"float array with values -1000..3000: .* value_range"):
        medsr.upscale(hu, model=nearest_model())
    sr = medsr.upscale(hu, model=nearest_model(), value_range=(-1000, 3000))
    assert sr.dtype == np.float32 and np.allclose(sr[::4, ::4], hu, atol=1e-3)
    with pytest.raises(ImageError, match="NaN"):
        medsr.upscale(np.full((4, 4), np.nan, np.float32), model=nearest_model())


# ---------------------------------------------------------------------------------------------
# gray in a colour container


def test_gray_stored_as_rgb_is_gray_and_written_back_as_rgb(tmp_path, cxr8, tiny_model, capsys):
    rgb = np.repeat(cxr8[:, :, None], 3, axis=2)
    PILImage.fromarray(rgb).save(tmp_path / "g.png")
    PILImage.fromarray(rgb).save(tmp_path / "g.jpg", quality=90)
    for name in ("g.png", "g.jpg"):
        image = read_image(tmp_path / name)
        assert image.is_gray and image.stored_as_rgb and "a gray image" in model_for(image)[2]
    assert main(["upscale", str(tmp_path / "g.png"), "-o", str(tmp_path / "sr.png"), "--model", tiny_model]) == 0
    assert "gray stored as RGB, values 0..255" in capsys.readouterr().out
    with PILImage.open(tmp_path / "sr.png") as im:
        out = np.asarray(im)
    assert im.mode == "RGB" and (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
    # A colour picture stays colour.
    colour = read_image(shared_image("retina/STARE/images/im0001.png"))
    assert not colour.is_gray and "a colour image" in model_for(colour)[2]


def test_shared_rgba_xray_is_gray_with_alpha():
    image = read_image(sorted(shared_image("cxr/NIH-ChestXray14/odd-rgba").glob("*.png"))[0])
    assert image.mode == "gray stored as RGB+alpha" and "a gray image" in model_for(image)[2]


# ---------------------------------------------------------------------------------------------
# orientation and colour profiles


def test_exif_orientation_is_applied_and_not_written(tmp_path, tiny_model):
    array = random_image(10, 20, 3)  # stored 20 wide, 10 high
    exif = PILImage.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    PILImage.fromarray(array).save(tmp_path / "r.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "r.jpg")
    assert image.size == (20, 10)  # as a viewer shows it
    assert main(["upscale", str(tmp_path / "r.jpg"), "-o", str(tmp_path / "o.jpg"), "--model", tiny_model]) == 0
    with PILImage.open(tmp_path / "o.jpg") as im:
        assert im.size == (40, 80) and im.getexif().get(0x0112) is None


def test_cmyk_jpeg_becomes_rgb_without_a_foreign_profile(tmp_path):
    cmyk = np.zeros((8, 8, 4), np.uint8)
    cmyk[:, :, 0] = 255  # pure cyan
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    PILImage.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", icc_profile=srgb)  # a profile that does not fit
    image = read_image(tmp_path / "c.jpg")
    assert not image.is_gray and "icc_profile" not in image.meta
    red, green, blue = image.to_array()[4, 4]
    assert red < 30 and green > 220 and blue > 220
    write_image(tmp_path / "o.png", image)
    with PILImage.open(tmp_path / "o.png") as im:
        assert im.mode == "RGB" and "icc_profile" not in im.info


def test_cmyk_profile_is_used_when_it_is_cmyk(tmp_path):
    candidates = sorted(Path("/usr/share/color/icc").rglob("*.ic[cm]")) if Path("/usr/share/color/icc").exists() else []
    profiles = [p for p in candidates if ImageCms.getProfileInfo(str(p)) is not None
                and ImageCms.ImageCmsProfile(str(p)).profile.xcolor_space.strip() == "CMYK"]
    if not profiles:
        pytest.skip("no CMYK ICC profile on this machine (Debian: icc-profiles-free or ghostscript)")
    cmyk = np.zeros((8, 8, 4), np.uint8)
    cmyk[:, :, 1] = 255  # magenta
    PILImage.fromarray(cmyk, "CMYK").save(tmp_path / "m.jpg", icc_profile=profiles[0].read_bytes())
    red, green, blue = read_image(tmp_path / "m.jpg").to_array()[4, 4]
    assert red > 150 and green < 100 and blue > 60


# ---------------------------------------------------------------------------------------------
# nothing wrong written


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_full_disk_jpeg_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        (disk / "old.jpg").write_bytes(b"a good file, before")  # 19 bytes; the rest of the disk is free
        image = Image.from_array(random_image(600, 600, 3, seed=3))  # ~200 KB as JPEG at quality 95
        with pytest.raises(ImageError, match=r"new\.jpg: cannot write"):
            write_image(disk / "new.jpg", image)
        with pytest.raises(ImageError, match=r"old\.jpg: cannot write"):
            write_image(disk / "old.jpg", image, overwrite=True)
        assert sorted(p.name for p in disk.iterdir()) == ["old.jpg"]
        assert (disk / "old.jpg").read_bytes() == b"a good file, before"
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)  # lazy: a mapping may still hold it


def test_truncated_output_is_caught_by_the_read_back(tmp_path, monkeypatch):
    from medsr.formats import io as medsr_io

    good = medsr_io.WRITERS[".png"]

    def truncating(path, image):
        good(path, image)
        path.write_bytes(path.read_bytes()[:-40])

    monkeypatch.setitem(medsr_io.WRITERS, ".png", truncating)
    (tmp_path / "o.png").write_bytes(b"precious")
    with pytest.raises(ImageError, match="does not decode"):
        write_image(tmp_path / "o.png", Image.from_array(random_image(32, 32, 1).squeeze()), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"] and (tmp_path / "o.png").read_bytes() == b"precious"


def test_overflowing_model_writes_nothing(tmp_path, capsys):
    net = rrdbnet("tiny")
    with torch.no_grad():  # finite weights whose activations overflow float32
        net.conv_hr.weight.fill_(1e30)
        net.conv_last.weight.fill_(1e30)
    save_file(net.state_dict(), tmp_path / "inf.safetensors")
    PILImage.fromarray(random_image(8, 8, 3)).save(tmp_path / "a.png")
    code = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--model",
                 str(tmp_path / "inf.safetensors")])
    err = capsys.readouterr().err
    assert code == 1 and "a.png: model inf.safetensors: the network's output holds" in err and "non-finite" in err
    assert not (tmp_path / "o.png").exists()
    with torch.no_grad():
        net.conv_last.bias.fill_(0.5)
        net.conv_last.weight.zero_()  # a constant output
    with pytest.raises(OutputError, match="constant image for a non-constant input"):
        medsr.upscale(random_image(8, 8, 3), model=net)


@pytest.mark.parametrize("window", ["nan,nan", "inf,inf", "2048,0", "2048,1e30", "1e9,100"])
def test_bad_windows_are_refused(tmp_path, window, capsys):
    make_dicom(tmp_path / "x.dcm", random_image(8, 8, 1, np.uint16).squeeze() >> 4)
    code = main(["upscale", str(tmp_path / "x.dcm"), "-o", str(tmp_path / "o.dcm"), "--window", window])
    assert code in (1, 2) and not (tmp_path / "o.dcm").exists()
    assert "window" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# stacks


def test_three_page_gray_tiff_is_three_gray_frames(tmp_path, capsys):
    pages = np.stack([random_image(8, 6, 1, np.uint16, seed=s).squeeze() >> 4 for s in range(3)])  # 12-bit
    # Three gray pages (e.g. three slices); medsr 0.1 read these as one RGB image.
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="minisblack")
    frames = medsr.read_frames(tmp_path / "stack.tif")
    assert len(frames) == 3 and all(f.is_gray and f.size == (8, 6) for f in frames)
    code = main(["upscale", str(tmp_path / "stack.tif"), "-o", str(tmp_path / "o.tif"), "--model", "x"])
    assert code == 1  # a wrong model name stops before anything is written
    capsys.readouterr()
    plan = medsr.plan_outputs([tmp_path / "stack.tif"], tmp_path / "o.tif")
    [result] = medsr.upscale_files(plan, model=nearest_model())
    assert result.ok and result.frames == 3
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        assert len(tif.pages) == 3
        out = np.stack([page.asarray() for page in tif.pages])
    np.testing.assert_array_equal(out[:, ::4, ::4], pages)  # each page its own slice, values kept


def test_multi_series_tiff_gives_every_page(tmp_path):
    with tifffile.TiffWriter(tmp_path / "two.tif") as tif:
        tif.write(random_image(8, 8, 3), photometric="rgb")
        tif.write(random_image(4, 6, 1).squeeze(), photometric="minisblack")
    frames = medsr.read_frames(tmp_path / "two.tif")
    assert [(f.size, f.is_gray) for f in frames] == [((8, 8), False), ((4, 6), True)]
    medsr.write_frames(tmp_path / "back.tif", frames)
    assert [f.size for f in medsr.read_frames(tmp_path / "back.tif")] == [(8, 8), (4, 6)]
    with pytest.raises(ImageError, match=r"2 frames cannot be written as \.png"):
        medsr.write_frames(tmp_path / "back.png", frames)


def test_multi_frame_dicom_round_trips_frame_by_frame(tmp_path):
    from pydicom import dcmread

    stored = np.stack([random_image(8, 8, 1, np.uint16, seed=s).squeeze() >> 4 for s in range(4)])
    make_dicom(tmp_path / "mf.dcm", stored, photometric="MONOCHROME2")
    plan = medsr.plan_outputs([tmp_path / "mf.dcm"], tmp_path / "out.dcm")
    [result] = medsr.upscale_files(plan, model=nearest_model())
    assert result.ok and result.frames == 4
    ds = dcmread(tmp_path / "out.dcm")
    assert int(ds.NumberOfFrames) == 4 and (ds.Rows, ds.Columns) == (32, 32)
    assert [float(v) for v in ds.PixelSpacing] == [0.05, 0.0625]  # 0.2 and 0.25 divided by 4
    np.testing.assert_array_equal(ds.pixel_array[:, ::4, ::4], stored)
    assert ds.SOPInstanceUID != dcmread(tmp_path / "mf.dcm").SOPInstanceUID


# ---------------------------------------------------------------------------------------------
# found in review


def test_ranges_outside_the_container_are_refused_and_nothing_wraps():
    values = np.array([[100, 4000]], np.uint16)
    with pytest.raises(ImageError, match="does not fit the file's values 0..65535"):
        Image.from_array(values, value_range=(-100, 4000))
    with pytest.raises(ImageError, match="does not fit the file's values 0..255"):
        Image.from_array(values.astype(np.uint8), value_range=(0, 1000))
    image = Image.from_array(values)
    image.pixels[:] = 1.5  # out of [0, 1], as a careless caller might leave it
    assert image.to_array().max() == 4095  # clipped to the range, never wrapped around


def test_a_stack_takes_one_range_for_all_its_pages(tmp_path):
    pages = np.stack([np.full((4, 4), 4000, np.uint16), np.full((4, 4), 300, np.uint16)])
    tifffile.imwrite(tmp_path / "s.tif", pages, photometric="minisblack")
    frames = medsr.read_frames(tmp_path / "s.tif")
    assert [f.value_range for f in frames] == [(0, 4095), (0, 4095)]
    assert frames[1].pixels.max() == pytest.approx(300 / 4095)


def test_a_nearly_gray_jpeg_is_gray(tmp_path):
    gray = random_image(32, 32, 1).squeeze()
    rgb = np.stack([gray, gray, gray], axis=2).astype(np.int16)
    rgb[:, :, 0] = np.clip(rgb[:, :, 0] + 2, 0, 255)  # a faint red cast, as a JPEG of an X-ray may carry
    PILImage.fromarray(rgb.astype(np.uint8)).save(tmp_path / "x.jpg", quality=95, subsampling=0)
    with PILImage.open(tmp_path / "x.jpg") as im:
        spread = np.ptp(np.asarray(im).astype(int), axis=2).max()
    assert 0 < spread <= 2  # the file is not exactly gray ...
    assert read_image(tmp_path / "x.jpg").is_gray  # ... and is read as gray


def test_palette_dicom_is_written_back_as_rgb(tmp_path):
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    image = read_image(get_testdata_file("examples_palette.dcm"))
    assert not image.is_gray
    write_image(tmp_path / "p.dcm", medsr.upscale(image, model=nearest_model()))
    out = dcmread(tmp_path / "p.dcm")
    assert out.PhotometricInterpretation == "RGB" and "RedPaletteColorLookupTableData" not in out
