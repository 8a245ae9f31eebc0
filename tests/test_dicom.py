"""DICOM reading, mapping and writing, on files pydicom ships and files built here."""

import re
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from torch import nn
from torch.nn import functional as F

import medsr
from medsr.cli import main
from medsr.core.image import ImageError, ReadOptions
from medsr.formats.dicom import StoredRange, parse_window
from medsr.formats.io import read_image, write_image

from .conftest import random_image

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


class IdentityNet(nn.Module):
    def forward(self, x):
        return x


class NearestNet(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=4, mode="nearest")


def identity_model():
    """Scale 1: stored values must come out unchanged."""
    return medsr.SRModel(module=IdentityNet(), scale=1, name="identity")


def nearest_model():
    """x4 by pixel repetition: stored values must come out repeated exactly."""
    return medsr.SRModel(module=NearestNet(), scale=4, name="nearest-x4")


def make_dicom(path, stored: np.ndarray, *, photometric="MONOCHROME1", bits_stored=12, **elements):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Medsr", "MEDSR-0001", "DX"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AP"]
    ds.PixelSpacing, ds.ImagerPixelSpacing = [0.2, 0.25], [0.19, 0.19]
    ds.WindowCenter, ds.WindowWidth = 1500, 2000
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.set_pixel_data(stored, photometric, bits_stored)
    ds.save_as(path, enforce_file_format=True)
    return ds


@pytest.fixture
def cxr12(tmp_path):
    """A 12-bit MONOCHROME1 'chest X-ray' (64x64, a smooth generated image, inverted): the DICOM
    tests need no shared data."""
    gray = random_image(64, 64, 1, seed=3).squeeze().astype(np.uint16)
    stored = 4095 - gray * 16  # MONOCHROME1: high stored values display dark
    make_dicom(tmp_path / "cxr12.dcm", stored)
    return tmp_path / "cxr12.dcm", stored


def upscale_to(path, out, net, **options):
    sr = medsr.upscale(read_image(path, ReadOptions(**options)), model=net)
    write_image(out, sr)
    return sr, pydicom.dcmread(out)


def test_12bit_monochrome1_reads_as_displayed(cxr12):
    path, stored = cxr12
    image = read_image(path)
    assert image.is_gray and image.bit_depth == 16
    expected = 1 - stored.astype(np.float64) / 4095  # full 12-bit range, flipped for MONOCHROME1
    np.testing.assert_allclose(image.pixels[0], expected, atol=1e-7)


def test_identity_round_trip_keeps_stored_values_and_metadata(cxr12, tmp_path):
    path, stored = cxr12
    _, out = upscale_to(path, tmp_path / "out.dcm", identity_model())
    original = pydicom.dcmread(path)
    np.testing.assert_array_equal(out.pixel_array, stored)
    assert out.PhotometricInterpretation == "MONOCHROME1" and out.BitsStored == 12 and out.BitsAllocated == 16
    assert out.PatientName == original.PatientName and out.StudyInstanceUID == original.StudyInstanceUID
    assert out.SOPInstanceUID != original.SOPInstanceUID
    assert out.SeriesInstanceUID != original.SeriesInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert list(out.ImageType) == ["DERIVED", "SECONDARY", "AP"]
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_x4_updates_size_spacing_and_derivation(cxr12, tmp_path):
    path, stored = cxr12
    sr, out = upscale_to(path, tmp_path / "out.dcm", nearest_model())
    assert (out.Rows, out.Columns) == (256, 256)
    np.testing.assert_array_equal(out.pixel_array, np.kron(stored, np.ones((4, 4), np.uint16)))
    assert [float(v) for v in out.PixelSpacing] == pytest.approx([0.05, 0.0625])
    assert [float(v) for v in out.ImagerPixelSpacing] == pytest.approx([0.0475, 0.0475])
    assert "x4 with model nearest-x4" in out.DerivationDescription and "medsr" in out.DerivationDescription
    source = pydicom.dcmread(path)
    [reference] = out.SourceImageSequence  # the derived image names its source
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID != out.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID


def test_one_input_series_gives_one_output_series(cxr12, tmp_path):
    """The same output of the same source is the same instance (an archive sees a duplicate, not a second
    image); another output of it is another instance."""
    path, _ = cxr12
    _, first = upscale_to(path, tmp_path / "a.dcm", nearest_model())
    _, second = upscale_to(path, tmp_path / "b.dcm", nearest_model())
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.SOPInstanceUID == second.SOPInstanceUID
    _, other = upscale_to(path, tmp_path / "c.dcm", "bicubic-projected")
    assert other.SOPInstanceUID != first.SOPInstanceUID


def test_upscaled_dicom_pixels_match_medsr_output(cxr12, tmp_path, tiny_net):
    path, _ = cxr12
    sr, out = upscale_to(path, tmp_path / "out.dcm", tiny_net)
    # MONOCHROME1, 12 bits stored, the full range 0..4095: stored = 4095 - pixel * 4095, by hand
    expected = np.rint(4095 - sr.pixels[0].astype(np.float64) * 4095)
    np.testing.assert_array_equal(out.pixel_array, expected)


@pytest.mark.parametrize("bits, low, high", [(12, -2048, 2047), (16, -32768, 32767)])
def test_signed_data_round_trips(tmp_path, bits, low, high):
    stored = np.linspace(low, high, 32 * 32).round().astype(np.int16).reshape(32, 32)
    make_dicom(tmp_path / "s.dcm", stored, photometric="MONOCHROME2", bits_stored=bits)
    _, out = upscale_to(tmp_path / "s.dcm", tmp_path / "o.dcm", identity_model())
    assert out.PixelRepresentation == 1
    np.testing.assert_array_equal(out.pixel_array, stored)


def test_pydicom_ct_with_rescale_round_trips(tmp_path):
    path = get_testdata_file("CT_small.dcm")  # signed 16-bit CT with RescaleIntercept
    _, out = upscale_to(path, tmp_path / "o.dcm", identity_model())
    original = pydicom.dcmread(path)
    np.testing.assert_array_equal(out.pixel_array, original.pixel_array)
    assert out.RescaleIntercept == original.RescaleIntercept


def test_big_endian_input_is_written_little_endian(tmp_path):
    path = get_testdata_file("MR_small_bigendian.dcm")
    _, out = upscale_to(path, tmp_path / "o.dcm", identity_model())
    np.testing.assert_array_equal(out.pixel_array, pydicom.dcmread(path).pixel_array)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_window_chooses_the_networks_range_and_values_outside_it_are_kept(tmp_path):
    stored = np.arange(0, 4096, 4, dtype=np.uint16).reshape(32, 32)
    # slope 2, intercept -1000: modality = 2 * stored - 1000.
    make_dicom(tmp_path / "w.dcm", stored, photometric="MONOCHROME2", RescaleSlope=2, RescaleIntercept=-1000)
    image = read_image(tmp_path / "w.dcm", ReadOptions(window=(1000.5, 2001)))
    # DICOM linear VOI: window from c - 0.5 - (w - 1)/2 = 0 to 2000 in modality, stored 500 to 1500,
    # of the full 12-bit range 0..4095 that the pixels keep.
    assert image.window == pytest.approx((500 / 4095, 1500 / 4095))
    np.testing.assert_allclose(image.pixels[0], stored / 4095, atol=1e-7)
    sr = medsr.upscale(image, model=nearest_model())
    write_image(tmp_path / "o.dcm", sr)
    back = pydicom.dcmread(tmp_path / "o.dcm").pixel_array
    # nothing clipped: every block averages back to its stored value, outside the window too
    np.testing.assert_array_equal(back.reshape(32, 4, 32, 4).mean(axis=(1, 3)), stored)
    assert back.min() == stored.min() and back.max() == stored.max()


def test_file_window_is_used_when_asked(cxr12, tmp_path):
    path, _ = cxr12
    image = read_image(path, ReadOptions(window="voi"))
    # The file's window: centre 1500, width 2000 -> stored 1500 - 0.5 -/+ 999.5 (slope 1, intercept 0),
    # of 0..4095, flipped (MONOCHROME1).
    assert image.window == pytest.approx((1 - 2499 / 4095, 1 - 500 / 4095))
    ds = pydicom.dcmread(path)
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(tmp_path / "nowindow.dcm")
    with pytest.raises(ImageError, match=r"nowindow\.dcm: --window voi asks for the file's window, but it has none"):
        read_image(tmp_path / "nowindow.dcm", ReadOptions(window="voi"))


def test_window_option_parsing():
    assert parse_window("2048,4096") == (2048.0, 4096.0)
    assert parse_window("voi") == "voi" and parse_window(None) is None
    with pytest.raises(ValueError, match="give CENTRE,WIDTH"):
        parse_window("wide")
    with pytest.raises(ValueError, match="at least 1"):
        parse_window("10,0")


def test_stored_range_inverse_is_exact_for_every_16bit_value():
    for dtype, bits in ((np.uint16, 16), (np.int16, 16), (np.uint16, 12), (np.uint8, 8)):
        info = np.iinfo(dtype)
        low, high = (0, (1 << bits) - 1) if info.min == 0 else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        values = np.arange(low, high + 1).astype(dtype)
        for invert in (False, True):
            mapping = StoredRange(low=low, high=high, invert=invert)
            np.testing.assert_array_equal(mapping.to_stored(mapping.to_unit(values), np.dtype(dtype), bits), values)


def test_compressed_file_with_its_decoder(tmp_path):
    path = get_testdata_file("JPEG2000.dcm")  # decoded by Pillow's OpenJPEG
    decoded = pydicom.dcmread(path).pixel_array
    _, out = upscale_to(path, tmp_path / "o.dcm", identity_model())
    np.testing.assert_array_equal(out.pixel_array, decoded)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_compressed_file_without_its_decoder_names_the_packages():
    """The decoders are installed here; a fresh interpreter in which importing them fails (a None in
    sys.modules, as for a package that is absent) stands for a machine without them."""
    script = (
        "import sys\n"
        "for name in ('pylibjpeg', 'libjpeg', 'jpeg_ls', 'openjpeg', 'rle', 'gdcm'):\n"
        "    sys.modules[name] = None\n"
        "from pydicom.data import get_testdata_file\n"
        "from medsr.formats.io import ImageError, read_image\n"
        "try:\n"
        "    read_image(get_testdata_file('MR_small_jpeg_ls_lossless.dcm'))\n"
        "except ImageError as exc:\n"
        "    print(exc)\n"
    )
    message = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "MR_small_jpeg_ls_lossless.dcm: cannot decode JPEG-LS Lossless" in message
    assert "pyjpegls" in message and "pylibjpeg" in message


@pytest.mark.parametrize(
    "name, message",
    [
        ("examples_ybr_color.dcm", "multi-frame DICOM of 30 frames (a stack); read it with read_frames"),
        ("MR_truncated.dcm", "cannot decode pixel data"),
        ("rtplan.dcm", "DICOM without pixel data"),
    ],
)
def test_unsupported_and_corrupt_files(name, message):
    with pytest.raises(ImageError) as info:
        read_image(get_testdata_file(name))
    assert message in str(info.value)
    assert name in str(info.value)


def test_garbage_with_dcm_suffix(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"\0" * 64 + b"garbage")
    with pytest.raises(ImageError, match=r"x\.dcm: not a DICOM file"):
        read_image(tmp_path / "x.dcm")


def test_ybr_colour_is_read_as_rgb_and_written_as_rgb(tmp_path):
    path = get_testdata_file("SC_ybr_full_422_uncompressed.dcm")
    image = read_image(path)
    assert image.pixels.shape == (3, 100, 100)
    write_image(tmp_path / "o.dcm", image)
    out = pydicom.dcmread(tmp_path / "o.dcm")
    assert out.PhotometricInterpretation == "RGB" and out.SamplesPerPixel == 3
    np.testing.assert_array_equal(out.pixel_array, pydicom.dcmread(path).pixel_array)


def test_plain_images_cannot_become_dicom(tmp_path):
    image = medsr.Image.from_array(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageError, match="only images read from DICOM can be written as DICOM"):
        write_image(tmp_path / "x.dcm", image)


def test_cli_folder_with_suffixless_dicom_and_info(cxr12, tmp_path, tiny_net, capsys):
    path, _ = cxr12
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "IM0001").write_bytes(path.read_bytes())  # DICOM files often have no suffix
    model = tmp_path / "tiny.pth"
    torch.save(tiny_net.state_dict(), model)
    assert main(["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", str(model)]) == 0
    out = pydicom.dcmread(tmp_path / "out" / "IM0001.dcm")
    assert (out.Rows, out.Columns) == (256, 256) and "tiny.pth" in out.DerivationDescription
    capsys.readouterr()
    assert main(["info", str(path), str(tmp_path / "out" / "IM0001.dcm")]) == 0
    printed = capsys.readouterr().out
    assert "stored 12 of 16, unsigned" in printed and "MONOCHROME1" in printed
    assert re.search(r"\n  PixelSpacing:\s+\[0.2, 0.25\]", printed)
    assert re.search(r"\n  PixelSpacing:\s+\[0.05, 0.0625\]", printed)


def test_pydicoms_own_files_read_or_are_refused_with_the_reason():
    """Every pixel-bearing test file of pydicom, from many vendors: 8/16-bit ones read, with the
    archive codecs (JPEG Lossless, JPEG-LS, JPEG 2000, RLE) and colour encodings (YBR_RCT, palette)
    included; others give an ImageError with the reason, never another exception."""
    import os

    import pydicom

    from medsr.formats.io import read_frames

    folder = os.path.dirname(get_testdata_file("CT_small.dcm"))
    read, refused = set(), {}
    for name in sorted(os.listdir(folder)):
        try:
            has_pixels = "PixelData" in pydicom.dcmread(os.path.join(folder, name), force=True)
        except Exception:  # not even pydicom parses it: medsr must refuse it with a reason too
            has_pixels = True
        if not has_pixels:
            continue
        try:
            read_frames(os.path.join(folder, name))
            read.add(name)
        except ImageError as exc:
            refused[name] = str(exc)
    must_read = {"SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless, process 14
                 "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "JPGExtended.dcm",
                 "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "examples_jpeg2k.dcm", "GDCMJ2K_TextGBR.dcm",  # YBR_RCT
                 "examples_palette.dcm", "SC_rgb_rle_16bit_2frame.dcm", "examples_ybr_color.dcm"}
    assert must_read <= read, must_read - read
    assert len(read) >= 45
    for name, message in refused.items():  # each names its file and a reason
        assert name in message and len(message) > len(name) + 20, message


def _first_corner(position, orientation, spacing) -> np.ndarray:
    """The outer corner of the first pixel in patient coordinates (ImagePositionPatient is its centre;
    PS3.3 C.7.6.2.1.1): half a column step back along the row, half a row step back down the column."""
    position, cosines = np.array(position, float), np.array(orientation, float)
    row_spacing, col_spacing = (float(v) for v in spacing)
    return position - 0.5 * col_spacing * cosines[:3] - 0.5 * row_spacing * cosines[3:]


def test_position_moves_so_the_output_covers_the_same_anatomy(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ImageOrientationPatient = [0, 1, 0, 0.6, 0, -0.8]  # oblique, so that both directions count
    ds.PixelSpacing = [0.5, 0.8]  # rows 0.5 mm apart, columns 0.8 mm
    ds.save_as(tmp_path / "ct.dcm")
    _, out = upscale_to(tmp_path / "ct.dcm", tmp_path / "x4.dcm", nearest_model())
    before = _first_corner(ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing)
    after = _first_corner(out.ImagePositionPatient, out.ImageOrientationPatient, out.PixelSpacing)
    np.testing.assert_allclose(after, before, atol=1e-6)
    # the first output pixel's centre: 3/8 of an input pixel up and left of the input's
    expected = (np.array(ds.ImagePositionPatient, float) - 3 / 8 * 0.8 * np.array([0, 1, 0])
                - 3 / 8 * 0.5 * np.array([0.6, 0, -0.8]))
    np.testing.assert_allclose(np.array(out.ImagePositionPatient, float), expected, atol=1e-6)
    _, same = upscale_to(tmp_path / "ct.dcm", tmp_path / "x1.dcm", identity_model())
    np.testing.assert_allclose(np.array(same.ImagePositionPatient, float), np.array(ds.ImagePositionPatient, float))


def test_enhanced_frames_move_their_own_positions(tmp_path):
    stored = np.stack([random_image(8, 8, 1, np.uint16, seed=s).squeeze() >> 4 for s in range(2)])
    make_dicom(tmp_path / "mf.dcm", stored, photometric="MONOCHROME2")
    ds = pydicom.dcmread(tmp_path / "mf.dcm")
    for name in ("PixelSpacing", "ImagerPixelSpacing"):
        if name in ds:
            delattr(ds, name)
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.4, 0.4]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = []
    for z in (10.0, 12.5):
        frame = Dataset()
        frame.PlanePositionSequence = [Dataset()]
        frame.PlanePositionSequence[0].ImagePositionPatient = [-20.0, -30.0, z]
        ds.PerFrameFunctionalGroupsSequence.append(frame)
    ds.save_as(tmp_path / "enhanced.dcm")
    plan = medsr.plan_outputs([tmp_path / "enhanced.dcm"], tmp_path / "out.dcm")
    [result] = medsr.upscale_files(plan, model=nearest_model())
    assert result.ok, result.error
    out = pydicom.dcmread(tmp_path / "out.dcm")
    frames = out.PerFrameFunctionalGroupsSequence
    positions = [float(v) for f in frames for v in f.PlanePositionSequence[0].ImagePositionPatient]
    assert positions == pytest.approx([-20.15, -30.15, 10.0, -20.15, -30.15, 12.5])  # 3/8 of 0.4 mm
    assert [float(v) for v in out.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing] == [0.1, 0.1]
    # a position shared by all frames moves too
    del ds.PerFrameFunctionalGroupsSequence
    shared.PlanePositionSequence = [Dataset()]
    shared.PlanePositionSequence[0].ImagePositionPatient = [-20.0, -30.0, 10.0]
    ds.save_as(tmp_path / "shared.dcm")
    [result] = medsr.upscale_files(medsr.plan_outputs([tmp_path / "shared.dcm"], tmp_path / "shared-x4.dcm"),
                                   model=nearest_model())
    assert result.ok, result.error
    moved = pydicom.dcmread(tmp_path / "shared-x4.dcm").SharedFunctionalGroupsSequence[0].PlanePositionSequence[0]
    assert [float(v) for v in moved.ImagePositionPatient] == pytest.approx([-20.15, -30.15, 10.0])


@pytest.mark.parametrize("spacing", ["0.5", "", None])
def test_a_malformed_pixel_spacing_is_left_out_and_the_position_kept(tmp_path, spacing, caplog):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelSpacing = spacing
    ds.save_as(tmp_path / "ct.dcm")
    _, out = upscale_to(tmp_path / "ct.dcm", tmp_path / "x4.dcm", nearest_model())
    assert list(out.ImagePositionPatient) == list(ds.ImagePositionPatient)  # cannot be moved without spacing
    assert "PixelSpacing" not in out  # kept, it would be wrong for pixels 4 times smaller
    assert "ct.dcm: PixelSpacing" in caplog.text


def test_the_window_is_reported_in_stored_values_for_monochrome1(cxr12):
    """The file's window 1500,2000 spans stored 500..2499 (PS3.3 C.11.2.1.2.1: centre - 0.5 -+ (width - 1) / 2,
    slope 1); MONOCHROME1's flip is in the display, not in the stored values the report names."""
    path, _ = cxr12
    reason = read_image(path, ReadOptions(window="voi")).range_reason
    assert "the network sees the window, stored 500..2499" in reason
