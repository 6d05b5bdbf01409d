"""Grad-CAM and Grad-CAM++ for one detection at a time: the class-activation baselines of the paper.

Both weight each channel ``k`` of the explained feature map ``A`` by one number pooled from the gradient
``g = dY/dA_k`` of the detection's attribute ``Y``, then ``H = ReLU(sum_k w_k A_k)``:

* Grad-CAM (Selvaraju et al. 2017): ``w_k = mean_ij g_kij``.
* Grad-CAM++ (Chattopadhay et al. 2018, Eq. 19 with the exponential-score closed form)::

      alpha_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab * g_kij^3 + eps),  alpha = 0 where g = 0
      w_k = sum_ij alpha_kij * ReLU(g_kij)

  with ``eps = 1e-6``, as in the ``grad-cam`` package, which the tests match to 1e-5, and equal to Eq. 19
  computed by plain autograd on the whole model (tests/test_gradcam.py).

  Eq. 19 has a pole: where ``g * sum_ab A_kab < 0`` the denominator ``2 g^2 + sum_ab A_kab g^3 + eps`` can come
  arbitrarily close to 0, and ``alpha`` there grows without bound. Near it the map is ill-conditioned: a
  gradient that differs in its 8th digit (float32 rounding of the image, another summation order) moved one
  Faster R-CNN map by 1% in the tests. Compare Grad-CAM++ maps of two computations in float64, or expect such
  outliers.

ODAM keeps ``g`` per pixel (and smooths it); pooling it to one number per channel is what makes these maps
class-specific rather than instance-specific (paper Fig. 1a).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from odam.detectors.base import FeatureGroup
from odam.explainers.odam import MEMORY_BUDGET, GradientExplainer

#: Grad-CAM++'s guard against a zero denominator (the value of pytorch-grad-cam).
EPS = 1e-6


class GradCAM(GradientExplainer):
    """Grad-CAM on the same feature map and for the same per-detection attribute as :class:`odam.ODAM`.

    Args:
        detector: a torchvision detector (see :func:`odam.wrap_detector`) or an adapter.
        batch_size: how many (detection, attribute) gradients to pool at once; ``None`` picks it from a
            1 GiB memory budget.
        layer: the explained feature map, as for :class:`odam.ODAM`: ``None`` is the FPN level that produced
            each detection.

    Example:
        >>> import torch, torchvision, odam
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> model = torchvision.models.detection.fcos_resnet50_fpn(
        ...     weights=None, weights_backbone=None, num_classes=3, score_thresh=0.0,
        ...     detections_per_img=2, min_size=64, max_size=64)
        >>> tuple(odam.GradCAM(model).explain(torch.rand(3, 48, 64)).maps.shape)
        (2, 1, 48, 64)
    """

    def _explain_group(self, y: Tensor, group: FeatureGroup, members: Tensor, boxes: Tensor, out: Tensor) -> None:
        t = y.shape[1]
        pairs = torch.cartesian_prod(torch.arange(len(members)), torch.arange(t)).to(members.device)
        rowgrads = self.row_gradients(y, group, members)
        # The pooled weights need the gradient on the whole explained map, not on a window of it.
        per_item = 4 * group.features(group.rows[:1]).numel() * 4
        chunk = self.batch_size or max(1, min(256, MEMORY_BUDGET // per_item))
        for start in range(0, len(pairs), chunk):
            i, j = pairs[start:start + chunk].unbind(1)
            rows = group.rows[i]
            grads = group.pullback(self.gradients(y, group, members, i, j, rowgrads), rows)
            features = group.features(rows)
            weights = self._weights(grads, features)  # [B, C]
            maps = F.relu(torch.einsum("bc,bchw->bhw", weights, features.expand_as(grads)))
            out[members[i], j] = group.to_image(maps, rows).to(out.dtype)

    def _weights(self, grads: Tensor, features: Tensor) -> Tensor:
        """Channel weights ``Tensor[B, C]`` from gradients ``[B, C, h, w]`` and features ``[B or 1, C, h, w]``."""
        return grads.mean((-2, -1))


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (its Eq. 19) on the same feature map and attribute as :class:`odam.ODAM`.

    Takes the same arguments as :class:`odam.GradCAM`.

    Example:
        >>> import torch, torchvision, odam
        >>> model = torchvision.models.detection.fcos_resnet50_fpn(
        ...     weights=None, weights_backbone=None, num_classes=3, score_thresh=0.0,
        ...     detections_per_img=1, min_size=64, max_size=64)
        >>> bool((odam.GradCAMPlusPlus(model).explain(torch.rand(3, 48, 64)).maps >= 0).all())
        True
    """

    def _weights(self, grads: Tensor, features: Tensor) -> Tensor:
        g2 = grads * grads
        total = features.sum((-2, -1), keepdim=True)  # sum_ab A_kab
        alpha = g2 / (2 * g2 + total * g2 * grads + EPS)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (F.relu(grads) * alpha).sum((-2, -1))
