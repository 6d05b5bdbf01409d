import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from odam._image import load_image, to_uint8


@pytest.fixture
def array() -> np.ndarray:
    # Distinct values per channel and pixel, 0 and 255 included, so a scaling or layout slip shows up.
    a = (np.arange(4 * 5 * 3) * 4).astype(np.uint8).reshape(4, 5, 3)
    a[-1, -1] = 255
    return a


def expected(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(array.tolist(), dtype=torch.float32).permute(2, 0, 1) / 255


def test_array_gives_chw_float32_in_unit_range(array):
    x = load_image(array)
    assert x.shape == (3, 4, 5)
    assert x.dtype == torch.float32
    assert x.device.type == "cpu"
    assert torch.equal(x, expected(array))
    assert x[0, 0, 1].item() == pytest.approx(12 / 255)  # channel 0 of pixel (row 0, column 1)
    assert x[:, 3, 4].tolist() == [1.0, 1.0, 1.0]


def test_array_pil_and_png_path_agree(array, tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(array).save(path)
    from_array = load_image(array)
    assert torch.equal(load_image(Image.fromarray(array)), from_array)
    assert torch.equal(load_image(path), from_array)
    assert torch.equal(load_image(str(path)), from_array)


def test_pil_modes_are_converted_to_rgb():
    gray = Image.fromarray(np.array([[0, 51], [255, 102]], dtype=np.uint8), mode="L")
    x = load_image(gray)
    assert x.shape == (3, 2, 2)
    assert torch.equal(x[0], x[2])
    assert x[:, 0, 1].tolist() == pytest.approx([0.2] * 3)

    rgba = Image.new("RGBA", (3, 2), (10, 20, 30, 0))
    assert load_image(rgba)[:, 1, 2].mul(255).round().tolist() == [10, 20, 30]


def test_float_tensor_is_returned_as_is():
    x = torch.rand(3, 4, 5)
    assert load_image(x) is x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_float_dtypes_become_float32(dtype):
    x = torch.rand(3, 4, 5, dtype=dtype)
    y = load_image(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, x.float())


def test_to_uint8_inverts_load_image(array):
    out = to_uint8(load_image(array))
    assert out.dtype == np.uint8
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_to_uint8_rounds():
    out = to_uint8(torch.tensor([0.5 / 255, 1.49 / 255, 1.51 / 255]).view(3, 1, 1))
    assert out[0, 0].tolist() == [1, 1, 2]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (3, "expected a tensor, PIL image, HxWx3 uint8 array or path, got int"),
        ([[0.0]], "expected a tensor, PIL image, HxWx3 uint8 array or path, got list"),
        (torch.rand(1, 3, 4, 4), "expected image of shape [3, H, W], got (1, 3, 4, 4)"),
        (torch.rand(4, 4), "expected image of shape [3, H, W], got (4, 4)"),
        (torch.rand(4, 4, 3), "expected image of shape [3, H, W], got (4, 4, 3)"),
        (torch.zeros(3, 2, 2, dtype=torch.uint8), "expected a float image tensor, got dtype torch.uint8"),
        (torch.full((3, 2, 2), 2.0), "expected image values in [0, 1], got min 2.0 and max 2.0"),
        (torch.full((3, 2, 2), -0.5), "expected image values in [0, 1], got min -0.5 and max -0.5"),
        (np.zeros((2, 2), dtype=np.uint8), "expected array of shape (H, W, 3), got (2, 2)"),
        (np.zeros((3, 2, 2), dtype=np.uint8), "expected array of shape (H, W, 3), got (3, 2, 2)"),
        (np.zeros((2, 2, 3), dtype=np.float32), "expected a uint8 array, got dtype float32"),
    ],
)
def test_rejects_bad_input(image, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_image(image)


def test_rejects_nan():  # one line naming the problem and shape
    x = torch.rand(3, 2, 2)
    x[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"expected image values in \[0, 1\]"):
        load_image(x)


def test_to_uint8_validates():
    with pytest.raises(ValueError, match=re.escape("got (2, 2)")):
        to_uint8(torch.rand(2, 2))
    with pytest.raises(ValueError, match=re.escape("max 1.5")):
        to_uint8(torch.full((3, 1, 1), 1.5))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match=re.escape(f"image not found: {path}")):
        load_image(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=re.escape(f"cannot read image {path}: ")) as info:
        load_image(path)
    assert info.value.__cause__ is not None


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    full = tmp_path / "full.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(f"cannot read image {path}: ")) as info:
        load_image(path)
    assert isinstance(info.value.__cause__, OSError)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"cannot read image {tmp_path}")):
        load_image(Path(tmp_path))


def test_unreadable_file_is_a_value_error_even_when_image_open_is_patched(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Ultralytics replaces PIL.Image.open by one that imports a HEIF plugin when Pillow cannot identify a file."""
    opener = Image.open

    def patched(path: object, *args: object) -> object:
        try:
            return opener(path, *args)
        except Image.UnidentifiedImageError:
            import pi_heif_is_not_installed  # noqa: F401

    monkeypatch.setattr(Image, "open", patched)
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image .*notes.png: cannot identify image file .*pi_heif"):
        load_image(path)


# --- modes of more than 8 bits, alpha and palettes (issue 15) --------------------------------------------


def gray(values: np.ndarray) -> torch.Tensor:
    """Reference: a 2-D array of gray values in [0, 1] as a ``[3, H, W]`` float32 tensor."""
    return torch.tensor(np.asarray(values, dtype=np.float64).tolist(), dtype=torch.float32).expand(3, -1, -1)


SIXTEEN = np.array([[0, 1, 255, 256], [32768, 40000, 65534, 65535]], dtype=np.uint16)


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "TIFF"), ("I", "TIFF")])
def test_sixteen_bit_files_are_divided_by_65535(tmp_path, mode, fmt):
    path = tmp_path / f"deep.{fmt.lower()}"
    if mode == "I;16B":  # convert("I;16B") clips at 255
        img = Image.frombytes(mode, SIXTEEN.shape[::-1], SIXTEEN.astype(">u2").tobytes())
    else:
        img = Image.fromarray(SIXTEEN.astype(np.int32) if mode == "I" else SIXTEEN)
    assert img.mode == mode and np.asarray(img).tolist() == SIXTEEN.tolist()
    img.save(path, format=fmt)
    with Image.open(path) as img:
        assert img.mode in {mode, "I;16"}  # the file really holds 16-bit values
    x = load_image(path)
    torch.testing.assert_close(x, gray(SIXTEEN / 65535), rtol=0, atol=1e-7)
    assert 0 < x[0, 0, 1] < x[0, 0, 2] < 0.004  # not the all-white image convert("RGB") gave


def test_float_tiff_in_unit_range_is_used_as_is(tmp_path):
    values = np.array([[0.0, 0.25, 1e-6], [0.5, 0.999, 1.0]], dtype=np.float32)
    path = tmp_path / "f.tiff"
    Image.fromarray(values, mode="F").save(path)
    x = load_image(path)
    torch.testing.assert_close(x, gray(values), rtol=0, atol=0)  # not the all-black convert("RGB")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([[0.0, 2.0]], dtype=np.float32), "has mode F with values in [0.0, 2.0]; expected values in [0, 1]"),
        (np.array([[-0.5, 1.0]], dtype=np.float32), "has mode F with values in [-0.5, 1.0]"),
        (np.array([[np.nan, np.inf]], dtype=np.float32), "has mode F with 2 non-finite values"),
        (np.array([[0, 70000]], dtype=np.int32), "has mode I (32-bit integers) with values in [0, 70000]; expected "
                                                 "16-bit values in 0..65535"),
        (np.array([[-1, 5]], dtype=np.int32), "has mode I (32-bit integers) with values in [-1, 5]"),
    ],
)
def test_out_of_range_deep_files_are_refused_naming_file_and_mode(tmp_path, values, message):
    path = tmp_path / "deep.tiff"
    Image.fromarray(values).save(path)
    with pytest.raises(ValueError, match=re.escape(f"image {path} {message}")) as info:
        load_image(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=re.escape(f"image {message}")):
        load_image(Image.fromarray(values))


RGB = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 20, 30], [200, 100, 50], [0, 0, 0]]], np.uint8)
ALPHA = np.array([[0, 128, 255], [255, 1, 0]], dtype=np.uint8)


def test_alpha_is_dropped(tmp_path):
    rgba = np.dstack([RGB, ALPHA])
    for fmt in ("PNG", "TIFF", "WEBP"):
        path = tmp_path / f"a.{fmt.lower()}"
        Image.fromarray(rgba, mode="RGBA").save(path, format=fmt, lossless=True, exact=True)
        assert torch.equal(load_image(path), expected(RGB)), fmt
    la = np.dstack([RGB[..., 0], ALPHA])
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    assert torch.equal(load_image(path), gray(RGB[..., 0] / 255))


def test_palette_with_transparency_gives_its_colours_without_a_warning(tmp_path):
    palette = np.array([[0, 0, 0], [250, 10, 20], [30, 40, 50]], dtype=np.uint8)
    index = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    img = Image.fromarray(index, mode="P")
    img.putpalette(palette.flatten().tolist())
    for suffix, options in ((".png", {"transparency": b"\x00\xff\x80"}), (".gif", {"transparency": 0})):
        path = tmp_path / f"p{suffix}"
        img.save(path, **options)
        with Image.open(path) as saved:
            assert saved.mode == "P" and "transparency" in saved.info
        assert torch.equal(load_image(path), expected(palette[index])), suffix  # pytest fails on PIL's warning


def test_premultiplied_modes_are_unpremultiplied():
    rgba = Image.new("RGBa", (1, 1), (50, 25, 100, 128))
    assert load_image(rgba)[:, 0, 0].mul(255).round().tolist() == [99, 49, 199]  # PIL's 255 * c / a, truncated
    gray_alpha = Image.merge("La", [Image.new("L", (1, 1), 50), Image.new("L", (1, 1), 128)])
    assert load_image(gray_alpha)[:, 0, 0].mul(255).round().tolist() == [99, 99, 99]  # PIL cannot convert La


@pytest.mark.parametrize("mode", ["1", "L", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"])
def test_eight_bit_modes_use_pils_conversion(mode):
    img = Image.fromarray(RGB).convert(mode)
    want = np.asarray(img.convert("RGB"))
    assert torch.equal(load_image(img), expected(want))


def test_cmyk_and_hsv_values():
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # red
    assert load_image(cmyk)[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    hsv = Image.new("HSV", (1, 1), (85, 255, 255))  # hue 120 degrees: green
    assert load_image(hsv)[:, 0, 0].tolist() == [0.0, 1.0, 0.0]


# --- EXIF orientation (issue 15) -------------------------------------------------------------------------

ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # rotate 90 degrees clockwise to view
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
    9: lambda a: a,  # not an orientation: as stored
}


def with_exif(path: Path, array: np.ndarray, orientation: int, fmt: str = "PNG") -> Path:
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(array).save(path, format=fmt, exif=exif.tobytes(), lossless=True)
    return path


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_exif_orientation_is_applied(tmp_path, orientation):
    a = RGB  # 2 x 3: a transposed result is 3 x 2
    want = expected(np.ascontiguousarray(ORIENTED[orientation](a)))
    for fmt in ("PNG", "WEBP", "TIFF"):
        path = with_exif(tmp_path / f"o.{fmt.lower()}", a, orientation, fmt)
        assert torch.equal(load_image(path), want), fmt
        with Image.open(path) as img:
            assert torch.equal(load_image(img), want), fmt  # an opened PIL image too


def test_exif_orientation_on_a_jpeg(tmp_path):
    a = np.zeros((16, 32, 3), dtype=np.uint8)
    a[:, :16] = 255  # left half white
    exif = Image.Exif()
    exif[274] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(a).save(path, exif=exif.tobytes(), quality=100)
    x = load_image(path)
    assert x.shape == (3, 32, 16)
    assert x[:, :16].mean() > 0.95 and x[:, 16:].mean() < 0.05  # the left half is now on top


def test_broken_exif_warns_and_uses_the_image_as_stored(tmp_path):
    path = tmp_path / "broken.png"
    Image.fromarray(RGB).save(path, exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff")
    with pytest.warns(UserWarning, match=re.escape(f"image {path}: ignoring EXIF data that cannot be read (")):
        x = load_image(path)
    assert torch.equal(x, expected(RGB))


# --- empty and degenerate input (issue 15) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.zeros(3, 0, 0), "expected a non-empty image, got shape (3, 0, 0)"),
        (torch.zeros(3, 5, 0), "expected a non-empty image, got shape (3, 5, 0)"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "expected a non-empty image, got an array of shape (0, 4, 3)"),
        (Image.new("RGB", (0, 0)), "image is empty (0x0)"),
        (Image.new("I;16", (3, 0)), "image is empty (3x0)"),
        (torch.full((3, 2, 2), float("inf")), "expected image values in [0, 1], got 12 non-finite values (NaN or inf)"
                                              " in an image of shape (3, 2, 2)"),
        (torch.full((3, 2, 2), 1.5), "expected image values in [0, 1], got min 1.5 and max 1.5 in an image of shape "
                                     "(3, 2, 2)"),
        (torch.zeros(3, 2, 2, dtype=torch.complex64), "expected a float image tensor, got dtype torch.complex64"),
        (torch.zeros(3, 2, 2, dtype=torch.bool), "expected a float image tensor, got dtype torch.bool"),
    ],
)
def test_rejects_empty_and_degenerate_input(image, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_image(image)


def test_empty_tensor_gives_no_zero_division_later():
    with pytest.raises(ValueError, match="non-empty"):
        load_image(torch.zeros(3, 0, 0), max_pixels=None)


# --- pixel limit and downscaling (issue 15) -------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` and holds no pixel data."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_default_limit_is_40_megapixels(tmp_path):
    from odam._image import MAX_PIXELS

    assert MAX_PIXELS == 40_000_000
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(10_000, 10_000))  # 100 MP: PIL would warn; the header is all that is read
    message = (f"image {path} is 10000x10000 (100.0 MP), more than the 40 MP limit; pass downscale=True to shrink "
               f"it, or a larger max_pixels (None for no limit)")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_image(path)
    with pytest.raises(ValueError, match=re.escape(f"cannot read image {path}: ")):
        load_image(path, max_pixels=None)  # no DecompressionBombWarning: it reaches the missing pixel data


def test_pils_decompression_bomb_error_is_one_line(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(20_000, 20_000))  # 400 MP, over twice PIL.Image.MAX_IMAGE_PIXELS
    for limit in (None, 10**9):
        with pytest.raises(ValueError, match=re.escape(f"cannot read image {path}: Image size (400000000 pixels)")):
            load_image(path, max_pixels=limit)


def test_limit_is_checked_before_decoding(tmp_path):
    full = tmp_path / "full.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:60])
    with pytest.raises(ValueError, match=re.escape(f"image {cut} is 50x40 (0.0 MP), more than the 0.001 MP limit")):
        load_image(cut, max_pixels=1000)


@pytest.mark.parametrize("kind", ["tensor", "array", "pil"])
def test_limit_applies_to_every_input_type(kind):
    a = np.zeros((10, 20, 3), dtype=np.uint8)
    image = {"tensor": load_image(a), "array": a, "pil": Image.fromarray(a)}[kind]
    assert load_image(image, max_pixels=200).shape == (3, 10, 20)
    with pytest.raises(ValueError, match=re.escape("image is 20x10 (0.0 MP), more than the 0.000199 MP limit")):
        load_image(image, max_pixels=199)
    assert load_image(image, max_pixels=199, downscale=True).shape == (3, 9, 19)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "40"])
def test_max_pixels_is_checked(bad):
    with pytest.raises(ValueError, match=re.escape(f"expected max_pixels to be a positive int or None, got {bad!r}")):
        load_image(np.zeros((2, 2, 3), dtype=np.uint8), max_pixels=bad)


def test_downscale_keeps_aspect_and_agrees_across_input_types(tmp_path):
    rng = np.random.default_rng(3)
    a = np.kron(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), np.ones((5, 5, 1), dtype=np.uint8))  # 60 x 80
    path = tmp_path / "big.png"
    Image.fromarray(a).save(path)
    from_file = load_image(path, max_pixels=1200, downscale=True)
    from_tensor = load_image(load_image(a), max_pixels=1200, downscale=True)
    assert from_file.shape == from_tensor.shape == (3, 30, 40)
    assert (from_file - from_tensor).abs().max() <= 2 / 255  # PIL's filter on uint8, torch's on float
    flat = tmp_path / "flat.png"
    Image.new("RGB", (80, 60), (7, 100, 255)).save(flat)
    assert load_image(flat, max_pixels=1200, downscale=True).mul(255).round().unique().tolist() == [7, 100, 255]


def test_downscale_follows_the_exif_orientation(tmp_path):
    path = with_exif(tmp_path / "o.png", np.zeros((30, 40, 3), dtype=np.uint8), 6)
    assert load_image(path).shape == (3, 40, 30)
    assert load_image(path, max_pixels=300, downscale=True).shape == (3, 20, 15)


def test_sixteen_bit_downscale_keeps_the_range(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(path)
    x = load_image(path, max_pixels=100, downscale=True)
    assert x.shape == (3, 10, 10)
    torch.testing.assert_close(x, torch.ones(3, 10, 10))


def test_fit_size():
    from odam._image import fit_size

    assert fit_size(10_000, 10_000, 40_000_000) == (6324, 6324)
    assert fit_size(4, 3, 12) == (4, 3)
    assert fit_size(1, 100, 10) == (1, 10)  # a side held at 1
    assert fit_size(100_000, 1, 7) == (7, 1)
    for w, h, m in [(7, 3, 5), (1000, 999, 12345), (3, 1000, 50)]:
        fw, fh = fit_size(w, h, m)
        assert fw * fh <= m and (fw + 1) * (fh + 1) > m


def test_pil_warnings_while_reading_cannot_escape_as_errors(tmp_path):
    path = tmp_path / "header-only.tiff"  # PIL warns "Corrupt EXIF data", then cannot identify it
    path.write_bytes(b"II*\x00\x08\x00\x00\x00")
    with pytest.raises(ValueError, match=re.escape(f"cannot read image {path}: cannot identify image file")):
        load_image(path)  # pytest turns warnings into errors: PIL's would escape as a UserWarning
