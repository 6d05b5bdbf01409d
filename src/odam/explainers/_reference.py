"""The slow reference for :class:`~odam.ODAM`: one ``autograd.grad`` call per detection and per attribute.

Tests and ``benchmarks/bench_batched.py`` compare the batched explainer against it. It shares the map formula
(:meth:`ODAM._maps`) and geometry with the explainer, but none of the batching.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from odam.detectors.base import borrowed
from odam.explainers.odam import ODAM, _check_targets
from odam.structures import TARGETS, Detections, Explanation


def explain_loop(explainer: ODAM, image: object, targets: Sequence[str] = ("score",),
                 detections: Detections | None = None) -> Explanation:
    """What ``explainer.explain`` returns, computed with ``K x T`` separate backward passes."""
    names = _check_targets(targets, explainer.detector.targets)
    trace = explainer.detector.trace(image, explainer.layer)
    dets = (trace.detections if detections is None else detections).to(explainer.detector.device)
    H, W = trace.geometry.original
    maps = torch.zeros(len(dets), len(names), H, W, device=dets.boxes.device)
    if len(dets) == 0:
        return Explanation(dets, names, maps)
    with borrowed(explainer.detector.model):
        explainer.detector.model.eval()
        y, groups, group_of = trace.graph(dets)
        for k in range(len(dets)):
            group = groups[int(group_of[k])]
            row = group.rows[int((group_of[:k] == group_of[k]).sum())].view(1)
            for t, name in enumerate(names):
                grad = torch.autograd.grad(y[k, TARGETS.index(name)], group.input, retain_graph=True)[0]
                grads = grad[row]
                sigma = explainer._sigma(group.cells(dets.boxes[k:k + 1], row))
                m = explainer._maps(group.pullback(grads, row), group.features(row), sigma)
                maps[k, t] = group.to_image(m, row)[0]
    return Explanation(dets.detach(), names, maps)
