"""Importing Ultralytics (AGPL-3.0) without network access or a settings file, and building its models offline.

odam imports Ultralytics only when a user passes a YOLO model (or a test asks for one); every such import goes
through :func:`import_ultralytics`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from torch import nn

__all__ = ["from_yaml", "import_ultralytics", "quiet"]

_ENVIRONMENT = ("YOLO_OFFLINE", "YOLO_CONFIG_DIR")
_config_dir: tempfile.TemporaryDirectory | None = None  # removed at interpreter exit

def import_ultralytics() -> ModuleType:
    """Import ``ultralytics`` without network access and without writing the user's settings file.

    On first import, Ultralytics resolves two host names to decide whether it is online (which enables its
    analytics and error reports) and creates or migrates ``settings.json`` in the user's config directory. For
    that import only, this sets ``YOLO_OFFLINE=1`` and points ``YOLO_CONFIG_DIR`` at a private temporary
    directory (removed at exit), unless the caller has set either; the environment is restored afterwards.
    Ultralytics reads both only while it is imported. Already imported, it is returned as it is.

    Importing ultralytics has effects of its own on the process, which odam cannot undo: it replaces
    ``torch.save`` by a retrying wrapper, sets ``cv2.setNumThreads(0)``, torch and numpy print options and
    warning filters for some third-party warnings.
    """
    if "ultralytics" in sys.modules:
        return sys.modules["ultralytics"]
    global _config_dir
    saved = {k: os.environ.get(k) for k in _ENVIRONMENT}
    try:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        if "YOLO_CONFIG_DIR" not in os.environ:
            if _config_dir is None:
                _config_dir = tempfile.TemporaryDirectory(prefix="odam-ultralytics-")
            os.environ["YOLO_CONFIG_DIR"] = _config_dir.name
        with quiet():  # "Creating new Ultralytics Settings file" (in that temporary directory)
            import ultralytics
    except ImportError as err:
        raise ImportError(f"odam's YOLO support needs Ultralytics (AGPL-3.0), which failed to import: {err}") from err
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return ultralytics


def from_yaml(cfg: str, nc: int | None = None) -> nn.Module:
    """A randomly initialised Ultralytics ``DetectionModel`` from a model YAML, in eval mode; nothing downloaded.

    Args:
        cfg: a YAML packaged with Ultralytics (``"yolov8n.yaml"``, ``"yolo11n.yaml"``, the scale letter picks the
            size) or a path to one.
        nc: number of classes; ``None`` keeps the YAML's (80).

    Example:
        >>> model = from_yaml("yolo11n.yaml", nc=3)
        >>> type(model).__name__, model.model[-1].nc, model.stride.tolist()
        ('DetectionModel', 3, [8.0, 16.0, 32.0])
    """
    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    with quiet():  # "Overriding model.yaml nc=80 with nc=3"
        return DetectionModel(cfg, nc=nc, verbose=False).eval()


@contextmanager
def quiet() -> Iterator[None]:
    """Inside the block, Ultralytics' logger drops its INFO messages (warnings and errors still show)."""
    logger = logging.getLogger("ultralytics")

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
