"""Detectors from other libraries' files and names: Ultralytics YOLO and Hugging Face DETR, never unpickled.

:func:`odam.create_model` and :func:`odam.load_detector` hand these specs to :func:`load_model`
(:func:`family` tells which):

* **YOLO** (``pip install 'odam[yolo]'``): a model config ``.yaml``/``.yml``, packaged with Ultralytics
  (``"yolov8n.yaml"``, ``"yolo11n.yaml"``; the scale letter picks the size) or a path, built with random weights;
  a ``.pt`` checkpoint (``"yolov8n.pt"``, ``"runs/train/weights/best.pt"``); a bare name (``"yolov8n"``,
  ``"yolo11n"``: its ``.pt``); or any of these after ``"yolo:"``. With ``weights="none"`` a ``.pt`` is never
  opened: the architecture comes from the YAML of the same stem (``yolov8n.pt`` -> ``yolov8n.yaml``), with random
  weights. With ``weights="default"`` the file must exist (odam downloads nothing) and is read by Ultralytics'
  restricted loader (``torch_safe_load(file, safe_only=True)``: ``torch.load(weights_only=True)`` against an
  allow-list of Ultralytics and torch classes), which refuses anything else.
* **DETR** (``pip install 'odam[detr]'``): a directory written by ``DetrForObjectDetection.save_pretrained``
  (``config.json`` with ``"model_type": "detr"`` and ``model.safetensors``), a Hugging Face hub name
  (``"facebook/detr-resnet-50"``: any ``owner/name`` that is not a local path), or either after ``"detr:"``. The
  weights are read from safetensors only (a ``pytorch_model.bin`` is a pickle and refused); ``weights="none"``
  builds the architecture from the config with random weights. transformers fetches hub names into its cache
  (the one download odam leaves to a library, as torchvision's pretrained weights).

A directory whose ``config.json`` has ``"format": "odam-checkpoint"`` is odam's own
(:func:`odam.load_checkpoint`), not this module's. Class names come from the models (YOLO ``names``, DETR
``id2label``) when :func:`odam.wrap_detector` wraps them.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["DETR_PREFIX", "FORMS", "YOLO_PREFIX", "family", "load_detr", "load_model", "load_yolo"]

YOLO_PREFIX = "yolo:"
DETR_PREFIX = "detr:"
#: The accepted forms, as the unknown-model message of :func:`odam.create_model` lists them.
FORMS = ("a YOLO .pt checkpoint or .yaml model config ('yolov8n.pt', 'yolo11n.yaml', a path, a bare name such as "
         f"'yolov8n', or '{YOLO_PREFIX}<file-or-name>'), a DETR directory written by save_pretrained or a Hugging "
         f"Face hub name ('facebook/detr-resnet-50', '{DETR_PREFIX}<dir-or-hub-name>')")

_YAML = (".yaml", ".yml")
_BARE_YOLO = re.compile(r"yolo(v?\d+)[a-z0-9-]*")  # yolov8n, yolo11n, yolo11n-seg; not "yolo"
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name
_ODAM_FORMAT = "odam-checkpoint"
_MAX_CLASSES = 10_000
_NO_PICKLE = "odam does not unpickle files"


def family(spec: str) -> str | None:
    """``"yolo"`` or ``"detr"`` for a spec that :func:`load_model` takes, ``None`` for any other.

    Only a directory's ``config.json`` is read (to tell a DETR checkpoint from an odam one); nothing is imported.

    Example:
        >>> family("yolov8n.pt"), family("yolo:best"), family("facebook/detr-resnet-50"), family("synthcrowd-fcos")
        ('yolo', 'yolo', 'detr', None)
    """
    if not spec:
        return None
    if spec.startswith(YOLO_PREFIX):
        return "yolo"
    if spec.startswith(DETR_PREFIX):
        return "detr"
    path = Path(spec)
    if path.suffix.lower() in (".pt", *_YAML):
        return "yolo"
    if path.is_dir() or (path.name == "config.json" and path.is_file()):
        return "detr" if _hugging_face_config(_directory(path)) else None
    if path.exists():
        return None
    if _BARE_YOLO.fullmatch(spec):
        return "yolo"
    # owner/name is a hub name, unless "owner" is a local folder: then it is a mistyped path (unknown model)
    return "detr" if _HUB_NAME.fullmatch(spec) and not path.parent.is_dir() else None


def load_model(spec: str, *, weights: str = "default", **kwargs: Any) -> nn.Module:
    """The YOLO or DETR model that ``spec`` names (see the module's docstring), in eval mode on the CPU.

    Args:
        spec: a spec for which :func:`family` is ``"yolo"`` or ``"detr"``.
        weights: ``"default"`` loads the checkpoint's weights, ``"none"`` builds random ones (a YAML config is
            always random).
        **kwargs: ``nc`` (number of classes) for a YOLO model with random weights; nothing else.

    Raises:
        ValueError: one line, for a spec of neither family, a missing or refused file, or another keyword.
        ImportError: naming the extra to install (``odam[yolo]`` or ``odam[detr]``).

    Example:
        >>> model = load_model("yolov8n.pt", weights="none", nc=2)  # built from yolov8n.yaml, no file opened
        >>> type(model).__name__, model.names, model.training
        ('DetectionModel', {0: '0', 1: '1'}, False)
    """
    if weights not in ("default", "none"):
        raise ValueError(f"weights must be one of default, none, got {weights!r}")
    kind = family(spec)
    if kind == "yolo":
        unknown = sorted(set(kwargs) - {"nc"})
        if unknown:
            raise ValueError(f"{spec} has no option {', '.join(map(repr, unknown))}; a YOLO model accepts nc")
        return load_yolo(spec.removeprefix(YOLO_PREFIX), weights=weights, nc=kwargs.get("nc"))
    if kind == "detr":
        if kwargs:
            raise ValueError(f"model keywords {sorted(kwargs)} cannot be combined with DETR checkpoint {spec}")
        return load_detr(spec.removeprefix(DETR_PREFIX), weights=weights)
    raise ValueError(f"{spec!r} is neither a YOLO nor a DETR spec; expected {FORMS}")


def load_yolo(source: str, *, weights: str = "default", nc: int | None = None) -> nn.Module:
    """An Ultralytics ``DetectionModel`` from a ``.yaml`` config, a ``.pt`` checkpoint or a bare name, without
    unpickling and without downloading.

    Args:
        source: ``"yolov8n.yaml"`` (packaged with Ultralytics) or a YAML path; ``"yolov8n.pt"`` or a ``.pt`` path;
            a bare name (``"yolo11n"``) stands for its ``.pt``.
        weights: for a ``.pt``: ``"default"`` reads the file with Ultralytics' restricted loader (it must exist;
            the loader registers the classes the file names, from its allow-list, with
            ``torch.serialization.add_safe_globals`` for the rest of the process); ``"none"`` builds
            ``<stem>.yaml`` with random weights and opens no file. A YAML is always random.
        nc: number of classes of a random build; ``None`` keeps the YAML's (80). Not allowed with a loaded ``.pt``.

    Returns:
        The model, in float32 and eval mode, on the CPU.

    Raises:
        ValueError: one line, for a URL, another suffix, an unknown YAML, a missing ``.pt``, a file that the
            restricted loader refuses (or a torch without restricted loading), or a file without a model.
        ImportError: without Ultralytics (``pip install 'odam[yolo]'``).

    Example:
        >>> model = load_yolo("yolo11n.yaml", nc=3)
        >>> type(model).__name__, model.model[-1].nc
        ('DetectionModel', 3)
    """
    if not source:
        raise ValueError(f"expected '{YOLO_PREFIX}<file-or-name>', got an empty name")
    if "://" in source:
        raise ValueError(f"{source}: odam downloads nothing; download the file and pass its path")
    suffix = Path(source).suffix.lower()
    if suffix == "":
        source, suffix = f"{source}.pt", ".pt"
    if suffix not in (".pt", *_YAML):
        raise ValueError(f"{source}: expected a YOLO .pt checkpoint or a .yaml model config, got a {suffix} file")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or not 1 <= nc <= _MAX_CLASSES):
        raise ValueError(f"nc must be an integer in 1..{_MAX_CLASSES}, got {nc!r}")
    _ultralytics(source)
    if suffix in _YAML:
        return _from_yaml(source, nc, source)
    if weights == "none":
        return _from_yaml(f"{Path(source).stem}.yaml", nc, source)
    if nc is not None:
        raise ValueError(f"nc={nc} cannot be combined with the weights of {source}; use weights='none' to build "
                         "a random model with other classes")
    return _load_pt(source)


def load_detr(source: str, *, weights: str = "default") -> nn.Module:
    """A Hugging Face ``DetrForObjectDetection`` from a ``save_pretrained`` directory (or its ``config.json``) or
    a hub name, with its weights read from safetensors only.

    Args:
        source: the directory, or a hub name such as ``"facebook/detr-resnet-50"`` (fetched by transformers into its
            cache; odam itself downloads nothing).
        weights: ``"default"``: ``DetrForObjectDetection.from_pretrained(source, use_safetensors=True)``;
            ``"none"``: the config's architecture with random weights (no pretrained backbone).

    Returns:
        The model, in eval mode, on the CPU.

    Raises:
        ValueError: one line naming ``source``: a directory that is not a DETR checkpoint, one whose weights are
            only a pickle (``pytorch_model.bin``), or a hub name transformers cannot fetch.
        ImportError: without transformers (``pip install 'odam[detr]'``).

    Example:
        >>> import tempfile
        >>> from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
        >>> backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1],
        ...                         layer_type="basic", out_features=["stage4"])
        >>> config = DetrConfig(backbone_config=backbone, d_model=16, encoder_layers=1, decoder_layers=1,
        ...                     encoder_ffn_dim=16, decoder_ffn_dim=16, encoder_attention_heads=2,
        ...                     decoder_attention_heads=2, num_queries=4, num_labels=2)
        >>> directory = tempfile.mkdtemp()
        >>> DetrForObjectDetection(config).save_pretrained(directory)
        >>> model = load_detr(directory)
        >>> type(model).__name__, model.config.id2label
        ('DetrForObjectDetection', {0: 'LABEL_0', 1: 'LABEL_1'})
    """
    try:
        from transformers import DetrConfig, DetrForObjectDetection
    except ImportError as err:
        raise ImportError(f"{source} needs transformers: pip install 'odam[detr]' ({_one_line(err)})") from err
    if not source:
        raise ValueError(f"expected '{DETR_PREFIX}<dir-or-hub-name>', got an empty name")
    path = Path(source)
    local = path.is_dir() or (path.name == "config.json" and path.is_file())
    if local:
        path = _directory(path)
        model_type = _hugging_face_config(path)
        if model_type != "detr":
            found = f"model_type {model_type!r}" if model_type else "no Hugging Face model_type"
            raise ValueError(f"{source} is not a DETR checkpoint: its config.json has {found}, expected 'detr'")
        if weights == "default":
            _check_safetensors(path)
        source = str(path)
    elif path.exists():
        raise ValueError(f"{source} is a file; expected a DETR checkpoint directory (save_pretrained) or a hub name")
    try:
        if not local:
            config, _ = DetrConfig.get_config_dict(source)
            if config.get("model_type") != "detr":
                raise ValueError(f"its config has model_type {config.get('model_type')!r}, expected 'detr'")
        if weights == "none":  # transformers 5 builds no pretrained backbone from a config; the flag insists
            model = DetrForObjectDetection(DetrConfig.from_pretrained(source, use_pretrained_backbone=False))
        else:
            with _no_progress_bars():  # transformers' "Loading weights" bar, on every load
                model = DetrForObjectDetection.from_pretrained(source, use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        where = "" if local else " (odam downloads nothing itself; transformers fetches hub names into its cache)"
        raise ValueError(f"cannot load DETR {source!r}{where}: {_one_line(err)}") from err
    return model.eval()


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Inside the block, transformers draws no progress bars; as before afterwards."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


# -- YOLO ---------------------------------------------------------------------------------------------------------


def _ultralytics(source: str) -> Any:
    from odam.detectors.ultralytics_env import import_ultralytics

    try:
        return import_ultralytics()
    except ImportError as err:
        raise ImportError(f"{source} needs Ultralytics (AGPL-3.0): pip install 'odam[yolo]' "
                          f"({_one_line(err)})") from err


def _from_yaml(cfg: str, nc: int | None, source: str) -> nn.Module:
    import yaml  # PyYAML, an Ultralytics requirement

    from odam.detectors.ultralytics_env import from_yaml

    if "://" in cfg:
        raise ValueError(f"{cfg}: odam downloads nothing; download the file and pass its path")
    try:
        return from_yaml(cfg, nc=nc)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, AssertionError,
            yaml.YAMLError) as err:
        how = "" if cfg == source else f" with weights='none' (random weights, built from {cfg})"
        raise ValueError(f"cannot build {source}{how}: {_one_line(err)}; pass a model config Ultralytics "
                         "packages ('yolov8n.yaml', 'yolo11n.yaml') or the path of one") from err


def _load_pt(source: str) -> nn.Module:
    import torch
    from ultralytics.nn import tasks
    from ultralytics.utils.checks import check_yolov5u_filename

    advice = (f"load it yourself in Python if you trust it (ultralytics.YOLO({source!r})) and pass the model to "
              "odam, or use weights='none' (--weights none) for random weights")
    file = Path(source).resolve()
    if not file.is_file():
        raise ValueError(f"no such file {source}: odam downloads nothing; give the path of a local checkpoint "
                         f"(ultralytics.YOLO({Path(source).name!r}) downloads Ultralytics' own), or use "
                         f"weights='none' (--weights none) for random weights built from {Path(source).stem}.yaml")
    safe = getattr(getattr(tasks, "_SafeLoad", None), "SUPPORTED", False)
    if not safe:
        raise ValueError(f"cannot read {source} safely: {_NO_PICKLE}, and restricted loading needs torch >= 2.6 "
                         f"and ultralytics >= 8.4.190; {advice}")
    # torch_safe_load asks attempt_download_asset for the file, which returns an existing path as it is but renames
    # some (legacy YOLOv5 names, quotes, spaces) and then searches online: only an unchanged path is handed over.
    if Path(check_yolov5u_filename(str(file).strip().replace("'", ""), verbose=False)) != file:
        raise ValueError(f"cannot read {source}: Ultralytics would look for it under another name (and online); "
                         "rename the file (no quotes, spaces or legacy YOLOv5 name)")
    try:
        checkpoint, _ = tasks.torch_safe_load(str(file), safe_only=True)
    except (OSError, EOFError, RuntimeError, TypeError, ValueError, AttributeError, ImportError, AssertionError,
            pickle.UnpicklingError) as err:
        reason = _one_line(err).removeprefix("ERROR ❌️ ")
        raise ValueError(f"{_NO_PICKLE}, and Ultralytics' restricted loader refused {source} "
                         f"({type(err).__name__}: {reason[:300]}); {advice}") from err
    model = checkpoint.get("ema") if checkpoint.get("ema") is not None else checkpoint.get("model")
    if not isinstance(model, nn.Module):
        raise ValueError(f"{source} holds no Ultralytics model under 'ema' or 'model'; {advice}")
    if checkpoint.get("modelopt"):
        raise ValueError(f"{source} is a quantization-aware (modelopt) checkpoint, which odam cannot restore; "
                         f"{advice}")
    for module in model.modules():  # what Ultralytics' load_checkpoint updates in older checkpoints
        if isinstance(module, torch.nn.Upsample) and not hasattr(module, "recompute_scale_factor"):
            module.recompute_scale_factor = None
    return model.float().eval()


# -- DETR ---------------------------------------------------------------------------------------------------------


def _directory(path: Path) -> Path:
    return path.parent if path.name == "config.json" and path.is_file() else path


def _hugging_face_config(directory: Path) -> str | None:
    """The ``model_type`` of a Hugging Face ``config.json`` in ``directory``; ``None`` when there is none, or when
    it is odam's (``"format": "odam-checkpoint"``) or cannot be read (odam's loader then says why)."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(config, dict) or config.get("format") == _ODAM_FORMAT:
        return None
    model_type = config.get("model_type")
    return model_type if isinstance(model_type, str) and model_type else None


def _check_safetensors(directory: Path) -> None:
    if (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file():
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise ValueError(f"{directory} holds DETR weights only as {pickles[0]}, a pickle: {_NO_PICKLE}; save them "
                         "as safetensors (from_pretrained then save_pretrained, if you trust the file) or use "
                         "weights='none' (--weights none) for random weights")
    raise ValueError(f"{directory} has a DETR config.json but no model.safetensors; use weights='none' "
                     "(--weights none) for random weights")


def _one_line(err: object) -> str:
    return " ".join(str(err).split())
