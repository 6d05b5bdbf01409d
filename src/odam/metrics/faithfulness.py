"""Faithfulness metrics of a heat map (paper Sec. 4.2): Deletion, Insertion and visual explanation accuracy.

Maps and regions follow the conventions of :mod:`odam.metrics.localization`: a saliency map is
``Tensor[H, W]`` at image resolution, a region a box ``Tensor[4]`` ``(x1, y1, x2, y2)`` in pixels or a bool
mask ``Tensor[H, W]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from odam.metrics.localization import check_saliency, energy_map, region_mask


@dataclass(frozen=True)
class Curve:
    """A metric curve and the area under it.

    Attributes:
        x: ``Tensor[T]`` float64 on the CPU: thresholds (VEA) or fractions of steps (Deletion/Insertion).
        y: ``Tensor[T]`` float64 on the CPU: the metric at each ``x``.
        auc: the trapezoidal area under ``y(x)`` (see each metric for its scale).
    """

    x: Tensor
    y: Tensor
    auc: float


def visual_explanation_accuracy(saliency: Tensor, mask: Tensor, thresholds: Tensor | None = None) -> Curve:
    """Visual explanation accuracy (VEA, Oramas et al., 2019): IoU of the thresholded map with the object.

    The map is clipped at 0 and min-max normalised, ``N = (S - min S) / (max S - min S)`` (a constant map,
    e.g. all zero, normalises to all zeros), then for each threshold ``t``::

        y_t = |{N >= t} & M| / |{N >= t} | M|

    (``y_t = 0`` when the union is empty). ``auc = sum_t (y_t + y_{t+1}) / 2 * (t_{t+1} - t_t)`` is the
    trapezoid over the thresholds, not normalised by their range: with the default thresholds its maximum
    is 0.8.

    Args:
        saliency: ``Tensor[H, W]`` heat map.
        mask: the ground-truth bool mask ``Tensor[H, W]`` (or a box ``Tensor[4]``, see
            :func:`~odam.metrics.region_mask`).
        thresholds: increasing ``Tensor[T]``; ``None`` is ``0.1, 0.2, ..., 0.9`` (as float64
            ``arange(1, 10) / 10``, so that e.g. a normalised value of exactly 0.3 passes the 0.3 threshold,
            which ``linspace(0.1, 0.9, 9)``, one ulp above 0.3, would reject).

    Returns:
        :class:`Curve` with ``x = thresholds``, ``y`` the IoUs and ``auc``.

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.0, 1.0, 2.0, 4.0]])
        >>> curve = visual_explanation_accuracy(s, torch.tensor([[False, False, True, True]]))
        >>> curve.y.tolist(), round(curve.auc, 4)
        ([0.6666666666666666, 0.6666666666666666, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5], 0.575)
    """
    check_saliency(saliency)
    gt = region_mask(mask, saliency.shape).to(saliency.device)
    if thresholds is None:
        thresholds = torch.arange(1, 10, dtype=torch.float64) / 10
    if not isinstance(thresholds, Tensor) or thresholds.ndim != 1 or thresholds.numel() == 0:
        shape = tuple(thresholds.shape) if isinstance(thresholds, Tensor) else type(thresholds).__name__
        raise ValueError(f"expected thresholds of shape [T] with T >= 1, got {shape}")
    x = thresholds.detach().to("cpu", torch.float64)
    if not bool((x[1:] > x[:-1]).all()):
        raise ValueError(f"expected increasing thresholds, got {x.tolist()}")
    energy = energy_map(saliency)
    lo, hi = energy.min(), energy.max()
    normalised = (energy - lo) / (hi - lo) if hi > lo else torch.zeros_like(energy)
    predicted = normalised[None] >= x.to(energy.device)[:, None, None]  # [T, H, W]
    inter = (predicted & gt).flatten(1).sum(1).to("cpu", torch.float64)
    union = (predicted | gt).flatten(1).sum(1).to("cpu", torch.float64)
    y = torch.where(union > 0, inter / union.clamp_min(1), 0.0)
    return Curve(x=x, y=y, auc=float(torch.trapezoid(y, x)))


def perturbation_order(saliency: Tensor) -> Tensor:
    """The order in which Deletion and Insertion change pixels: most salient first.

    A stable descending sort of the raw (unclipped) map: ties keep row-major order, so an all-zero map
    yields ``0, 1, ..., H*W - 1``.

    Args:
        saliency: ``Tensor[H, W]`` heat map.

    Returns:
        ``Tensor[H*W]`` int64 flat pixel indices (``row * W + col``), on the map's device.

    Example:
        >>> import torch
        >>> perturbation_order(torch.tensor([[1.0, 3.0], [3.0, 2.0]])).tolist()
        [1, 2, 3, 0]
    """
    check_saliency(saliency)
    return torch.sort(saliency.detach().flatten(), descending=True, stable=True).indices


def deletion(
    image: Tensor,
    saliency: Tensor,
    score_fn: Callable[[Tensor], Tensor],
    box: Tensor | None = None,
    *,
    steps: int = 100,
    pixels_per_step: int | None = None,
    eval_every: int = 10,
    generator: torch.Generator | None = None,
    batch_size: int = 16,
) -> Curve:
    """Deletion (Petsiuk et al., 2018): how fast the score drops as the most salient pixels are destroyed.

    At step ``k`` (``k = 0 .. steps``) the first ``n_k = min(k * pixels_per_step, H * W)`` pixels of
    :func:`perturbation_order` have all three channels replaced by uniform noise. The noise is drawn once,
    ``torch.rand(3, H, W, generator=generator)`` (float32, on the generator's device, or the image's when
    ``generator`` is ``None``), so a pixel gets the same random value at every step and a seeded generator
    makes the curve reproducible. The detector is evaluated at ``k = 0, eval_every, 2 * eval_every, ...`` and
    always at ``k = steps``::

        x_k = k / steps,    y_k = score(image_k) / score(image_0),    auc = 100 * trapezoid(y, x)

    ``image_0`` is the original image. Lower is better. If ``score(image_0) <= 0`` the curve is undefined:
    ``y`` and ``auc`` are ``nan``.

    Args:
        image: ``Tensor[3, H, W]`` float in [0, 1].
        saliency: ``Tensor[H, W]`` heat map explaining one detection.
        score_fn: maps a batch ``Tensor[B, 3, H, W]`` (on the image's device and dtype) to ``Tensor[B]``, the
            tracked score (in odam: the highest score of a same-class detection with IoU > 0.5 to the
            explained box). It is called under ``torch.no_grad()``.
        box: the explained box ``Tensor[4]``; sets the default ``pixels_per_step``.
        steps: number of perturbation steps.
        pixels_per_step: pixels changed per step; ``None`` is ``max(1, int(box_area / 100))`` with
            ``box_area = (x2 - x1) * (y2 - y1)``, so that 100 steps change as many pixels as the box holds.
        eval_every: evaluate the detector every this many steps.
        generator: random generator for the noise.
        batch_size: at most this many images per call of ``score_fn``.

    Returns:
        :class:`Curve` with ``x`` the evaluated fractions of steps, ``y`` the relative scores and ``auc`` in
        percent.

    Example:
        >>> import torch
        >>> image = torch.ones(3, 4, 4)
        >>> saliency = torch.arange(16.0).view(4, 4)
        >>> score = lambda batch: batch[:, :, 3, 3].mean(1)  # only the most salient pixel matters
        >>> curve = deletion(image, saliency, score, steps=4, pixels_per_step=1, eval_every=2,
        ...                  generator=torch.Generator().manual_seed(0))
        >>> curve.x.tolist(), curve.y[0].item(), bool((curve.y[1:] == curve.y[1]).all())
        ([0.0, 0.5, 1.0], 1.0, True)
    """
    return _perturbation_curve(
        "deletion", image, saliency, score_fn, box, steps, pixels_per_step, eval_every, generator, batch_size
    )


def insertion(
    image: Tensor,
    saliency: Tensor,
    score_fn: Callable[[Tensor], Tensor],
    box: Tensor | None = None,
    *,
    steps: int = 100,
    pixels_per_step: int | None = None,
    eval_every: int = 10,
    generator: torch.Generator | None = None,
    batch_size: int = 16,
) -> Curve:
    """Insertion (Petsiuk et al., 2018): how fast the score recovers as the most salient pixels are restored.

    Starts from a black (zero) image; at step ``k`` (``k = 0 .. steps``) the first
    ``n_k = min(k * pixels_per_step, H * W)`` pixels of :func:`perturbation_order` take the original image's
    values. The detector is evaluated at ``k = 0, eval_every, 2 * eval_every, ...`` and always at
    ``k = steps``, plus once on the original image (in the same batches)::

        x_k = k / steps,    y_k = score(image_k) / score(original),    auc = 100 * trapezoid(y, x)

    The reference is the original image, not the black image of step 0 (which scores about 0). Higher is
    better. If ``score(original) <= 0``, ``y`` and ``auc`` are ``nan``.

    Args:
        image: ``Tensor[3, H, W]`` float in [0, 1].
        saliency: ``Tensor[H, W]`` heat map explaining one detection.
        score_fn: maps a batch ``Tensor[B, 3, H, W]`` to ``Tensor[B]`` (see :func:`deletion`).
        box: the explained box ``Tensor[4]``; sets the default ``pixels_per_step``.
        steps: number of perturbation steps.
        pixels_per_step: pixels changed per step; ``None`` is ``max(1, int(box_area / 100))``.
        eval_every: evaluate the detector every this many steps.
        generator: unused (insertion is deterministic); accepted so both metrics share one signature.
        batch_size: at most this many images per call of ``score_fn``.

    Returns:
        :class:`Curve` with ``x`` the evaluated fractions of steps, ``y`` the relative scores and ``auc`` in
        percent.

    Example:
        >>> import torch
        >>> image = torch.ones(3, 2, 2)
        >>> score = lambda batch: batch.mean(dim=(1, 2, 3))  # fraction of restored pixels
        >>> curve = insertion(image, torch.rand(2, 2), score, steps=4, pixels_per_step=1, eval_every=1)
        >>> curve.y.tolist(), curve.auc
        ([0.0, 0.25, 0.5, 0.75, 1.0], 50.0)
    """
    return _perturbation_curve(
        "insertion", image, saliency, score_fn, box, steps, pixels_per_step, eval_every, generator, batch_size
    )


def _perturbation_curve(
    mode: str,
    image: Tensor,
    saliency: Tensor,
    score_fn: Callable[[Tensor], Tensor],
    box: Tensor | None,
    steps: int,
    pixels_per_step: int | None,
    eval_every: int,
    generator: torch.Generator | None,
    batch_size: int,
) -> Curve:
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"expected image of shape [3, H, W], got {shape}")
    if not image.is_floating_point():
        raise ValueError(f"expected a floating-point image, got {image.dtype}")
    check_saliency(saliency)
    if saliency.shape != image.shape[1:]:
        raise ValueError(
            f"expected saliency of shape {tuple(image.shape[1:])} to match the image, got {tuple(saliency.shape)}"
        )
    for name, value in (("steps", steps), ("eval_every", eval_every), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if box is not None and (not isinstance(box, Tensor) or box.shape != (4,)):
        shape = tuple(box.shape) if isinstance(box, Tensor) else type(box).__name__
        raise ValueError(f"expected box of shape [4], got {shape}")
    if pixels_per_step is None:
        if box is None:
            raise ValueError("pixels_per_step is None and no box was given to derive it from")
        x1, y1, x2, y2 = box.detach().to(torch.float64).tolist()
        pixels_per_step = max(1, int((x2 - x1) * (y2 - y1) / 100))
    if not isinstance(pixels_per_step, int) or pixels_per_step < 1:
        raise ValueError(f"pixels_per_step must be a positive int, got {pixels_per_step!r}")

    _, H, W = image.shape
    image = image.detach()
    ks = list(range(0, steps + 1, eval_every))
    if ks[-1] != steps:
        ks.append(steps)
    counts = [min(k * pixels_per_step, H * W) for k in ks]
    # rank[p] = position of pixel p in the perturbation order: pixel p is changed at step k iff rank[p] < n_k
    rank = torch.empty(H * W, dtype=torch.int64, device=image.device)
    rank[perturbation_order(saliency).to(image.device)] = torch.arange(H * W, device=image.device)
    rank = rank.view(1, 1, H, W)
    if mode == "deletion":
        device = generator.device if generator is not None else image.device
        changed_value = torch.rand(3, H, W, generator=generator, device=device).to(image)
        unchanged_value = image
    else:
        changed_value, unchanged_value = image, torch.zeros_like(image)
        counts.append(-1)  # the original image, the reference of insertion: see below

    scores = []
    with torch.no_grad():
        for start in range(0, len(counts), batch_size):
            n = torch.tensor(counts[start:start + batch_size], device=image.device)
            batch = torch.where(rank < n.view(-1, 1, 1, 1), changed_value, unchanged_value)
            if mode == "insertion":
                batch[n < 0] = image  # count -1 marks the original image
            out = score_fn(batch)
            if not isinstance(out, Tensor) or out.shape != (len(n),):
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"expected score_fn to return a tensor of shape [{len(n)}], got {shape}")
            scores.append(out.detach().to("cpu", torch.float64))
    y = torch.cat(scores)
    reference = y[-1] if mode == "insertion" else y[0]
    y = y[: len(ks)]
    x = torch.tensor(ks, dtype=torch.float64) / steps
    if not reference > 0:
        return Curve(x=x, y=torch.full_like(y, math.nan), auc=math.nan)
    y = y / reference
    return Curve(x=x, y=y, auc=100 * float(torch.trapezoid(y, x)))
