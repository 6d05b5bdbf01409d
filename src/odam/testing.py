"""The adapter conformance suite, for odam's own detector families and for yours (docs/ADAPTERS.md).

Describe a detector family by a :class:`Case` and run :func:`check_adapter` on it (or each of
:data:`CHECKS` on its own, as odam's ``tests/test_conformance.py`` does). A family is supported when its case
passes every check:

- ``detect`` equals the family's native inference;
- ``trace(image, candidates=True)`` gives the candidates before NMS, by score, among them every detection;
- the attributes recomputed from each detection's provenance reproduce its score and box;
- the batched maps equal a loop that explains one detection at a time;
- a box-edge map is not the score map;
- the model is borrowed: hooks, train/eval modes and ``requires_grad`` flags are the same after a call, also
  after an error;
- the explained feature maps line up with the image after the model's own resizing;
- bad input gets a one-line ``ValueError``.

Example:
    >>> import torch, torchvision, odam
    >>> from odam.testing import Case, check_adapter
    >>> def build():
    ...     return torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None,
    ...         num_classes=3, min_size=64, max_size=80, score_thresh=0.0, detections_per_img=3).eval()
    >>> def native(model, image):
    ...     with torch.no_grad():
    ...         out = model([image])[0]
    ...     return out["boxes"], out["scores"], out["labels"]
    >>> def image():
    ...     return torch.rand(3, 48, 60, generator=torch.Generator().manual_seed(1))
    >>> case = Case("fcos", build, native, image, probe=lambda model: model.backbone.body.layer1)
    >>> check_adapter(case)  # raises AssertionError naming the first failed check
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odam.detectors.base import DetectorAdapter, FeatureGroup, Geometry
from odam.structures import TARGETS, Detections


@dataclass
class Case:
    """One detector family, as the conformance suite sees it.

    Attributes:
        id: a name for the case, e.g. ``"torchvision-fcos"``.
        build: returns the user's model in eval mode (built once per case and process, after
            ``torch.manual_seed(0)``; see :func:`model_of`).
        native: the family's own inference on one image (``Tensor[3, H, W]`` in [0, 1]), as
            ``(boxes [N, 4] xyxy original pixels, scores [N], labels [N])``, in the model's own order; it may use
            a reference outside the model (e.g. onnxruntime).
        image: returns a test image ``Tensor[3, H, W]`` in [0, 1] on which ``detect`` returns at least two
            detections; its size should differ from the model's input size, so resizing is exercised.
        probe: returns a submodule of the model that runs in ``detect``; the suite hooks it to check that the
            model is borrowed and to raise inside the forward pass.
        wrap: the adapter for the model (default :func:`odam.wrap_detector`).
        atol: tolerance on boxes (pixels) and scores between ``detect`` and ``native``.
        score_of: maps the explained ``"score"`` attribute to the score ``detect`` reports (identity, unless the
            adapter explains, e.g., a logit).
    """

    id: str
    build: Callable[[], nn.Module]
    native: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor, Tensor]]
    image: Callable[[], Tensor]
    probe: Callable[[nn.Module], nn.Module]
    wrap: Callable[[nn.Module], DetectorAdapter] = field(default=None)  # type: ignore[assignment]
    atol: float = 1e-4
    score_of: Callable[[Tensor], Tensor] = field(default=lambda y: y)

    def __post_init__(self) -> None:
        if self.wrap is None:
            from odam.detectors import wrap_detector

            self.wrap = wrap_detector


_MODELS: dict[int, tuple[Case, nn.Module]] = {}


def model_of(case: Case) -> nn.Module:
    """The case's model, built on first use and shared (every check leaves it as it found it)."""
    if id(case) not in _MODELS:
        torch.manual_seed(0)
        _MODELS[id(case)] = (case, case.build())  # the case is kept alive, so its id is not reused
    return _MODELS[id(case)][1]


def _adapter(case: Case) -> tuple[nn.Module, DetectorAdapter]:
    model = model_of(case)
    return model, case.wrap(model)


def _close(actual: Tensor, expected: Tensor, atol: float, rtol: float, what: str) -> None:
    try:
        torch.testing.assert_close(actual, expected.to(actual), atol=atol, rtol=rtol)
    except AssertionError as err:
        raise AssertionError(f"{what}: {err}") from None


def _raises(kind: type[Exception], fragment: str, call: Callable[[], object]) -> Exception:
    try:
        call()
    except kind as err:
        if fragment not in str(err):
            raise AssertionError(f"expected {kind.__name__} with {fragment!r}, got: {err}") from err
        return err
    raise AssertionError(f"expected {kind.__name__} with {fragment!r}; nothing was raised")


def check_detect_equals_native(case: Case) -> None:
    model, adapter = _adapter(case)
    image = case.image()
    dets = adapter.detect(image)
    boxes, scores, labels = case.native(model, image)
    assert len(dets) >= 2, f"the case's image must give at least two detections, got {len(dets)}"
    assert len(dets) == len(boxes), f"detect found {len(dets)} objects, the native inference {len(boxes)}"
    _close(dets.boxes, boxes, case.atol, 0, "boxes")
    _close(dets.scores, scores, case.atol, 0, "scores")
    assert torch.equal(dets.labels.cpu(), labels.to(torch.int64).cpu()), "labels differ"
    assert dets.has_provenance, "detections must record their level and index"


def check_attributes_reproduce_detections(case: Case) -> None:
    _, adapter = _adapter(case)
    trace = adapter.trace(case.image())
    dets = trace.detections
    y, groups, group_of = trace.graph(dets)
    assert y.shape == (len(dets), len(TARGETS)), f"attributes of shape {tuple(y.shape)}"
    _close(case.score_of(y[:, 0].detach()), dets.scores, 1e-5, 1e-5, "scores from provenance")
    _close(y[:, 1:].detach(), dets.boxes * dets.boxes.new_tensor([-1.0, -1.0, 1.0, 1.0]), 1e-3, 1e-5,
           "signed edges from provenance")
    assert group_of.shape == (len(dets),) and int(group_of.min()) >= 0 and int(group_of.max()) < len(groups)


def check_batched_maps_equal_loop(case: Case) -> None:
    from odam.explainers.odam import ODAM

    _, adapter = _adapter(case)
    image = case.image()
    explainer = ODAM(adapter)
    batched = explainer.explain(image, targets=TARGETS)
    assert batched.maps.shape == (len(batched), len(TARGETS), *image.shape[-2:])
    assert bool(torch.isfinite(batched.maps).all()), "maps are not finite"
    assert float(batched.maps.amax()) > 0, "every map is zero"
    for i in range(len(batched)):
        single = explainer.explain(image, targets=TARGETS, detections=batched.detections[i:i + 1])
        scale = float(batched.maps[i].abs().amax()) + 1e-12
        _close(single.maps[0], batched.maps[i], 1e-4 * scale, 1e-4, f"detection {i} alone against the batch")


def check_box_map_differs_from_score_map(case: Case) -> None:
    from odam.explainers.odam import ODAM

    _, adapter = _adapter(case)
    maps = ODAM(adapter).explain(case.image(), targets=("score", "left", "bottom")).maps
    for j, name in ((1, "left"), (2, "bottom")):
        assert not torch.allclose(maps[:, 0], maps[:, j]), f"the {name} map equals the score map"


def _state(model: nn.Module) -> tuple:
    """Everything a call must leave as it was: modes, flags, every kind of hook, instance attributes that shadow
    methods (a patched ``forward``), and the parameters and buffers (e.g. batch-norm running statistics)."""
    modes = tuple(m.training for m in model.modules())
    flags = tuple(p.requires_grad for p in model.parameters())
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")
    hooks = tuple(tuple(len(getattr(m, k, ())) for k in kinds) for m in model.modules())
    patched = tuple(sorted((n, k) for n, m in model.named_modules() for k, v in vars(m).items()
                           if callable(v) and not isinstance(v, nn.Module) and hasattr(type(m), k)))
    return modes, flags, hooks, patched


def _tensors(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def _same_tensors(before: dict[str, Tensor], model: nn.Module) -> None:
    after = model.state_dict(keep_vars=True)
    assert before.keys() == after.keys(), "parameters or buffers were added or removed"
    changed = [k for k, v in before.items() if not torch.equal(v, after[k].detach())]
    assert not changed, f"the call changed the model's parameters or buffers: {changed[:3]}"


def _boom(*_: object) -> None:
    raise RuntimeError("boom")


def check_model_is_borrowed(case: Case) -> None:
    from odam.explainers.odam import ODAM

    model, adapter = _adapter(case)
    image = case.image()
    params = list(model.parameters())
    modes = {m: m.training for m in model.modules()}
    flags = [p.requires_grad for p in params]
    try:
        model.train()  # a user's model in the middle of training, one parameter's flag flipped, one hook
        params[0].requires_grad_(not flags[0])
        calls: list[int] = []
        handle = case.probe(model).register_forward_hook(lambda *a: calls.append(1))
        before, tensors = _state(model), _tensors(model)
        try:
            explanation = ODAM(adapter).explain(image, targets=("score", "right"))
            assert _state(model) == before, "explain changed the model's modes, flags, hooks or methods"
            _same_tensors(tensors, model)
            assert calls, "the user's hook did not run"
            assert len(explanation) == len(adapter.detect(image)), "explain did not run in eval mode"
            trace = adapter.trace(image)  # the public graph too, called while the model is in train mode
            trace.graph(trace.detections)[0].sum().backward()
            assert _state(model) == before, "trace.graph changed the model's modes, flags, hooks or methods"
            for p in params:
                p.grad = None  # the backward pass above may reach the model's parameters
            _same_tensors(tensors, model)
            bad = explanation.detections[:1]
            bad = Detections(bad.boxes, bad.scores, bad.labels, bad.levels, bad.indices + 10**7)
            _raises(ValueError, "out of range", lambda: ODAM(adapter).explain(image, detections=bad))
            assert _state(model) == before, "an error while building the graph left the model changed"
            boom = case.probe(model).register_forward_hook(_boom)
            try:
                _raises(RuntimeError, "boom", lambda: ODAM(adapter).explain(image))
            finally:
                boom.remove()
            assert _state(model) == before, "an error inside the forward pass left the model changed"
            _same_tensors(tensors, model)
        finally:
            handle.remove()
    finally:
        for m, training in modes.items():
            m.training = training
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def check_maps_line_up_with_image(case: Case, tolerance: float | None = None) -> None:
    """A small patch of the image changes the explained features most where ``to_image`` places the patch.

    The case's image is resized (and padded) by the model. At five fixed positions away from the borders, a patch
    one cell of the finest explained map wide is replaced by noise (two draws); the change of the features on that
    grid, ``|features(changed) - features(image)|`` summed over channels and averaged over the draws, is placed on
    the image by the group's own ``to_image``, and its peak is located to a fraction of a cell
    (:func:`_placed_peak`). A network centres a cell where a small patch changes it most (the peak of its
    effective receptive field, :func:`receptive_field_centres`), so the median offset of that peak from the
    patch's centre, per axis, must be at most ``tolerance`` cells.

    Args:
        tolerance: in cells of the finest explained map. Default: a quarter cell, but at least 16 model pixels,
            because an FPN level below the top one carries its coarser levels' cells: with random weights (whose
            deeper features are the larger) a patch changes a torchvision stride-8 (P3) cell most about one cell
            from ``j * stride``, where its anchors and odam's placement are (docs/ODAM.md). A "same"-padded stack
            (YOLO's necks, DETR, a backbone body) meets a quarter cell; odam's ``tests/test_conformance.py`` holds
            each family to the tightest bound its measured offsets allow.
    """
    offsets, cell, stride = _line_up_offsets(case)
    if tolerance is None:
        tolerance = max(0.25, 16 / min(stride))
    median = offsets.median(0).values
    each = [(round(y, 2), round(x, 2)) for y, x in offsets.tolist()]
    assert bool((median.abs() <= tolerance).all()), (
        f"the change of a {cell[0]:.1f} x {cell[1]:.1f}-pixel patch is placed {median[0]:+.2f}, {median[1]:+.2f} "
        f"cells (y, x) from it, more than {tolerance:.2f} (median of {each})")


#: Where :func:`check_maps_line_up_with_image` puts its patch: fractions of the image's height and width.
_PATCH_AT = ((0.35, 0.3), (0.5, 0.55), (0.65, 0.4), (0.4, 0.7), (0.6, 0.45))
#: How many noise patches :func:`check_maps_line_up_with_image` averages the change over at each position.
_DRAWS = 2


def _line_up_offsets(case: Case) -> tuple[Tensor, tuple[float, float], tuple[float, float]]:
    """Offsets (y, x) in cells, ``Tensor[P, 2]``, of the placed change from each patch of :data:`_PATCH_AT`, the
    cell's size in image pixels and the finest explained map's stride in model pixels."""
    _, adapter = _adapter(case)
    image = case.image()
    H, W = image.shape[-2:]

    def grids(img: Tensor) -> tuple[dict[tuple, tuple[FeatureGroup, Tensor]], Geometry]:
        """Each explained grid of the image's detections, by its shape: the group and its features."""
        trace = adapter.trace(img)
        _, groups, _ = trace.graph(trace.detections)
        found = {}
        for group in groups:
            features = group.features(group.rows[:1])
            found.setdefault(tuple(features.shape), (group, features))
        return found, trace.geometry

    first, g = grids(image)
    shape = max(first, key=lambda s: s[-2] * s[-1])  # the finest grid
    _, before = first[shape]
    stride = first[shape][0].stride
    cell = (stride[0] * g.original[0] / g.resized[0], stride[1] * g.original[1] / g.resized[1])
    h, w = max(1, round(cell[0])), max(1, round(cell[1]))
    generator = torch.Generator().manual_seed(5)
    noises = [torch.rand(3, h, w, generator=generator).to(image) for _ in range(_DRAWS)]
    offsets = []
    for fy, fx in _PATCH_AT:
        y0, x0 = round(fy * (H - h)), round(fx * (W - w))
        placed = torch.zeros(H, W, dtype=torch.float64)
        for noise in noises:  # the change averaged over patch contents: random weights make one draw spiky
            changed = image.clone()
            changed[:, y0:y0 + h, x0:x0 + w] = noise
            second, _ = grids(changed)
            assert shape in second, (
                "no detection of the changed image is explained on the finest grid; pick another image")
            group, after = second[shape]
            one = group.to_image((after - before).abs().sum(1), group.rows[:1])[0]
            assert one.shape == (H, W), f"placed maps have shape {tuple(one.shape)}, the image ({H}, {W})"
            placed += one.detach().double().cpu()
        py, px = _placed_peak(placed, cell)
        offsets.append(((py - (y0 + (h - 1) / 2)) / cell[0], (px - (x0 + (w - 1) / 2)) / cell[1]))
    return torch.tensor(offsets, dtype=torch.float64), cell, (float(stride[0]), float(stride[1]))


def _placed_peak(placed: Tensor, cell: tuple[float, float]) -> tuple[float, float]:
    """The peak (y, x) of ``placed`` (``Tensor[H, W]``) in pixel indices: the argmax of its average over cell-sized
    windows, refined to the centroid of that average, less its minimum, within a cell of the argmax."""
    kh, kw = round(cell[0]) // 2 * 2 + 1, round(cell[1]) // 2 * 2 + 1
    pooled = F.avg_pool2d(placed[None, None], (kh, kw), stride=1, padding=(kh // 2, kw // 2),
                          count_include_pad=False)[0, 0]
    py, px = divmod(int(pooled.argmax()), pooled.shape[1])
    ry, rx = max(1, round(cell[0])), max(1, round(cell[1]))
    y0, x0 = max(0, py - ry), max(0, px - rx)
    window = pooled[y0:py + ry + 1, x0:px + rx + 1]
    return _centroid(window - window.min(), y0, x0)


def check_bad_input_errors(case: Case) -> None:
    from odam.explainers.odam import ODAM

    _, adapter = _adapter(case)
    for bad in (torch.rand(4, 32, 32), torch.rand(32, 32)):
        err = _raises(ValueError, "expected image of shape", lambda b=bad: adapter.detect(b))
        assert "\n" not in str(err)
    _raises(ValueError, "unknown target 'width'", lambda: ODAM(adapter).explain(case.image(), targets=("width",)))
    err = _raises(ValueError, "no module named 'nope.nope'", lambda: ODAM(adapter, layer="nope.nope").explain(
        case.image()))
    assert "\n" not in str(err)
    _raises(ValueError, "no module named 'nope.nope'", lambda: adapter.check_layer("nope.nope"))
    for name in adapter.named_layers:  # every name the adapter declares passes its own check
        adapter.check_layer(name)
    assert adapter.default_layer is None or adapter.default_layer in adapter.named_layers, (
        f"default_layer {adapter.default_layer!r} is not one of named_layers {adapter.named_layers}")


def check_candidate_pass(case: Case) -> None:
    _, adapter = _adapter(case)
    image = case.image()
    dets = adapter.detect(image)
    cands = adapter.trace(image, candidates=True).detections
    assert cands.has_provenance, "candidates must record their level and index"
    assert bool(torch.all(cands.scores[:-1] >= cands.scores[1:])), "candidates must come by descending score"
    k = min(len(cands), 2)
    few = adapter.trace(image, candidates=True, max_candidates=k).detections
    assert len(few) == k and torch.equal(few.indices, cands.indices[:k]), (
        f"max_candidates={k} must give the {k} best candidates, got {len(few)}")
    seen = {(int(a), int(b), int(c)) for a, b, c in zip(cands.levels, cands.indices, cands.labels, strict=True)}
    floor = float(cands.scores.min()) if len(cands) else float("inf")
    for d in range(len(dets)):  # what detect keeps is among the candidates (those that rank among them)
        key = (int(dets.levels[d]), int(dets.indices[d]), int(dets.labels[d]))
        assert float(dets.scores[d]) < floor or key in seen, f"detection {d} {key} is no candidate"


#: Every check, in the order :func:`check_adapter` runs them.
CHECKS: tuple[Callable[[Case], None], ...] = (
    check_detect_equals_native,
    check_candidate_pass,
    check_attributes_reproduce_detections,
    check_batched_maps_equal_loop,
    check_box_map_differs_from_score_map,
    check_model_is_borrowed,
    check_maps_line_up_with_image,
    check_bad_input_errors,
)


def check_adapter(case: Case) -> None:
    """Run every check of the suite on ``case``; ``AssertionError`` names the first one that fails, whatever the
    check raised (an adapter bug often surfaces as a ``TypeError`` or ``RuntimeError``, chained as the cause)."""
    for check in CHECKS:
        try:
            check(case)
        except AssertionError as err:
            raise AssertionError(f"{case.id}: {check.__name__}: {err}") from None
        except Exception as err:
            raise AssertionError(f"{case.id}: {check.__name__}: {type(err).__name__}: {err}") from err


def module_output(module: nn.Module, run: Callable[[Tensor], object]) -> Callable[[Tensor], Tensor]:
    """The ``features`` argument of :func:`receptive_field_centres` for an inner module: a function from the model
    input to ``module``'s output while ``run`` (e.g. the model, or its body) runs on that input."""

    def features(x: Tensor) -> Tensor:
        out: list = []
        handle = module.register_forward_hook(lambda _m, _i, o: out.append(o))
        try:
            run(x)
        finally:
            handle.remove()
        return out[0]

    return features


def receptive_field_centres(features: Callable[[Tensor], Tensor], image: Tensor, cells: Tensor, stride: int,
                            draws: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Where a network centres cells of a feature map: the peak and the centroid of each cell's *effective
    receptive field* ``|d feature[:, i, j] / d input|`` (Luo et al., 2016) on the model input.

    The gradient is taken of a random +-1 combination of the cell's channels (``draws`` combinations, each
    normalised to unit mass, averaged), summed over the input's colour channels. The *peak* is the argmax of that
    field averaged over ``stride x stride`` windows (which removes the checkerboard that strided convolutions
    leave in gradients), refined to the centroid of the averaged field within half a stride of it. The
    *centroid* is the mean position of the whole field: wide, weak paths (an FPN's top-down pathway) pull it;
    the peak is where a small object changes the cell most.

    Args:
        features: the part of the network from its input (``Tensor[1, 3, H, W]``, what it sees after resizing and
            padding) to the feature map (``Tensor[1, C, h, w]``).
        image: the model input, ``Tensor[1, 3, H, W]``.
        cells: ``Tensor[K, 2]`` integer (row, column) of the cells to measure.
        stride: the map's stride in input pixels.

    Returns:
        ``(peaks, centroids)``: ``Tensor[K, 2]`` each, (y, x) in input pixel indices (pixel ``i`` spans
        ``[i - 0.5, i + 0.5]``), float64.

    Example:
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1))
        >>> peaks, _ = receptive_field_centres(net, torch.rand(1, 3, 32, 32), torch.tensor([[3, 4]]), 4)
        >>> # cell (3, 4) of a "same"-padded stride-2 stack sits on (3, 4) * stride, to within a pixel or so
        >>> [abs(v - c) < 1.5 for v, c in zip(peaks[0].tolist(), (12, 16))]
        [True, True]
    """
    generator = torch.Generator().manual_seed(seed)
    x = image.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = features(x)
        H, W = x.shape[-2:]
        peaks, centroids = [], []
        for i, j in cells.tolist():
            field = torch.zeros(H, W, dtype=torch.float64)
            for _ in range(draws):
                signs = torch.randint(0, 2, (out.shape[1],), generator=generator).to(out) * 2 - 1
                (grad,) = torch.autograd.grad((out[0, :, i, j] * signs).sum(), x, retain_graph=True)
                g = grad[0].abs().sum(0).double().cpu()
                field += g / g.sum().clamp_min(1e-300)
            peaks.append(_peak(field, stride))
            centroids.append(_centroid(field, 0, 0))
    return torch.tensor(peaks, dtype=torch.float64), torch.tensor(centroids, dtype=torch.float64)


def _centroid(field: Tensor, top: float, left: float) -> tuple[float, float]:
    ys = torch.arange(field.shape[0], dtype=field.dtype)[:, None] + top
    xs = torch.arange(field.shape[1], dtype=field.dtype)[None] + left
    mass = field.sum()
    return float((field * ys).sum() / mass), float((field * xs).sum() / mass)


def _peak(field: Tensor, stride: int) -> tuple[float, float]:
    k = max(1, min(stride, *field.shape))
    smooth = F.avg_pool2d(field[None, None], k, stride=1)[0, 0]  # window [i, i + k) centred on i + (k - 1) / 2
    py, px = divmod(int(smooth.argmax()), smooth.shape[1])
    r = k // 2
    y0, x0 = max(0, py - r), max(0, px - r)
    window = smooth[y0:py + r + 1, x0:px + r + 1]
    cy, cx = _centroid(window, y0, x0)
    return cy + (k - 1) / 2, cx + (k - 1) / 2
