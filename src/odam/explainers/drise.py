"""D-RISE (Petsiuk et al. 2021): a black-box saliency map per detection from randomly masked images.

For random masks ``M_i`` and each explained detection ``d_t = (box_t, p_t)``::

    w_it = max_j  IoU(box_t, box_ij) * cos(p_t, p_ij) * o_ij
    H_t  = (1 / N) * sum_i  w_it * M_i

where ``j`` runs over the candidates the detector finds in the masked image ``I * M_i`` (those scoring at
least its score threshold), ``box_ij`` is candidate ``j``'s box for ``d_t``'s label, ``p`` are
class-probability vectors (:class:`odam.detectors.base.Candidates`) and ``o_ij`` the candidate's objectness,
used only when the detector has one (FCOS's centre-ness; 1 otherwise).

Masks follow RISE: a ``grid_size x grid_size`` grid of cells kept with probability ``keep_probability``,
upsampled bilinearly to ``(grid_size + 1)`` cells of ``ceil(H / grid_size) x ceil(W / grid_size)`` pixels and
cropped at a random shift of less than one cell. The random draws are made up front on the CPU, so the maps
depend on the seed alone, not on ``batch_size`` or the device (up to float rounding); masks are built on
the detector's device one batch at a time.

Choices where the paper leaves room (docs/EVALUATION.md):

* candidates are taken before NMS (the best match over all of them), so no per-mask NMS runs;
* ``p_t`` is the probability vector of the candidate in the unmasked image that best overlaps ``box_t`` with
  the same label, so any box with a label can be explained, also one without provenance;
* ``H_t`` is divided by ``N``, so maps from different mask counts are on the same scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from odam._image import load_image
from odam.detectors import DetectorAdapter, wrap_detector
from odam.detectors.base import Candidates, image_source, paired_iou
from odam.explainers.odam import check_detections
from odam.structures import Detections, Explanation


class DRISE:
    """D-RISE saliency maps, one per detection, with the interface of :class:`odam.ODAM`.

    Args:
        detector: a torchvision detector (see :func:`odam.wrap_detector`) or an adapter.
        num_masks: how many random masks (the paper: 5000).
        grid_size: cells per side of each mask before upsampling (the paper: 16).
        keep_probability: probability that a cell is kept (0.5).
        batch_size: masked images per forward pass.
        seed: seeds the masks; the same seed, image and detector give the same maps.
        progress: show a progress bar over the masks; or a callable, called with the number of masks of each
            batch as it is done (what ``odam explain`` reports progress with).
        max_candidates: candidates per masked image for one-stage detectors (see
            :meth:`odam.DetectorAdapter.candidates`).

    Example:
        >>> import torch, torchvision, odam
        >>> model = torchvision.models.detection.fcos_resnet50_fpn(
        ...     weights=None, weights_backbone=None, num_classes=3, score_thresh=0.0,
        ...     detections_per_img=2, min_size=64, max_size=64)
        >>> drise = odam.DRISE(model, num_masks=8, batch_size=4, progress=False)
        >>> tuple(drise.explain(torch.rand(3, 48, 64)).maps.shape)
        (2, 1, 48, 64)
    """

    targets: tuple[str, ...] = ("score",)

    def __init__(self, detector: nn.Module | DetectorAdapter, *, num_masks: int = 5000, grid_size: int = 16,
                 keep_probability: float = 0.5, batch_size: int = 32, seed: int = 0,
                 progress: bool | Callable[[int], object] = True, max_candidates: int = 1000) -> None:
        for name, value in (("num_masks", num_masks), ("grid_size", grid_size), ("batch_size", batch_size),
                            ("max_candidates", max_candidates)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 < keep_probability < 1:
            raise ValueError(f"keep_probability must be in (0, 1), got {keep_probability!r}")
        self.detector = wrap_detector(detector)
        self.num_masks, self.grid_size, self.keep_probability = num_masks, grid_size, keep_probability
        self.batch_size, self.seed, self.progress, self.max_candidates = batch_size, seed, progress, max_candidates

    def explain(self, image: object, targets: Sequence[str] = ("score",),
                detections: Detections | None = None) -> Explanation:
        """Explain detections of one image with one map each.

        Args:
            image: a float tensor ``[3, H, W]`` in [0, 1], a PIL image, an ``HxWx3`` uint8 array or a path.
            targets: must be ``("score",)``: D-RISE explains a detection as a whole, not its box edges.
            detections: what to explain (boxes and labels are used); ``None`` explains what ``detect`` returns.

        Returns:
            An :class:`~odam.Explanation` with ``maps`` of shape ``[N, 1, H, W]``.
        """
        names = (targets,) if isinstance(targets, str) else tuple(targets)
        if names != ("score",):
            raise ValueError(f"D-RISE explains whole detections: targets must be ('score',), got {names}")
        x = load_image(image).to(self.detector.device)
        dets = self.detector.detect(x) if detections is None else check_detections(detections, image_source(x))
        dets = dets.to(self.detector.device).detach()
        H, W = x.shape[-2:]
        if len(dets) == 0:
            return Explanation(dets, names, x.new_zeros(0, 1, H, W), x)
        boxes, labels = dets.boxes.to(x.dtype), dets.labels
        reference = self._reference_probs(self.detector.candidates(x[None], self.max_candidates), boxes, labels)
        grids, shifts = self.draws(self.num_masks, torch.Generator().manual_seed(self.seed))
        saliency = x.new_zeros(len(dets), H * W)
        report = self.progress if callable(self.progress) else None
        bar = tqdm(total=self.num_masks, desc="D-RISE masks", unit="mask",
                   disable=report is not None or not self.progress, leave=False)
        with bar:
            for start in range(0, self.num_masks, self.batch_size):
                part = slice(start, start + self.batch_size)
                masks = self.masks(grids[part].to(x.device), shifts[part].to(x.device), (H, W)).to(x.dtype)
                found = self.detector.candidates(x * masks[:, None], self.max_candidates)
                weights = self._weights(found, boxes, labels, reference).to(x.dtype)  # [n, T]
                saliency += weights.T @ masks.flatten(1)
                bar.update(len(masks))
                if report is not None:
                    report(len(masks))
        maps = (saliency / self.num_masks).view(len(dets), 1, H, W)
        return Explanation(dets, names, maps, x)

    def draws(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The random part of ``n`` masks, drawn on the CPU: kept cells ``Tensor[n, s, s]`` (bool) and shifts
        ``Tensor[n, 2]`` as fractions of a cell in [0, 1). Drawn all at once, so the masks do not depend on
        ``batch_size`` or the device."""
        s = self.grid_size
        grids = torch.rand(n, s, s, generator=generator) < self.keep_probability
        return grids, torch.rand(n, 2, generator=generator)

    def masks(self, grids: Tensor, shifts: Tensor, size: tuple[int, int]) -> Tensor:
        """RISE masks ``Tensor[n, H, W]`` in [0, 1] from :meth:`draws`, built on the draws' device.

        Each grid is upsampled bilinearly to ``(s + 1)`` cells of ``ceil(H / s) x ceil(W / s)`` pixels, and
        an ``H x W`` window is cut at a shift of ``floor(shift * cell)`` pixels.
        """
        H, W = size
        s = self.grid_size
        ch, cw = math.ceil(H / s), math.ceil(W / s)
        up = F.interpolate(grids[:, None].float(), size=((s + 1) * ch, (s + 1) * cw), mode="bilinear",
                           align_corners=False)[:, 0]
        dy = (shifts[:, 0] * ch).long().clamp_max(ch - 1)
        dx = (shifts[:, 1] * cw).long().clamp_max(cw - 1)
        rows = (dy[:, None] + torch.arange(H, device=up.device))[:, :, None]
        cols = (dx[:, None] + torch.arange(W, device=up.device))[:, None, :]
        items = torch.arange(len(up), device=up.device)[:, None, None]
        return up[items, rows, cols].clamp_(0, 1)  # bilinear rounding can pass 1

    def _reference_probs(self, clean: Candidates, boxes: Tensor, labels: Tensor) -> Tensor:
        """``Tensor[T, P]``: the probability vector of the unmasked image's candidate that matches each box best."""
        iou = self._ious(clean, boxes, labels)[0]  # [M, T]
        iou = torch.where(clean.valid[0, :, None], iou, torch.full_like(iou, -1.0))
        return clean.probs[0, iou.argmax(0)]

    def _ious(self, found: Candidates, boxes: Tensor, labels: Tensor) -> Tensor:
        """``Tensor[B, M, T]``: IoU of each candidate's box for label ``labels[t]`` with ``boxes[t]``."""
        return paired_iou(found.boxes[:, :, labels], boxes)  # [B, M, T, 4] against [T, 4]

    def _weights(self, found: Candidates, boxes: Tensor, labels: Tensor, reference: Tensor) -> Tensor:
        """``Tensor[B, T]``: each masked image's best similarity to each explained detection."""
        similarity = self._ious(found, boxes, labels)
        similarity = similarity * (F.normalize(found.probs, dim=-1) @ F.normalize(reference, dim=-1).T)
        if found.objectness is not None:
            similarity = similarity * found.objectness[..., None]
        detected = found.valid & (found.scores.amax(-1) >= self.detector.score_threshold)  # a class, never background
        return torch.where(detected[..., None], similarity, torch.zeros_like(similarity)).amax(1)
