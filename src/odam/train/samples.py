"""What a detector sees of one dataset record, in training and in evaluation: its image and its target.

Both :mod:`odam.train.engine` (training) and :mod:`odam.train.evaluate` (evaluation) read images through
:func:`load_image_tensor`, so this module depends on :mod:`odam.data` alone and neither of them on the other's
data path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from odam.data import DatasetError, ImageRecord


def load_image_tensor(record: ImageRecord) -> Tensor:
    """The image of ``record`` as ``float32 [3, H, W]`` in [0, 1]; a one-line DatasetError if unreadable.

    :meth:`ImageRecord.load_image` without a pixel limit (training sizes come from the annotations), checked
    against the size the annotations give.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory(); file = Path(tmp.name) / "a.png"
        >>> Image.new("RGB", (64, 48)).save(file)
        >>> empty = np.zeros((0, 4), np.float32)
        >>> rec = ImageRecord(1, file, 64, 40, empty, np.zeros(0, np.int64), np.zeros(0, bool), empty, empty,
        ...                   None, np.zeros(0, np.int64))
        >>> load_image_tensor(rec)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        odam.data.dataset.DatasetError: .../a.png: image is 64x48, the annotations say 64x40
        >>> tmp.cleanup()
    """
    try:  # upright by EXIF, 16-bit and float files scaled: what explanations see (odam.load_image)
        image = record.load_image(max_pixels=None)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{record.file}: cannot read image: {' '.join(str(err).split())}") from err
    if tuple(image.shape[-2:]) != (record.height, record.width):
        raise DatasetError(f"{record.file}: image is {image.shape[-1]}x{image.shape[-2]}, the annotations say "
                           f"{record.width}x{record.height}")
    return image


def training_target(record: ImageRecord, flip: bool) -> dict[str, Tensor]:
    """Boxes clipped to the image, ignored objects and boxes under one pixel dropped, optionally mirrored.

    Returns:
        ``{"boxes": Tensor[M, 4] float32 xyxy, "labels": Tensor[M] int64}``, torchvision's training target.

    Example:
        >>> from pathlib import Path
        >>> boxes = np.array([[-4, 5, 16, 55], [20, 5, 20.5, 9], [30, 5, 40, 20]], np.float32)
        >>> rec = ImageRecord(1, Path("a.png"), 64, 48, boxes, np.array([1, 1, 1]), np.array([False, False, True]),
        ...                   boxes * np.nan, boxes * np.nan, None, np.array([1, 2, 3]))
        >>> training_target(rec, flip=False)["boxes"].tolist(), training_target(rec, flip=True)["boxes"].tolist()
        ([[0.0, 5.0, 16.0, 48.0]], [[48.0, 5.0, 64.0, 48.0]])
    """
    boxes = record.clipped_boxes_tensor()
    keep = ~torch.from_numpy(record.ignore.astype(bool))
    keep &= (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    boxes, labels = boxes[keep], torch.from_numpy(record.labels.astype(np.int64))[keep]
    if flip:
        boxes = torch.stack([record.width - boxes[:, 2], boxes[:, 1], record.width - boxes[:, 0], boxes[:, 3]], 1)
    return {"boxes": boxes, "labels": labels}
