"""The slow reference for :class:`~odam.ODAM`: one ``autograd.grad`` call per detection and per attribute.

Tests and ``benchmarks/bench_batched.py`` compare the batched explainer against it. It shares the tracing and
the map formula (:meth:`ODAM._maps`) with the explainer, but none of the batching, windows or factoring:
every gradient is carried to the whole explained feature map and smoothed there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from odam.detectors.base import FeatureGroup
from odam.explainers.odam import ODAM
from odam.structures import Detections, Explanation


def explain_loop(explainer: ODAM, image: object, targets: Sequence[str] = ("score",),
                 detections: Detections | None = None) -> Explanation:
    """What ``explainer.explain`` returns, computed with ``K x T`` separate backward passes."""

    def one_by_one(y: Tensor, group: FeatureGroup, members: Tensor, boxes: Tensor, out: Tensor) -> None:
        for n, k in enumerate(members.tolist()):
            row = group.rows[n].view(1)
            sigma = explainer._sigma(group.cells(boxes[k:k + 1], row))
            for t in range(y.shape[1]):
                grad = torch.autograd.grad(y[k, t], group.input, retain_graph=True)[0][row]
                m = explainer._maps(group.pullback(grad, row), group.features(row), sigma)
                out[k, t] = group.to_image(m, row)[0].to(out.dtype)

    return explainer._explain(image, targets, detections, one_by_one)
