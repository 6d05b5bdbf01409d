"""odam.viz.explorer: the data of the explorer page, read back out of the page (the browser tests drive the page)."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

import odam
from odam.heatmaps import correlation
from odam.nms import decide
from odam.structures import TARGETS, Detections, Explanation
from odam.viz.colors import class_color
from odam.viz.explorer import MAP_TOLERANCE, explanation_html, explorer_html, explorer_image, read_explorer

XSS = "<img src=x onerror=alert(1)>"
CLASS_NAMES = ["__background__", "person", XSS]
SCENE = Path(odam.__file__).parent / "assets" / "synthcrowd-scene.png"

# People of the bundled 320x320 crowd scene, by hand, then two duplicates; (box, score, label).
CANDIDATES = [
    ((10, 140, 100, 320), 0.95, 1),  # 0 front left
    ((55, 140, 150, 320), 0.88, 1),  # 1 front centre, overlaps 0 (IoU 0.32): both kept
    ((185, 75, 250, 250), 0.91, 1),  # 2 blue shirt
    ((95, 80, 145, 200), 0.72, 1),  # 3 yellow stripes
    ((255, 45, 295, 140), 0.64, 2),  # 4 the other class (its name is XSS)
    ((160, 130, 205, 285), 0.55, 1),  # 5 kept by Odam-NMS, then capped (max_detections=5)
    ((14, 144, 104, 318), 0.80, 1),  # 6 duplicate of 0
    ((188, 80, 252, 255), 0.60, 1),  # 7 duplicate of 2
]


def blobs(height: int, width: int, centres: list[tuple[float, float]], sigmas: list[float]) -> torch.Tensor:
    """``Tensor[len(centres), height, width]``: a Gaussian of peak 1 at each centre (x, y)."""
    yy = torch.arange(height, dtype=torch.float32)[:, None]
    xx = torch.arange(width, dtype=torch.float32)[None]
    return torch.stack([torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
                        for (cx, cy), s in zip(centres, sigmas, strict=True)])


def odam_like(boxes: torch.Tensor, height: int, width: int, targets: tuple[str, ...] = TARGETS) -> torch.Tensor:
    """ODAM-like local maps ``Tensor[N, T, H, W]``: for each box a blob at its centre (score) and at the middle of
    each edge (left, top, right, bottom), of a different peak per target and detection."""
    maps = torch.zeros(len(boxes), len(targets), height, width)
    for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        cx, cy, s = (x1 + x2) / 2, (y1 + y2) / 2, max(3.0, 0.25 * min(x2 - x1, y2 - y1))
        points = {"score": (cx, cy), "left": (x1, cy), "top": (cx, y1), "right": (x2, cy), "bottom": (cx, y2)}
        for t, name in enumerate(targets):
            maps[k, t] = blobs(height, width, [points[name]], [s])[0] * 1e-3 * (k + 1) * (1 + 0.25 * t)
    return maps


def scene() -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(SCENE).convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def crowd_case() -> dict:
    """The crowd scene with candidates, Odam-NMS's decisions on them (and a cap), and two methods' explanations of
    the kept ones: ODAM (five targets, one map all zero) and D-RISE (score only, a map above zero everywhere)."""
    boxes = torch.tensor([c[0] for c in CANDIDATES], dtype=torch.float32)
    candidates = Detections(boxes, torch.tensor([c[1] for c in CANDIDATES]), torch.tensor([c[2] for c in CANDIDATES]))
    centres = [((x1 + x2) / 2 * 50 / 320, (y1 + y2) / 2 * 50 / 320) for x1, y1, x2, y2 in boxes.tolist()]
    candidate_maps = blobs(50, 50, centres, [2.5] * len(CANDIDATES))
    decisions = decide(candidates, "odam", vectors=candidate_maps.flatten(1), max_detections=5)
    detections = decisions.detections()
    height, width = 320, 320
    maps = odam_like(detections.boxes, height, width)
    maps[4, TARGETS.index("top")] = 0.0
    broad = blobs(height, width, [((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in detections.boxes.tolist()],
                  [60.0] * len(detections))
    explanations = {"odam": Explanation(detections, TARGETS, maps),
                    "drise": Explanation(detections, ("score",), (0.05 + broad)[:, None])}
    return {"image": scene(), "explanations": explanations, "decisions": decisions, "candidate_maps": candidate_maps,
            "name": f"crowd {XSS}.png"}


def crowd_image(case: dict, **kw: object) -> dict:
    return explorer_image(case["image"], case["explanations"], name=case["name"], class_names=CLASS_NAMES,
                          decisions=case["decisions"], candidate_maps=case["candidate_maps"], **kw)


def decode(entry: dict, grid: list[int]) -> np.ndarray:
    """The 8-bit levels ``q`` of a stored map over the whole grid (``[gh, gw]`` uint8)."""
    q = np.zeros((grid[1], grid[0]), dtype=np.uint8)
    if entry["png"] is not None:
        header, payload = entry["png"].split(",", 1)
        assert header in ("data:image/png;base64", "data:image/webp;base64")
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))[..., 0]
        x0, y0, x1, y1 = entry["crop"]
        assert picture.shape == (y1 - y0, x1 - x0)
        q[y0:y1, x0:x1] = picture
    return q


def lossy(entry: dict) -> bool:
    """Whether a stored map is lossy WebP (a VP8 chunk; lossless WebP is VP8L)."""
    header, payload = entry["png"].split(",", 1)
    return header == "data:image/webp;base64" and base64.b64decode(payload)[12:16] == b"VP8 "


@pytest.fixture(scope="module")
def case() -> dict:
    return crowd_case()


@pytest.fixture(scope="module")
def page_and_data(case: dict) -> tuple[str, dict]:
    data = crowd_image(case, map_side=320)  # the grid is the image: values compare pixel by pixel
    return explorer_html([data], title="crowd", errors=[{"image": "broken.png", "error": XSS}]), data


def test_round_trip_detections(case: dict, page_and_data: tuple[str, dict]) -> None:
    page, _ = page_and_data
    (data,) = read_explorer(page)
    d = case["explanations"]["odam"].detections
    assert (data["name"], data["width"], data["height"], data["grid"]) == (case["name"], 320, 320, [320, 320])
    assert data["methods"] == ["odam", "drise"] and data["targets"] == list(TARGETS)
    assert [e["index"] for e in data["detections"]] == list(range(len(d)))
    assert torch.equal(torch.tensor([e["box"] for e in data["detections"]]), d.boxes)
    assert torch.equal(torch.tensor([e["score"] for e in data["detections"]]), d.scores)
    assert [e["label"] for e in data["detections"]] == d.labels.tolist()
    assert [e["name"] for e in data["detections"]] == [CLASS_NAMES[i] for i in d.labels.tolist()]
    assert [e["color"] for e in data["detections"]] == [class_color(i) for i in d.labels.tolist()]
    photo = Image.open(io.BytesIO(base64.b64decode(data["image"].split(",", 1)[1])))
    assert (photo.format, photo.size) == ("JPEG", (320, 320))


def test_round_trip_maps(case: dict, page_and_data: tuple[str, dict]) -> None:
    (data,) = read_explorer(page_and_data[0])
    for method, e in case["explanations"].items():
        combined = e.combined()
        assert len(data["maps"][method]) == len(e)
        for k, entries in enumerate(data["maps"][method]):
            assert list(entries) == [*e.targets, "combined"]
            for name, entry in entries.items():
                m = combined[k] if name == "combined" else e.map(name)[k]
                assert (entry["lo"], entry["hi"]) == (m.min().item(), m.max().item())
                assert entry["zero"] == (not m.any().item())
                if entry["zero"]:
                    assert entry["png"] is None and entry["crop"] is None
                    continue
                q = decode(entry, data["grid"])
                value = entry["lo"] + q / 255.0 * (entry["hi"] - entry["lo"])
                step = (entry["hi"] - entry["lo"]) / 255
                tolerance = 0.5 + (MAP_TOLERANCE if lossy(entry) else 0)  # the drise maps are smooth: lossy
                np.testing.assert_allclose(value, m.numpy(), rtol=0, atol=tolerance * step * (1 + 1e-4))
                if lossy(entry):
                    continue
                x0, y0, x1, y1 = entry["crop"]  # tight: every edge of the crop holds a level above zero
                assert q[y0, x0:x1].any() and q[y1 - 1, x0:x1].any() and q[y0:y1, x0].any() and q[y0:y1, x1 - 1].any()


def test_zero_and_constant_maps() -> None:
    d = Detections(torch.tensor([[1.0, 1.0, 5.0, 5.0]]), torch.tensor([0.5]), torch.tensor([0]))
    maps = torch.stack([torch.zeros(8, 8), torch.full((8, 8), 3.0), -torch.ones(8, 8)])[None]
    data = explorer_image(torch.rand(3, 8, 8), {"odam": Explanation(d, ("score", "left", "top"), maps)}, name="a")
    entries = data["maps"]["odam"][0]
    assert [(entries[t]["zero"], entries[t]["lo"], entries[t]["png"]) for t in ("score", "left", "top")] == [
        (True, 0.0, None), (False, 3.0, None), (False, -1.0, None)]
    assert entries["combined"]["zero"]  # every map is constant: nothing to normalise


def test_maps_are_resized_to_the_grid(case: dict) -> None:
    data = crowd_image(case, map_side=64, image_side=100)
    assert data["grid"] == [64, 64]
    photo = Image.open(io.BytesIO(base64.b64decode(data["image"].split(",", 1)[1])))
    assert photo.size == (100, 100)
    for k, box in enumerate(case["explanations"]["odam"].detections.boxes.tolist()):
        q = decode(data["maps"]["odam"][k]["score"], data["grid"])
        y, x = np.unravel_index(q.argmax(), q.shape)  # the peak is at the box centre, in grid pixels
        assert abs((x + 0.5) * 5 - (box[0] + box[2]) / 2) <= 5 and abs((y + 0.5) * 5 - (box[1] + box[3]) / 2) <= 5
        assert q.max() > 200  # below 255: lo and hi are the full-resolution map's, and downscaling averages the peak


def test_suppression_record(case: dict, page_and_data: tuple[str, dict]) -> None:
    (data,) = read_explorer(page_and_data[0])
    decisions, nms = case["decisions"], data["nms"]
    assert nms["method"] == "odam-nms" and nms["evidence"] == "correlation" and nms["grid"] == [50, 50]
    assert nms["settings"]["iou_threshold"] == 0.5 and nms["settings"]["low"] == 0.2
    keep = decisions.keep.tolist()
    assert len(nms["candidates"]) == len(decisions)
    fates = {"kept": 0, "suppressed": 0, "capped": 0}
    for i, c in enumerate(nms["candidates"]):
        assert c["index"] == i and c["rule"] == decisions.rules[i]
        assert c["suppressor"] == decisions.suppressor[i].item()
        assert c["detection"] == (keep.index(i) if i in keep else None)
        fate = "kept" if i in keep else "capped" if decisions.rules[i] == "capped" else "suppressed"
        assert c["fate"] == fate
        fates[fate] += 1
        iou, evidence = decisions.iou[i].item(), decisions.evidence[i].item()
        assert c["iou"] == (None if np.isnan(iou) else pytest.approx(iou))
        assert c["evidence"] == (None if np.isnan(evidence) else pytest.approx(evidence))
        q = decode(c["map"], nms["grid"])
        value = c["map"]["lo"] + q / 255.0 * (c["map"]["hi"] - c["map"]["lo"])
        np.testing.assert_allclose(value, case["candidate_maps"][i].numpy(), atol=c["map"]["hi"] / 500)
    assert fates == {"kept": 5, "suppressed": 2, "capped": 1}  # the case is what it says
    # the pairs, by brute force: kept, one class, IoU > 0.3
    boxes, labels = decisions.candidates.boxes, decisions.candidates.labels
    corr = correlation(case["candidate_maps"].flatten(1))
    expected = {(a, b): (box_iou(boxes[[a]], boxes[[b]]).item(), corr[a, b].item())
                for i, a in enumerate(keep) for b in keep[i + 1:]
                if labels[a] == labels[b] and box_iou(boxes[[a]], boxes[[b]]).item() > 0.3}
    assert {(p["a"], p["b"]): (pytest.approx(p["iou"]), pytest.approx(p["correlation"], abs=1e-6))
            for p in nms["pairs"]} == expected
    assert {(0, 1)} == {tuple(sorted(k)) for k in expected}  # front left and front centre overlap, both kept
    assert all(p["detections"] == [keep.index(p["a"]), keep.index(p["b"])] for p in nms["pairs"])


def test_escaping(page_and_data: tuple[str, dict]) -> None:
    page, _ = page_and_data
    assert XSS not in page
    blocks = re.findall(r'<script type="application/json" id="([^"]+)">(.*?)</script>', page, re.DOTALL)
    assert [b[0] for b in blocks] == ["odam-page", "odam-image-0"]
    for _, text in blocks:
        assert "<" not in text and ">" not in text and "&" not in text
        assert XSS in json.dumps(json.loads(text), ensure_ascii=False)  # the names are there, as text
    assert page.lower().count("</script") == page.lower().count("<script")
    (data,) = read_explorer(page)
    assert data["name"] == f"crowd {XSS}.png" and data["nms"]["candidates"][4]["name"] == XSS


def test_title_is_escaped() -> None:
    page = explorer_html([], title=XSS)
    assert XSS not in page and f"<title>{html.escape(XSS)}</title>" in page


def _explanation(n: int, size: tuple[int, int] = (8, 8), shift: float = 0.0) -> Explanation:
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * n).reshape(n, 4) + shift
    return Explanation(Detections(boxes, torch.ones(n), torch.zeros(n, dtype=torch.int64)), ("score",),
                       torch.rand(n, 1, *size))


@pytest.mark.parametrize(("image", "explanations", "kw", "message"), [
    (torch.rand(8, 8), {"odam": _explanation(1)}, {}, r"expected image of shape \[3, H, W\], got \(8, 8\)"),
    (torch.rand(3, 8, 8), {}, {}, "at least one method"),
    (torch.rand(3, 8, 8), {"odam": _explanation(2), "drise": _explanation(1)}, {},
     "explanation 'drise' has 1 detections, 'odam' has 2"),
    (torch.rand(3, 8, 8), {"odam": _explanation(1), "gradcam": _explanation(1, shift=1.0)}, {},
     "explanation 'gradcam' explains other boxes than 'odam'"),
    (torch.rand(3, 8, 9), {"odam": _explanation(1)}, {}, "maps of 'odam' are 8x8, the image is 8x9"),
    (torch.rand(3, 8, 8), {"odam": "maps"}, {}, "explanation 'odam' is a str, not an Explanation"),
    (torch.rand(3, 8, 8), {"odam": _explanation(1)}, {"map_side": 0}, "map_side must be a positive int, got 0"),
])
def test_errors_are_one_line(image: torch.Tensor, explanations: dict, kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        explorer_image(image, explanations, name="a", **kw)
    assert "\n" not in str(info.value)


def test_non_finite_maps_are_refused() -> None:
    e = _explanation(2)
    e.maps[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"maps of 'odam' detection 1 hold values that are not finite"):
        explorer_image(torch.rand(3, 8, 8), {"odam": e}, name="a")


def test_decisions_must_match_the_detections(case: dict) -> None:
    odam_only = {"odam": case["explanations"]["odam"]}
    fewer = {"odam": Explanation(case["explanations"]["odam"].detections[:2], TARGETS,
                                 case["explanations"]["odam"].maps[:2])}
    with pytest.raises(ValueError, match="decisions keep 5 candidates, the explanations have 2 detections"):
        explorer_image(case["image"], fewer, name="a", decisions=case["decisions"])
    reordered = case["explanations"]["odam"]
    reordered = {"odam": Explanation(reordered.detections[[1, 0, 2, 3, 4]], TARGETS, reordered.maps)}
    with pytest.raises(ValueError, match=r"detection k must be candidate decisions.keep\[k\]"):
        explorer_image(case["image"], reordered, name="a", decisions=case["decisions"])
    with pytest.raises(ValueError, match=r"expected candidate_maps of shape \[8, h, w\], got \(7, 50, 50\)"):
        explorer_image(case["image"], odam_only, name="a", decisions=case["decisions"],
                       candidate_maps=case["candidate_maps"][:7])
    data = explorer_image(case["image"], odam_only, name="a", decisions=case["decisions"])
    assert data["nms"]["grid"] is None and all(c["map"] is None for c in data["nms"]["candidates"])
    assert data["nms"]["pairs"][0]["correlation"] is None


def test_page_errors_and_empty_images() -> None:
    empty = explorer_image(torch.rand(3, 8, 8), {"odam": _explanation(0)}, name="none")
    assert empty["detections"] == [] and empty["maps"] == {"odam": []}
    page = explorer_html([empty], title="t", errors=[{"image": "b.png", "error": "unreadable"}])
    assert read_explorer(page) == [json.loads(json.dumps(empty))]
    with pytest.raises(ValueError, match="image 0 is not a dict of explorer_image"):
        explorer_html([{"name": "x"}], title="t")
    with pytest.raises(ValueError, match="an error must be a dict with image and error"):
        explorer_html([], title="t", errors=[{"image": "b.png"}])


def test_explanation_html_is_an_iframe_of_the_page() -> None:
    e = _explanation(1, size=(6, 10))
    frame = explanation_html(None, e, class_names=["thing"])
    match = re.fullmatch(r'<iframe srcdoc="([^"]*)" [^>]*></iframe>', frame)
    assert match is not None
    (data,) = read_explorer(html.unescape(match.group(1)))
    assert (data["width"], data["height"], data["detections"][0]["name"]) == (10, 6, "thing")
    grey = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["image"].split(",", 1)[1]))))
    assert abs(float(grey.mean()) - 127.5) < 2


def test_script_and_style_are_small() -> None:
    root = Path(odam.__file__).parent / "viz"
    sizes = [(root / name).stat().st_size for name in ("explorer.js", "explorer.css")]
    assert sum(sizes) < 100_000


def test_size_budget_for_local_maps() -> None:
    """100 detections x 6 maps of ODAM-like local maps (a Gaussian blob per detection) on a 480x640 image stay
    within 3 MB per image."""
    g = torch.Generator().manual_seed(0)
    n, height, width = 100, 480, 640
    size = torch.rand(n, 2, generator=g) * 100 + 30
    centre = torch.rand(n, 2, generator=g) * torch.tensor([width, height])
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    spread = 0.3 * size.amax(1)
    yy = torch.arange(height, dtype=torch.float32)[:, None]
    xx = torch.arange(width, dtype=torch.float32)[None]
    base = torch.stack([torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)) * (k + 1)
                        for k, ((cx, cy), s) in enumerate(zip(centre.tolist(), spread.tolist(), strict=True))])
    maps = base[:, None].expand(n, len(TARGETS), height, width)  # one blob per detection, for every target
    e = Explanation(Detections(boxes, torch.rand(n, generator=g), torch.ones(n, dtype=torch.int64)), TARGETS, maps)
    photo = torch.rand(3, 12, 16, generator=g).repeat_interleave(40, 1).repeat_interleave(40, 2)
    page = explorer_html([explorer_image(photo, {"odam": e}, name="big")], title="size")
    block = re.search(r'id="odam-image-0">(.*?)</script>', page, re.DOTALL).group(1)
    assert len(block.encode()) <= 3_000_000


def gradcam_like(n: int, height: int, width: int, g: torch.Generator) -> torch.Tensor:
    """Grad-CAM-like smooth maps ``Tensor[n, T, H, W]`` over the whole image: a coarse random field, bilinearly
    upsampled, ReLU'd."""
    coarse = torch.randn(n * len(TARGETS), 1, 15, 20, generator=g)
    maps = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return maps.relu().view(n, len(TARGETS), height, width)


def levels(maps: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """The 8-bit levels q the explorer stores of ``maps`` (``Tensor[M, H, W]``) on ``grid`` (rows, columns)."""
    small = torch.nn.functional.interpolate(maps[:, None], size=grid, mode="bilinear", antialias=True,
                                            align_corners=False)[:, 0]
    lo, hi = maps.flatten(1).amin(1)[:, None, None], maps.flatten(1).amax(1)[:, None, None]
    return ((small - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def test_smooth_maps_are_lossy_within_the_tolerance() -> None:
    g = torch.Generator().manual_seed(1)
    maps = gradcam_like(2, 240, 320, g)
    boxes = torch.tensor([[10.0, 10.0, 90.0, 90.0], [100.0, 50.0, 200.0, 150.0]])
    e = Explanation(Detections(boxes, torch.tensor([0.9, 0.8]), torch.ones(2, dtype=torch.int64)), TARGETS, maps)
    data = explorer_image(torch.rand(3, 240, 320), {"gradcam": e}, name="smooth")
    assert data["grid"] == [256, 192]
    for k in range(2):
        expected = levels(torch.cat([maps[k], e.combined()[k][None]]), (192, 256))
        for t, entry in enumerate(data["maps"]["gradcam"][k].values()):
            assert lossy(entry)  # smaller than lossless
            error = np.abs(decode(entry, data["grid"]).astype(int) - expected[t])
            assert error.max() <= MAP_TOLERANCE and error.mean() < 2.5


def test_local_maps_stay_lossless() -> None:
    """ODAM-like local maps (small blobs) are small losslessly: their levels round-trip exactly."""
    boxes = torch.tensor([[20.0, 30.0, 44.0, 54.0], [150.0, 100.0, 180.0, 126.0], [250.0, 180.0, 300.0, 230.0]])
    maps = odam_like(boxes, 240, 320)
    e = Explanation(Detections(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.ones(3, dtype=torch.int64)), TARGETS, maps)
    data = explorer_image(torch.rand(3, 240, 320), {"odam": e}, name="local")
    for k, entries in enumerate(data["maps"]["odam"]):
        expected = levels(torch.cat([maps[k], e.combined()[k][None]]), (192, 256))
        for t, entry in enumerate(entries.values()):
            assert not lossy(entry)
            assert np.array_equal(decode(entry, data["grid"]), expected[t])


def test_size_budget_for_smooth_maps() -> None:
    """100 detections x 6 maps of Grad-CAM-like smooth maps over the whole image on a 480x640 image stay within
    3 MB per image (lossy, within MAP_TOLERANCE)."""
    g = torch.Generator().manual_seed(0)
    n, height, width = 100, 480, 640
    centre = torch.rand(n, 2, generator=g) * torch.tensor([width - 100, height - 100]) + 50
    boxes = torch.cat([centre - 30, centre + 30], 1)
    e = Explanation(Detections(boxes, torch.rand(n, generator=g), torch.ones(n, dtype=torch.int64)), TARGETS,
                    gradcam_like(n, height, width, g))
    photo = torch.rand(3, 12, 16, generator=g).repeat_interleave(40, 1).repeat_interleave(40, 2)
    page = explorer_html([explorer_image(photo, {"gradcam": e}, name="big")], title="size")
    block = re.search(r'id="odam-image-0">(.*?)</script>', page, re.DOTALL).group(1)
    assert len(block.encode()) <= 3_000_000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_tensors_on_the_gpu(case: dict) -> None:
    on_cpu = crowd_image(case)
    gpu = {m: Explanation(e.detections.to("cuda"), e.targets, e.maps.cuda()) for m, e in case["explanations"].items()}
    on_gpu = explorer_image(case["image"].cuda(), gpu, name=case["name"], class_names=CLASS_NAMES)
    assert on_gpu["detections"] == on_cpu["detections"]
    for m in gpu:
        for a, b in zip(on_gpu["maps"][m], on_cpu["maps"][m], strict=True):
            for t in a:
                assert a[t]["crop"] == b[t]["crop"] and a[t]["lo"] == pytest.approx(b[t]["lo"])
