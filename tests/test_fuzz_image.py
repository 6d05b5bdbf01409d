"""Property-based tests of ``load_image`` on generated images of every PIL mode, in every format that saves it.

Every input either loads as a float32 ``[3, H, W]`` tensor in [0, 1] equal to an independent, slow conversion
of the decoded pixels, or raises a one-line ``ValueError`` naming the file. Derandomized, so the verdict is the
same on every machine; ``ODAM_FUZZ_EXAMPLES`` scales the number of examples for a longer campaign, and
``ODAM_FUZZ_RANDOM=1`` with ``--hypothesis-seed`` draws other examples.
"""

import colorsys
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from odam._image import load_image

EXAMPLES = int(os.environ.get("ODAM_FUZZ_EXAMPLES", "250"))
#: ODAM_FUZZ_RANDOM=1 draws new examples each run (with pytest's --hypothesis-seed) for a campaign.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not os.environ.get("ODAM_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

MODES = ["1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "LA", "La", "PA",
         "I", "I;16", "I;16L", "I;16B", "I;16N", "F"]
FORMATS = ["PNG", "TIFF", "JPEG", "BMP", "WEBP", "GIF"]
#: The EXIF orientations and how each turns an ``H x W [x C]`` array upright.
UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}
OURS = re.compile(r"image \S+: .*")  # load_image repeats PIL's warnings with the file's name


def _saves(mode: str, fmt: str) -> bool:
    try:
        Image.new(mode, (1, 1)).save(io.BytesIO(), format=fmt)
    except (OSError, KeyError, ValueError, TypeError):
        return False
    return True


SAVES = {mode: [fmt for fmt in FORMATS if _saves(mode, fmt)] for mode in MODES}


def test_every_mode_is_fuzzed_in_a_file():
    unsaved = [mode for mode in MODES if not SAVES[mode]]
    assert unsaved == ["La"]  # PIL saves it nowhere; it is fuzzed as a PIL image
    assert set(SAVES["F"]) == {"TIFF", "WEBP", "GIF"} and "PNG" in SAVES["I;16"]


# --- the independent conversion ------------------------------------------------------------------------


def reference(img: Image.Image) -> np.ndarray | None:
    """``[H, W, 3]`` float64 in [0, 1] from the decoded pixels by formulas, not PIL's converters; None if refused."""
    mode, raw = img.mode, np.asarray(img)
    if mode == "1":
        return np.repeat(raw[..., None].astype(np.float64), 3, -1)
    if mode in ("L", "LA"):
        return np.repeat(raw[..., :1] if raw.ndim == 3 else raw[..., None], 3, -1) / 255
    if mode in ("P", "PA"):
        index = raw[..., 0] if raw.ndim == 3 else raw
        palette = np.array(img.getpalette("RGB"), dtype=np.float64).reshape(-1, 3)
        palette = np.vstack([palette, np.zeros((256 - len(palette), 3))])  # PIL pads short palettes with black
        return palette[index] / 255
    if mode in ("RGB", "RGBA", "RGBX"):
        return raw[..., :3] / 255
    if mode in ("RGBa", "La"):
        colour, alpha = (raw[..., :3], raw[..., 3:]) if mode == "RGBa" else (raw[..., :1], raw[..., 1:])
        scaled = np.minimum(255, colour.astype(np.int64) * 255 // np.maximum(alpha, 1))
        out = np.where((alpha > 0) & (alpha < 255), scaled, colour)  # PIL keeps the colour under alpha 0
        return np.repeat(out, 3 // out.shape[-1], -1) / 255
    if mode.startswith("I;16"):
        return np.repeat(raw[..., None].astype(np.float64), 3, -1) / 65535
    if mode == "I":
        return None if raw.min() < 0 or raw.max() > 65535 else np.repeat(raw[..., None] / 65535, 3, -1)
    if mode == "F":
        ok = np.isfinite(raw).all() and raw.min() >= 0 and raw.max() <= 1
        return np.repeat(raw[..., None].astype(np.float64), 3, -1) if ok else None
    if mode == "CMYK":
        c, m, y, k = (raw[..., i] / 255 for i in range(4))
        return np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], -1)
    if mode == "YCbCr":
        y, cb, cr = (raw[..., i].astype(np.float64) for i in range(3))
        rgb = [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)]
        return np.clip(np.stack(rgb, -1), 0, 255) / 255
    if mode == "HSV":
        flat = [colorsys.hsv_to_rgb(*(v / 255 for v in px)) for px in raw.reshape(-1, 3).tolist()]
        return np.array(flat, dtype=np.float64).reshape(raw.shape)
    raise AssertionError(f"no reference for mode {mode}")  # LAB is checked for range only


#: How far PIL's integer arithmetic may sit from the formulas, in units of 1/255.
TOLERANCE = {"CMYK": 1, "YCbCr": 2, "HSV": 2, "RGBa": 1, "La": 1}


# --- generated images ----------------------------------------------------------------------------------


@st.composite
def images(draw) -> Image.Image:
    mode = draw(st.sampled_from(MODES))
    w, h = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    if mode == "F":
        unit = st.floats(0, 1, width=32)
        anything = st.floats(width=32, allow_nan=True, allow_infinity=True)
        values = draw(st.lists(st.one_of(unit, unit, unit, anything), min_size=w * h, max_size=w * h))
        return Image.fromarray(np.array(values, dtype=np.float32).reshape(h, w), mode="F")
    if mode == "I":
        bound = draw(st.sampled_from([255, 65535, 2**31 - 1]))
        values = draw(st.lists(st.integers(-1 if bound > 65535 else 0, bound), min_size=w * h, max_size=w * h))
        return Image.fromarray(np.array(values, dtype=np.int32).reshape(h, w))
    size = len(Image.new(mode, (w, h)).tobytes())
    img = Image.frombytes(mode, (w, h), draw(st.binary(min_size=size, max_size=size)))
    if mode in ("P", "PA"):
        colours = draw(st.integers(1, 256))
        img.putpalette(draw(st.binary(min_size=3 * colours, max_size=3 * colours)))
        if mode == "P" and draw(st.booleans()):
            img.info["transparency"] = draw(st.integers(0, colours - 1))
    return img


def check(x: torch.Tensor, want: np.ndarray | None, mode: str) -> None:
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.ndim == 3 and x.shape[0] == 3
    assert bool(x.isfinite().all()) and x.min() >= 0 and x.max() <= 1
    if want is None:
        raise AssertionError(f"mode {mode}: loaded what should be refused")
    assert x.shape[1:] == want.shape[:2]
    got = x.permute(1, 2, 0).double().numpy()
    atol = TOLERANCE.get(mode, 0) / 255 + 1e-7
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=f"mode {mode}")


def load(path_or_image):
    """``load_image``, with our own EXIF warning allowed and any other warning a failure."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return load_image(path_or_image)
        finally:
            others = [str(w.message) for w in caught if not OURS.fullmatch(str(w.message))]
            assert not others, others


@FUZZ
@given(img=images())
def test_pil_images_of_every_mode(img):
    want = None if img.mode == "LAB" else reference(img)
    try:
        x = load(img)
    except ValueError as err:
        assert want is None and img.mode in ("I", "F"), err
        assert re.fullmatch(rf"image has mode {img.mode} .*", str(err)) and "\n" not in str(err)
        return
    if img.mode != "LAB":
        check(x, want, img.mode)


@FUZZ
@given(img=images(), data=st.data())
def test_files_of_every_mode_and_format(tmp_path_factory, img, data):
    formats = SAVES[img.mode]
    if not formats:
        return
    fmt = data.draw(st.sampled_from(formats))
    options = {}
    if fmt in ("PNG", "TIFF", "JPEG", "WEBP") and data.draw(st.booleans()):
        exif = Image.Exif()
        exif[274] = data.draw(st.integers(0, 9))
        options["exif"] = exif.tobytes()
    if fmt == "WEBP":
        options["lossless"] = data.draw(st.booleans())
    if fmt == "JPEG":
        options["quality"] = data.draw(st.integers(1, 100))
    path = tmp_path_factory.mktemp("fuzz") / f"img.{fmt.lower()}"
    img.save(path, format=fmt, **options)
    with Image.open(path) as saved:
        saved.load()
        orientation = saved.getexif().get(274, 1)
        want = None if saved.mode == "LAB" else reference(saved)
        mode = saved.mode
    if want is not None and orientation in UPRIGHT:
        want = UPRIGHT[orientation](want)
    try:
        x = load(path)
    except ValueError as err:
        assert want is None and mode in ("I", "F"), err
        assert str(err).startswith(f"image {path} has mode {mode} ") and "\n" not in str(err)
        return
    if mode != "LAB":
        check(x, want, mode)


@st.composite
def damaged(draw) -> tuple[bytes, str]:
    """A valid file cut short, with bytes overwritten, or random bytes behind a format's magic number."""
    img = draw(images())
    formats = SAVES[img.mode] or ["PNG"]
    fmt = draw(st.sampled_from(formats))
    buffer = io.BytesIO()
    (img if SAVES[img.mode] else Image.new("RGB", img.size)).save(buffer, format=fmt)
    data = bytearray(buffer.getvalue())
    how = draw(st.sampled_from(["cut", "overwrite", "random"]))
    if how == "cut":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "overwrite":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    else:
        data = data[: draw(st.integers(0, 16))] + draw(st.binary(max_size=200))
    return bytes(data), fmt


def assert_loads_or_refuses(path: Path) -> None:
    try:
        x = load(path)
    except ValueError as err:
        message = str(err)
        assert str(path) in message and "\n" not in message, message
        return
    assert x.dtype == torch.float32 and x.ndim == 3 and x.shape[0] == 3 and x.numel() > 0
    assert bool(x.isfinite().all()) and x.min() >= 0 and x.max() <= 1


@FUZZ
@given(file=damaged())
def test_damaged_files_load_or_raise_one_line_naming_the_file(tmp_path_factory, file):
    data, fmt = file
    path = tmp_path_factory.mktemp("damaged") / f"img.{fmt.lower()}"
    path.write_bytes(data)
    assert_loads_or_refuses(path)


# --- what the fuzzing found, kept as explicit cases ----------------------------------------------------

FOUND: list[tuple[str, bytes]] = [
    # PIL warns "Corrupt EXIF data" while identifying it, then cannot: a UserWarning escaped under -W error
    ("header-only.tiff", b"II*\x00\x08\x00\x00\x00"),
]


@pytest.mark.parametrize(("name", "data"), FOUND, ids=[name for name, _ in FOUND])
def test_found_by_fuzzing(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    assert_loads_or_refuses(path)
