"""YOLO and DETR specs for ``create_model`` / ``load_detector`` (:mod:`odam.zoo`): offline, random weights, nothing
unpickled and nothing downloaded."""

from __future__ import annotations

import copy
import json
import os
import pickle
import socket
import warnings
from pathlib import Path

import pytest
import torch
from tests.cases.detr import tiny_detr
from tests.cases.detr import wrap as wrap_detr
from tests.cases.yolo import IMGSZ, spread
from tests.cases.yolo import image as yolo_image
from tests.cases.yolo import wrap as wrap_yolo
from torch import nn

import odam
from odam import zoo
from odam.detectors.detr import DetrAdapter
from odam.detectors.ultralytics_env import from_yaml, import_ultralytics
from odam.detectors.yolo import YoloAdapter
from odam.models import create_model, load_detector, save_checkpoint


def _one_line(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for f in fragments:
        assert f in message, message
    return message


def _same_architecture(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert [tuple(v.shape) for v in sa.values()] == [tuple(v.shape) for v in sb.values()]


def _same_state(a: nn.Module, b: nn.Module) -> None:
    _same_architecture(a, b)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every socket connection and name lookup is refused and recorded (the test asserts the record is empty)."""
    attempts: list[str] = []

    def refuse(name: str):
        def call(*args, **kwargs):
            attempts.append(name)
            raise OSError(f"test: network blocked ({name})")
        return call

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse(f"socket.{name}"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    return attempts


@pytest.fixture
def no_ultralytics_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ultralytics' download functions fail and are recorded; ``attempt_download_asset`` only where it would
    download (``torch_safe_load`` passes every file through it, and it returns an existing one as it is)."""
    import_ultralytics()
    from ultralytics.utils import downloads

    calls: list[str] = []
    for name in ("attempt_download_asset", "safe_download", "get_github_assets"):
        real = getattr(downloads, name)

        def fail(*args, _name=name, _real=real, **kwargs):
            if _name == "attempt_download_asset" and Path(args[0]).is_file():
                return _real(*args, **kwargs)
            calls.append(_name)
            raise AssertionError(f"odam called Ultralytics' {_name}")
        monkeypatch.setattr(downloads, name, fail)
    return calls


# --- which spec is whose ------------------------------------------------------------------------------------------


def test_family(tmp_path: Path) -> None:
    odam_dir = save_checkpoint(nn.Linear(1, 1), tmp_path / "odam", spec="odam:fcos")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "detr"}))
    cases = {"yolov8n.pt": "yolo", "runs/w/best.PT": "yolo", "yolo11n.yaml": "yolo", "my.yml": "yolo",
             "yolov8n": "yolo", "yolo11n": "yolo", "yolo:best": "yolo", "detr:x": "detr",
             "facebook/detr-resnet-50": "detr", str(hf_dir): "detr", str(hf_dir / "config.json"): "detr",
             str(odam_dir): None, str(odam_dir / "config.json"): None, "yolo": None, "": None, "resnet50": None,
             "no/such/checkpoint": None, "synthcrowd-fcos": None, str(tmp_path): None}
    assert {spec: zoo.family(spec) for spec in cases} == cases


def test_a_mistyped_path_is_not_a_hub_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``runs/fcos-odamtrain`` where ``runs`` is a local folder is a checkpoint path with a typo, not a DETR on the
    hub: it is an unknown model, and nothing is fetched."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert zoo.family("runs/fcos-odamtran") is None and zoo.family("facebook/detr-resnet-50") == "detr"
    with pytest.raises(ValueError, match="unknown model 'runs/fcos-odamtran'"):
        odam.load_detector("runs/fcos-odamtran")


def test_unknown_model_lists_the_new_forms() -> None:
    with pytest.raises(ValueError) as excinfo:
        create_model("resnet50")
    _one_line(excinfo, "unknown model 'resnet50'", "fcos_resnet50_fpn", "odam checkpoint", "'yolov8n.pt'",
              "'yolo11n.yaml'", "'yolo:<file-or-name>'", "'facebook/detr-resnet-50'", "'detr:<dir-or-hub-name>'")


# --- YOLO -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["yolov8n.yaml", "yolo11n.yaml", "yolo:yolo11n.yaml"])
def test_yaml_builds_a_wrapped_detection_model(spec: str, no_network: list[str]) -> None:
    detector = load_detector(spec)
    assert isinstance(detector, YoloAdapter)
    assert type(detector.model).__name__ == "DetectionModel" and not detector.model.training
    assert detector.categories == tuple(str(i) for i in range(80))  # the YAML's names
    reference = from_yaml(spec.removeprefix("yolo:"))
    _same_architecture(detector.model, reference)
    assert no_network == []


def test_yaml_path_and_class_count(tmp_path: Path) -> None:
    import_ultralytics()
    from ultralytics.utils import ROOT

    path = tmp_path / "yolov8n.yaml"  # the scale letter in the name picks the size, as for packaged names
    path.write_text((ROOT / "cfg" / "models" / "v8" / "yolov8.yaml").read_text())
    model = create_model(str(path), nc=2)
    _same_architecture(model, from_yaml("yolov8n.yaml", nc=2))
    assert model.names == {0: "0", 1: "1"}
    with pytest.raises(ValueError) as excinfo:
        create_model("yolov8n.yaml", num_classes=2)
    _one_line(excinfo, "has no option 'num_classes'; a YOLO model accepts nc")
    with pytest.raises(ValueError) as excinfo:
        create_model("yolov8n.yaml", nc=0)
    _one_line(excinfo, "nc must be an integer in 1..10000, got 0")
    with pytest.raises(ValueError) as excinfo:
        create_model("no-such-model.yaml")
    _one_line(excinfo, "cannot build no-such-model.yaml: ", "does not exist")


@pytest.mark.parametrize("spec", ["yolov8n.pt", "yolov8n", "yolo:yolov8n", "yolo:yolov8n.pt"])
@pytest.mark.parametrize("on_disk", [False, True])
def test_pt_without_weights_is_the_yaml_architecture_and_opens_nothing(
        spec: str, on_disk: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str],
        no_ultralytics_download: list[str]) -> None:
    from ultralytics.nn import tasks

    def refuse(*args, **kwargs):
        raise AssertionError("weights='none' must not open the .pt")

    monkeypatch.chdir(tmp_path)
    if on_disk:  # a file that any attempt to read would fail on
        (tmp_path / "yolov8n.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(tasks, "torch_safe_load", refuse)
    model = create_model(spec, weights="none")
    assert type(model).__name__ == "DetectionModel" and not model.training
    _same_architecture(model, from_yaml("yolov8n.yaml"))
    assert no_network == [] and no_ultralytics_download == []


@pytest.fixture(scope="module")
def yolo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, nn.Module]:
    """Two files laid out as Ultralytics' trainer saves them: half-precision ``model`` and ``ema`` (used) and
    ``train_args``; and a bare ``{"model": ...}`` in float32. Returns both paths and the float32 model."""
    torch.manual_seed(0)
    model = spread(from_yaml("yolo11n.yaml", nc=3))
    model.names = {0: "cat", 1: "dog", 2: "cow"}
    other = from_yaml("yolo11n.yaml", nc=3)  # different random weights, under "model"
    directory = tmp_path_factory.mktemp("yolo")
    trained, bare = directory / "best.pt", directory / "bare.pt"
    torch.save({"date": "2025-01-01", "version": "8.4.190", "epoch": -1, "best_fitness": None,
                "model": copy.deepcopy(other).half(), "ema": copy.deepcopy(model).half(), "updates": 1,
                "optimizer": None, "train_args": {"imgsz": IMGSZ, "task": "detect"}, "train_metrics": {}},
               trained)
    torch.save({"model": model}, bare)
    return trained, bare, model


def test_pt_loads_through_the_restricted_loader(yolo_checkpoint: tuple[Path, Path, nn.Module],
                                                monkeypatch: pytest.MonkeyPatch, no_network: list[str],
                                                no_ultralytics_download: list[str]) -> None:
    trained, bare, model = yolo_checkpoint
    loads: list[object] = []
    real_load = torch.load

    def load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    from_bare = create_model(str(bare))
    _same_state(from_bare, model)
    from_ema = load_detector(f"yolo:{trained}")
    expected = copy.deepcopy(model).half().float()  # the trainer's half-precision EMA
    _same_state(from_ema.model, expected)
    assert isinstance(from_ema, YoloAdapter) and not from_ema.model.training
    assert from_ema.categories == ("cat", "dog", "cow")
    assert loads == [True, True]  # torch.load(weights_only=True), once per file
    image = yolo_image()
    got, want = wrap_yolo(from_bare).detect(image), wrap_yolo(model).detect(image)
    assert len(want) > 0
    torch.testing.assert_close(got.boxes, want.boxes, rtol=0, atol=0)
    torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=0)
    assert no_network == [] and no_ultralytics_download == []
    with pytest.raises(ValueError) as excinfo:
        create_model(str(bare), nc=2)
    _one_line(excinfo, "nc=2 cannot be combined with the weights of")


@pytest.mark.parametrize("spec", ["yolov8n.pt", "yolov8n", "yolo:missing.pt", "{tmp}/sub/best.pt"])
def test_missing_pt_fails_in_one_line_without_downloading(spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          no_network: list[str],
                                                          no_ultralytics_download: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as excinfo:
        load_detector(spec.format(tmp=tmp_path))
    _one_line(excinfo, "no such file ", "odam downloads nothing", "weights='none'")
    assert no_network == [] and no_ultralytics_download == []


@pytest.mark.parametrize("spec", ["yolo:https://example.com/yolov8n.pt", "yolo:model.onnx", "yolo:"])
def test_other_yolo_sources_are_refused(spec: str, no_network: list[str]) -> None:
    with pytest.raises(ValueError) as excinfo:
        create_model(spec)
    _one_line(excinfo)
    assert no_network == []


class _Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _Custom(nn.Module):
    """A module class outside Ultralytics' allow-list."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)


@pytest.mark.parametrize("layout", ["torch.save", "pickle", "custom class"])
def test_malicious_or_foreign_pickle_is_refused(layout: str, tmp_path: Path, no_network: list[str],
                                                no_ultralytics_download: list[str]) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    if layout == "torch.save":
        torch.save({"model": _Payload(marker), "train_args": {}}, path)
    elif layout == "pickle":
        path.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    else:
        torch.save({"model": _Custom()}, path)
    with pytest.raises(ValueError) as excinfo, warnings.catch_warnings():
        # torch warns that its weights_only unpickler expects pickle protocol 2 (a plain pickle has 4)
        warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
        load_detector(str(path))
    _one_line(excinfo, "odam does not unpickle files", "restricted loader refused", "ultralytics.YOLO(",
              "weights='none'")
    assert not marker.exists()
    assert no_network == [] and no_ultralytics_download == []


def test_the_payload_is_live(tmp_path: Path) -> None:
    """The refusal above means something: plain unpickling runs the payload."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_yaml_detector_explains() -> None:
    torch.manual_seed(0)
    detector = odam.load_detector("yolov8n.yaml")
    explanation = odam.ODAM(detector).explain(torch.rand(3, 64, 96))
    assert explanation.maps.shape[-2:] == (64, 96) and explanation.maps.shape[0] == len(explanation.detections)


# --- DETR -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detr() -> nn.Module:
    """The tiny DETR with class names (shared: tests must not modify it)."""
    model = tiny_detr()
    model.config.id2label = {0: "cat", 1: "dog", 2: "cow"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    return model


@pytest.fixture(scope="module")
def detr_dir(detr: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("detr")
    detr.save_pretrained(directory)
    return directory


def test_detr_directory_gives_the_same_detections(detr: nn.Module, detr_dir: Path,
                                                  no_network: list[str]) -> None:
    model = detr
    image = torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(1))
    want = wrap_detr(model).detect(image)
    assert len(want) > 0
    for spec in (str(detr_dir), str(detr_dir / "config.json"), f"detr:{detr_dir}"):
        detector = load_detector(spec)
        assert isinstance(detector, DetrAdapter) and not detector.model.training
        assert detector.categories == ("cat", "dog", "cow")
        _same_state(detector.model, model)
        got = wrap_detr(detector.model).detect(image)
        torch.testing.assert_close(got.boxes, want.boxes, rtol=0, atol=0)
        torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=0)
        assert torch.equal(got.labels, want.labels)
    assert no_network == []


def test_detr_without_weights_is_the_same_architecture(detr: nn.Module, detr_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("weights='none' must not read weights")

    monkeypatch.setattr(torch, "load", refuse)
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    torch.manual_seed(1)
    random = create_model(str(detr_dir), weights="none")
    _same_architecture(random, detr)
    assert not torch.equal(random.class_labels_classifier.weight, detr.class_labels_classifier.weight)
    assert odam.wrap_detector(random).categories == ("cat", "dog", "cow")


def test_detr_pickled_weights_are_refused(detr: nn.Module, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    detr.config.save_pretrained(tmp_path)
    torch.save(detr.state_dict(), tmp_path / "pytorch_model.bin")

    def refuse(*args, **kwargs):
        raise AssertionError("pytorch_model.bin must not be unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ValueError) as excinfo:
        load_detector(str(tmp_path))
    _one_line(excinfo, "holds DETR weights only as pytorch_model.bin, a pickle", "odam does not unpickle files")
    _same_architecture(create_model(str(tmp_path), weights="none"), detr)  # the config alone is fine
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(ValueError) as excinfo:
        load_detector(str(tmp_path))
    _one_line(excinfo, "has a DETR config.json but no model.safetensors")


def test_other_hugging_face_models_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError) as excinfo:
        create_model(str(tmp_path))
    _one_line(excinfo, "is not a DETR checkpoint: its config.json has model_type 'bert', expected 'detr'")
    with pytest.raises(ValueError) as excinfo:
        create_model(str(tmp_path), num_classes=2)
    _one_line(excinfo, "cannot be combined with DETR checkpoint")


def test_odam_checkpoint_still_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec, kwargs = "torchvision:fcos_resnet50_fpn", {"num_classes": 3, "min_size": 64, "max_size": 80}
    model = create_model(spec, weights="none", **kwargs)
    directory = save_checkpoint(model, tmp_path, spec=spec, kwargs=kwargs, categories=["a", "b", "c"])
    for path in (directory, directory / "config.json"):
        detector = load_detector(path)
        assert detector.categories == ("a", "b", "c")
        _same_state(detector.model, model)
    (directory / "config.json").write_text("{not json")  # odam's loader still reports a broken checkpoint
    with pytest.raises(ValueError) as excinfo:
        load_detector(directory)
    _one_line(excinfo, "not a valid odam checkpoint", "cannot read config.json")


@pytest.mark.parametrize("spec", ["odam-tests/no-such-detr", "detr:odam-tests/no-such-detr"])
@pytest.mark.parametrize("weights", ["default", "none"])
def test_uncached_hub_name_fails_in_one_line(spec: str, weights: str, monkeypatch: pytest.MonkeyPatch,
                                             no_network: list[str]) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    with pytest.raises(ValueError) as excinfo:
        load_detector(spec, weights=weights)
    _one_line(excinfo, "cannot load DETR 'odam-tests/no-such-detr'", "odam downloads nothing itself")
    assert no_network == []
