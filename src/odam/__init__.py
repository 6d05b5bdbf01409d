"""odam: explain each prediction of an object detector with its own heat map (ODAM, ICLR 2023).

Public submodules beside this flat API: ``odam.metrics``, ``odam.losses``, ``odam.nms``, ``odam.train`` and
``odam.testing`` (the adapter conformance suite, docs/ADAPTERS.md).

Example:
    >>> import torch, torchvision, odam
    >>> model = torchvision.models.detection.fcos_resnet50_fpn(
    ...     weights=None, weights_backbone=None, num_classes=3, score_thresh=0.0,
    ...     detections_per_img=1, min_size=64, max_size=64)
    >>> odam.ODAM(model).explain(torch.rand(3, 48, 64)).maps.shape
    torch.Size([1, 1, 48, 64])
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, for type checkers; at run time they load on first use
    from odam._image import load_image
    from odam.detectors import DetectorAdapter
    from odam.explainers import DRISE, ODAM, GradCAM, GradCAMPlusPlus
    from odam.models import create_model, load_checkpoint, load_detector, save_checkpoint, wrap_detector
    from odam.structures import TARGETS, Detections, Explanation
    from odam.viz import overlay, save_overlay, save_overview, save_panel

__version__ = "0.1.0"

__all__ = [
    "DRISE",
    "ODAM",
    "TARGETS",
    "DetectorAdapter",
    "Detections",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "create_model",
    "load_checkpoint",
    "load_detector",
    "load_image",
    "overlay",
    "save_checkpoint",
    "save_overlay",
    "save_overview",
    "save_panel",
    "wrap_detector",
]

#: Where each name of the API lives. ``import odam`` imports none of them (nor torch), so that ``odam --help``
#: answers at once; the first name used loads them all, ``odam.viz`` included (it installs the notebook view of
#: :class:`Explanation`).
_HOMES = {
    "odam._image": ("load_image",),
    "odam.detectors": ("DetectorAdapter",),
    "odam.explainers": ("DRISE", "ODAM", "GradCAM", "GradCAMPlusPlus"),
    "odam.models": ("create_model", "load_checkpoint", "load_detector", "save_checkpoint", "wrap_detector"),
    "odam.structures": ("TARGETS", "Detections", "Explanation"),
    "odam.viz": ("overlay", "save_overlay", "save_overview", "save_panel"),
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        # a submodule (odam.nms, odam.viz, ...): import it alone, as `import odam.nms` would
        if not name.startswith("__") and importlib.util.find_spec(f"odam.{name}") is not None:
            return importlib.import_module(f"odam.{name}")
        raise AttributeError(f"module 'odam' has no attribute {name!r}")
    for home, names in _HOMES.items():
        module = importlib.import_module(home)
        globals().update({n: getattr(module, n) for n in names})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
