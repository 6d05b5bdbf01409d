"""Detection datasets: one in-memory form (:class:`Dataset` of :class:`ImageRecord`) and its file formats.

COCO json and CrowdHuman odgt are read with :func:`read_coco`, :func:`read_odgt` or :func:`read_dataset`
(which picks the reader by name) and written with :func:`write_coco` and :func:`write_odgt`;
:func:`to_coco_dict` gives the COCO dict for a ``pycocotools`` ground truth. A file that cannot be read raises
:class:`DatasetError` with a one-line message naming the file, the place and the problem.
"""

from odam.data.coco import read_coco, to_coco_dict, write_coco
from odam.data.dataset import RLE, Dataset, DatasetError, ImageRecord
from odam.data.formats import read_dataset
from odam.data.odgt import read_odgt, write_odgt

__all__ = [
    "RLE",
    "Dataset",
    "DatasetError",
    "ImageRecord",
    "read_coco",
    "read_dataset",
    "read_odgt",
    "to_coco_dict",
    "write_coco",
    "write_odgt",
]
