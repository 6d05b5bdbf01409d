"""torchvision's region proposal network on a batch of images without a loop over the images.

``RegionProposalNetwork.forward`` runs its head, its anchors, the decoding and the per-level top-k on the whole
batch, then clips, removes small and low-scoring boxes and runs NMS image by image in Python.
:func:`batched_proposals` does those last steps on the batch at once: masks instead of per-image indexing, and NMS
by (image, level) group, so that it never crosses an image or a level, as torchvision's per-image NMS by level
does (``torchvision.ops.batched_nms``; on the CPU one ``nms`` call per group on a slice of the batch sorted by
group, which is what NMS costs anyway). The proposals are the same (tested against ``model.rpn``
image by image); only the order of proposals with tied scores may differ.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import boxes as box_ops


def batched_proposals(rpn: RegionProposalNetwork, images: ImageList, features: dict[str, Tensor],
                      max_proposals: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The proposals of torchvision's RPN for a batch, padded to a common count ``M``.

    Follows ``RegionProposalNetwork.forward`` at inference (``rpn.training`` picks ``pre_nms_top_n`` and
    ``post_nms_top_n`` as torchvision does; no losses are computed): objectness and box deltas from
    ``rpn.head``, decoded on ``rpn.anchor_generator``'s anchors, the ``pre_nms_top_n`` best per level, clipped to
    each image's size, boxes narrower or lower than ``rpn.min_size`` and scores below ``rpn.score_thresh``
    dropped, NMS at ``rpn.nms_thresh`` within each level of each image, and the ``post_nms_top_n`` best kept.

    Args:
        rpn: a torchvision ``RegionProposalNetwork``.
        images: the batch as ``model.transform`` returns it (``tensors [B, 3, H, W]``, ``image_sizes``).
        features: the backbone's feature maps by level name (``Tensor[B, C, h, w]`` each).
        max_proposals: keep at most this many per image (on top of ``post_nms_top_n``); ``None``: no extra cap.

    Returns:
        ``boxes`` (``Tensor[B, M, 4]``, ``(x1, y1, x2, y2)`` in model-input pixels), ``scores``
        (``Tensor[B, M]``, objectness probabilities) and ``valid`` (``Tensor[B, M]`` bool): image ``b``'s
        proposals fill its first ``valid[b].sum()`` rows by descending score, zeros pad the rest. ``M >= 1``.

    Example:
        >>> import torch, torchvision
        >>> from odam.detectors.batched_rpn import batched_proposals
        >>> model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        ...     weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64).eval()
        >>> images, _ = model.transform(list(torch.rand(2, 3, 48, 64)))
        >>> with torch.no_grad():
        ...     boxes, scores, valid = batched_proposals(model.rpn, images, model.backbone(images.tensors), 10)
        >>> tuple(boxes.shape), tuple(valid.sum(1).tolist())
        ((2, 10, 4), (10, 10))
    """
    feats = list(features.values())
    num_images = int(images.tensors.shape[0])
    objectness, deltas = rpn.head(feats)
    per_level = [int(o.shape[1] * o.shape[2] * o.shape[3]) for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    # Anchors depend on the padded batch's size and the feature maps' sizes only: the same for every image.
    anchors = rpn.anchor_generator(ImageList(images.tensors[:1], list(images.image_sizes[:1])), feats)[0]
    proposals = rpn.box_coder.decode(deltas.detach(), [anchors] * num_images).view(num_images, -1, 4)
    objectness = objectness.detach().reshape(num_images, -1)
    device = objectness.device

    # The pre_nms_top_n best anchors of each level, as RegionProposalNetwork._get_top_n_idx takes them.
    top, levels, offset = [], [], 0
    for level, ob in enumerate(objectness.split(per_level, 1)):
        k = min(rpn.pre_nms_top_n(), ob.shape[1])
        top.append(ob.topk(k, dim=1).indices + offset)
        levels.append(torch.full((k,), level, dtype=torch.int64, device=device))
        offset += ob.shape[1]
    top_idx = torch.cat(top, 1)  # [B, K]
    image = torch.arange(num_images, device=device)[:, None].expand_as(top_idx)
    scores = torch.sigmoid(objectness[image, top_idx])
    boxes = proposals[image, top_idx]  # [B, K, 4]

    # Clip to each image's own size (clip_boxes_to_image's clamps), then drop small and low-scoring boxes.
    sizes = torch.as_tensor(list(images.image_sizes), dtype=boxes.dtype, device=device)  # [B, 2] (h, w)
    high = sizes.flip(1).repeat(1, 2)[:, None, :]  # [B, 1, 4] (w, h, w, h)
    boxes = torch.minimum(boxes.clamp(min=0), high)
    ws, hs = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    keep = (ws >= rpn.min_size) & (hs >= rpn.min_size) & (scores >= rpn.score_thresh)

    # NMS within each (image, level) group; the kept come back by descending score over the whole batch, and
    # a stable sort by image makes each image's proposals contiguous and still by descending score.
    groups = image * len(per_level) + torch.cat(levels)[None]
    boxes, scores, image, groups = boxes[keep], scores[keep], image[keep], groups[keep]
    kept = _nms_by_group(boxes, scores, groups, rpn.nms_thresh)
    kept = kept[torch.sort(image[kept], stable=True).indices]
    owner = image[kept]
    counts = torch.bincount(owner, minlength=num_images)
    rank = torch.arange(len(kept), device=device) - (torch.cumsum(counts, 0) - counts)[owner]
    cap = rpn.post_nms_top_n() if max_proposals is None else min(rpn.post_nms_top_n(), max_proposals)
    within = rank < cap
    kept, owner, rank = kept[within], owner[within], rank[within]
    size = (num_images, max(min(int(counts.max()) if num_images else 0, cap), 1))
    out_boxes = boxes.new_zeros(*size, 4)
    out_boxes[owner, rank] = boxes[kept]
    out_scores = scores.new_zeros(size)
    out_scores[owner, rank] = scores[kept]
    valid = torch.zeros(size, dtype=torch.bool, device=device)
    valid[owner, rank] = True
    return out_boxes, out_scores, valid


def _nms_by_group(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """:func:`torchvision.ops.batched_nms`: indices of the boxes (``Tensor[N, 4]``) kept by NMS within each group
    (``groups``, ``Tensor[N]`` int64), by descending score.

    On the CPU, batched_nms runs ``nms`` per group after a ``torch.where`` over all N boxes, and its one-call
    alternative (offset boxes) costs the kept boxes times N; both grow with the batch. Here the boxes are sorted
    by group once (stably: each group's boxes reach ``nms`` in the order torchvision's per-image call gives them)
    and ``nms`` runs on each group's contiguous slice. Other devices use batched_nms.
    """
    if boxes.device.type != "cpu":
        return box_ops.batched_nms(boxes, scores, groups, iou_threshold)
    order = torch.sort(groups, stable=True).indices
    kept, start = [], 0
    for count in torch.bincount(groups).tolist():  # the non-empty (image, level) groups, in order
        if count:
            part = order[start:start + count]
            kept.append(part[box_ops.nms(boxes[part], scores[part], iou_threshold)])
        start += count
    if not kept:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    keep = torch.cat(kept)
    return keep[torch.sort(scores[keep], descending=True).indices]
