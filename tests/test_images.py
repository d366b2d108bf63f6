"""Tests of harrison_knn.images: photos are generated in tmp_path, except real ones."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from harrison_knn import images
from harrison_knn.images import MAX_PIXELS, PhotoError, load_photo

# The shared data folder beside the project, or $HARRISON_KNN_DATA; tests that need
# it fail when it is absent, since the real files are part of what they check.
DATA = Path(
    os.environ.get(
        "HARRISON_KNN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)
HARRISON = DATA / "harrison"
FLICKR = DATA / "flickr8k-1k"

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def noise_photo(width: int = 64, height: int = 48) -> Image.Image:
    """Return an RGB image of random pixels, which JPEG cannot compress away."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_declaring(width: int, height: int) -> bytes:
    """Return a tiny PNG whose header claims ``width`` x ``height`` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def refusal(source) -> PhotoError:
    with pytest.raises(PhotoError) as caught:
        load_photo(source)
    return caught.value


def close_to(pixel, expected, tolerance: int = 3) -> bool:
    return (
        max(abs(int(a) - int(b)) for a, b in zip(pixel, expected, strict=True))
        <= tolerance
    )


# Photos that load.


def test_plain_rgb_jpeg_loads_as_rgb_of_the_same_size(tmp_path):
    path = tmp_path / "plain.jpg"
    noise_photo(64, 48).save(path, quality=90)

    photo = load_photo(path)

    assert photo.mode == "RGB"
    assert photo.size == (64, 48)


def test_string_path_is_accepted(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (3, 2), BLUE).save(path)

    photo = load_photo(str(path))

    assert photo.getpixel((2, 1)) == BLUE


def test_loaded_photo_does_not_need_the_file_any_more(tmp_path):
    path = tmp_path / "gone.png"
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)

    photo = load_photo(path)
    path.unlink()

    assert photo.getpixel((3, 3)) == (10, 20, 30)


def test_png_with_alpha_is_composited_on_white(tmp_path):
    path = tmp_path / "alpha.png"
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 128))
    image.putpixel((2, 0), (0, 0, 255, 255))
    image.save(path)

    photo = load_photo(path)

    assert photo.mode == "RGB"
    assert photo.getpixel((0, 0)) == WHITE
    assert photo.getpixel((1, 0)) == (255, 127, 127)
    assert photo.getpixel((2, 0)) == BLUE


def test_grey_with_alpha_is_composited_on_white(tmp_path):
    path = tmp_path / "grey_alpha.png"
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (0, 0))
    image.putpixel((1, 0), (0, 255))
    image.save(path)

    photo = load_photo(path)

    assert photo.getpixel((0, 0)) == WHITE
    assert photo.getpixel((1, 0)) == (0, 0, 0)


def palette_image() -> Image.Image:
    """Return a 2 x 1 palette image: index 0 red, index 1 blue."""
    image = Image.new("P", (2, 1))
    image.putpalette(list(RED) + list(BLUE) + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    return image


def test_palette_image_is_converted_to_its_colours(tmp_path):
    path = tmp_path / "palette.png"
    palette_image().save(path)

    photo = load_photo(path)

    assert photo.mode == "RGB"
    assert (photo.getpixel((0, 0)), photo.getpixel((1, 0))) == (RED, BLUE)


def test_palette_image_with_a_transparent_index_shows_white_there(tmp_path):
    path = tmp_path / "palette_transparent.png"
    palette_image().save(path, transparency=1)

    photo = load_photo(path)

    assert (photo.getpixel((0, 0)), photo.getpixel((1, 0))) == (RED, WHITE)


def test_sixteen_bit_greyscale_png_is_scaled_to_eight_bits(tmp_path):
    path = tmp_path / "deep.png"
    values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"

    photo = load_photo(path)

    grey = [photo.getpixel((x, 0)) for x in range(5)]
    assert grey == [(0, 0, 0), (1, 1, 1), (4, 4, 4), (128, 128, 128), WHITE]


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    image = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    image.paste((0, 0, 0, 0), (8, 0, 16, 16))
    image.save(path, quality=95)
    assert Image.open(path).mode == "CMYK"

    photo = load_photo(path)

    assert photo.mode == "RGB"
    assert close_to(photo.getpixel((0, 0)), (0, 255, 255))
    assert close_to(photo.getpixel((15, 15)), WHITE)


def test_animated_gif_gives_its_first_frame(tmp_path):
    path = tmp_path / "animated.gif"
    first = Image.new("RGB", (4, 4), RED)
    second = Image.new("RGB", (4, 4), BLUE)
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(path).n_frames == 2

    photo = load_photo(path)

    assert photo.mode == "RGB"
    assert photo.getpixel((0, 0)) == RED


def test_lossless_webp_loads_exactly(tmp_path):
    path = tmp_path / "photo.webp"
    Image.new("RGB", (5, 3), (10, 20, 30)).save(path, lossless=True)

    photo = load_photo(path)

    assert photo.size == (5, 3)
    assert photo.getpixel((4, 2)) == (10, 20, 30)


@pytest.mark.parametrize(
    ("orientation", "size", "red_corner"),
    [
        (1, (32, 16), (0, 0)),
        (3, (32, 16), (31, 15)),
        (6, (16, 32), (15, 0)),
        (8, (16, 32), (0, 31)),
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, size, red_corner):
    # Stored 32 wide and 16 high, blue with a red 8 x 8 block at the top left.
    path = tmp_path / f"orientation_{orientation}.jpg"
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :] = BLUE
    pixels[:8, :8] = RED
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif, quality=100, subsampling=0)

    photo = load_photo(path)

    assert photo.size == size
    width, height = size
    for corner in [(0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1)]:
        expected = RED if corner == red_corner else BLUE
        assert close_to(photo.getpixel(corner), expected), corner
    assert photo.getexif().get(0x0112) in (None, 1)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_damaged_exif_block_leaves_the_photo_as_stored(tmp_path):
    path = tmp_path / "bad_exif.jpg"
    Image.new("RGB", (16, 8), RED).save(path, quality=95)
    data = path.read_bytes()
    # An EXIF block whose only entry, the orientation, runs past the end.
    exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03"
    segment = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    path.write_bytes(data[:2] + segment + data[2:])

    photo = load_photo(path)

    assert photo.size == (16, 8)
    assert close_to(photo.getpixel((0, 0)), RED)


def test_pil_image_source_is_converted_without_changing_it():
    source = palette_image()

    photo = load_photo(source)

    assert photo is not source
    assert source.mode == "P"
    assert photo.mode == "RGB"
    assert photo.getpixel((1, 0)) == BLUE


def test_rgb_array_source_is_read_as_rgb():
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[1, 2] = (10, 20, 30)

    photo = load_photo(pixels)
    pixels[1, 2] = (0, 0, 0)

    assert photo.size == (3, 2)
    assert photo.getpixel((2, 1)) == (10, 20, 30)


def test_grey_array_source_is_read_as_grey_rgb():
    photo = load_photo(np.full((2, 2), 77, dtype=np.uint8))

    assert photo.mode == "RGB"
    assert photo.getpixel((1, 1)) == (77, 77, 77)


def test_non_contiguous_array_source_is_read():
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)[:, ::2]

    photo = load_photo(pixels)

    assert photo.size == (3, 4)
    assert photo.getpixel((1, 0)) == tuple(pixels[0, 1].tolist())


# Photos that are refused, each with its reason.


def test_truncated_jpeg_is_refused_not_decoded_grey(tmp_path):
    path = tmp_path / "truncated.jpg"
    noise_photo().save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    error = refusal(path)

    assert error.source == path
    assert error.reason.startswith("the image data is truncated or corrupt")
    assert "image file is truncated" in error.reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_is_refused(tmp_path):
    path = tmp_path / "truncated.png"
    noise_photo().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    error = refusal(path)

    assert error.reason.startswith("the image data is truncated or corrupt")


def test_zero_byte_file_is_refused(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")

    error = refusal(path)

    assert error.reason == "the file is empty (0 bytes)"
    assert str(error) == f"cannot load photo {path}: the file is empty (0 bytes)"


def test_text_file_named_jpg_is_refused(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n")

    error = refusal(path)

    assert error.reason == "the file is not an image in any format Pillow can read"


def test_jpeg_header_followed_by_garbage_is_refused(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"\x13" * 200)

    error = refusal(path)

    assert error.reason == "the file is not an image in any format Pillow can read"


def test_png_with_damaged_pixel_data_is_refused(tmp_path):
    path = tmp_path / "damaged.png"
    noise_photo(32, 32).save(path)
    data = bytearray(path.read_bytes())
    data[data.index(b"IDAT") + 50] ^= 0xFF
    path.write_bytes(bytes(data))

    error = refusal(path)

    assert error.reason == (
        "the image data is truncated or corrupt (broken data stream when "
        "reading image file)"
    )


def test_declared_size_of_30000_by_30000_is_refused_before_decoding(
    tmp_path, monkeypatch
):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(30_000, 30_000))

    def never_decode(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never_decode)
    error = refusal(path)

    assert path.stat().st_size < 200
    assert error.reason == (
        "its header declares 30000 x 30000 = 900,000,000 pixels, more than the "
        "limit of MAX_PIXELS = 64,000,000 pixels; it was not decoded. Shrink the "
        "photo first if it is genuine"
    )


def test_declared_size_just_above_the_limit_is_refused_before_decoding(
    tmp_path, monkeypatch
):
    # 80 megapixels: Pillow itself would open this; MAX_PIXELS refuses it.
    path = tmp_path / "large.png"
    path.write_bytes(png_declaring(10_000, 8_000))

    def never_decode(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never_decode)
    error = refusal(path)

    assert error.reason.startswith(
        "its header declares 10000 x 8000 = 80,000,000 pixels, more than the "
        "limit of MAX_PIXELS = 64,000,000 pixels"
    )


def test_max_pixels_is_the_limit_that_applies(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("RGB", (11, 10), RED).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 100)

    error = refusal(path)

    assert "declares 11 x 10 = 110 pixels" in error.reason
    assert MAX_PIXELS == 64_000_000


def test_missing_file_is_refused_as_a_photo_error(tmp_path):
    path = tmp_path / "nowhere.jpg"

    error = refusal(path)

    assert error.source == path
    assert error.reason == "the file does not exist"


def test_folder_instead_of_a_file_is_refused(tmp_path):
    error = refusal(tmp_path)

    assert error.reason == "it is a folder, not a file"
    assert str(error) == f"cannot load photo {tmp_path}: it is a folder, not a file"


def test_fifo_is_refused_without_opening_it(tmp_path):
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)

    error = refusal(path)

    assert error.reason == "it is not a regular file"


def test_unreadable_file_is_refused(tmp_path, monkeypatch):
    # Tests may run as root, who can read anything, so the denial is simulated.
    path = tmp_path / "locked.png"
    Image.new("RGB", (2, 2), RED).save(path)

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", deny)
    error = refusal(path)

    assert error.reason == "permission to read the file was denied"


@pytest.mark.parametrize(
    ("array", "shown"),
    [
        (np.zeros((2, 2, 4), dtype=np.uint8), "shape (2, 2, 4) dtype uint8"),
        (np.zeros((2, 2, 3), dtype=np.float32), "shape (2, 2, 3) dtype float32"),
        (np.zeros((2, 2), dtype=np.uint16), "shape (2, 2) dtype uint16"),
        (np.zeros(5, dtype=np.uint8), "shape (5,) dtype uint8"),
    ],
)
def test_array_of_the_wrong_shape_or_dtype_is_refused(array, shown):
    error = refusal(array)

    assert error.source is array
    assert error.reason == (
        f"an array photo must be (h, w, 3) uint8 RGB or (h, w) uint8 grey, got "
        f"{shown}; convert it first"
    )
    assert str(error).startswith(f"cannot load photo <array of {shown}>: ")


def test_array_without_pixels_is_refused():
    error = refusal(np.zeros((0, 4, 3), dtype=np.uint8))

    assert error.reason == "the array has no pixels"


def test_source_of_another_type_is_a_type_error():
    with pytest.raises(TypeError, match="got bytes"):
        load_photo(b"\xff\xd8")


def test_photo_error_is_a_value_error():
    assert issubclass(PhotoError, ValueError)


# The real photos, when present on this machine.


@pytest.mark.parametrize(
    "name",
    ["instagram_dataset/sun/image_99.jpg", "instagram_dataset/family/image_2411.jpg"],
)
def test_real_harrison_reissued_photos_are_refused_as_truncated(name):
    error = refusal(HARRISON / name)

    assert "image file is truncated" in error.reason


def test_real_flickr_photo_loads():
    photo = load_photo(FLICKR / "images" / "1000268201_693b08cb0e.jpg")

    assert photo.mode == "RGB"
    assert max(photo.size) == 400
