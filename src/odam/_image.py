"""Turn the image types users hold into the one odam uses: ``Tensor[3, H, W]`` float32 in [0, 1]."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

ImageLike = Tensor | Image.Image | np.ndarray | str | os.PathLike


def load_image(image: ImageLike) -> Tensor:
    """Load ``image`` as a ``Tensor[3, H, W]`` float32 with values in [0, 1].

    Args:
        image: one of
            a float tensor ``[3, H, W]`` with values in [0, 1] (kept on its device; float16/float64
            are converted to float32, a float32 tensor is returned as is);
            a PIL image of any mode (converted to RGB);
            an ``H x W x 3`` uint8 numpy array;
            a path (``str`` or ``os.PathLike``) to an image file.

    Returns:
        ``Tensor[3, H, W]`` float32 in [0, 1]; on CPU unless a tensor on another device was passed.

    Raises:
        ValueError: for any other type, shape or dtype, for tensor values outside [0, 1], and for a file
            that is not a readable image (including a truncated one).
        FileNotFoundError: if the path does not exist.

    Example:
        >>> import numpy as np
        >>> x = load_image(np.full((2, 4, 3), 255, dtype=np.uint8))
        >>> x.shape, x.dtype, x.max().item()
        (torch.Size([3, 2, 4]), torch.float32, 1.0)
    """
    if isinstance(image, Tensor):
        _check_image_tensor(image)
        return image.float() if image.dtype != torch.float32 else image
    if isinstance(image, Image.Image):
        return _from_uint8(np.asarray(image.convert("RGB"), dtype=np.uint8))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected array of shape (H, W, 3), got {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 array, got dtype {image.dtype}")
        return _from_uint8(image)
    if isinstance(image, (str, os.PathLike)):
        return _read(Path(image))
    raise ValueError(f"expected a tensor, PIL image, HxWx3 uint8 array or path, got {type(image).__name__}")


def to_uint8(image: Tensor) -> np.ndarray:
    """Convert a ``Tensor[3, H, W]`` float image in [0, 1] to an ``H x W x 3`` uint8 array (rounded).

    Example:
        >>> import torch
        >>> to_uint8(torch.tensor([1.0, 0.5, 0.0]).view(3, 1, 1)).tolist()
        [[[255, 128, 0]]]
    """
    _check_image_tensor(image)
    scaled = (image.detach().to("cpu", torch.float64) * 255).round()
    return scaled.to(torch.uint8).permute(1, 2, 0).numpy()


def _check_image_tensor(image: Tensor) -> None:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected image of shape [3, H, W], got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"expected a float image tensor, got dtype {image.dtype}")
    if image.numel() and not bool(((image >= 0) & (image <= 1)).all()):
        lo, hi = image.min().item(), image.max().item()
        raise ValueError(f"expected image values in [0, 1], got min {lo} and max {hi}")


def _from_uint8(array: np.ndarray) -> Tensor:
    # Copy: PIL hands out read-only buffers, which torch.from_numpy warns about.
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).float().div(255).contiguous()


def open_image(path: Path) -> Image.Image:
    """``PIL.Image.open``, also when another library has patched it.

    Ultralytics replaces ``Image.open`` by one that imports a HEIF plugin when Pillow cannot identify a file;
    without that plugin the import fails, and the file is still one that Pillow cannot identify.
    """
    try:
        return Image.open(path)
    except ImportError as err:
        raise UnidentifiedImageError(f"cannot identify image file {str(path)!r} ({err})") from err


def _read(path: Path) -> Tensor:
    try:
        with open_image(path) as img:
            img.load()  # decode everything now, so a truncated file fails here
            rgb = img.convert("RGB")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image not found: {path}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return _from_uint8(np.asarray(rgb, dtype=np.uint8))
