"""The model factory, safetensors checkpoints and ``configure``; all offline (random weights)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn
from torchvision.models import detection
from torchvision.ops.misc import FrozenBatchNorm2d

import odam
from odam.models import BUILDERS, configure, create_model, load_checkpoint, save_checkpoint

SPEC = "torchvision:fcos_resnet50_fpn"
KWARGS = {"num_classes": 3, "min_size": 64, "max_size": 80, "score_thresh": 0.0, "detections_per_img": 3}


def _seeded(spec: str = SPEC, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(spec, weights="none", **(kwargs or KWARGS))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return _seeded()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(3, 48, 60, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def checkpoint(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt"), spec=SPEC, kwargs=KWARGS,
                           categories=["cat", "dog", "bird"])


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def _assert_same_detections(a: nn.Module, b: nn.Module, image: torch.Tensor) -> None:
    da, db = odam.wrap_detector(a).detect(image), odam.wrap_detector(b).detect(image)
    assert len(da) == 3
    torch.testing.assert_close(db.boxes, da.boxes)
    torch.testing.assert_close(db.scores, da.scores)
    assert torch.equal(db.labels, da.labels)


def _one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for f in fragments:
        assert f in message
    return message


# --- create_model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", BUILDERS)
def test_create_model_every_builder_offline(builder: str) -> None:
    m = create_model(f"torchvision:{builder}", weights="none", num_classes=2)
    reference = getattr(detection, builder)(weights=None, weights_backbone=None, num_classes=2)
    assert type(m) is type(reference)
    assert not any(mod.training for mod in m.modules())


def test_create_model_is_seeded_and_passes_kwargs(model: nn.Module) -> None:
    again = _seeded()
    _assert_same_state(model, again)
    assert again.score_thresh == 0.0 and again.detections_per_img == 3
    assert again.transform.min_size == (64,) and again.transform.max_size == 80
    assert again.head.classification_head.num_classes == 3


@pytest.mark.parametrize("spec", ["yolo", "", "torchvision:", "no/such/checkpoint", "resnet50"])
def test_create_model_unknown_spec_lists_forms(spec: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        create_model(spec, weights="none")
    msg = _one_line_error(excinfo)
    assert "fcos_resnet50_fpn" in msg and "maskrcnn_resnet50_fpn_v2" in msg
    if not spec.startswith("torchvision:"):
        assert "checkpoint" in msg


def test_create_model_unknown_builder() -> None:
    with pytest.raises(ValueError) as excinfo:
        create_model("torchvision:resnet50", weights="none")
    _one_line_error(excinfo, "unknown torchvision builder 'resnet50'", "retinanet_resnet50_fpn")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"weights": "pretrained"}, "weights must be one of default, none"),
        ({"weights": "none", "weights_backbone": None}, "not as weights_backbone"),
        ({"weights": "none", "no_such_option": 1}, "has no option 'no_such_option'; it accepts "),
        ({"weights": "none", "box_score_thresh": 0.1}, "has no option 'box_score_thresh'"),
    ],
)
def test_create_model_bad_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        create_model(SPEC, **kwargs)
    _one_line_error(excinfo, fragment)


def test_create_model_not_a_string() -> None:
    with pytest.raises(ValueError, match="expected model spec as a string, got int"):
        create_model(3)  # type: ignore[arg-type]


def test_create_model_from_checkpoint(model: nn.Module, checkpoint: Path) -> None:
    _assert_same_state(create_model(str(checkpoint)), model)
    with pytest.raises(ValueError, match="cannot be combined with checkpoint"):
        create_model(str(checkpoint), num_classes=3)


# --- checkpoints ----------------------------------------------------------------------------------


def test_checkpoint_files_and_config(checkpoint: Path, model: nn.Module) -> None:
    assert sorted(p.name for p in checkpoint.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((checkpoint / "config.json").read_text())
    assert config == {"format": "odam-checkpoint", "version": 1, "spec": SPEC, "kwargs": KWARGS,
                      "categories": ["cat", "dog", "bird"]}
    tensors = safetensors.torch.load_file(checkpoint / "model.safetensors")
    assert set(tensors) == set(model.state_dict())


def test_checkpoint_round_trip(model: nn.Module, checkpoint: Path, image: torch.Tensor,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("checkpoints must never be unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    for path in (checkpoint, checkpoint / "config.json", str(checkpoint)):
        loaded, config = load_checkpoint(path)
        assert config["categories"] == ["cat", "dog", "bird"]
        assert not loaded.training
        _assert_same_state(loaded, model)
    _assert_same_detections(model, loaded, image)


def _freeze_all_batchnorm(model: nn.Module) -> nn.Module:
    """What torchvision builds when pretrained weights are used: FrozenBatchNorm2d in the backbone."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
            for buf in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, buf).copy_(getattr(module, buf).detach())
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, frozen)
    return model


def test_checkpoint_round_trip_frozen_batchnorm(tmp_path: Path, image: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = create_model(SPEC, weights="none", **KWARGS)
    with torch.no_grad():  # non-trivial statistics, so a wrong normalisation would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model = _freeze_all_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    loaded, _ = load_checkpoint(save_checkpoint(model, tmp_path, spec=SPEC, kwargs=KWARGS))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    _assert_same_state(loaded, model)
    _assert_same_detections(model, loaded, image)


def test_two_stage_checkpoint_round_trip(tmp_path: Path) -> None:
    spec = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
    kwargs = {"num_classes": 4, "min_size": 96, "max_size": 128, "box_score_thresh": 0.0,
              "box_detections_per_img": 3, "rpn_score_thresh": 0.0}
    model = _seeded(spec, **kwargs)
    loaded, config = load_checkpoint(save_checkpoint(model, tmp_path, spec=spec, kwargs=kwargs))
    assert config["categories"] is None
    _assert_same_state(loaded, model)
    _assert_same_detections(model, loaded, torch.rand(3, 80, 100, generator=torch.Generator().manual_seed(0)))


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("breakage", "fragment"),
    [
        ("missing_dir", "no such directory"),
        ("missing_config", "missing config.json"),
        ("missing_tensors_file", "missing model.safetensors"),
        ("bad_json", "cannot read config.json"),
        ("not_an_object", "has format 'list'"),
        ("wrong_format", "has format 'something-else', expected 'odam-checkpoint'"),
        ("wrong_version", "unsupported version 2"),
        ("unknown_spec", "unknown torchvision builder 'yolo'"),
        ("checkpoint_spec", "spec must be 'torchvision:<builder>'"),
        ("bad_kwargs", "has no option 'bogus'"),
        ("bad_categories", "categories must be a list of strings"),
        ("missing_tensors", "missing tensors head.classification_head.cls_logits.bias"),
        ("extra_tensors", "unexpected tensors extra.weight"),
        ("wrong_shapes", "tensor shapes differ"),
        ("corrupt_tensors", "cannot read model.safetensors"),
    ],
)
def test_invalid_checkpoint(breakage: str, fragment: str, checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    if breakage != "missing_dir":
        _copy_checkpoint(checkpoint, path)
    tensors = path / "model.safetensors"
    if breakage == "missing_config":
        (path / "config.json").unlink()
    elif breakage == "missing_tensors_file":
        tensors.unlink()
    elif breakage == "bad_json":
        (path / "config.json").write_text("{not json")
    elif breakage == "not_an_object":
        (path / "config.json").write_text("[1, 2]")
    elif breakage == "wrong_format":
        _edit_config(path, format="something-else")
    elif breakage == "wrong_version":
        _edit_config(path, version=2)
    elif breakage == "unknown_spec":
        _edit_config(path, spec="torchvision:yolo")
    elif breakage == "checkpoint_spec":
        _edit_config(path, spec=str(checkpoint))
    elif breakage == "bad_kwargs":
        _edit_config(path, kwargs={"bogus": 1})
    elif breakage == "bad_categories":
        _edit_config(path, categories=[1, 2])
    elif breakage in ("missing_tensors", "extra_tensors"):
        state = safetensors.torch.load_file(tensors)
        if breakage == "missing_tensors":
            del state["head.classification_head.cls_logits.bias"]
        else:
            state["extra.weight"] = torch.zeros(2)
        safetensors.torch.save_file(state, tensors)
    elif breakage == "wrong_shapes":
        _edit_config(path, kwargs={**KWARGS, "num_classes": 5})
    elif breakage == "corrupt_tensors":
        tensors.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError) as excinfo:
        load_checkpoint(path)
    _one_line_error(excinfo, f"not a valid odam checkpoint {path}: ", fragment)


def test_save_checkpoint_validates(model: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="spec must be 'torchvision:<builder>'"):
        save_checkpoint(model, tmp_path, spec="fcos")
    with pytest.raises(ValueError, match="kwargs must be JSON-serialisable"):
        save_checkpoint(model, tmp_path, spec=SPEC, kwargs={"norm_layer": nn.BatchNorm2d})
    with pytest.raises(ValueError, match="categories must be a list of strings"):
        save_checkpoint(model, tmp_path, spec=SPEC, categories=[1, 2])
    with pytest.raises(ValueError, match="expected an nn.Module"):
        save_checkpoint({}, tmp_path, spec=SPEC)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_save_checkpoint_leaves_no_temporary_files(model: nn.Module, tmp_path: Path) -> None:
    out = save_checkpoint(model, tmp_path / "a" / "b", spec=SPEC, kwargs=KWARGS)
    save_checkpoint(model, out, spec=SPEC, kwargs=KWARGS)  # overwrite in place
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


# --- configure ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_stage() -> nn.Module:
    torch.manual_seed(0)
    return create_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", weights="none", num_classes=3,
                        rpn_score_thresh=0.0)


def test_configure_one_stage(image: torch.Tensor) -> None:
    m = _seeded()
    assert configure(m, score_threshold=0.0, max_detections=2, min_size=40, max_size=50) is m
    settings = (m.score_thresh, m.detections_per_img, m.transform.min_size, m.transform.max_size)
    assert settings == (0.0, 2, (40,), 50)
    assert len(odam.wrap_detector(m).detect(image)) == 2
    configure(m, score_threshold=1.0)
    assert len(odam.wrap_detector(m).detect(image)) == 0
    assert (m.detections_per_img, m.transform.min_size, m.transform.max_size) == (2, (40,), 50)  # kept


def test_configure_two_stage(two_stage: nn.Module, image: torch.Tensor) -> None:
    rh = two_stage.roi_heads
    configure(two_stage, score_threshold=0.0, max_detections=2, min_size=96, max_size=128)
    assert (rh.score_thresh, rh.detections_per_img) == (0.0, 2)
    assert (two_stage.transform.min_size, two_stage.transform.max_size) == ((96,), 128)
    assert not hasattr(two_stage, "score_thresh")
    assert len(odam.wrap_detector(two_stage).detect(image)) == 2
    configure(two_stage, max_detections=1)
    assert rh.score_thresh == 0.0 and len(odam.wrap_detector(two_stage).detect(image)) == 1
    configure(two_stage, max_detections=100, nms_threshold=0.0)  # keep no box that overlaps a better one
    dets = odam.wrap_detector(two_stage).detect(image)
    same_class = dets.labels[:, None] == dets.labels[None, :]
    iou = torchvision.ops.box_iou(dets.boxes, dets.boxes).fill_diagonal_(0) * same_class
    assert rh.nms_thresh == 0.0 and len(dets) > 1 and float(iou.max()) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"score_threshold": 1.5}, "score_threshold must be a number in [0, 1], got 1.5"),
        ({"score_threshold": -0.1}, "score_threshold must be a number in [0, 1]"),
        ({"score_threshold": float("nan")}, "score_threshold must be a number in [0, 1]"),
        ({"score_threshold": "0.5"}, "score_threshold must be a number in [0, 1]"),
        ({"max_detections": 0}, "max_detections must be an integer >= 1, got 0"),
        ({"max_detections": 2.0}, "max_detections must be an integer >= 1, got 2.0"),
        ({"max_detections": True}, "max_detections must be an integer >= 1, got True"),
        ({"min_size": -1}, "min_size must be an integer >= 1"),
        ({"max_size": 0}, "max_size must be an integer >= 1"),
        ({"min_size": 100, "max_size": 50}, "max_size must be >= min_size"),
        ({"nms_threshold": 1.01}, "nms_threshold must be a number in [0, 1], got 1.01"),
    ],
)
def test_configure_rejects_bad_values(two_stage: nn.Module, kwargs: dict, fragment: str) -> None:
    before = (two_stage.roi_heads.score_thresh, two_stage.roi_heads.detections_per_img,
              two_stage.transform.min_size, two_stage.transform.max_size)
    with pytest.raises(ValueError) as excinfo:
        configure(two_stage, **kwargs)
    _one_line_error(excinfo, fragment)
    after = (two_stage.roi_heads.score_thresh, two_stage.roi_heads.detections_per_img,
             two_stage.transform.min_size, two_stage.transform.max_size)
    assert after == before


def test_configure_rejects_other_models() -> None:
    with pytest.raises(TypeError, match="cannot configure Linear"):
        configure(nn.Linear(2, 2), score_threshold=0.5)


def test_public_api_exports() -> None:
    assert odam.create_model is create_model
    assert odam.save_checkpoint is save_checkpoint
    assert odam.load_checkpoint is load_checkpoint
    assert {"create_model", "save_checkpoint", "load_checkpoint"} <= set(odam.__all__)
