"""A small model factory and safetensors checkpoints.

``create_model`` accepts these kinds of name:

* ``"torchvision:<builder>"``: a torchvision detector builder from :data:`BUILDERS`;
* ``"odam:<arch>"``: an architecture that ``odam train`` builds (:mod:`odam.architectures`), with keywords
  such as ``backbone`` and ``num_classes``;
* a bundled detector from :data:`BUNDLED` (``"synthcrowd-fcos"``), or the path of a checkpoint directory;
* an Ultralytics YOLO ``.pt`` or ``.yaml`` (``"yolov8n.pt"``, ``"yolo11n.yaml"``, ``"yolo:<file-or-name>"``) or a
  Hugging Face DETR directory or hub name (``"facebook/detr-resnet-50"``, ``"detr:<dir-or-hub-name>"``), loaded by
  :mod:`odam.zoo` without unpickling.

A checkpoint is a directory with ``model.safetensors`` (the state dict) and ``config.json``::

    {"format": "odam-checkpoint", "version": 1, "spec": "odam:fcos",
     "kwargs": {"backbone": "tiny", "num_classes": 2}, "categories": ["__background__", "person"], ...}

Loading builds ``create_model(spec, weights="none", **kwargs)`` and loads the tensors into it; nothing is ever
unpickled. Other keys (``preprocessing``, ``training``, ``metrics``) are carried along for the reader.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.misc import FrozenBatchNorm2d

from odam import zoo
from odam._atomic import atomic_path, atomic_write
from odam.detectors.base import DetectorAdapter

if TYPE_CHECKING:
    from odam.nms import Suppression

#: The torchvision builders ``create_model`` accepts, as ``"torchvision:<builder>"``.
BUILDERS: tuple[str, ...] = (
    "fcos_resnet50_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
)
WEIGHTS: tuple[str, ...] = ("default", "none")

#: Detectors trained by odam and shipped inside the package (see docs/MODELS.md).
BUNDLED: tuple[str, ...] = ("synthcrowd-fcos", "synthcrowd-fasterrcnn", "synthcrowd-fcos-odamtrain",
                           "synthcrowd-fasterrcnn-odamtrain", "synthcrowd-fcos-featurenms",
                           "synthcrowd-fasterrcnn-featurenms")

#: Real pretrained detectors whose weights ship inside a registry package, loaded offline (docs/ADAPTERS.md): name
#: -> ``"module:builder"``. The module lists the builder's keywords in ``SETTINGS``.
PRETRAINED: dict[str, str] = {"retinaface": "odam.detectors.retinaface:retinaface"}

_PREFIX = "torchvision:"
_ODAM = "odam:"
_FORMAT = "odam-checkpoint"
_VERSION = 1
_CONFIG = "config.json"
_TENSORS = "model.safetensors"


def create_model(spec: str, *, weights: str = "default", **kwargs: Any) -> nn.Module:
    """Build a detector from a name, or load one from an odam checkpoint; returned in eval mode.

    Args:
        spec: ``"torchvision:<builder>"`` with a builder from :data:`BUILDERS`, ``"odam:<arch>"`` (see
            :func:`odam.architectures.build_detector`), a name from :data:`BUNDLED`, a name from
            :data:`PRETRAINED` (``"retinaface"``, with ``pip install 'odam[retinaface]'``), the path of an
            odam checkpoint directory (or of its ``config.json``), see :func:`load_checkpoint`, or a YOLO or
            DETR spec of :mod:`odam.zoo`: a YOLO ``.pt`` checkpoint or ``.yaml`` model config (``"yolov8n.pt"``,
            ``"yolo11n.yaml"``, a path, a bare name such as ``"yolov8n"`` for its ``.pt``, or
            ``"yolo:<file-or-name>"``; ``pip install 'odam[yolo]'``), a DETR directory written by
            ``save_pretrained`` or a hub name (``"facebook/detr-resnet-50"``, ``"detr:<dir-or-hub-name>"``;
            ``pip install 'odam[detr]'``).
        weights: for torchvision builders: ``"default"`` loads torchvision's pretrained COCO weights (downloaded
            by torchvision on first use), ``"none"`` gives random weights and no pretrained backbone
            (offline). For a YOLO ``.pt`` or DETR: ``"default"`` reads the file's weights (a ``.pt`` only through
            Ultralytics' restricted loader, DETR only from safetensors; odam downloads nothing, transformers
            fetches hub names), ``"none"`` builds the architecture with random weights (a ``.pt`` is not
            opened). ``odam:`` architectures and YOLO ``.yaml`` configs have no pretrained weights and are always
            random; a bundled model or checkpoint always brings its own weights.
        **kwargs: passed to the torchvision builder (e.g. ``num_classes``, ``min_size``, ``score_thresh``),
            for ``odam:`` specs to :func:`odam.architectures.build_detector` (e.g. ``backbone``), and for
            ``"retinaface"`` to :func:`odam.detectors.retinaface.retinaface` (e.g. ``max_size``); ``nc`` for a
            YOLO model with random weights.

    Returns:
        The model, in eval mode, on the CPU.

    Raises:
        ValueError: for an unknown spec (the message lists the accepted forms), an unknown ``weights``
            value, builder keywords the builder rejects, keywords given with a checkpoint, or an invalid
            checkpoint; for a YOLO or DETR file that is missing or would need unpickling (one line each).
        ImportError: naming the extra to install, for a family whose library is missing.

    Example:
        >>> model = create_model("torchvision:fcos_resnet50_fpn", weights="none", num_classes=3, min_size=64)
        >>> type(model).__name__, model.training
        ('FCOS', False)
    """
    if not isinstance(spec, str):
        raise ValueError(f"expected model spec as a string, got {type(spec).__name__}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if spec.startswith(_PREFIX):
        return _build(spec[len(_PREFIX):], weights, kwargs)
    if spec in PRETRAINED:
        if weights != "default":
            raise ValueError(f"{spec} comes with its pretrained weights only; weights={weights!r} is not available")
        module_name, builder = PRETRAINED[spec].split(":")
        module = importlib.import_module(module_name)
        unknown = sorted(set(kwargs) - set(module.SETTINGS))
        if unknown:
            raise ValueError(f"{spec} has no option {', '.join(map(repr, unknown))}; choose from "
                             f"{', '.join(module.SETTINGS)}")
        return getattr(module, builder)(**kwargs)
    if spec.startswith(_ODAM):
        from odam.architectures import build_detector

        try:
            return build_detector(spec[len(_ODAM):], **kwargs)
        except TypeError as err:  # an unexpected keyword argument
            raise ValueError(f"{spec} rejects its keywords: {err}") from err
    if spec in BUNDLED:
        if kwargs:
            raise ValueError(f"model keywords {sorted(kwargs)} cannot be combined with bundled model {spec}")
        return load_checkpoint(bundled_path(spec))[0]
    if zoo.family(spec):
        return zoo.load_model(spec, weights=weights, **kwargs)
    if spec and Path(spec).exists():
        if kwargs:
            raise ValueError(f"model keywords {sorted(kwargs)} cannot be combined with checkpoint {spec}")
        return load_checkpoint(spec)[0]
    raise ValueError(
        f"unknown model {spec!r}: expected one of {', '.join(BUNDLED + tuple(PRETRAINED))}, '{_PREFIX}<builder>' with "
        "builder one of "
        f"{', '.join(BUILDERS)}, '{_ODAM}<arch>', the path of an odam checkpoint directory, or {zoo.FORMS}"
    )


def _build(builder: str, weights: str, kwargs: dict[str, Any]) -> nn.Module:
    if builder not in BUILDERS:
        raise ValueError(f"unknown torchvision builder {builder!r}; choose from {', '.join(BUILDERS)}")
    reserved = sorted({"weights", "weights_backbone"} & set(kwargs))
    if reserved:
        raise ValueError(f"pass weights= as 'default' or 'none', not as {', '.join(reserved)}")
    # torchvision hands unknown keywords on to the image transform, which ignores them: catch typos here.
    accepted = _keywords(builder) - {"weights", "weights_backbone"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"{_PREFIX}{builder} has no option {', '.join(map(repr, unknown))}; "
                         f"it accepts {', '.join(sorted(accepted))}")
    if weights == "none":
        kwargs = {**kwargs, "weights": None, "weights_backbone": None}
    else:
        kwargs = {**kwargs, "weights": "DEFAULT"}
    try:
        model = getattr(detection, builder)(**kwargs)
    except TypeError as err:  # an unexpected keyword argument
        raise ValueError(f"{_PREFIX}{builder} rejects its keywords: {err}") from err
    return model.eval()


def _keywords(builder: str) -> set[str]:
    """Keyword names that the builder, the model class it returns, or the image transform use."""
    families = (detection.FCOS, detection.RetinaNet, detection.FasterRCNN, detection.MaskRCNN)
    family = {"fcos": detection.FCOS, "retinanet": detection.RetinaNet, "fasterrcnn": detection.FasterRCNN,
              "maskrcnn": detection.MaskRCNN}[builder.split("_")[0]]
    functions = [getattr(detection, builder), GeneralizedRCNNTransform.__init__]
    functions += [c.__init__ for c in family.__mro__ if c in families]  # MaskRCNN passes on to FasterRCNN
    names: set[str] = set()
    for f in functions:
        names |= {p.name for p in inspect.signature(f).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - {"self", "backbone", "progress"}


def save_checkpoint(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    spec: str,
    kwargs: dict[str, Any] | None = None,
    categories: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as an odam checkpoint: ``directory/model.safetensors`` and ``directory/config.json``.

    Both files are written to temporary names first and then moved into place.

    Args:
        model: a detector built by ``create_model(spec, **kwargs)`` (possibly trained since).
        directory: created if missing; existing checkpoint files in it are replaced.
        spec: ``"torchvision:<builder>"`` or ``"odam:<arch>"``, how to rebuild the architecture.
        kwargs: builder keywords (JSON-serialisable) needed to rebuild it, e.g. ``{"num_classes": 3}``.
        categories: class names indexed by label, or ``None``.
        extra: more JSON-serialisable entries for ``config.json`` (``preprocessing``, ``training``,
            ``metrics``); they cannot replace the entries above.

    Returns:
        The directory.

    Example:
        >>> import tempfile
        >>> model = create_model("torchvision:fcos_resnet50_fpn", weights="none", num_classes=3)
        >>> out = save_checkpoint(model, tempfile.mkdtemp(), spec="torchvision:fcos_resnet50_fpn",
        ...                       kwargs={"num_classes": 3}, categories=["a", "b", "c"])
        >>> sorted(p.name for p in out.iterdir())
        ['config.json', 'model.safetensors']
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected an nn.Module, got {type(model).__name__}")
    if not _valid_spec(spec):
        raise ValueError(f"spec must be '{_PREFIX}<builder>' with builder one of {', '.join(BUILDERS)}, "
                         f"or '{_ODAM}<arch>' with arch one of {', '.join(_architectures())}, got {spec!r}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"kwargs must be a dict with string keys, got {kwargs!r}")
    if categories is not None and (
        not isinstance(categories, (list, tuple)) or not all(isinstance(c, str) for c in categories)
    ):
        raise ValueError(f"categories must be a list of strings or None, got {categories!r}")
    config = {"format": _FORMAT, "version": _VERSION, "spec": spec, "kwargs": kwargs,
              "categories": None if categories is None else list(categories)}
    extra = {} if extra is None else extra
    clash = sorted(set(extra) & set(config))
    if clash:
        raise ValueError(f"extra entries {clash} would replace the checkpoint's own")
    config.update(extra)
    try:
        text = json.dumps(config, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"kwargs must be JSON-serialisable: {err}") from err
    # Own copies in contiguous memory: safetensors refuses shared or strided storage.
    tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
               for k, v in model.state_dict().items()}
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / _TENSORS) as tmp:
        safetensors.torch.save_file(tensors, tmp)
    atomic_write(out / _CONFIG, text + "\n")
    return out


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Load an odam checkpoint written by :func:`save_checkpoint`, without unpickling anything.

    Batch-norm layers whose checkpoint entries lack ``num_batches_tracked`` (a model built with pretrained
    weights uses torchvision's ``FrozenBatchNorm2d``) are frozen the same way before loading.

    Args:
        path: the checkpoint directory or its ``config.json``.

    Returns:
        ``(model, config)``: the model in eval mode on the CPU, and the parsed ``config.json``.

    Raises:
        ValueError: ``not a valid odam checkpoint <path>: <reason>`` (one line) for a missing file, invalid
            JSON, a wrong format or version, an unknown spec, a model keyword of the wrong type or outside its
            bounds (:data:`KWARG_BOUNDS`; the reason names ``config.json`` and ``kwargs.<name>``), or tensors that
            do not match the architecture. Nothing is built before the config is checked.

    Example:
        >>> import tempfile
        >>> model = create_model("torchvision:fcos_resnet50_fpn", weights="none", num_classes=3)
        >>> out = save_checkpoint(model, tempfile.mkdtemp(), spec="torchvision:fcos_resnet50_fpn",
        ...                       kwargs={"num_classes": 3})
        >>> loaded, config = load_checkpoint(out)
        >>> type(loaded).__name__, config["kwargs"]
        ('FCOS', {'num_classes': 3})
    """
    try:
        return _load(Path(path))
    except _Invalid as err:
        raise ValueError(f"not a valid odam checkpoint {path}: {err}") from err


class _Invalid(Exception):
    pass


def _load(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    directory = path.parent if path.name == _CONFIG and not path.is_dir() else path
    if path.is_file() and path.name != _CONFIG:
        raise _Invalid(f"a file; expected a checkpoint directory (with {_CONFIG} and {_TENSORS}) or its {_CONFIG}")
    if not directory.is_dir():
        raise _Invalid("no such directory")
    config_path, tensors_path = directory / _CONFIG, directory / _TENSORS
    for p in (config_path, tensors_path):
        if not p.is_file():
            raise _Invalid(f"missing {p.name}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _Invalid(f"cannot read {_CONFIG}: {_one_line(err)}") from err
    except RecursionError as err:
        raise _Invalid(f"cannot read {_CONFIG}: JSON nested too deeply to parse") from err
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise _Invalid(f"{_CONFIG} has format {_shown(found)}, expected {_FORMAT!r}")
    if config.get("version") != _VERSION or isinstance(config.get("version"), bool):
        raise _Invalid(f"unsupported version {_shown(config.get('version'))}, expected {_VERSION}")
    spec, kwargs = config.get("spec"), config.get("kwargs", {})
    if not isinstance(spec, str) or not spec.startswith((_PREFIX, _ODAM)):
        raise _Invalid(f"spec must be '{_PREFIX}<builder>' or '{_ODAM}<arch>', got {_shown(spec)}")
    if not isinstance(kwargs, dict):
        raise _Invalid(f"kwargs must be an object, got {_shown(kwargs)}")
    for key, value in kwargs.items():
        problem = _kwarg_problem(key, value)
        if problem:
            raise _Invalid(f"{_CONFIG}: kwargs.{key} {problem}, got {_shown(value)}")
    categories = config.get("categories")
    if categories is not None and not (
        isinstance(categories, list) and all(isinstance(c, str) for c in categories)
    ):
        raise _Invalid(f"categories must be a list of strings or null, got {_shown(categories)}")
    try:
        model = create_model(spec, weights="none", **kwargs)
    except (TypeError, ValueError) as err:  # TypeError: a value of the right JSON type that the builder refuses
        raise _Invalid(f"{_CONFIG}: {_one_line(err)}") from err
    try:
        state = safetensors.torch.load_file(tensors_path, device="cpu")
    except (OSError, SafetensorError) as err:
        raise _Invalid(f"cannot read {_TENSORS}: {_one_line(err)}") from err
    _freeze_batchnorm_like(model, state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{label} tensors {_some(keys)}" for label, keys in (("missing", missing),
                                                                       ("unexpected", unexpected)) if keys]
        raise _Invalid(f"{'; '.join(parts)} for {spec}")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise _Invalid(f"tensor shapes differ from {spec} with {kwargs}: {_some(wrong)}")
    model.load_state_dict(state, strict=True)
    return model.eval(), config


#: Bounds of the numeric model keywords a checkpoint's ``kwargs`` may carry: ``(kind, low, high)``, where kind is
#: ``"int"``, ``"ints"`` (an integer or a non-empty list of them), ``"float"`` or ``"floats3"`` (3 numbers). They
#: are checked before anything is built, so a hand-edited config cannot make ``load_checkpoint`` allocate
#: terabytes (``num_classes: 1e9``) or run with a NaN threshold.
_COUNT = ("int", 1, 1_000_000)
_FRACTION = ("float", 0.0, 1.0)
KWARG_BOUNDS: dict[str, tuple[str, float, float]] = {
    "num_classes": ("int", 1, 10_000),
    "min_size": ("ints", 1, 8192),
    "max_size": ("int", 1, 8192),
    "fixed_size": ("ints", 1, 8192),
    "size_divisible": ("int", 1, 1024),
    "fpn_channels": ("int", 1, 1024),
    "head_convs": ("int", 0, 8),
    "embedding_dim": ("int", 0, 4096),
    "trainable_backbone_layers": ("int", 0, 5),
    "center_sampling_radius": ("float", 0.0, 100.0),
    "image_mean": ("floats3", -1e3, 1e3),
    "image_std": ("floats3", 1e-6, 1e3),
    **{name: _COUNT for name in (
        "detections_per_img", "box_detections_per_img", "topk_candidates", "rpn_pre_nms_top_n_train",
        "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test",
        "rpn_batch_size_per_image", "box_batch_size_per_image")},
    **{name: _FRACTION for name in (
        "score_thresh", "nms_thresh", "fg_iou_thresh", "bg_iou_thresh", "box_score_thresh", "box_nms_thresh",
        "box_fg_iou_thresh", "box_bg_iou_thresh", "box_positive_fraction", "rpn_nms_thresh", "rpn_score_thresh",
        "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_positive_fraction")},
}


def _kwarg_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the model keyword ``key`` of a checkpoint config, or ``None`` if it can be.

    Keywords in :data:`KWARG_BOUNDS` must be numbers of their kind within their bounds (``fixed_size`` and
    ``bbox_reg_weights`` may also be null); any other keyword must be null, a boolean, a string or a finite
    number (a module such as ``anchor_generator`` cannot come from JSON), and ``create_model`` checks its name.
    """
    if key == "bbox_reg_weights":
        ok = value is None or (isinstance(value, list) and len(value) == 4
                               and all(_real(v) and 0 < v <= 1e6 for v in value))
        return None if ok else "must be null or 4 positive numbers"
    if key not in KWARG_BOUNDS:
        if value is None or isinstance(value, (bool, str)) or (_real(value) and -1e308 < value < 1e308):
            return None
        return "must be null, a boolean, a string or a finite number"
    kind, low, high = KWARG_BOUNDS[key]
    if kind == "int":
        ok = _whole(value) and low <= value <= high
        return None if ok else f"must be an integer in {low}..{high}"
    if kind == "ints":
        values = value if isinstance(value, list) and value else [value]
        ok = (key == "fixed_size" and value is None) or all(_whole(v) and low <= v <= high for v in values)
        return None if ok else f"must be an integer in {low}..{high} or a non-empty list of them"
    if kind == "float":
        ok = _real(value) and low <= value <= high  # False for NaN
        return None if ok else f"must be a number in [{low:g}, {high:g}]"
    ok = isinstance(value, list) and len(value) == 3 and all(_real(v) and low <= v <= high for v in value)
    return None if ok else f"must be 3 numbers in [{low:g}, {high:g}]"


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` on one line, shortened to ``limit`` characters."""
    try:
        text = " ".join(repr(value).split())
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _freeze_batchnorm_like(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Swap each ``BatchNorm2d`` with no ``num_batches_tracked`` in ``state`` for ``FrozenBatchNorm2d``."""
    for name, module in list(model.named_modules()):
        if type(module) is not nn.BatchNorm2d:
            continue
        prefix = f"{name}." if name else ""
        if f"{prefix}running_mean" in state and f"{prefix}num_batches_tracked" not in state:
            frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
            if name:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, frozen)


def configure(
    model: nn.Module,
    *,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    nms_threshold: float | None = None,
) -> nn.Module:
    """Set a detector's score threshold, detection cap, resize limits and NMS IoU threshold in place.

    One-stage detectors (FCOS, RetinaNet, RetinaFace) keep these in ``model.score_thresh`` and
    ``model.detections_per_img``; two-stage ones (Faster/Mask R-CNN) in ``model.roi_heads``. Sizes go to
    ``model.transform`` (``min_size`` becomes ``(min_size,)``), or for RetinaFace to ``model.max_size`` (it has no
    ``min_size``). ``None`` leaves a setting as it is.

    Args:
        model: a torchvision FCOS, RetinaNet, Faster R-CNN or Mask R-CNN, or a RetinaFace.
        score_threshold: keep detections scoring above this, in [0, 1].
        max_detections: at most this many detections per image, >= 1.
        min_size: resize so the shorter image side is this many pixels, >= 1.
        max_size: ... unless the longer side would exceed this, >= 1.
        nms_threshold: the IoU above which the final (per-class) NMS removes the lower-scored box, in [0, 1].

    Returns:
        ``model``.

    Raises:
        ValueError: for values outside those ranges.
        TypeError: for a model without those settings.

    Example:
        >>> model = create_model("torchvision:fasterrcnn_resnet50_fpn", weights="none", num_classes=3)
        >>> model = configure(model, score_threshold=0.2, max_detections=5, min_size=96, max_size=128)
        >>> model.roi_heads.score_thresh, model.roi_heads.detections_per_img, model.transform.min_size
        (0.2, 5, (96,))
    """
    if hasattr(model, "roi_heads") and hasattr(model.roi_heads, "score_thresh"):
        holder = model.roi_heads
    elif hasattr(model, "score_thresh") and hasattr(model, "detections_per_img"):
        holder = model
    else:
        holder = None
    own = getattr(model, "set_size_limits", None)  # a model with size rules of its own (odam's RetinaFace)
    if holder is None or not (hasattr(model, "transform") or callable(own)):
        raise TypeError(f"cannot configure {type(model).__name__}; expected a torchvision FCOS, RetinaNet, "
                        "Faster R-CNN or Mask R-CNN, or odam's RetinaFace")
    for name, value in (("score_threshold", score_threshold), ("nms_threshold", nms_threshold)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0.0 <= value <= 1.0
        ):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    for name, value in (("max_detections", max_detections), ("min_size", min_size), ("max_size", max_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if min_size is not None and max_size is not None and max_size < min_size:
        raise ValueError(f"max_size must be >= min_size, got max_size={max_size} and min_size={min_size}")
    if callable(own):
        own(min_size, max_size)  # checks its own rules before anything is set
    else:
        if min_size is not None:
            model.transform.min_size = (min_size,)
        if max_size is not None:
            model.transform.max_size = max_size
    if score_threshold is not None:
        holder.score_thresh = float(score_threshold)
    if max_detections is not None:
        holder.detections_per_img = max_detections
    if nms_threshold is not None:
        holder.nms_thresh = float(nms_threshold)
    return model


def wrap_detector(model: nn.Module | DetectorAdapter, categories: tuple[str, ...] | None = None,
                  nms: str | Suppression | None = None) -> DetectorAdapter:
    """Wrap a detector in its adapter (:func:`odam.detectors.wrap_detector`), with ``detect(image) -> Detections``
    (docs/ADAPTERS.md), and with ``nms`` replace its NMS.

    Supports torchvision's FCOS, RetinaNet, Faster R-CNN and Mask R-CNN (``_v2`` variants included), odam's
    RetinaFace (``odam.load_detector("retinaface")``), Hugging Face's ``DetrForObjectDetection`` and Ultralytics'
    YOLOv8 and YOLO11 detection models (the ``YOLO`` object or its ``DetectionModel``). An adapter passed in is
    returned as it is. ``categories`` names the classes, indexed by label (as torchvision's weights'
    ``meta["categories"]``, with ``"__background__"`` at 0); ``None`` keeps the family's own names where it has
    them. ``nms`` replaces the model's own NMS: a name from :data:`odam.nms.METHODS` (``"odam"`` for Odam-NMS) or
    an :class:`odam.nms.Suppression`; the result is an :class:`odam.nms.Suppressed`, which wraps the adapter
    (a ``Suppressed`` passed in has its suppression replaced).

    Raises:
        TypeError: for any other model, naming what is supported.

    Example:
        >>> import torchvision, odam
        >>> model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
        >>> type(odam.wrap_detector(model)).__name__, odam.wrap_detector(model, nms="odam")
        ('OneStageAdapter', Suppressed(OneStageAdapter, 'odam-nms'))
    """
    from odam.detectors import wrap_detector as adapt
    from odam.nms import Suppressed

    adapter = adapt(model, categories)
    return adapter if nms is None else Suppressed(adapter, nms)


def load_detector(name_or_path: str | os.PathLike, *, weights: str = "default", nms: str | Suppression | None = None,
                  **kwargs: Any) -> DetectorAdapter:
    """Build or load a detector and wrap it in its adapter, ready for :class:`odam.ODAM`.

    Args:
        name_or_path: a bundled name from :data:`BUNDLED` (``"synthcrowd-fcos"``, offline), a real pretrained
            detector from :data:`PRETRAINED` (``"retinaface"``, offline, behind its extra), the path of an odam
            checkpoint, or a spec that :func:`create_model` accepts (``"torchvision:<builder>"``,
            ``"odam:<arch>"``, a YOLO ``.pt``/``.yaml``/name such as ``"yolov8n.pt"``, ``"yolo11n.yaml"`` or
            ``"yolo:<file-or-name>"``, a DETR directory or hub name such as ``"facebook/detr-resnet-50"`` or
            ``"detr:<dir-or-hub-name>"``).
        weights: for ``torchvision:`` specs, YOLO ``.pt`` files and DETR, as in :func:`create_model`.
        nms: replace the model's own NMS: ``"nms"``, ``"soft-nms"``, ``"feature-nms"`` or ``"odam-nms"``
            (``"odam"``), or an :class:`odam.nms.Suppression` with settings; ``None`` keeps the model's.
        **kwargs: builder keywords for specs; not allowed with bundled models or checkpoints.

    Returns:
        The adapter; its ``categories`` are the checkpoint's class names (``None`` for a bare torchvision or odam
        spec), the model's ``names`` for YOLO and its ``id2label`` for DETR.

    Raises:
        ValueError: one line for an unknown name, an invalid checkpoint or a refused file.
        ImportError: naming the extra to install, for a family whose library is missing.

    Example:
        >>> detector = load_detector("synthcrowd-fcos")
        >>> type(detector.model).__name__, detector.categories
        ('FCOS', ('__background__', 'person'))
        >>> load_detector("synthcrowd-fcos-odamtrain", nms="odam").nms.method
        'odam-nms'
    """
    spec = os.fspath(name_or_path)
    if spec in BUNDLED or (spec not in PRETRAINED and not spec.startswith((_PREFIX, _ODAM)) and not zoo.family(spec)
                           and Path(spec).exists()):
        if kwargs:
            raise ValueError(f"model keywords {sorted(kwargs)} cannot be combined with {spec}")
        model, config = load_checkpoint(bundled_path(spec) if spec in BUNDLED else spec)
        return wrap_detector(model, config.get("categories"), nms)
    return wrap_detector(create_model(spec, weights=weights, **kwargs), nms=nms)


def bundled_path(name: str) -> Path:
    """The checkpoint directory of a bundled detector, inside the installed package.

    Example:
        >>> bundled_path("synthcrowd-fcos").name
        'synthcrowd-fcos'
    """
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; choose from {', '.join(BUNDLED)}")
    return Path(__file__).parent / "weights" / name


def _architectures() -> tuple[str, ...]:
    from odam.architectures import ARCHITECTURES

    return ARCHITECTURES


def _valid_spec(spec: Any) -> bool:
    if not isinstance(spec, str):
        return False
    if spec.startswith(_PREFIX):
        return spec[len(_PREFIX):] in BUILDERS
    return spec.startswith(_ODAM) and spec[len(_ODAM):] in _architectures()


def _some(items: list[str], limit: int = 3) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
