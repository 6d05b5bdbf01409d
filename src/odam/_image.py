"""Turn the image types users hold into the one odam uses: ``Tensor[3, H, W]`` float32 in [0, 1]."""

from __future__ import annotations

import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, UnidentifiedImageError
from torch import Tensor

ImageLike = Tensor | Image.Image | np.ndarray | str | os.PathLike

#: Default pixel limit of :func:`load_image` (width x height): 40 MP, a float32 RGB copy of 480 MB.
MAX_PIXELS = 40_000_000

#: How each EXIF orientation (tag 274) is undone; PIL.ImageOps.exif_transpose's table. Other values mean "as stored".
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
#: What PIL raises on a file it cannot decode (fuzzing found each of these; see tests/test_fuzz_image.py).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def load_image(image: ImageLike, *, max_pixels: int | None = MAX_PIXELS, downscale: bool = False) -> Tensor:
    """Load ``image`` as a ``Tensor[3, H, W]`` float32 with values in [0, 1].

    Files and PIL images are turned upright by their EXIF orientation (tag 274, as
    ``PIL.ImageOps.exif_transpose`` does; a value outside 2..8 means "as stored"). EXIF data that PIL cannot
    parse is ignored with a ``UserWarning`` naming the file, and the image is used as stored. Other warnings
    PIL gives while reading a file are repeated as a ``UserWarning`` naming the file (none if it is refused).
    Only the first frame of a multi-frame file is read; ICC profiles are ignored. PIL modes become RGB as follows:

    - ``1``, ``L``, ``P``, ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion to RGB,
      divided by 255.
    - ``RGBA``, ``LA``, ``PA``, ``P`` with transparency: the alpha channel is dropped (the colour stored under a
      transparent pixel is kept, as ``convert("RGB")`` does); ``RGBa`` and ``La`` are un-premultiplied first.
    - ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit, e.g. a 16-bit grayscale PNG): divided by 65535.
    - ``I`` (32-bit integers, e.g. from a TIFF): read as 16-bit, divided by 65535; values outside 0..65535
      are refused.
    - ``F`` (32-bit float, e.g. a float TIFF): used as is; values must be finite and in [0, 1], else refused.

    Args:
        image: one of
            a float tensor ``[3, H, W]`` with finite values in [0, 1] (kept on its device; float16/float64
            are converted to float32, a float32 tensor is returned as is unless it is downscaled);
            a PIL image of any mode;
            an ``H x W x 3`` uint8 numpy array;
            a path (``str`` or ``os.PathLike``) to an image file.
        max_pixels: the most pixels (width x height) accepted, or None for no limit. A file's size is
            checked from its header, before it is decoded. PIL's own decompression-bomb check is replaced by
            this one, except that files over twice ``PIL.Image.MAX_IMAGE_PIXELS`` (179 MP) are still refused.
        downscale: instead of refusing an image over ``max_pixels``, shrink it to fit, keeping its aspect
            ratio: antialiased bilinear resampling (PIL's for files and PIL images, ``torch``'s with
            ``antialias=True`` for tensors and arrays) to the largest size with at most ``max_pixels`` pixels.

    Returns:
        ``Tensor[3, H, W]`` float32 in [0, 1]; on CPU unless a tensor on another device was passed.

    Raises:
        ValueError: one line naming the problem, for any other type, shape or dtype, an empty image, tensor
            values that are not finite or outside [0, 1], an image over ``max_pixels`` (without
            ``downscale``), a mode whose values are out of range, and for a file that is not a readable image
            (including a truncated one); messages about a file name it.
        FileNotFoundError: if the path does not exist.

    Example:
        >>> import numpy as np
        >>> x = load_image(np.full((2, 4, 3), 255, dtype=np.uint8))
        >>> x.shape, x.dtype, x.max().item()
        (torch.Size([3, 2, 4]), torch.float32, 1.0)
        >>> load_image(np.zeros((300, 400, 3), dtype=np.uint8), max_pixels=3_000, downscale=True).shape
        torch.Size([3, 47, 63])
    """
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or max_pixels < 1):
        raise ValueError(f"expected max_pixels to be a positive int or None, got {max_pixels!r}")
    if isinstance(image, Tensor):
        _check_image_tensor(image)
        image = image.float() if image.dtype != torch.float32 else image
        return _limit_tensor(image, "image", max_pixels, downscale)
    if isinstance(image, Image.Image):
        return _from_pil(image, "image", max_pixels, downscale)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected array of shape (H, W, 3), got {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 array, got dtype {image.dtype}")
        if image.size == 0:
            raise ValueError(f"expected a non-empty image, got an array of shape {image.shape}")
        return _limit_tensor(_from_uint8(image), "image", max_pixels, downscale)
    if isinstance(image, (str, os.PathLike)):
        return _read(Path(image), max_pixels, downscale)
    raise ValueError(f"expected a tensor, PIL image, HxWx3 uint8 array or path, got {type(image).__name__}")


def to_uint8(image: Tensor) -> np.ndarray:
    """Convert a ``Tensor[3, H, W]`` float image in [0, 1] to an ``H x W x 3`` uint8 array (rounded).

    Example:
        >>> import torch
        >>> to_uint8(torch.tensor([1.0, 0.5, 0.0]).view(3, 1, 1)).tolist()
        [[[255, 128, 0]]]
    """
    _check_image_tensor(image, empty_ok=True)
    scaled = (image.detach().to("cpu", torch.float64) * 255).round()
    return scaled.to(torch.uint8).permute(1, 2, 0).numpy()


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest ``(width, height)`` with the aspect of ``width x height`` and at most ``max_pixels`` pixels.

    Each side is at least 1 (a very thin image then keeps its short side and loses some aspect).

    Example:
        >>> fit_size(10_000, 10_000, 40_000_000)
        (6324, 6324)
    """
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    while w * h > max_pixels:  # rounding, or a side held at 1
        if w >= h:
            w = max(1, min(w - 1, max_pixels // h))
        else:
            h = max(1, min(h - 1, max_pixels // w))
    return w, h


def _check_image_tensor(image: Tensor, *, empty_ok: bool = False) -> None:
    shape = tuple(image.shape)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected image of shape [3, H, W], got {shape}")
    if not image.is_floating_point():
        raise ValueError(f"expected a float image tensor, got dtype {image.dtype} (shape {shape})")
    if image.numel() == 0:
        if empty_ok:
            return
        raise ValueError(f"expected a non-empty image, got shape {shape}")
    lo, hi = (v.item() for v in torch.aminmax(image.detach()))
    if not (lo >= 0 and hi <= 1):  # also true for NaN
        bad = int((~image.detach().isfinite()).sum())
        if bad:
            raise ValueError(f"expected image values in [0, 1], got {bad} non-finite values (NaN or inf) "
                             f"in an image of shape {shape}")
        raise ValueError(f"expected image values in [0, 1], got min {lo} and max {hi} in an image of shape {shape}")


def _from_uint8(array: np.ndarray) -> Tensor:
    # Copy: PIL hands out read-only buffers, which torch.from_numpy warns about.
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).float().div(255).contiguous()


def _limit_tensor(image: Tensor, name: str, max_pixels: int | None, downscale: bool) -> Tensor:
    h, w = image.shape[1:]
    size = _check_pixels(w, h, name, max_pixels, downscale)
    if size == (w, h):
        return image
    small = F.interpolate(image[None], size=(size[1], size[0]), mode="bilinear", align_corners=False,
                          antialias=True)[0]
    return small.clamp_(0, 1)


def _check_pixels(w: int, h: int, name: str, max_pixels: int | None, downscale: bool) -> tuple[int, int]:
    """``(w, h)`` if within ``max_pixels``; the size to shrink to with ``downscale``; else a ValueError."""
    if w == 0 or h == 0:
        raise ValueError(f"{name} is empty ({w}x{h})")
    if max_pixels is None or w * h <= max_pixels:
        return w, h
    if not downscale:
        raise ValueError(f"{name} is {w}x{h} ({w * h / 1e6:.1f} MP), more than the {max_pixels / 1e6:g} MP limit; "
                         f"pass downscale=True to shrink it, or a larger max_pixels (None for no limit)")
    return fit_size(w, h, max_pixels)


def open_image(path: Path) -> Image.Image:
    """``PIL.Image.open``, also when another library has patched it.

    Ultralytics replaces ``Image.open`` by one that imports a HEIF plugin when Pillow cannot identify a file;
    without that plugin the import fails, and the file is still one that Pillow cannot identify.
    """
    try:
        return Image.open(path)
    except ImportError as err:
        raise UnidentifiedImageError(f"cannot identify image file {str(path)!r} ({err})") from err


def _read(path: Path, max_pixels: int | None, downscale: bool) -> Tensor:
    # PIL warns about some damaged files while it reads them (e.g. "Corrupt EXIF data" in a TIFF header). Record
    # those warnings so that a filter turning warnings into errors cannot break PIL's own error handling, then
    # repeat them naming the file if the image loads (DecompressionBombWarning: replaced by max_pixels).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            img = open_image(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"image not found: {path}") from err
        except Image.DecompressionBombError as err:
            raise ValueError(f"cannot read image {path}: {_one_line(err)} (PIL.Image.MAX_IMAGE_PIXELS)") from err
        except _DECODE_ERRORS as err:  # UnidentifiedImageError is an OSError
            raise ValueError(f"cannot read image {path}: {_one_line(err)}") from err
        with img:
            image = _from_pil(img, f"image {path}", max_pixels, downscale)
    told = {_one_line(w.message) for w in caught if not issubclass(w.category, Image.DecompressionBombWarning)}
    for message in sorted(told):
        warnings.warn(message if message.startswith(f"image {path}") else f"image {path}: {message}",
                      UserWarning, stacklevel=3)
    return image


def _from_pil(img: Image.Image, name: str, max_pixels: int | None, downscale: bool) -> Tensor:
    """Decode, turn upright, convert to RGB and fit ``max_pixels``; ``name`` starts every message."""
    w, h = img.size
    size = _check_pixels(w, h, name, max_pixels, downscale)  # before decoding
    try:
        img.load()  # decode everything now, so a truncated file fails here
        img = _upright(img, name)
        if img.size != (w, h):
            size = (size[1], size[0])
        img = _rgb_or_gray(img, name)
        if size != img.size:
            img = img.resize(size, Image.Resampling.BILINEAR)
        array = np.asarray(img)
    except _DECODE_ERRORS as err:
        if isinstance(err, ValueError) and str(err).startswith(name):
            raise  # ours, from _rgb_or_gray
        raise ValueError(f"cannot read {name}: {_one_line(err)}") from err
    if img.mode == "RGB":
        return _from_uint8(array)
    gray = torch.from_numpy(np.array(array, dtype=np.float32)).clamp_(0, 1)  # resampling may step past 1
    return gray.expand(3, *gray.shape).contiguous()


def upright_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of ``img`` once turned upright by its EXIF orientation, as :func:`load_image` returns
    it, read from the header without decoding; unreadable EXIF data counts as "as stored"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        except Exception:  # noqa: BLE001 - PIL raises many kinds on broken EXIF; load_image warns about it
            orientation = 1
    w, h = img.size
    swapped = isinstance(orientation, int) and orientation in (5, 6, 7, 8)  # transposed or turned by 90 degrees
    return (h, w) if swapped else (w, h)


def _upright(img: Image.Image, name: str) -> Image.Image:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    if caught:
        warnings.warn(f"{name}: ignoring EXIF data that cannot be read ({_one_line(caught[0].message)}); "
                      f"using the image as stored", UserWarning, stacklevel=5)
        return img
    method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return img if method is None else img.transpose(method)


def _rgb_or_gray(img: Image.Image, name: str) -> Image.Image:
    """An 8-bit ``RGB`` image, or an ``F`` image of gray values in [0, 1] for the modes of more than 8 bits."""
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.asarray(img)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"{name} has mode I (32-bit integers) with values in [{lo}, {hi}]; expected 16-bit "
                             f"values in 0..65535")
        return Image.fromarray(values.astype(np.float32) / 65535, mode="F")
    if mode == "F":
        values = np.asarray(img)
        if not bool(np.isfinite(values).all()):
            raise ValueError(f"{name} has mode F with {int((~np.isfinite(values)).sum())} non-finite values; "
                             f"expected finite values in [0, 1]")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"{name} has mode F with values in [{lo}, {hi}]; expected values in [0, 1]")
        return img
    if mode == "La":  # PIL converts La to nothing; as RGBa it is un-premultiplied like RGBa
        gray, alpha = img.split()
        img = Image.merge("RGBa", (gray, gray, gray, alpha))
    elif mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # convert("RGB") would warn about the transparency it drops
    return img.convert("RGB")


def _one_line(err: object) -> str:
    return " ".join(str(err).split()) or type(err).__name__
