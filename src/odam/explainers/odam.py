"""ODAM: instance-specific heat maps from gradients of each predicted attribute (paper Sec. 3.1, Eq. 2).

For detection ``p`` and attribute ``Y`` (its score or a box edge) with feature map ``A``::

    H = act( sum_k  Phi( s * dY/dA_k ) * A_k )

``s`` is +1 (``gradient="positive"``: what raises ``Y``) or -1 (``"negative"``: what lowers it), ``Phi`` a
Gaussian smoothing of each channel of the gradient whose width adapts to the predicted box, and ``act`` ReLU
(the paper's choice), identity or absolute value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odam._image import load_image
from odam.detectors import DetectorAdapter, wrap_detector
from odam.detectors.base import FeatureGroup, Geometry, MapGroup, Trace, borrowed
from odam.heatmaps import SHORT_EDGE, heatmap_vectors, pooling_matrix, vector_grid
from odam.structures import TARGETS, Detections, Explanation, check_targets

#: ``smoothing="adaptive"``: sigma = max(MIN_SIGMA, ADAPTIVE_RATIO * sqrt(box_w * box_h)), box size in cells
#: of the explained feature map. A 100x250-pixel person on FPN level P3 (stride 8) gets sigma = 2.5 cells.
ADAPTIVE_RATIO = 0.125
MIN_SIGMA = 0.5

_GRADIENTS = ("positive", "negative")
_ACTIVATIONS = ("relu", "none", "abs")
#: Bytes of intermediate gradients an explainer holds at once when ``batch_size=None`` picks its chunks.
MEMORY_BUDGET = 1 << 30


class GradientExplainer:
    """What the gradient explainers (ODAM, Grad-CAM, Grad-CAM++) share: one trace of the detector, the
    differentiable attributes of the chosen detections, and a map per (detection, attribute) computed by
    :meth:`_explain_group` from gradients with respect to the explained feature map.
    """

    def __init__(self, detector: nn.Module | DetectorAdapter, *, batch_size: int | None = None,
                 layer: str | nn.Module | None = None) -> None:
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        self.detector = wrap_detector(detector)
        self.batch_size = batch_size
        self.layer = layer
        self.frozen_norm = False
        #: Row-wise groups' gradients (FCOS's crops, Faster R-CNN's RoI levels) from one backward pass per target
        #: through all groups at once, while they fit in :data:`MEMORY_BUDGET`; ``False``: one pass per group.
        #: The gradients are the same. Per group, each pass also walks the graph shared by all groups (the
        #: concatenated attributes), so with FCOS's ~100 crop shapes per image the passes grow as groups squared.
        self.one_backward = True
        self._row_cache: dict[int, Tensor] = {}

    def explain(self, image: object, targets: Sequence[str] = ("score",),
                detections: Detections | None = None) -> Explanation:
        """Explain detections of one image.

        Args:
            image: a float tensor ``[3, H, W]`` in [0, 1], a PIL image, an ``HxWx3`` uint8 array or a path.
            targets: attributes to explain, any of :data:`odam.TARGETS`.
            detections: what to explain; ``None`` explains everything ``detect`` returns. Passed detections
                must come from this detector's ``detect`` on this image (they record where they came from); others,
                and non-finite boxes or scores, are refused with a ``ValueError``.

        Returns:
            An :class:`~odam.Explanation` with ``maps`` of shape ``[N, T, H, W]``.
        """
        return self._explain(image, targets, detections, self._explain_group)

    def _explain(self, image: object, targets: Sequence[str], detections: Detections | None,
                 explain_group: Callable[[Tensor, FeatureGroup, Tensor, Tensor, Tensor], None]) -> Explanation:
        """Trace, select and build the graph; ``explain_group(y, group, members, boxes, out)`` fills the maps."""
        names = check_targets(targets, self.detector.targets)
        if torch.is_inference_mode_enabled():
            raise RuntimeError(f"{type(self).__name__} needs gradients: call explain() outside torch.inference_mode()")
        if not isinstance(image, Tensor):  # a file or an array: read once, and keep it with the maps
            image = load_image(image)
        # Given detections need no suppression: their trace is the one before it (the same forward pass).
        trace = (self.detector.trace(image, self.layer) if detections is None
                 else self.detector.trace(image, self.layer, candidates=True))
        dets = trace.detections if detections is None else check_detections(detections, trace.detections.source)
        dets = dets.to(self.detector.device)
        H, W = trace.geometry.original
        maps = torch.zeros(len(dets), len(names), H, W, device=dets.boxes.device)
        if len(dets):
            self._fill(trace, dets, names, explain_group, maps)
        return Explanation(dets.detach(), names, maps, image.detach())

    def _fill(self, trace: Trace, dets: Detections, names: tuple[str, ...],
              explain_group: Callable[[Tensor, FeatureGroup, Tensor, Tensor, Tensor], None], out: object,
              prepare: Callable[[FeatureGroup], None] | None = None) -> None:
        """Compute every (detection, target) map of ``dets`` on ``trace`` into ``out[rows, j]``; ``prepare``
        sees each feature group first."""
        with borrowed(self.detector.model), torch.enable_grad():  # also inside a caller's torch.no_grad()
            self.detector.model.eval()
            y, groups, group_of = trace.graph(dets, frozen_norm=self.frozen_norm)
            y = y[:, [TARGETS.index(n) for n in names]]
            self._row_cache = self._all_row_gradients(y, groups, group_of) if self.one_backward else {}
            try:
                for g, group in enumerate(groups):
                    members = torch.where(group_of == g)[0]
                    if len(members):
                        if prepare is not None:
                            prepare(group)
                        explain_group(y, group, members, dets.boxes, out)
            finally:
                self._row_cache = {}

    def _all_row_gradients(self, y: Tensor, groups: list[FeatureGroup], group_of: Tensor) -> dict[int, Tensor]:
        """:meth:`row_gradients` of every row-wise group, from one backward pass per target through all of them:
        ``{id(group): Tensor[T, R, ...]}``. A row influences only its own detection, so the gradient of the sum
        over all their detections w.r.t. one group's input is that group's own."""
        rowwise = [g for g, group in enumerate(groups) if group.rowwise and bool((group_of == g).any())]
        held = sum(groups[g].input.numel() * groups[g].input.element_size() for g in rowwise) * y.shape[1]
        if len(rowwise) < 2 or held > MEMORY_BUDGET:
            return {}  # one group, or too much to hold at once: one backward pass per group as it comes
        members = torch.where(torch.isin(group_of, torch.tensor(rowwise, device=group_of.device)))[0]
        inputs = [groups[g].input for g in rowwise]
        per_target = [torch.autograd.grad(y[members, j].sum(), inputs, retain_graph=True) for j in range(y.shape[1])]
        return {id(groups[g]): torch.stack([grads[k] for grads in per_target]) for k, g in enumerate(rowwise)}

    def vectors(self, trace: Trace, detections: Detections, short_edge: int = SHORT_EDGE, *,
                direct: bool = True) -> Tensor:
        """``Tensor[N, D]``: each detection's score map, block-averaged to ``short_edge`` cells and flattened by
        :func:`odam.heatmaps.heatmap_vectors` (what Odam-NMS compares); computed chunk by chunk, never holding
        all full-size maps at once.

        With ``direct=True`` (the default), maps of feature groups that are placed on the image by
        :class:`~odam.detectors.base.MapGroup`'s bilinear resampling (FPN levels, FCOS's crops, Faster R-CNN's
        RoI levels) go from the feature grid to the averaged cells in two small matrix products: the resampling
        and the block average are both separable, so ``average(resample(m)) = P_y @ m @ P_x.T``. No map of the
        image's size is made. The vectors equal those of ``direct=False`` (resample to the image, then
        :func:`~odam.heatmaps.heatmap_vectors`) up to float32 rounding; other groups always take that path.

        Args:
            trace: a pass of this explainer's detector on the image (``detector.trace(image)``, or with
                ``candidates=True`` for the candidates before NMS).
            detections: detections of that trace, with provenance.

        Example:
            >>> import torch, odam
            >>> detector = odam.load_detector("synthcrowd-fcos")
            >>> trace = detector.trace(torch.rand(3, 60, 80), candidates=True, max_candidates=3)
            >>> odam.ODAM(detector).vectors(trace, trace.detections).shape
            torch.Size([3, 3350])
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError("odam-nms needs gradients: run the detector outside torch.inference_mode()")
        H, W = trace.geometry.original
        grid = vector_grid(H, W, short_edge)
        vectors = torch.zeros(len(detections), grid[0] * grid[1], device=detections.boxes.device)

        class Sink:
            dtype = torch.float32

            def __setitem__(self, key: tuple[Tensor, Tensor], maps: Tensor) -> None:
                # maps on the image, or already averaged to the grid by a direct placement (when the image is
                # the grid's size the two are the same)
                vectors[key[0]] = maps.flatten(1) if maps.shape[-2:] == grid else heatmap_vectors(maps, short_edge)

        if len(detections):
            prepare = _DirectPlacement(trace.geometry, grid) if direct else None
            self._fill(trace, detections, ("score",), self._explain_group, Sink(), prepare)
        return vectors

    def _explain_group(self, y: Tensor, group: FeatureGroup, members: Tensor, boxes: Tensor, out: Tensor) -> None:
        raise NotImplementedError

    def row_gradients(self, y: Tensor, group: FeatureGroup, members: Tensor) -> Tensor | None:
        """For row-wise groups, ``Tensor[T, R, ...]``: every member's gradient from one backward pass per target."""
        if not group.rowwise:
            return None
        cached = getattr(self, "_row_cache", {}).get(id(group))
        if cached is not None:
            return cached
        return torch.stack([
            torch.autograd.grad(y[members, j].sum(), group.input, retain_graph=True)[0] for j in range(y.shape[1])
        ])

    def gradients(self, y: Tensor, group: FeatureGroup, members: Tensor, i: Tensor, j: Tensor,
                   rowgrads: Tensor | None) -> Tensor:
        """Gradients of ``y[members[i], j]`` w.r.t. the rows of ``group.input`` they use: ``Tensor[B, ...]``."""
        rows = group.rows[i]
        if rowgrads is not None:
            return rowgrads[j, rows]
        return _vjps(y[members[i], j], group.input)[torch.arange(len(i)), rows]


class ODAM(GradientExplainer):
    """Object Detector Activation Maps: one heat map per detection and per explained attribute.

    Args:
        detector: a torchvision detector (see :func:`odam.wrap_detector`) or an adapter.
        smoothing: ``"adaptive"`` (Gaussian whose sigma grows with the box, see :data:`ADAPTIVE_RATIO`),
            a float (a fixed sigma in cells of the feature map), a callable mapping box sizes in cells
            (``Tensor[B]``) to sigmas (``Tensor[B]``), or ``None`` for no smoothing.
        gradient: ``"positive"`` explains what increases the attribute, ``"negative"`` what decreases it.
        activation: ``"relu"`` (the paper), ``"none"`` or ``"abs"``.
        batch_size: how many (detection, attribute) gradients to compute at once; ``None`` picks it from
            a 1 GiB memory budget.
        layer: the explained feature map. ``None`` (or ``"fpn"``) is the FPN level that produced each
            detection; ``"roi"`` the RoI-pooled features of a two-stage detector; or any module of the model
            (object or dotted name such as ``"backbone.body.layer3"``).
        frozen_norm: hold the statistics of normalisation layers that pool over positions (FCOS's GroupNorm)
            fixed at their values in the forward pass. Exact scores, approximate gradients (the path through
            the statistics is dropped), and a head that becomes local, so maps come from small batched crops:
            many times faster for FCOS on a CPU. No effect on detectors without such layers.

    Example:
        >>> import torch, torchvision, odam
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> model = torchvision.models.detection.fcos_resnet50_fpn(
        ...     weights=None, weights_backbone=None, num_classes=3, score_thresh=0.0,
        ...     detections_per_img=2, min_size=64, max_size=64)
        >>> explanation = odam.ODAM(model).explain(torch.rand(3, 48, 64), targets=("score", "left"))
        >>> tuple(explanation.maps.shape)
        (2, 2, 48, 64)
    """

    def __init__(
        self,
        detector: nn.Module | DetectorAdapter,
        *,
        smoothing: str | float | Callable[[Tensor], Tensor] | None = "adaptive",
        gradient: str = "positive",
        activation: str = "relu",
        batch_size: int | None = None,
        layer: str | nn.Module | None = None,
        frozen_norm: bool = False,
    ) -> None:
        if not (smoothing is None or smoothing == "adaptive" or callable(smoothing)
                or (isinstance(smoothing, (int, float)) and smoothing > 0)):
            raise ValueError(f"smoothing must be 'adaptive', a positive float, a callable or None, got {smoothing!r}")
        if gradient not in _GRADIENTS:
            raise ValueError(f"gradient must be one of {_GRADIENTS}, got {gradient!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        super().__init__(detector, batch_size=batch_size, layer=layer)
        self.smoothing = smoothing
        self.gradient = gradient
        self.activation = activation
        self.frozen_norm = bool(frozen_norm)

    def _explain_group(self, y: Tensor, group: FeatureGroup, members: Tensor, boxes: Tensor, out: Tensor) -> None:
        t = y.shape[1]
        # Chunks of similar box sizes keep windows and smoothing kernels tight.
        order = torch.argsort(group.cells(boxes[members], group.rows), stable=True).cpu()
        pairs = torch.cartesian_prod(order, torch.arange(t)).to(members.device)
        rowgrads = self.row_gradients(y, group, members)  # rows are independent: one pass serves them all
        per_item = 16 * group.item_numel() * 4
        chunk = self.batch_size or max(1, min(256, MEMORY_BUDGET // per_item))
        for start in range(0, len(pairs), chunk):
            i, j = pairs[start:start + chunk].unbind(1)
            rows = group.rows[i]
            grads = self.gradients(y, group, members, i, j, rowgrads)
            sigma = self._sigma(group.cells(boxes[members[i]], rows))
            radius = 0 if sigma is None else int(torch.ceil(3 * sigma).max())
            smooth = None if sigma is None else GaussianSmoothing(sigma)
            if self.gradient == "negative":
                grads = -grads
            maps, place = group.weighted(grads, rows, smooth, radius)
            out[members[i], j] = place(self._activate(maps)).to(out.dtype)

    def _maps(self, grads: Tensor, features: Tensor, sigma: Tensor | None) -> Tensor:
        """Feature-grid ODAM maps ``Tensor[B, h, w]`` from gradients and features ``[B or 1, C, h, w]``.

        The formula written out in one place, for the slow reference; :meth:`explain` lets each feature
        group evaluate the weighted sum its own way.
        """
        if self.gradient == "negative":
            grads = -grads
        if sigma is not None:
            grads = gaussian_smooth(grads, sigma)
        return self._activate((grads * features).sum(1))

    def _activate(self, h: Tensor) -> Tensor:
        if self.activation == "relu":
            return F.relu(h)
        return h.abs() if self.activation == "abs" else h

    def _sigma(self, cells: Tensor) -> Tensor | None:
        s = self.smoothing
        if s is None:
            return None
        if s == "adaptive":
            return (ADAPTIVE_RATIO * cells).clamp_min(MIN_SIGMA)
        if callable(s):
            return torch.as_tensor(s(cells), dtype=cells.dtype, device=cells.device).expand_as(cells)
        return torch.full_like(cells, float(s))


class _DirectPlacement:
    """For :meth:`GradientExplainer.vectors`: make a :class:`MapGroup` place its maps straight onto the averaged
    cells of ``grid`` (``Tensor[B, rows, cols]``) instead of onto the image.

    ``MapGroup.to_image`` samples the map bilinearly (border padding) at each original pixel's centre, on a grid
    that is the outer product of one row and one column of sample points; each output pixel mixes two rows and
    two columns with weights that depend on its row alone and its column alone. So the image-size map is
    ``R_y @ m @ R_x.T``, and its block average ``A_y @ R_y @ m @ R_x.T @ A_x.T``: ``P_y = A_y @ R_y`` is
    ``[rows, h]``, ``P_x`` is ``[cols, w]``. ``R_y`` and ``R_x`` are read off ``grid_sample`` itself, on the
    identity, so they hold its own weights. The group object is the one :meth:`Trace.graph` made for this call;
    its ``to_image`` is replaced on that object only (``weighted``'s placement calls it).
    """

    def __init__(self, geometry: Geometry, grid: tuple[int, int]) -> None:
        self.geometry, self.grid = geometry, grid
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def __call__(self, group: FeatureGroup) -> None:
        if isinstance(group, MapGroup) and type(group).to_image is MapGroup.to_image:
            group.to_image = lambda maps, rows, g=group: self.place(g, maps)  # type: ignore[method-assign]

    def place(self, group: MapGroup, maps: Tensor) -> Tensor:
        h, w = maps.shape[-2:]
        key = (h, w, group.stride, group.centre, maps.device, maps.dtype)
        if key not in self._cache:
            ys, xs = self.geometry.input_pixels(maps.device, maps.dtype)
            # MapGroup.to_image's sample points, in grid_sample's [-1, 1] coordinates
            gy = (2 * (ys - group.centre[0]) / group.stride[0] + 1) / h - 1
            gx = (2 * (xs - group.centre[1]) / group.stride[1] + 1) / w - 1
            self._cache[key] = (self._axis(gy, h, self.grid[0]), self._axis(gx, w, self.grid[1]))
        py, px = self._cache[key]
        return py @ maps @ px.T

    @staticmethod
    def _axis(coords: Tensor, n: int, cells: int) -> Tensor:
        """``P = A @ R`` for one axis: ``R`` (``[len(coords), n]``) samples ``n`` cells at ``coords`` as
        ``grid_sample`` does (bilinear, border, ``align_corners=False``), ``A`` averages into ``cells``."""
        eye = torch.eye(n, device=coords.device, dtype=coords.dtype)[None, :, :, None]  # [1, n, n, 1]
        points = torch.stack([torch.zeros_like(coords), coords], -1)[None, :, None]  # [1, L, 1, 2] as (x, y)
        r = F.grid_sample(eye, points, mode="bilinear", padding_mode="border", align_corners=False)[0, :, :, 0].T
        return pooling_matrix(len(coords), cells, coords.device).to(coords.dtype) @ r


def explain_loop(explainer: ODAM, image: object, targets: Sequence[str] = ("score",),
                 detections: Detections | None = None) -> Explanation:
    """The slow reference for :meth:`ODAM.explain`: what it returns, computed with ``K x T`` separate backward
    passes, one ``autograd.grad`` call per detection and per attribute.

    Tests and ``benchmarks/bench_batched.py`` compare the batched explainer against it. It shares the tracing and
    the map formula (:meth:`ODAM._maps`) with the explainer, but none of the batching, windows or factoring:
    every gradient is carried to the whole explained feature map and smoothed there.
    """

    def one_by_one(y: Tensor, group: FeatureGroup, members: Tensor, boxes: Tensor, out: Tensor) -> None:
        for n, k in enumerate(members.tolist()):
            row = group.rows[n].view(1)
            sigma = explainer._sigma(group.cells(boxes[k:k + 1], row))
            for t in range(y.shape[1]):
                grad = torch.autograd.grad(y[k, t], group.input, retain_graph=True)[0][row]
                m = explainer._maps(group.pullback(grad, row), group.features(row), sigma)
                out[k, t] = group.to_image(m, row)[0].to(out.dtype)

    return explainer._explain(image, targets, detections, one_by_one)


def _vjps(outputs: Tensor, input: Tensor) -> Tensor:
    """``Tensor[B, *input.shape]``: the gradient of each of ``outputs`` (``Tensor[B]``) w.r.t. ``input``.

    On CUDA one vectorised backward pass (``is_grads_batched``); on CPU, where vectorising the backward of
    convolutions was measured slower than a loop (docs/PERFORMANCE.md), one pass per output.
    """
    if input.device.type == "cpu":
        return torch.stack([torch.autograd.grad(o, input, retain_graph=True)[0] for o in outputs])
    eye = torch.eye(len(outputs), device=outputs.device, dtype=outputs.dtype)
    return torch.autograd.grad(outputs, input, eye, retain_graph=True, is_grads_batched=True)[0]


def gaussian_smooth(x: Tensor, sigma: Tensor) -> Tensor:
    """Smooth each channel of ``x`` (``Tensor[B, C, h, w]``) with a Gaussian of std ``sigma[b]`` (``Tensor[B]``).

    Each kernel is truncated at ``ceil(3 * sigma)`` cells, normalised to sum 1, and applied with zero padding.

    Example:
        >>> x = torch.zeros(1, 1, 9, 9); x[0, 0, 4, 4] = 1
        >>> y = gaussian_smooth(x, torch.tensor([1.0]))
        >>> round(y.sum().item(), 6), round(y[0, 0, 4, 4].item(), 4)
        (1.0, 0.1592)
    """
    b, c, h, w = x.shape
    kernel = gaussian_kernels(sigma, h, w, x.dtype)
    r = kernel.shape[1] // 2
    if r < 1:
        return x
    kernel = kernel.repeat_interleave(c, 0)  # [B*C, 2r+1]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(y, kernel[:, None, :, None], padding=(r, 0), groups=b * c)
    y = F.conv2d(y, kernel[:, None, None, :], padding=(0, r), groups=b * c)
    return y.reshape(b, c, h, w)


def gaussian_kernels(sigma: Tensor, h: int, w: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``Tensor[B, 2r+1]``: the 1-D kernel :func:`gaussian_smooth` applies along each axis of an ``h x w`` map for
    each std ``sigma[b]`` (``Tensor[B]``): truncated at ``ceil(3 * sigma[b])`` cells, normalised to sum 1; ``r`` is
    the largest such radius, at most ``max(h, w) - 1``. With ``r = 0`` (no smoothing) the kernels are ``[[1]]``.

    Example:
        >>> gaussian_kernels(torch.tensor([0.2, 1.0]), 9, 9).shape
        torch.Size([2, 7])
    """
    sigma = sigma.to(dtype).clamp_min(1e-6)
    radii = torch.ceil(3 * sigma)
    r = int(min(radii.max().item(), max(h, w) - 1)) if len(sigma) else 0
    if r < 1:
        return torch.ones(len(sigma), 1, device=sigma.device, dtype=dtype)
    offsets = torch.arange(-r, r + 1, device=sigma.device, dtype=dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2) * (offsets[None].abs() <= radii[:, None])
    return kernel / kernel.sum(1, keepdim=True)


class GaussianSmoothing:
    """:func:`gaussian_smooth` with fixed ``sigma`` (``Tensor[B]``), as ``FeatureGroup.weighted`` takes it: a
    callable on ``Tensor[B, C, h, w]`` whose :meth:`kernels` also lets a group apply the same separable kernels as
    matrices (:class:`~odam.detectors.groups.CropGroup`)."""

    def __init__(self, sigma: Tensor) -> None:
        self.sigma = sigma

    def __call__(self, x: Tensor) -> Tensor:
        return gaussian_smooth(x, self.sigma)

    def kernels(self, h: int, w: int, dtype: torch.dtype) -> Tensor:
        """:func:`gaussian_kernels` for maps of ``h x w`` cells."""
        return gaussian_kernels(self.sigma, h, w, dtype)


def check_detections(detections: object, source: tuple[int, int, float] | None = None) -> Detections:
    """Detections a caller passes to ``explain``: odam's type, with finite boxes and scores, made on the image
    whose :attr:`~odam.Detections.source` is ``source`` (when both are known)."""
    if not isinstance(detections, Detections):
        raise ValueError(f"detections must be odam.Detections, got {type(detections).__name__}")
    for name, noun in (("boxes", "box"), ("scores", "score")):
        bad = ~torch.isfinite(getattr(detections, name))
        if bad.any():
            k = int(torch.where(bad.reshape(len(detections), -1).any(1))[0][0])
            raise ValueError(f"detection {k} has a non-finite {noun}: {getattr(detections, name)[k].tolist()}")
    if source is not None and not detections.same_image(source):
        h, w, _ = detections.source
        raise ValueError(f"the detections come from another image ({w}x{h}"
                         f"{', other pixels' if (h, w) == source[:2] else ''}) than the one explained "
                         f"({source[1]}x{source[0]}); pass detections from detect() on the same image")
    return detections
