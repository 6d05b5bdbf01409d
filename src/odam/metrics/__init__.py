"""Metrics of visual explanations for object detectors (paper Sec. 4.2): pure functions on tensors.

Localisation and object discrimination (:mod:`odam.metrics.localization`):
    :func:`region_mask`, :func:`pointing_game`, :func:`energy_pointing_game`, :func:`compactness`,
    :func:`object_discrimination_index`, with results :class:`PointingGame`, :class:`EnergyPointingGame`,
    :class:`Compactness` and :class:`ObjectDiscrimination`.

Faithfulness (:mod:`odam.metrics.faithfulness`):
    :func:`deletion`, :func:`insertion`, :func:`perturbation_order`, :func:`visual_explanation_accuracy`, with
    result :class:`Curve`.

Similarity of two maps, for the sanity check by parameter randomisation (:mod:`odam.metrics.similarity`):
    :func:`spearman`, :func:`ssim`.

A saliency map is ``Tensor[H, W]`` at image resolution; a region is a box ``Tensor[4]`` ``(x1, y1, x2, y2)`` in
pixels or a bool mask ``Tensor[H, W]``; a pixel is inside a box iff its centre is (see :func:`region_mask`).
"""

from odam.metrics.faithfulness import Curve, deletion, insertion, perturbation_order, visual_explanation_accuracy
from odam.metrics.localization import (
    Compactness,
    EnergyPointingGame,
    ObjectDiscrimination,
    PointingGame,
    compactness,
    energy_pointing_game,
    object_discrimination_index,
    pointing_game,
    region_mask,
)
from odam.metrics.similarity import spearman, ssim

__all__ = [
    "Compactness",
    "Curve",
    "EnergyPointingGame",
    "ObjectDiscrimination",
    "PointingGame",
    "compactness",
    "deletion",
    "energy_pointing_game",
    "insertion",
    "object_discrimination_index",
    "perturbation_order",
    "pointing_game",
    "region_mask",
    "spearman",
    "ssim",
    "visual_explanation_accuracy",
]
