import numpy as np
import png
import pytest
import tifffile
from PIL import Image as PILImage

from medsr.core.image import ReadOptions
from medsr.formats.io import Image, ImageError, read_image, write_image

from .conftest import random_image, shared_image


def roundtrip(tmp_path, name: str, array: np.ndarray) -> tuple[Image, np.ndarray]:
    image = Image.from_array(array)
    write_image(tmp_path / name, image)
    back = read_image(tmp_path / name)
    return back, back.to_array()


@pytest.mark.parametrize(
    "name, channels, dtype",
    [
        ("g8.png", 1, np.uint8),
        ("g16.png", 1, np.uint16),
        ("c8.png", 3, np.uint8),
        ("c16.png", 3, np.uint16),
        ("ca16.png", 4, np.uint16),
        ("ga16.png", 2, np.uint16),
        ("ca8.png", 4, np.uint8),
        ("g8.tif", 1, np.uint8),
        ("g16.tif", 1, np.uint16),
        ("c16.tif", 3, np.uint16),
        ("ca16.tif", 4, np.uint16),
        ("g16.pgm", 1, np.uint16),
        ("c16.ppm", 3, np.uint16),
        ("g8.pgm", 1, np.uint8),
        ("c8.bmp", 3, np.uint8),
    ],
)
def test_lossless_formats_round_trip_exactly(tmp_path, name, channels, dtype):
    array = random_image(24, 20, channels, dtype)
    back, out = roundtrip(tmp_path, name, array.squeeze())
    assert back.bit_depth == np.iinfo(dtype).bits
    assert back.is_gray == (channels in (1, 2))
    assert (back.alpha is not None) == (channels in (2, 4))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, array.squeeze())


def test_container_comes_from_the_file_and_range_from_the_data(tmp_path):
    # A dark 16-bit image (all values < 256) stays a 16-bit file (upstream writes 8-bit for max < 256);
    # its value range is the smallest clinical bit range holding the data: 8 bits.
    dark = np.arange(200, dtype=np.uint16).reshape(10, 20)
    PILImage.fromarray(dark).save(tmp_path / "dark16.png")
    image = read_image(tmp_path / "dark16.png")
    assert image.bit_depth == 16 and image.value_range == (0, 255)
    assert image.range_reason == "data: maximum 199 fits 8 bits"
    assert image.pixels.max() == pytest.approx(199 / 255)
    full = read_image(tmp_path / "dark16.png", ReadOptions(value_range="full"))
    assert full.value_range == (0, 65535) and full.pixels.max() == pytest.approx(199 / 65535)
    write_image(tmp_path / "back.png", image)
    with PILImage.open(tmp_path / "back.png") as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im), dark)
    # A 16-bit colour PNG, which Pillow alone would read as 8-bit.
    rgb = np.full((4, 5, 3), 300, np.uint16)
    png.from_array(rgb.reshape(4, 15), "RGB;16").save(tmp_path / "c16.png")
    assert read_image(tmp_path / "c16.png").to_array().max() == 300


def test_12bit_pgm_keeps_its_maxval(tmp_path):
    values = np.array([[0, 1, 4095], [2048, 17, 4000]], dtype=">u2")
    (tmp_path / "x.pgm").write_bytes(b"P5\n# a comment\n3 2\n4095\n" + values.tobytes())
    image = read_image(tmp_path / "x.pgm")
    assert image.max_value == 4095 and image.bit_depth == 16
    assert image.pixels[0, 0, 2] == 1.0
    write_image(tmp_path / "y.pgm", image)
    assert (tmp_path / "y.pgm").read_bytes() == (tmp_path / "x.pgm").read_bytes().replace(b"# a comment\n", b"")
    # Formats without a maxval keep the values (0..4095 in a 16-bit file), not a rescaled copy.
    write_image(tmp_path / "y.png", image)
    np.testing.assert_array_equal(read_image(tmp_path / "y.png").to_array(), values)


def test_jpeg_reads_as_8bit_rgb_and_gray(tmp_path):
    PILImage.fromarray(random_image(16, 16, 3).squeeze()).save(tmp_path / "c.jpg")
    PILImage.fromarray(random_image(16, 16, 1).squeeze()).save(tmp_path / "g.jpg")
    assert read_image(tmp_path / "c.jpg").pixels.shape == (3, 16, 16)
    gray = read_image(tmp_path / "g.jpg")
    assert gray.pixels.shape == (1, 16, 16) and gray.bit_depth == 8


def test_palette_and_bilevel_images_are_expanded(tmp_path):
    PILImage.fromarray(random_image(8, 8, 3).squeeze()).convert("P").save(tmp_path / "p.png")
    PILImage.fromarray(random_image(8, 8, 1).squeeze() > 128).save(tmp_path / "b.png")
    assert read_image(tmp_path / "p.png").pixels.shape == (3, 8, 8)
    bilevel = read_image(tmp_path / "b.png")
    assert bilevel.is_gray and set(np.unique(bilevel.to_array())) <= {0, 255}


def test_shared_rgba_chest_xray_reads_with_alpha():
    # The NIH set's RGBA files are gray pictures in a colour container: one channel of content.
    image = read_image(next(shared_image("cxr/NIH-ChestXray14/odd-rgba").glob("*.png")))
    assert image.pixels.shape == (1, 1024, 1024) and image.stored_as_rgb and image.alpha is not None


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.png", b"", "empty file"),
        ("junk.png", b"hello, not a png", "not a PNG file"),
        ("junk.jpg", b"\xff\xd8\xff\xe0 broken", "cannot decode"),
        ("junk.tif", b"II*\x00garbage", "cannot decode"),
        ("short.pgm", b"P5\n4 4\n255\n\x00\x01", "file ends before"),
        ("bad.pgm", b"P5\n4 x\n255\n", "malformed PGM/PPM header"),
        ("notes.txt", b"text", "unsupported file type '.txt'"),
    ],
)
def test_bad_files_are_named_with_the_reason(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError, match=message) as info:
        read_image(tmp_path / name)
    assert name in str(info.value)


def test_truncated_png_is_reported(tmp_path):
    PILImage.fromarray(random_image(64, 64, 3).squeeze()).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"t\.png: cannot decode"):
        read_image(tmp_path / "t.png")


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    PILImage.fromarray(random_image(40, 50, 1).squeeze()).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"big\.png: 50x40 = 2,000 pixels exceeds the limit of 1,999"):
        read_image(tmp_path / "big.png", ReadOptions(max_pixels=1999))
    tifffile.imwrite(tmp_path / "big.tif", random_image(40, 50, 1, np.uint16).squeeze())
    with pytest.raises(ImageError, match="exceeds the limit"):
        read_image(tmp_path / "big.tif", ReadOptions(max_pixels=1999))


def test_multipage_and_float_tiffs_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 8), np.uint16))
    with pytest.raises(ImageError, match=r"stack\.tif: TIFF of 5 frames \(a stack\); read it with read_frames"):
        read_image(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((8, 8), np.float32))
    with pytest.raises(ImageError, match="sample type float32"):
        read_image(tmp_path / "f.tif")


def test_existing_files_are_not_overwritten_unless_asked(tmp_path):
    image = Image.from_array(random_image(8, 8, 1).squeeze())
    (tmp_path / "out.png").write_bytes(b"precious")
    with pytest.raises(ImageError, match=r"out\.png: already exists"):
        write_image(tmp_path / "out.png", image)
    assert (tmp_path / "out.png").read_bytes() == b"precious"
    write_image(tmp_path / "out.png", image, overwrite=True)
    assert read_image(tmp_path / "out.png").size == (8, 8)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary files left


def test_16bit_cannot_be_written_as_jpeg(tmp_path):
    image = Image.from_array(random_image(8, 8, 3, np.uint16))
    with pytest.raises(ImageError, match=r"x\.jpg: \.jpg holds 8 bits per sample"):
        write_image(tmp_path / "x.jpg", image)
    assert not (tmp_path / "x.jpg").exists()
