"""The ``odam`` command, run in-process through ``main([...])`` on small random-weight models."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import odam
import odam.metrics
from odam.cli import main, map_stats
from odam.models import configure, create_model, save_checkpoint
from odam.viz import read_explorer

SPEC = "torchvision:fcos_resnet50_fpn"
#: What the CLI is told; :func:`_reference` builds the same model in-process.
FAST = ["--weights", "none", "--score-threshold", "0", "--max-detections", "2", "--min-size", "96",
        "--max-size", "128", "--device", "cpu"]


def _reference() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(SPEC, weights="none")
    return configure(model, score_threshold=0.0, max_detections=2, min_size=96, max_size=128)


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    torch.manual_seed(0)  # the CLI builds its random model with the global generator
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("odam: error: ")
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    good = root / "tiny.png"
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(good)
    other = root / "sub" / "tiny.png"  # the same stem in another folder
    other.parent.mkdir()
    Image.fromarray(rng.integers(0, 256, (60, 72, 3), dtype=np.uint8)).save(other)
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:100])  # a truncated PNG
    text = root / "notes.jpg"
    text.write_text("not an image")
    return {"good": good, "other": other, "corrupt": corrupt, "text": text, "missing": root / "missing.png"}


@pytest.fixture(scope="module")
def run_good(images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, str, Path]:
    """One successful run with --save-maps and two targets, shared by the tests that inspect its output."""
    out = tmp_path_factory.mktemp("out")
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        stdout, stderr = io.StringIO(), io.StringIO()
        mp.setattr(sys, "stdout", stdout)
        mp.setattr(sys, "stderr", stderr)
        code = main(["explain", str(images["good"]), "--model", SPEC, "--out", str(out), "--targets",
                     "score,right", "--save-maps", *FAST])
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_explain_writes_panels_and_json(run_good: tuple, images: dict[str, Path]) -> None:
    code, stdout, stderr, out = run_good
    assert code == 0, stderr
    assert "odam: error" not in stderr
    assert str(out / "explanations.json") in stdout
    report = json.loads((out / "explanations.json").read_text())
    assert set(report) == {"model", "targets", "methods", "images", "errors"}
    assert report["model"] == SPEC and report["targets"] == ["score", "right"] and report["errors"] == []
    assert report["methods"] == ["odam"]
    assert "explaining 2 detections (score > 0) with odam" in stdout  # said before the work starts
    [entry] = report["images"]
    assert entry["image"] == str(images["good"])
    assert (entry["width"], entry["height"]) == (80, 64)
    assert len(entry["detections"]) == 2
    for k, det in enumerate(entry["detections"]):
        assert set(det) == {"box", "score", "label", "level", "index", "panel", "panels", "maps", "methods"}
        assert det["panel"] == f"tiny_det{k}.png" and det["panels"] == {"odam": det["panel"]}
        assert det["methods"] == {"odam": det["maps"]}
        with Image.open(out / det["panel"]) as panel:
            assert panel.format == "PNG" and panel.width > panel.height > 0
        assert set(det["maps"]) == {"score", "right"}
        for stats in det["maps"].values():
            x, y = stats["peak"]
            assert 0 <= x < 80 and 0 <= y < 64
            assert 0.0 <= stats["energy_in_box"] <= 1.0
            assert stats["max"] >= 0.0
    assert entry["overview"] == "tiny_overview.png"
    assert sorted(p.name for p in out.iterdir()) == ["explanations.json", "index.html", "tiny_det0.png",
                                                     "tiny_det1.png", "tiny_maps.npz",
                                                     "tiny_overview.png"]  # no temporary files left


def test_explain_detections_match_the_library(run_good: tuple, images: dict[str, Path]) -> None:
    report = json.loads((run_good[3] / "explanations.json").read_text())
    dets = odam.wrap_detector(_reference()).detect(images["good"])
    got = report["images"][0]["detections"]
    assert len(got) == len(dets) == 2
    torch.testing.assert_close(torch.tensor([d["box"] for d in got]), dets.boxes)
    torch.testing.assert_close(torch.tensor([d["score"] for d in got]), dets.scores)
    assert [d["label"] for d in got] == dets.labels.tolist()
    assert [d["level"] for d in got] == dets.levels.tolist()
    assert [d["index"] for d in got] == dets.indices.tolist()


def test_save_maps_npz_matches_json(run_good: tuple) -> None:
    out = run_good[3]
    report = json.loads((out / "explanations.json").read_text())
    dets = report["images"][0]["detections"]
    with np.load(out / "tiny_maps.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["boxes", "labels", "maps", "scores", "targets"]
        maps, targets = npz["maps"], npz["targets"].tolist()
        assert maps.dtype == np.float32 and maps.shape == (2, 2, 64, 80)
        assert targets == ["score", "right"]
        np.testing.assert_allclose(npz["boxes"], [d["box"] for d in dets], rtol=1e-6)
        np.testing.assert_allclose(npz["scores"], [d["score"] for d in dets], rtol=1e-6)
        assert npz["labels"].tolist() == [d["label"] for d in dets]
    for k, det in enumerate(dets):
        limits = (80, 64, 80, 64)
        x1, y1, x2, y2 = (min(max(round(v), 0), lim) for v, lim in zip(det["box"], limits, strict=True))
        for j, target in enumerate(targets):
            m = maps[k, j].astype(np.float64)
            stats = det["maps"][target]
            assert stats["max"] == pytest.approx(float(m.max()))
            assert m[stats["peak"][1], stats["peak"][0]] == m.max()
            expected = m[y1:y2, x1:x2].sum() / m.sum() if m.sum() > 0 else 0.0
            assert stats["energy_in_box"] == pytest.approx(expected)
    assert any(det["maps"]["score"]["max"] > 0 for det in dets)  # the maps are not all empty


def test_map_stats_by_hand() -> None:
    m = torch.zeros(4, 6)
    m[1, 2], m[3, 5] = 3.0, 1.0
    expected = {"peak": [2, 1], "max": 3.0, "energy_in_box": 0.75}
    assert map_stats(m, torch.tensor([1.6, 0.4, 3.2, 2.0])) == expected
    assert map_stats(m, torch.tensor([-10.0, -10.0, 100.0, 100.0]))["energy_in_box"] == 1.0  # clipped
    assert map_stats(m, torch.tensor([0.0, 0.0, 0.0, 0.0]))["energy_in_box"] == 0.0  # empty box
    assert map_stats(torch.zeros(3, 3), torch.tensor([0.0, 0.0, 3.0, 3.0]))["energy_in_box"] == 0.0
    # The share is the library's metric on the box rounded to whole pixels, not a second definition.
    heat, box = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)), torch.tensor([1.4, 0.6, 5.5, 3.2])
    expected = odam.metrics.energy_pointing_game(heat, torch.tensor([1.0, 1.0, 6.0, 3.0])).share
    assert map_stats(heat, box)["energy_in_box"] == expected


def test_explain_from_checkpoint(images: dict[str, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = create_model(SPEC, weights="none", num_classes=3)
    ckpt = save_checkpoint(model, tmp_path / "ckpt", spec=SPEC, kwargs={"num_classes": 3},
                           categories=["cat", "dog", "bird"])
    out = tmp_path / "out"
    code, stdout, stderr = _run(["explain", str(images["good"]), str(images["other"]), "--model", str(ckpt),
                                 "--out", str(out), "--targets", "score", *FAST[2:]], capsys)
    assert code == 0, stderr
    report = json.loads((out / "explanations.json").read_text())
    assert report["model"] == str(ckpt)
    first, second = report["images"]
    # Two images named tiny.png: their panels must not overwrite each other.
    assert [d["panel"] for d in first["detections"]] == ["tiny_det0.png", "tiny_det1.png"]
    assert [d["panel"] for d in second["detections"]] == ["tiny_2_det0.png", "tiny_2_det1.png"]
    assert (second["width"], second["height"]) == (72, 60)
    configure(model, score_threshold=0.0, max_detections=2, min_size=96, max_size=128)
    dets = odam.wrap_detector(model).detect(images["good"])
    torch.testing.assert_close(torch.tensor([d["box"] for d in first["detections"]]), dets.boxes)
    assert all(0 <= d["label"] < 3 for d in first["detections"])


@pytest.mark.parametrize(
    ("case", "argv_tail", "fragments"),
    [
        ("missing file", ["{missing}", "--model", SPEC], ["image not found", "missing.png"]),
        ("corrupt image", ["{corrupt}", "--model", SPEC], ["cannot read image", "corrupt.png"]),
        ("not an image", ["{text}", "--model", SPEC], ["cannot read image", "notes.jpg"]),
        ("unknown model", ["{good}", "--model", "no-such-model"],
         ["unknown model 'no-such-model'", "synthcrowd-fcos", "fcos_resnet50_fpn"]),
        ("unknown builder", ["{good}", "--model", "torchvision:yolo"],
         ["unknown torchvision builder 'yolo'"]),
        ("checkpoint dir", ["{good}", "--model", "{root}"],
         ["not a valid odam checkpoint", "missing config.json"]),
        ("bad target", ["{good}", "--model", SPEC, "--targets", "score,width"], ["unknown target 'width'"]),
        ("repeated target", ["{good}", "--model", SPEC, "--targets", "score,score"], ["repeated target 'score'"]),
        ("zero detections", ["{good}", "--model", SPEC, "--max-detections", "0"], ["max_detections must be"]),
        ("non-int detections", ["{good}", "--model", SPEC, "--max-detections", "two"],
         ["--max-detections", "invalid int value: 'two'"]),
        ("score above 1", ["{good}", "--model", SPEC, "--score-threshold", "1.5"],
         ["score_threshold must be"]),
        ("bad layer", ["{good}", "--model", SPEC, "--layer", "backbone.nope"], ["--layer 'backbone.nope'"]),
        ("roi on one-stage", ["{good}", "--model", SPEC, "--layer", "roi"], ["--layer 'roi'", "no module named 'roi'"]),
        ("layer with one map per stage", ["{good}", "{other}", "--model", SPEC, "--layer", "backbone.body"],
         ["returns maps", "pick a module"]),
        ("image file as model", ["{good}", "--model", "{good}"], ["not a valid odam checkpoint", "a file;"]),
        ("bad device", ["{good}", "--model", SPEC, "--device", "toaster"], ["invalid --device 'toaster'"]),
        ("bad weights", ["{good}", "--model", SPEC, "--weights", "imagenet"],
         ["--weights", "invalid choice"]),
        ("no images", ["--model", SPEC], ["the following arguments are required: IMAGE"]),
    ],
)
def test_explain_errors_are_one_line(case: str, argv_tail: list[str], fragments: list[str],
                                     images: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    paths = {k: str(v) for k, v in images.items()} | {"root": str(images["good"].parent)}
    argv = ["explain", *(a.format(**paths) for a in argv_tail), "--out", str(tmp_path / "out")]
    fast = [FAST[i:i + 2] for i in range(0, len(FAST), 2)]
    argv += [x for opt in fast if opt[0] not in argv for x in opt]
    code, stdout, stderr = _run(argv, capsys)
    assert code == 2
    _assert_one_error_line(stderr, *fragments)


def test_bad_image_is_reported_and_skipped(images: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = _run(["explain", str(images["corrupt"]), str(images["good"]), "--model", SPEC,
                                 "--out", str(out), "--targets", "score", *FAST], capsys)
    assert code == 2
    _assert_one_error_line(stderr, "corrupt.png")
    report = json.loads((out / "explanations.json").read_text())
    assert [e["image"] for e in report["errors"]] == [str(images["corrupt"])]
    assert "cannot read image" in report["errors"][0]["error"]
    assert [i["image"] for i in report["images"]] == [str(images["good"])]
    assert sorted(p.name for p in out.iterdir()) == ["explanations.json", "index.html", "tiny_det0.png",
                                                     "tiny_det1.png", "tiny_overview.png"]


def test_debug_reraises(images: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        main(["explain", str(images["good"]), "--model", "no-such-model", "--out", str(tmp_path), "--debug"])
    with pytest.raises(ValueError, match="cannot read image"):
        main(["explain", str(images["corrupt"]), "--model", SPEC, "--out", str(tmp_path), "--debug", *FAST])


@pytest.mark.parametrize("argv", [
    ["explain", "a.png", "--out", "o"], ["demo", "--out", "o"],
    ["train", "--model", "fcos", "--data", "d", "--out", "o"],
    ["evaluate", "detector", "--model", "synthcrowd-fcos", "--data", "d"],
    ["evaluate", "explanations", "--data", ".", "--out", "o"],
    ["evaluate", "correlation", "--data", ".", "--model", "m", "--out", "o"],
    ["evaluate", "nms", "--data", ".", "--model", "m", "--out", "o"],
    ["data", "synthcrowd", "--out", "o", "--num-images", "1", "--seed", "0"], ["data", "stats", "d"],
])
def test_ctrl_c_is_one_line_and_exit_130(argv: list[str], capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command, interrupted once it has started (a real Ctrl-C during explain: test_resume)."""
    import odam.cli.common
    import odam.data
    import odam.data.synthcrowd

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    for module, name in ((odam.cli.common, "device"), (odam.data.synthcrowd, "generate"),
                         (odam.data, "read_dataset")):
        monkeypatch.setattr(module, name, interrupted)
    assert main(argv) == 130
    out, err = capsys.readouterr()
    assert err == "odam: interrupted\n" and out == ""
    with pytest.raises(KeyboardInterrupt):  # --debug shows the traceback, as for errors
        main([*argv, "--debug"])


def test_usage_errors_and_help(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    _assert_one_error_line(capsys.readouterr().err, "the following arguments are required")
    assert main(["frobnicate"]) == 2
    _assert_one_error_line(capsys.readouterr().err, "invalid choice: 'frobnicate'")
    assert main(["explain", "--help"]) == 0
    help_text = capsys.readouterr().out
    for flag in ("--model", "--out", "--targets", "--score-threshold", "--max-detections", "--device",
                 "--weights", "--layer", "--min-size", "--max-size", "--save-maps", "--debug"):
        assert flag in help_text
    for command, flags in ((["train"], ("--backbone", "--resume", "--epochs", "--val", "5%")),
                           (["data", "synthcrowd"], ("--num-images", "--style")),
                           (["data", "stats"], ("--write",)),
                           (["evaluate", "detector"], ("--nms", "--oracle", "--errors"))):
        assert main([*command, "--help"]) == 0
        help_text = capsys.readouterr().out
        assert all(flag in help_text for flag in flags)


def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    code, stdout, stderr = _run(["demo", "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0, stderr
    assert "synthcrowd-fcos" in stdout and str(out) in stdout
    report = json.loads((out / "explanations.json").read_text())
    assert report["model"] == "synthcrowd-fcos" and report["targets"] == list(odam.TARGETS)
    assert report["errors"] == []
    [entry] = report["images"]
    assert Path(entry["image"]).name == "synthcrowd-scene.png"
    assert (entry["width"], entry["height"]) == (320, 320)
    assert len(entry["detections"]) >= 10  # the scene has 18 people that are not ignored
    assert report["methods"] == ["odam", "gradcam"] and entry["nms"]["method"] == "odam-nms"
    [page] = read_explorer((out / "index.html").read_text())  # the explorer: both methods, and Odam-NMS's record
    assert page["methods"] == ["odam", "gradcam"] and page["nms"]["method"] == "odam-nms"
    torch.testing.assert_close(torch.tensor([d["box"] for d in page["detections"]]),
                               torch.tensor([d["box"] for d in entry["detections"]]), rtol=0, atol=1e-4)
    assert len(page["nms"]["candidates"]) == entry["nms"]["candidates"] > len(entry["detections"])
    assert (out / entry["overview"]).is_file()
    for det in entry["detections"]:
        assert det["score"] >= 0.5 and det["label"] == 1
        assert (out / det["panel"]).is_file() and (out / det["panels"]["gradcam"]).is_file()
        assert set(det["maps"]) == set(odam.TARGETS)


def test_explain_without_model_uses_the_bundled_fcos(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from odam.cli import DEMO_SCENE

    code, _, stderr = _run(["explain", str(DEMO_SCENE), "--out", str(tmp_path), "--targets", "score",
                            "--max-detections", "2", "--device", "cpu"], capsys)
    assert code == 0, stderr
    report = json.loads((tmp_path / "explanations.json").read_text())
    assert report["model"] == "synthcrowd-fcos"
    assert len(report["images"][0]["detections"]) == 2


def test_python_dash_m(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "odam", "--version"], capture_output=True, text=True,
                            cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"odam {odam.__version__}"


def test_explain_uses_the_nms_it_is_given(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from odam.cli import DEMO_SCENE

    code, _, stderr = _run(["explain", str(DEMO_SCENE), "--out", str(tmp_path), "--targets", "score",
                            "--max-detections", "3", "--nms", "soft-nms", "--device", "cpu"], capsys)
    assert code == 0, stderr
    scores = [d["score"] for d in json.loads((tmp_path / "explanations.json").read_text())["images"][0]["detections"]]
    expected = []
    for nms in ("soft-nms", None):
        detector = odam.load_detector("synthcrowd-fcos", nms=nms)
        detector.model.detections_per_img = 3
        expected.append(detector.detect(DEMO_SCENE).scores.tolist())
    assert scores == pytest.approx(expected[0], abs=1e-6)
    assert scores != pytest.approx(expected[1], abs=1e-3)  # Soft-NMS decays the scores of overlapping boxes


def test_explain_max_pixels_refuses_or_downscales(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An image over --max-pixels is one error line and skipped; with --downscale it is shrunk to fit and explained
    at the shrunk size, which explanations.json records."""
    from odam.cli import DEMO_SCENE

    with Image.open(DEMO_SCENE) as scene:
        w, h = scene.size
    limit = w * h // 4
    base = ["explain", str(DEMO_SCENE), "--targets", "score", "--max-detections", "1", "--device", "cpu",
            "--max-pixels", str(limit)]
    code, _, stderr = _run([*base, "--out", str(tmp_path / "a")], capsys)
    assert code == 2
    _assert_one_error_line(stderr, f"is {w}x{h}", "limit", "downscale")
    assert json.loads((tmp_path / "a" / "explanations.json").read_text())["errors"]
    code, _, stderr = _run([*base, "--downscale", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, stderr
    [entry] = json.loads((tmp_path / "b" / "explanations.json").read_text())["images"]
    assert entry["width"] * entry["height"] <= limit and entry["width"] < w
    assert abs(entry["width"] / entry["height"] - w / h) < 0.02
    code, _, stderr = _run([*base[:-1], "-5", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "--max-pixels" in stderr and "positive" in stderr


def test_methods_explain_the_same_detections(images: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """--methods: the first finds the detections, every method explains them; the maps in the explorer and the
    npz are each library explainer's maps of those detections (D-RISE: the score only)."""
    out = tmp_path / "out"
    code, stdout, stderr = _run(["explain", str(images["good"]), "--model", SPEC, "--out", str(out), "--targets",
                                 "score,left", "--methods", "odam,gradcam,gradcam++,drise", "--drise-masks", "8",
                                 "--save-maps", *FAST], capsys)
    assert code == 0, stderr
    assert "with odam, gradcam, gradcam++, drise" in stdout
    [entry] = json.loads((out / "explanations.json").read_text())["images"]
    det = entry["detections"][0]
    assert det["panels"] == {"odam": "tiny_det0.png", "gradcam": "tiny_det0_gradcam.png",
                             "gradcam++": "tiny_det0_gradcampp.png", "drise": "tiny_det0_drise.png"}
    assert set(det["methods"]["drise"]) == {"score"} and set(det["methods"]["gradcam"]) == {"score", "left"}
    detector = odam.wrap_detector(_reference())
    dets = detector.detect(images["good"])
    expected = {"gradcam": odam.GradCAM(detector).explain(images["good"], ("score", "left"), detections=dets),
                "drise": odam.DRISE(detector, num_masks=8, progress=False).explain(images["good"], detections=dets)}
    [page] = read_explorer((out / "index.html").read_text())
    assert page["methods"] == ["odam", "gradcam", "gradcam++", "drise"]
    with np.load(out / "tiny_maps.npz", allow_pickle=False) as npz:
        for method, explanation in expected.items():
            np.testing.assert_allclose(npz[f"maps_{method}"], explanation.maps.numpy(), rtol=1e-4, atol=1e-7)
            for k in range(len(dets)):
                for j, target in enumerate(explanation.targets):
                    stored = page["maps"][method][k][target]
                    assert stored["hi"] == pytest.approx(float(explanation.maps[k, j].max()), rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("flag", ["--method", "--methods"])
def test_unknown_method_is_one_line(flag: str, images: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    code, _, stderr = _run(["explain", str(images["good"]), "--model", SPEC, "--out", str(tmp_path), flag,
                            "odam,lime", *FAST], capsys)
    assert code == 2
    _assert_one_error_line(stderr, "unknown --method 'lime'", "gradcam++", "drise")


def test_default_score_threshold(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """odam's own models explain detections above 0.5 unless told otherwise (they keep 0.05 for AP, which floods a
    photo); other models keep their own threshold."""
    from odam.cli import DEMO_SCENE

    base = ["explain", str(DEMO_SCENE), "--targets", "score", "--no-panels", "--device", "cpu"]
    code, stdout, stderr = _run([*base, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, stderr
    assert "(score > 0.5)" in stdout
    scores = [d["score"] for d in json.loads((tmp_path / "a" / "explanations.json").read_text())["images"][0][
        "detections"]]
    expected = odam.load_detector("synthcrowd-fcos")
    configure(expected.model, score_threshold=0.5)
    assert scores == pytest.approx(expected.detect(DEMO_SCENE).scores.tolist(), abs=1e-6) and min(scores) > 0.5
    assert not list((tmp_path / "a").glob("*_det*.png"))  # --no-panels
    code, stdout, _ = _run([*base, "--out", str(tmp_path / "b"), "--score-threshold", "0.7"], capsys)
    assert code == 0 and "(score > 0.7)" in stdout
    code, stdout, stderr = _run(["explain", str(DEMO_SCENE), "--model", SPEC, "--weights", "none", "--targets",
                                 "score", "--no-panels", "--min-size", "64", "--max-size", "64",
                                 "--out", str(tmp_path / "c")], capsys)
    assert code == 0, stderr
    assert "(score > 0.2)" in stdout  # torchvision's FCOS default


def test_named_photos(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, stdout, stderr = _run(["explain", "photo:crowd", "photo:astronaut", "--targets", "score", "--no-panels",
                                 "--max-detections", "1", "--out", str(tmp_path), "--device", "cpu"], capsys)
    assert code == 0, stderr
    report = json.loads((tmp_path / "explanations.json").read_text())
    assert [(e["image"], e["width"], e["height"]) for e in report["images"]] == [("photo:crowd", 320, 320),
                                                                                 ("photo:astronaut", 512, 512)]
    assert sorted(p.name for p in tmp_path.glob("*_overview.png")) == ["astronaut_overview.png",
                                                                       "crowd_overview.png"]
    code, _, stderr = _run(["explain", "photo:nope", "--out", str(tmp_path / "x"), "--device", "cpu"], capsys)
    assert code == 2
    _assert_one_error_line(stderr, "unknown photo 'nope'", "astronaut", "crowd")


def test_progress_lines_when_stderr_is_not_a_terminal(images: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Off a terminal, progress is plain lines per detection batch, and per mask batch for D-RISE (here every
    batch: every=0)."""
    from functools import partial

    from odam.cli import common, outputs

    monkeypatch.setattr(outputs, "Progress", partial(common.Progress, every=0))
    monkeypatch.setattr(outputs, "DETECTION_BATCH", 1)
    code, _, stderr = _run(["explain", str(images["good"]), "--model", SPEC, "--out", str(tmp_path),
                            "--targets", "score", "--methods", "odam,gradcam,drise", "--drise-masks", "64", *FAST],
                           capsys)
    assert code == 0, stderr
    lines = [line.split(" in ")[0] for line in stderr.splitlines()]
    assert lines == [f"odam: tiny: {n}/6 batches" for n in range(1, 7)]  # 2 + 2 detections, 2 x 32 masks


def test_suppression_view_is_the_decision_record(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--nms: the explorer lists every candidate's fate as Suppressed.decisions records it, and the explained
    detections are the kept ones."""
    from odam.cli import DEMO_SCENE

    code, _, stderr = _run(["explain", str(DEMO_SCENE), "--model", "synthcrowd-fcos-odamtrain", "--nms", "odam-nms",
                            "--targets", "score", "--no-panels", "--out", str(tmp_path), "--device", "cpu"], capsys)
    assert code == 0, stderr
    detector = odam.load_detector("synthcrowd-fcos-odamtrain", nms="odam")
    configure(detector.model, score_threshold=0.5)
    record = detector.decisions(DEMO_SCENE)
    [page] = read_explorer((tmp_path / "index.html").read_text())
    shown = page["nms"]["candidates"]
    assert len(shown) == len(record) and page["nms"]["evidence"] == "correlation"
    assert [c["rule"] for c in shown] == list(record.rules)
    assert [c["suppressor"] for c in shown] == record.suppressor.tolist()
    assert sum(c["fate"] == "kept" for c in shown) == len(record.keep) == len(page["detections"])
    for c in shown:
        if c["suppressor"] >= 0:
            k = c["suppressor"]
            assert c["iou"] == pytest.approx(float(record.iou[c["index"]]), abs=1e-5)
            assert c["evidence"] == pytest.approx(float(record.evidence[c["index"]]), abs=1e-4)
            assert shown[k]["fate"] == "kept"
    torch.testing.assert_close(torch.tensor([d["box"] for d in page["detections"]]),
                               record.detections().boxes, rtol=0, atol=1e-4)


@pytest.mark.parametrize("spec", ["yolov8n.yaml", "yolo11n.pt"])
def test_yolo_specs_offline(spec: str, images: dict[str, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture) -> None:
    """An Ultralytics spec with random weights (--weights none: a .pt names its architecture; nothing is read or
    downloaded), named by the model's own class names."""
    code, stdout, stderr = _run(["explain", str(images["good"]), "--model", spec, "--weights", "none", "--out",
                                 str(tmp_path), "--targets", "score,top", "--score-threshold", "0",
                                 "--max-detections", "2", "--no-panels", "--device", "cpu"], capsys)
    assert code == 0, stderr
    assert "explaining 2 detections (score > 0)" in stdout
    [page] = read_explorer((tmp_path / "index.html").read_text())
    assert len(page["detections"]) == 2
    names = odam.load_detector(spec, weights="none").categories  # a YAML build names its classes by number
    assert [d["name"] for d in page["detections"]] == [names[d["label"]] for d in page["detections"]]
    assert any(not page["maps"]["odam"][k][t]["zero"] for k in range(2) for t in ("score", "top"))


def test_detr_directory_offline(images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A DETR saved by save_pretrained (safetensors), with its weights and with random ones."""
    from tests.cases.detr import tiny_detr

    model = tiny_detr()
    model.save_pretrained(tmp_path / "detr")
    for weights in ("default", "none"):
        out = tmp_path / weights
        code, stdout, stderr = _run(["explain", str(images["good"]), "--model", str(tmp_path / "detr"), "--weights",
                                     weights, "--out", str(out), "--targets", "score,left", "--score-threshold", "0",
                                     "--no-panels", "--device", "cpu"], capsys)
        assert code == 0, stderr
        assert "explaining 8 detections (score > 0)" in stdout  # every query of the tiny model
    expected = odam.wrap_detector(model)
    expected.score_threshold = 0.0
    [page] = read_explorer((tmp_path / "default" / "index.html").read_text())
    torch.testing.assert_close(torch.tensor([d["score"] for d in page["detections"]]),
                               expected.detect(images["good"]).scores, rtol=0, atol=1e-5)


def test_caps_through_the_adapter_or_one_line(images: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """--max-detections reaches a YOLO model under a replaced NMS (the adapter holds the cap); a DETR, whose cap is
    its number of queries, refuses it in one line."""
    code, stdout, stderr = _run(["explain", str(images["good"]), "--model", "yolov8n.yaml", "--nms", "nms",
                                 "--score-threshold", "0", "--max-detections", "2", "--targets", "score",
                                 "--no-panels", "--out", str(tmp_path / "yolo"), "--device", "cpu"], capsys)
    assert code == 0, stderr
    assert "explaining 2 detections" in stdout
    from tests.cases.detr import tiny_detr

    tiny_detr().save_pretrained(tmp_path / "detr")
    capsys.readouterr()  # transformers' progress bar while saving
    code, _, stderr = _run(["explain", str(images["good"]), "--model", str(tmp_path / "detr"), "--max-detections",
                            "2", "--out", str(tmp_path / "d"), "--device", "cpu"], capsys)
    assert code == 2
    _assert_one_error_line(stderr, "--max-detections cannot be set for DetrForObjectDetection")


def test_explain_turns_phone_photos_upright(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A JPEG stored 80 wide and 64 high, tagged EXIF orientation 6 (turn 90 degrees clockwise to view), is
    explained as the viewer shows it: 64 wide and 80 high, with boxes inside that."""
    stored = np.random.default_rng(3).integers(0, 128, (64, 80, 3), dtype=np.uint8)
    stored[:16, :16] = 255  # a white block in the stored top-left corner
    exif = Image.Exif()
    exif[274] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    code, _, stderr = _run(["explain", str(path), "--model", SPEC, "--out", str(tmp_path / "out"), "--targets",
                            "score", "--save-maps", *FAST], capsys)
    assert code == 0, stderr
    [entry] = json.loads((tmp_path / "out" / "explanations.json").read_text())["images"]
    assert (entry["width"], entry["height"]) == (64, 80)
    with np.load(tmp_path / "out" / "phone_maps.npz", allow_pickle=False) as npz:
        assert npz["maps"].shape[-2:] == (80, 64)
    upright = odam.load_image(path)
    assert upright.shape == (3, 80, 64)
    # the stored pixels turned clockwise: the stored top-left corner is now at the top right
    assert float(upright[:, 4:12, -12:-4].mean()) > 0.9 and float(upright[:, 4:12, 4:12].mean()) < 0.6
    for det in entry["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 80
