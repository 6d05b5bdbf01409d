"""The one in-memory form of a detection dataset, shared by the readers, the writers, training and evaluation.

Boxes are ``xyxy`` in image pixels, float32. Labels are 1-based indices into ``Dataset.categories``
(label ``l`` is ``categories[l - 1]``; 0 is torchvision's background), so a detector for a dataset has
``num_classes = len(categories) + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from odam import _image

#: A COCO run-length encoding: ``{"size": [height, width], "counts": str}`` (compressed, as pycocotools writes).
RLE = dict[str, Any]


def clip_to_image(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """``float32 [N, 4]``: ``xyxy`` boxes clipped to a ``width x height`` image (``0 <= x <= width``,
    ``0 <= y <= height``); a new array. What :attr:`ImageRecord.clipped_boxes` is, for boxes not yet in a record.

    Example:
        >>> clip_to_image(np.array([[-4, 5, 16, 55]]), 64, 48).tolist()
        [[0.0, 5.0, 16.0, 48.0]]
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    limit = np.array([width, height, width, height], np.float32)
    return np.clip(boxes, np.float32(0), limit)


class DatasetError(ValueError):
    """A dataset file that cannot be read; the message is one line naming the file, the place and the problem."""


@dataclass(eq=False)
class ImageRecord:
    """One image and its objects.

    Attributes:
        id: the image id (COCO ``image.id``; for odgt, the line number starting at 1).
        file: the image file, resolved against the dataset's image folder.
        width, height: image size in pixels.
        boxes: ``float32 [N, 4]`` numpy array: the full (amodal) box of each object, ``xyxy``. It may extend
            past the image border (a person cut off by the border keeps their whole body's box, as CrowdHuman's
            ``fbox``); :attr:`clipped_boxes` (:meth:`clipped_boxes_tensor` as a tensor) is the same box clipped
            to the image, as COCO's ``bbox``. odam clips ground truth there and nowhere else
            (:func:`clip_to_image`).
        labels: ``int64 [N]``: 1-based category index.
        ignore: ``bool [N]``: objects to ignore in training and evaluation (COCO ``iscrowd``, odgt
            ``extra.ignore``).
        vboxes: ``float32 [N, 4]``: the visible box, ``xyxy``; NaN where the source has none.
        hboxes: ``float32 [N, 4]``: the head box, ``xyxy``; NaN where the source has none.
        masks: the visible instance mask of each object as COCO RLE, or ``None`` where the source has none
            (odgt has no masks).
        ann_ids: ``int64 [N]``: the annotation ids, positive and unique in the dataset (COCO ``annotation.id``;
            for odgt, 1-based running ids).
    """

    id: int
    file: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    vboxes: np.ndarray
    hboxes: np.ndarray
    masks: list[RLE] | None
    ann_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def clipped_boxes(self) -> np.ndarray:
        """``float32 [N, 4]``: :attr:`boxes` clipped to the image, ``0 <= x <= width``, ``0 <= y <= height``.

        This is COCO's ``bbox`` (what :func:`odam.data.write_coco` writes there) and what detectors, which
        predict inside the image, are trained on and matched against. A new array on each call.

        Example:
            >>> from pathlib import Path
            >>> boxes = np.array([[-4, 5, 16, 55]], np.float32)
            >>> rec = ImageRecord(1, Path("a.png"), 64, 48, boxes, np.array([1]), np.array([False]),
            ...                   boxes * np.nan, boxes * np.nan, None, np.array([1]))
            >>> rec.clipped_boxes.tolist()
            [[0.0, 5.0, 16.0, 48.0]]
        """
        return clip_to_image(self.boxes, self.width, self.height)

    def clipped_boxes_tensor(self, device: torch.device | str | None = None) -> Tensor:
        """``Tensor[N, 4]`` float32 on ``device`` (default CPU): :attr:`clipped_boxes` as a new tensor.

        Example:
            >>> from pathlib import Path
            >>> boxes = np.array([[-4, 5, 16, 55]], np.float32)
            >>> rec = ImageRecord(1, Path("a.png"), 64, 48, boxes, np.array([1]), np.array([False]),
            ...                   boxes * np.nan, boxes * np.nan, None, np.array([1]))
            >>> rec.clipped_boxes_tensor()
            tensor([[ 0.,  5., 16., 48.]])
        """
        return torch.as_tensor(self.clipped_boxes, device=device)

    def load_image(self, *, max_pixels: int | None = _image.MAX_PIXELS, downscale: bool = False) -> Tensor:
        """The image :attr:`file` as ``Tensor[3, H, W]`` float32 in [0, 1], on CPU: :func:`odam.load_image` of it.

        Turned upright by its EXIF orientation; its size is not compared with :attr:`width` and :attr:`height`.

        Args:
            max_pixels: the most pixels (width x height) accepted, or None for no limit (as :func:`odam.load_image`).
            downscale: shrink an image over ``max_pixels`` to fit instead of refusing it.

        Raises:
            FileNotFoundError: if the file is missing.
            ValueError: for a file that is not a readable image, or one over ``max_pixels`` without ``downscale``.

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> from PIL import Image
            >>> tmp = tempfile.TemporaryDirectory(); file = Path(tmp.name) / "a.png"
            >>> Image.new("RGB", (64, 48), "white").save(file)
            >>> empty = np.zeros((0, 4), np.float32)
            >>> rec = ImageRecord(1, file, 64, 48, empty, np.zeros(0, np.int64), np.zeros(0, bool), empty, empty,
            ...                   None, np.zeros(0, np.int64))
            >>> image = rec.load_image()
            >>> image.shape, image.dtype, image.min().item()
            (torch.Size([3, 48, 64]), torch.float32, 1.0)
            >>> tmp.cleanup()
        """
        return _image.load_image(self.file, max_pixels=max_pixels, downscale=downscale)


@dataclass(eq=False)
class Dataset:
    """A list of images with their objects, and the category names.

    Attributes:
        images: the images, in file order.
        categories: category names; label ``l`` is ``categories[l - 1]``.
        source: the annotation file this was read from, or ``None`` for a dataset built in memory.
        info: free-form metadata (COCO ``info``; SynthCrowd records its generator settings here).
    """

    images: list[ImageRecord]
    categories: tuple[str, ...]
    source: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """``len(categories) + 1``: what a torchvision detector for this dataset needs (0 is background)."""
        return len(self.categories) + 1
