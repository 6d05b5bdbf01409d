"""The explorer page (odam.viz.explorer) in a real browser: Debian's chromium driven by Playwright, from file://.

Every test fails on a console error, a page error or a dialog (the XSS strings in the data must stay text).
Click latency on a page of 20 images x 100 detections is printed (``pytest -s``) and written under tmp, never
asserted. With ``ODAM_SCREENSHOT=path`` the main view's screenshot is also saved there.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.test_explorer import XSS, crowd_case, crowd_image, decode, odam_like

from odam.structures import TARGETS, Detections, Explanation
from odam.viz.colors import OPACITY, heat_alpha
from odam.viz.explorer import explorer_html, explorer_image, read_explorer

SKIP = "the browser tests need Debian's chromium: apt-get install chromium (and pip install playwright)"


def _missing() -> None:
    """Skip, with how to install the browser; fail instead where ``ODAM_REQUIRE_BROWSER`` is set (``.ci/run``
    installs chromium and sets it, so CI never passes without these tests)."""
    if os.environ.get("ODAM_REQUIRE_BROWSER"):
        pytest.fail(f"ODAM_REQUIRE_BROWSER is set, but {SKIP.removeprefix('the browser tests need ')} is missing")
    pytest.skip(SKIP)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing()
    executable = shutil.which("chromium")
    if executable is None:
        _missing()
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def crowd(tmp_path_factory: pytest.TempPathFactory) -> dict:
    case = crowd_case()
    empty = Explanation(Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)), ("score",),
                        torch.zeros(0, 1, 40, 60))
    images = [crowd_image(case), explorer_image(torch.rand(3, 40, 60), {"odam": empty}, name="empty.png")]
    page = explorer_html(images, title=f"crowd {XSS}", errors=[{"image": XSS, "error": f"unreadable {XSS}"}])
    path = tmp_path_factory.mktemp("explorer") / "crowd.html"
    path.write_text(page, encoding="utf-8")
    return {"case": case, "data": read_explorer(page)[0], "url": path.as_uri()}


def _open(browser: Any, url: str, problems: list[str]) -> tuple[Any, Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()

    def on_dialog(dialog: Any) -> None:
        problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", on_dialog)
    page.goto(url)
    return context, page


@pytest.fixture
def page(browser: Any, crowd: dict) -> Iterator[Any]:
    problems: list[str] = []
    context, opened = _open(browser, crowd["url"], problems)
    wait_maps(opened, crowd["data"]["detections"][0]["index"])
    yield opened
    opened.wait_for_timeout(50)  # let a late error surface
    context.close()
    assert problems == []


def wait_maps(page: Any, k: int) -> None:
    page.wait_for_selector(f'#odam-maps[data-detection="{k}"][data-state="ready"]', state="attached", timeout=10_000)


def free_point(boxes: list[list[float]], k: int) -> tuple[float, float]:
    """A point inside box k, 4 pixels from its edges, inside no other box."""
    x1, y1, x2, y2 = boxes[k]
    for y in np.linspace(y1 + 4, y2 - 4, 15):
        for x in np.linspace(x1 + 4, x2 - 4, 15):
            if not any(b[0] - 4 <= x <= b[2] + 4 and b[1] - 4 <= y <= b[3] + 4 for j, b in enumerate(boxes) if j != k):
                return float(x), float(y)
    raise AssertionError(f"box {k} has no free point")


def click_box(page: Any, data: dict, k: int) -> None:
    x, y = free_point([d["box"] for d in data["detections"]], k)
    stage = page.locator("#odam-stage").bounding_box()
    page.mouse.click(stage["x"] + x / data["width"] * stage["width"], stage["y"] + y / data["height"] * stage["height"])


def canvases(page: Any, where: str = "#odam-maps") -> list[dict]:
    """The heat canvases under ``where``: their data attributes, size and alpha channel (``alpha``, ``[h, w]``)."""
    shown = page.eval_on_selector_all(
        f"{where} canvas.odam-heat",
        """cs => cs.map(c => {
          let alpha = "";
          if (c.width) {
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            for (let i = 3; i < d.length; i += 4) alpha += String.fromCharCode(d[i]);
          }
          return {...c.dataset, width: c.width, height: c.height, alpha: btoa(alpha)};
        })""")
    for c in shown:
        c["alpha"] = np.frombuffer(base64.b64decode(c["alpha"]), np.uint8).reshape(c["height"], c["width"])
    return shown


def expected_alpha(entry: dict, grid: list[int], scale: tuple[float, float], opacity: float = OPACITY) -> np.ndarray:
    q = decode(entry, grid).astype(np.float64)
    value = entry["lo"] + q / 255 * (entry["hi"] - entry["lo"])
    span = scale[1] - scale[0]
    t = np.clip((value - scale[0]) / span, 0, 1) if span > 0 else np.zeros_like(value)
    weight = heat_alpha(np.floor(t * 255 + 0.5) / 255, opacity)  # the page looks t up at round(255 t)
    return np.floor(weight * 255 + 0.5)


def shared_scale(entries: dict) -> tuple[float, float]:
    lo = min(0.0, *(e["lo"] for t, e in entries.items() if t != "combined"))
    return lo, max(e["hi"] for t, e in entries.items() if t != "combined")


def check_maps(page: Any, data: dict, k: int, *, normalised: bool = False) -> None:
    """The maps container shows detection k's maps of the main method, in the colours they should have."""
    wait_maps(page, k)
    entries = data["maps"]["odam"][k]
    shown = canvases(page)
    assert [c["target"] for c in shown] == list(entries)
    for c in shown:
        entry = entries[c["target"]]
        assert (c["method"], c["detection"], c["zero"]) == ("odam", str(k), str(entry["zero"]).lower())
        assert (float(c["lo"]), float(c["hi"])) == (entry["lo"], entry["hi"])
        if normalised:
            scale = (entry["lo"], entry["hi"])
        else:
            scale = (0.0, 1.0) if c["target"] == "combined" else shared_scale(entries)
        assert (float(c["scaleLo"]), float(c["scaleHi"])) == pytest.approx(scale)
        assert [c["width"], c["height"]] == data["grid"]
        alpha = c["alpha"].astype(np.float64)
        assert np.abs(alpha - expected_alpha(entry, data["grid"], scale)).max() <= 1


def test_click_a_box_or_a_row_shows_its_maps(page: Any, crowd: dict) -> None:
    data = crowd["data"]
    check_maps(page, data, 0)  # the first detection is shown on opening
    for k in (2, 1, 4, 3):
        click_box(page, data, k)
        check_maps(page, data, k)
        assert page.get_attribute(f'#odam-boxes [data-index="{k}"]', "class") == "odam-box selected"
    for k in (1, 0):
        page.click(f'#odam-table tbody tr[data-index="{k}"]')
        check_maps(page, data, k)
        assert "selected" in page.get_attribute(f'#odam-table tr[data-index="{k}"]', "class")


def test_arrows_follow_the_table_order(page: Any, crowd: dict) -> None:
    data = crowd["data"]
    page.click('#odam-table th[data-sort="name"]')  # by label, then index: the other class (#4) last
    order = page.eval_on_selector_all("#odam-table tbody tr", "rs => rs.map(r => Number(r.dataset.index))")
    assert order == sorted(range(len(data["detections"])), key=lambda k: (data["detections"][k]["name"], k))
    page.click(f'#odam-table tbody tr[data-index="{order[0]}"]')
    wait_maps(page, order[0])
    for k in order[1:]:
        page.keyboard.press("ArrowRight")
        wait_maps(page, k)
    page.keyboard.press("ArrowRight")  # at the end it stays
    wait_maps(page, order[-1])
    page.keyboard.press("ArrowLeft")
    wait_maps(page, order[-2])
    page.click('#odam-table th[data-sort="score"]')  # descending first
    order = page.eval_on_selector_all("#odam-table tbody tr", "rs => rs.map(r => Number(r.dataset.index))")
    assert order == sorted(range(len(data["detections"])), key=lambda k: -data["detections"][k]["score"])
    page.click('#odam-table th[data-sort="score"]')
    reverse = page.eval_on_selector_all("#odam-table tbody tr", "rs => rs.map(r => Number(r.dataset.index))")
    assert reverse == order[::-1]


def test_threshold_hides_exactly_the_detections_below_it(page: Any, crowd: dict) -> None:
    scores = [d["score"] for d in crowd["data"]["detections"]]
    for threshold in (0.8, 0.9, 0.0, 1.0):
        page.eval_on_selector("#odam-threshold", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                              str(threshold))
        expected = sorted(k for k, s in enumerate(scores) if s < threshold)
        for selector in ("#odam-boxes .odam-box", "#odam-table tbody tr"):
            hidden = page.eval_on_selector_all(selector,
                                               "ns => ns.filter(n => n.hidden).map(n => Number(n.dataset.index))")
            assert sorted(hidden) == expected
        assert page.locator("#odam-boxes .odam-box:visible").count() == len(scores) - len(expected)


def test_per_map_normalisation_changes_the_scale(page: Any, crowd: dict) -> None:
    data = crowd["data"]
    page.click('#odam-table tbody tr[data-index="3"]')
    check_maps(page, data, 3)
    bar = page.locator("#odam-colorbar")
    lo, hi = shared_scale(data["maps"]["odam"][3])
    assert (float(bar.get_attribute("data-lo")), float(bar.get_attribute("data-hi"))) == (lo, hi)
    assert bar.get_attribute("data-normalised") == "false"
    assert page.locator("#odam-colorbar .odam-ticks span").all_text_contents()[0] == "0"
    page.check("#odam-normalise")
    check_maps(page, data, 3, normalised=True)
    assert (bar.get_attribute("data-lo"), bar.get_attribute("data-hi"), bar.get_attribute("data-normalised")) == (
        "0", "1", "true")
    assert "normalised" in page.inner_text("#odam-colorbar .odam-unit")


def test_opacity_scales_the_alpha(page: Any, crowd: dict) -> None:
    data = crowd["data"]
    page.eval_on_selector("#odam-opacity", "el => { el.value = '0.5'; el.dispatchEvent(new Event('input')); }")
    entries = data["maps"]["odam"][0]
    for c in canvases(page):
        scale = (0.0, 1.0) if c["target"] == "combined" else shared_scale(entries)
        alpha = c["alpha"].astype(np.float64)
        assert np.abs(alpha - expected_alpha(entries[c["target"]], data["grid"], scale, 0.5)).max() <= 1


def test_zero_map_is_labelled(page: Any, crowd: dict) -> None:
    page.click('#odam-table tbody tr[data-index="4"]')
    wait_maps(page, 4)
    top = page.locator('#odam-maps canvas[data-target="top"]')
    assert top.get_attribute("data-zero") == "true"
    label = page.locator("#odam-maps .odam-panel", has=page.locator('canvas[data-target="top"]')).locator(".odam-zero")
    assert label.is_visible() and label.inner_text() == "all zero"
    assert page.locator("#odam-maps .odam-zero").count() == 1


def test_compare_methods(page: Any, crowd: dict) -> None:
    data = crowd["data"]
    page.click('#odam-mode button[data-mode="compare"]')
    page.wait_for_selector('#odam-maps[data-mode="compare"][data-state="ready"]', state="attached")
    shown = canvases(page)
    assert [(c["method"], c["target"]) for c in shown] == [("odam", "score"), ("drise", "score")]
    for c in shown:  # each normalised on its own range
        entry = data["maps"][c["method"]][0]["score"]
        alpha = c["alpha"].astype(np.float64)
        assert np.abs(alpha - expected_alpha(entry, data["grid"], (entry["lo"], entry["hi"]))).max() <= 1
    assert page.is_disabled("#odam-normalise")
    page.select_option("#odam-target", "left")
    page.wait_for_selector('#odam-maps[data-mode="compare"][data-state="ready"]', state="attached")
    assert [(c["method"], c["target"]) for c in canvases(page)] == [("odam", "left")]
    assert "drise has no left map" in page.inner_text("#odam-maps")
    page.keyboard.press("ArrowRight")  # navigation keeps the mode
    page.wait_for_selector('#odam-maps[data-detection="1"][data-mode="compare"][data-state="ready"]', state="attached")
    page.click('#odam-mode button[data-mode="attribute"]')
    page.select_option("#odam-method", "drise")
    page.wait_for_selector('#odam-maps[data-mode="attribute"][data-state="ready"]', state="attached")
    assert [(c["method"], c["target"]) for c in canvases(page)] == [("drise", "score"), ("drise", "combined")]


def test_suppression_view_lists_the_decisions(page: Any, crowd: dict) -> None:
    decisions = crowd["case"]["decisions"]
    keep = decisions.keep.tolist()
    page.click("#odam-tab-suppression")
    assert page.get_attribute("body", "data-view") == "suppression"
    rows = page.eval_on_selector_all(
        "#odam-nms-table tbody tr", "rs => rs.map(r => ({...r.dataset, fate_text: r.cells[4].textContent}))")
    assert len(rows) == len(decisions)
    for i, row in enumerate(rows):
        s = decisions.suppressor[i].item()
        fate = "kept" if i in keep else "capped" if decisions.rules[i] == "capped" else "suppressed"
        assert (row["candidate"], row["fate"], row["rule"], row["suppressor"]) == (str(i), fate, decisions.rules[i],
                                                                                  str(s))
        text = {"kept": f"kept as #{keep.index(i)}" if i in keep else "", "capped": "capped",
                "suppressed": f"suppressed by #{keep.index(s)}" if s in keep else "suppressed"}[fate]
        assert row["fate_text"] == text
    suppressed = [i for i in range(len(decisions)) if decisions.suppressor[i] >= 0]
    for c in suppressed:
        s = decisions.suppressor[c].item()
        page.click(f'#odam-nms-table tbody tr[data-candidate="{c}"]')
        page.wait_for_selector(f'#odam-nms-maps[data-candidate="{c}"][data-suppressor="{s}"][data-state="ready"]',
                               state="attached")
        shown = canvases(page, "#odam-nms-maps")
        assert [int(x["candidate"]) for x in shown] == [c, s]
        nms = crowd["data"]["nms"]
        for x in shown:
            entry = nms["candidates"][int(x["candidate"])]["map"]
            alpha = x["alpha"].astype(np.float64)
            assert np.abs(alpha - expected_alpha(entry, nms["grid"], (entry["lo"], entry["hi"]))).max() <= 1
        assert page.locator("#odam-nms-maps .odam-panel").count() == 2
        for panel in page.locator("#odam-nms-maps .odam-panel").all():
            assert panel.locator(".odam-box").count() == 2  # both boxes on each map
    page.check("#odam-pairs-only")
    assert page.is_hidden("#odam-nms-table") and page.is_visible("#odam-pairs-table")
    pairs = page.eval_on_selector_all("#odam-pairs-table tbody tr", "rs => rs.map(r => [r.dataset.a, r.dataset.b])")
    assert pairs == [[str(p["a"]), str(p["b"])] for p in crowd["data"]["nms"]["pairs"]] == [["0", "1"]]
    page.click('#odam-pairs-table tbody tr[data-a="0"]')
    page.wait_for_selector('#odam-nms-maps[data-candidate="0"][data-other="1"][data-suppressor="-1"][data-state="ready"]',
                           state="attached")
    page.click("#odam-tab-explain")
    assert page.is_visible("#odam-explain-view") and page.is_hidden("#odam-nms-view")


def test_untrusted_text_stays_text(page: Any, crowd: dict) -> None:
    assert page.title() == f"crowd {XSS}"
    assert page.locator("img[src='x']").count() == 0
    assert page.inner_text("#odam-title") == f"crowd {XSS}"
    assert page.inner_text("#odam-errors") == f"{XSS}: unreadable {XSS}"
    assert XSS in page.inner_text("#odam-images")
    assert page.inner_text('#odam-table tbody tr[data-index="4"] td:nth-child(2)') == XSS
    page.click("#odam-tab-suppression")
    assert page.inner_text('#odam-nms-table tbody tr[data-candidate="4"] td:nth-child(2)') == XSS


def test_other_image_and_empty_image(page: Any, crowd: dict) -> None:
    page.click('#odam-images button[data-image="1"]')
    assert page.get_attribute("body", "data-image") == "1"
    assert page.get_attribute('#odam-images button[data-image="1"]', "aria-current") == "true"
    assert page.inner_text("#odam-empty") == "No detections in this image."
    assert page.locator("#odam-maps canvas").count() == 0 and page.is_hidden("#odam-tab-suppression")
    page.keyboard.press("ArrowRight")
    page.click('#odam-images button[data-image="0"]')
    check_maps(page, crowd["data"], 0)


def test_screenshot(browser: Any, tmp_path: Path) -> None:
    """The main view of a real explanation: the bundled synthcrowd-fcos's detections above 0.5 on the bundled
    scene, explained by ODAM (the page docs/img/explorer.png shows)."""
    import odam
    from odam.data.photos import SCENE
    from odam.models import configure

    detector = odam.load_detector("synthcrowd-fcos")
    configure(detector.model, score_threshold=0.5)
    explanation = odam.ODAM(detector).explain(SCENE, TARGETS)
    data = explorer_image(explanation.image, {"odam": explanation}, name="synthcrowd-scene.png",
                          class_names=detector.categories)
    path = tmp_path / "explorer.html"
    path.write_text(explorer_html([data], title="odam explain"), encoding="utf-8")
    problems: list[str] = []
    context, page = _open(browser, path.as_uri(), problems)
    try:
        wait_maps(page, 0)
        click_box(page, data, 1)
        wait_maps(page, 1)
        shot = tmp_path / "explorer.png"
        page.screenshot(path=str(shot))
        if os.environ.get("ODAM_SCREENSHOT"):
            page.screenshot(path=os.environ["ODAM_SCREENSHOT"])
    finally:
        context.close()
    assert problems == []
    assert shot.stat().st_size > 10_000


_TIMED_CLICK = """async ([selector, k]) => {
  const maps = document.getElementById("odam-maps");
  const done = () => maps.dataset.detection === String(k) && maps.dataset.state === "ready";
  const start = performance.now();
  document.querySelector(selector).click();
  await new Promise((resolve) => {
    if (done()) return resolve();
    const watch = new MutationObserver(() => { if (done()) { watch.disconnect(); resolve(); } });
    watch.observe(maps, { attributes: true });
  });
  const ready = performance.now() - start;
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  return [ready, performance.now() - start];
}"""


def test_click_latency_on_a_large_page(browser: Any, tmp_path: Path) -> None:
    """20 images x 100 detections x 6 maps: time from a click to the maps drawn (printed and written, not asserted)."""
    g = torch.Generator().manual_seed(0)
    n, height, width = 100, 240, 320
    size = torch.rand(n, 2, generator=g) * 60 + 20
    centre = torch.rand(n, 2, generator=g) * torch.tensor([width, height])
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    d = Detections(boxes, torch.rand(n, generator=g), torch.randint(1, 4, (n,), generator=g))
    data = explorer_image(torch.rand(3, height, width, generator=g), {"odam": Explanation(d, TARGETS,
                                                                      odam_like(boxes, height, width))}, name="0")
    images = [{**data, "name": f"image {i:02d}.jpg"} for i in range(20)]
    path = tmp_path / "large.html"
    path.write_text(explorer_html(images, title="latency"), encoding="utf-8")
    problems: list[str] = []
    context, page = _open(browser, path.as_uri(), problems)
    try:
        wait_maps(page, 0)
        first_show, clicks = [], []
        for i in range(1, 20):  # each image shown for the first time: parse its JSON, build its table, draw #0
            first_show.append(page.evaluate(_TIMED_CLICK, [f'#odam-images button[data-image="{i}"]', 0]))
        for k in range(1, 60, 3):
            clicks.append(page.evaluate(_TIMED_CLICK, [f'#odam-table tbody tr[data-index="{k}"]', k]))
        for k in range(2, 40, 4):
            clicks.append(page.evaluate(_TIMED_CLICK, [f'#odam-boxes .odam-box[data-index="{k}"]', k]))
    finally:
        context.close()
    assert problems == []
    def stats(times: list[list[float]]) -> dict:
        ready, painted = zip(*times, strict=True)
        return {"n": len(times), "ready_median": statistics.median(ready), "ready_max": max(ready),
                "painted_median": statistics.median(painted), "painted_max": max(painted)}

    report = {"page_bytes": path.stat().st_size, "images": 20, "detections": n, "maps_per_detection": 6,
              "click_ms": stats(clicks), "first_show_of_an_image_ms": stats(first_show)}
    (tmp_path / "latency.json").write_text(json.dumps(report, indent=2))
    print(f"\nexplorer latency on a {report['page_bytes'] / 1e6:.1f} MB page of 20 images x 100 detections x 6 maps, "
          "ms from the click to the maps drawn (ready) and to the next frame (painted), median / max:")
    for what in ("click_ms", "first_show_of_an_image_ms"):
        r = report[what]
        print(f"  {what}: ready {r['ready_median']:.1f} / {r['ready_max']:.1f}, "
              f"painted {r['painted_median']:.1f} / {r['painted_max']:.1f} (n={r['n']})")
