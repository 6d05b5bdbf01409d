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


def test_rejects_nan():
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
