"""Read a dataset without naming its format: :func:`read_dataset` picks the COCO or the odgt reader by name."""

from __future__ import annotations

import os
from pathlib import Path

from odam.data.checks import PathLike, fail
from odam.data.coco import read_coco
from odam.data.dataset import Dataset
from odam.data.odgt import read_odgt


def read_dataset(path: PathLike) -> Dataset:
    """Read a dataset from a folder or an annotation file, choosing the reader by name.

    A folder must hold ``annotations.json`` (COCO, preferred) or ``annotations.odgt``; a file must end in
    ``.json`` or ``.odgt``. Images are found as :func:`read_coco` / :func:`read_odgt` do by default. An odgt
    file is read as the single category ``"person"``; call :func:`read_odgt` with ``categories=`` for others.

    Args:
        path: a folder, or a ``.json`` or ``.odgt`` file.

    Returns:
        The dataset.

    Raises:
        DatasetError: for a folder with neither annotation file, a missing path, an unknown file extension,
            or any error of the reader.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory(); root = Path(tmp.name)
        >>> (root / "images").mkdir()
        >>> Image.new("RGB", (64, 48)).save(root / "images" / "a.png")
        >>> line = {"ID": "a", "gtboxes": [{"tag": "person", "fbox": [1, 2, 3, 4]}]}
        >>> _ = (root / "annotations.odgt").write_text(json.dumps(line) + "\\n")
        >>> ds = read_dataset(root)
        >>> ds.categories, ds.images[0].file.relative_to(root).as_posix()
        (('person',), 'images/a.png')
        >>> tmp.cleanup()
    """
    name = os.fspath(path)
    folder = Path(path)
    if folder.is_dir():
        for file_name, reader in (("annotations.json", read_coco), ("annotations.odgt", read_odgt)):
            if (folder / file_name).is_file():
                return reader(folder / file_name)
        raise fail(name, None, "no annotations.json or annotations.odgt in this folder")
    suffix = folder.suffix.lower()
    if suffix == ".json":
        return read_coco(path)
    if suffix == ".odgt":
        return read_odgt(path)
    if not folder.exists():
        raise fail(name, None, "not found")
    raise fail(name, None, "unknown annotation format: expected a folder, a .json or an .odgt file")
