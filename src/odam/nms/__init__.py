"""Non-maximum suppression for crowds: Odam-NMS (paper Sec. 3.3, Algorithm 1) and its baselines.

All functions take boxes ``Tensor[N, 4]`` ``(x1, y1, x2, y2)`` and scores ``Tensor[N]`` and return the indices
of the kept boxes as ``Tensor[K]`` int64 on the caller's device, sorted by (final) score, like
``torchvision.ops.nms`` (:mod:`odam.nms.ops` has the rules). Above them:

* :class:`Suppressed` replaces a detector's own NMS (``odam.load_detector(..., nms="odam")`` returns one);
* :func:`decide` and :class:`Decisions`: what a suppression decided about each candidate, and why;
* :func:`heatmap_vectors` and :func:`correlation` (from :mod:`odam.heatmaps`): what Odam-NMS compares.

Example:
    >>> import torch
    >>> from odam.nms import odam_nms
    >>> boxes = torch.tensor([[0.0, 0, 10, 20], [2, 0, 12, 20]])
    >>> odam_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])).tolist()
    [0, 1]
"""

from odam.heatmaps import SHORT_EDGE, correlation, heatmap_vectors
from odam.nms.decisions import METHODS, RULES, Decisions, Suppression, decide
from odam.nms.ops import SOFT_METHODS, batched_odam_nms, feature_nms, nms, odam_nms, soft_nms
from odam.nms.suppressed import Suppressed

__all__ = ["METHODS", "RULES", "SHORT_EDGE", "SOFT_METHODS", "Decisions", "Suppressed", "Suppression",
           "batched_odam_nms", "correlation", "decide", "feature_nms", "heatmap_vectors", "nms", "odam_nms",
           "soft_nms"]
