import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import odam.viz.overlays
from odam._image import to_uint8
from odam.structures import TARGETS, Detections, Explanation
from odam.viz import overlay, panel, save_overlay, save_panel

GREEN = [0, 255, 0]


def outline(h: int, w: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Reference: a 2-px outline of the pixel block rows[0]..rows[1]-1 x cols[0]..cols[1]-1, by slicing."""
    mask = np.zeros((h + 20, w + 20), dtype=bool)  # padded so blocks past the border can be drawn, then cut
    (r1, r2), (c1, c2) = (r + 10 for r in rows), (c + 10 for c in cols)
    mask[r1:r2, c1:c2] = True
    mask[r1 + 2 : r2 - 2, c1 + 2 : c2 - 2] = False
    return mask[10 : 10 + h, 10 : 10 + w]


@pytest.fixture
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(3, 10, 12)


# --- overlay -------------------------------------------------------------------------------------------


def test_alpha_zero_returns_the_image(image):
    out = overlay(image, torch.rand(10, 12), alpha=0.0)
    assert out.shape == (10, 12, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, to_uint8(image))


def test_box_outline_pixels_and_nothing_else(image):
    out = overlay(image, torch.rand(10, 12), torch.tensor([2.0, 3.0, 8.0, 9.0]), alpha=0.0)
    mask = outline(10, 12, rows=(3, 9), cols=(2, 8))
    assert mask.sum() == 6 * 6 - 2 * 2
    assert (out[mask] == GREEN).all()
    np.testing.assert_array_equal(out[~mask], to_uint8(image)[~mask])


@pytest.mark.parametrize(
    ("box", "rows", "cols"),
    [
        ([1.6, 1.2, 5.0, 6.3], (1, 7), (1, 5)),  # fractional edges: every pixel the box touches
        ([-5.0, -4.0, 3.0, 4.0], (-4, 4), (-5, 3)),  # past the top-left corner: only the visible edges
        ([7.0, 6.0, 30.0, 30.0], (6, 30), (7, 30)),  # past the bottom-right corner
        ([-3.0, -3.0, 40.0, 40.0], (-3, 40), (-3, 40)),  # around the whole image: nothing visible
        ([20.0, 20.0, 30.0, 30.0], (20, 30), (20, 30)),  # outside the image
        ((4, 4, 5, 5), (4, 5), (4, 5)),  # one pixel, given as a tuple of ints
    ],
)
def test_box_is_clipped_to_the_image(image, box, rows, cols):
    out = overlay(image, torch.rand(10, 12), box, alpha=0.0)
    mask = outline(10, 12, rows, cols)
    assert (out[mask] == GREEN).all()
    np.testing.assert_array_equal(out[~mask], to_uint8(image)[~mask])


def test_box_color(image):
    out = overlay(image, torch.rand(10, 12), [0, 0, 4, 4], alpha=0.0, box_color=(255, 0, 128))
    assert out[0, 0].tolist() == [255, 0, 128]


def test_hottest_and_coldest_pixels_get_the_colormap_ends():
    heat = torch.zeros(6, 7)
    heat[2, 3], heat[5, 6] = 5.0, -1.0
    out = overlay(torch.zeros(3, 6, 7), heat, alpha=0.5)
    jet = matplotlib.colormaps["jet"]
    assert out[2, 3].tolist() == np.rint(0.5 * 255 * np.array(jet(1.0)[:3])).tolist() == [64, 0, 0]
    assert out[5, 6].tolist() == np.rint(0.5 * 255 * np.array(jet(0.0)[:3])).tolist() == [0, 0, 64]


def test_blend_formula_for_every_pixel():
    torch.manual_seed(1)
    img = torch.full((3, 5, 6), 0.25)
    img[1] = 0.75
    heat = torch.rand(5, 6) * 7 + 3
    out = overlay(img, heat, alpha=0.3, cmap="viridis")
    unit = ((heat - heat.min()) / (heat.max() - heat.min())).numpy().astype(np.float64)
    colours = matplotlib.colormaps["viridis"](unit)[..., :3]
    expected = np.rint((0.7 * img.permute(1, 2, 0).double().numpy() + 0.3 * colours) * 255)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))


def test_normalize_ignores_offset_and_scale(image):
    heat = torch.rand(10, 12)
    np.testing.assert_array_equal(overlay(image, heat), overlay(image, 3 * heat - 10))


def test_constant_heatmap_is_zero(image):
    np.testing.assert_array_equal(
        overlay(image, torch.full((10, 12), 4.0)), overlay(image, torch.zeros(10, 12))
    )
    out = overlay(torch.zeros(3, 10, 12), torch.full((10, 12), 4.0), alpha=1.0)
    assert (out == np.rint(255 * np.array(matplotlib.colormaps["jet"](0.0)[:3]))).all()


def test_without_normalize_values_are_used_as_is():
    heat = torch.full((2, 2), 0.5)
    out = overlay(torch.zeros(3, 2, 2), heat, alpha=1.0, normalize=False)
    assert (out == np.rint(255 * np.array(matplotlib.colormaps["jet"](0.5)[:3]))).all()


def test_heatmap_with_grad_and_colormap_object(image):
    heat = torch.rand(10, 12, requires_grad=True)
    out = overlay(image, heat, cmap=matplotlib.colormaps["gray"], alpha=1.0)
    assert out[..., 0].max() == 255 and out[..., 0].min() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heatmap": torch.rand(10, 11)}, "heatmap shape (10, 11) does not match image shape (10, 12)"),
        ({"heatmap": torch.rand(1, 10, 12)}, "heatmap shape (1, 10, 12) does not match image shape (10, 12)"),
        ({"heatmap": np.zeros((10, 12))}, "expected heatmap to be a tensor, got ndarray"),
        ({"alpha": 1.5}, "expected alpha in [0, 1], got 1.5"),
        ({"cmap": "nope"}, "unknown colormap 'nope'"),
        (
            {"normalize": False},
            "expected heatmap values in [0, 1] with normalize=False, got min 0.0 and max 3.0",
        ),
        ({"box": [1, 2, 3]}, "expected box as four finite numbers (x1, y1, x2, y2), got [1.0, 2.0, 3.0]"),
        ({"box": [0, 0, float("inf"), 1]}, "expected box as four finite numbers"),
        ({"box": [5, 0, 4, 1]}, "expected box with x1 <= x2 and y1 <= y2, got [5.0, 0.0, 4.0, 1.0]"),
        ({"box": [0, 0, 4, 4], "box_color": (0, 256, 0)}, "expected box_color as three ints in 0..255"),
    ],
)
def test_overlay_rejects_bad_input(image, kwargs, message):
    heat = torch.zeros(10, 12)
    heat[0, 0] = 3.0
    kwargs = {"heatmap": heat, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        overlay(image, **kwargs)


def test_overlay_rejects_nonfinite_heatmap(image):
    heat = torch.zeros(10, 12)
    heat[1, 1] = float("nan")
    with pytest.raises(ValueError, match="expected a finite heatmap, got 1 non-finite values"):
        overlay(image, heat)


def test_overlay_validates_the_image():
    with pytest.raises(ValueError, match=re.escape("expected image of shape [3, H, W], got (10, 12)")):
        overlay(torch.rand(10, 12), torch.rand(10, 12))


def test_save_overlay_round_trips(image, tmp_path):
    heat, box = torch.rand(10, 12), [1, 1, 6, 6]
    path = save_overlay(tmp_path / "sub" / "o.png", image, heat, box, alpha=0.7, cmap="magma")
    assert path == tmp_path / "sub" / "o.png"
    with Image.open(path) as png:
        assert png.format == "PNG"
        np.testing.assert_array_equal(np.asarray(png), overlay(image, heat, box, alpha=0.7, cmap="magma"))


# --- panel ---------------------------------------------------------------------------------------------


def explanation(h: int = 10, w: int = 12, targets: tuple[str, ...] = TARGETS) -> Explanation:
    torch.manual_seed(2)
    dets = Detections(
        torch.tensor([[0.0, 0.0, 5.0, 5.0], [2.0, 3.0, 9.0, 8.0]]),
        torch.tensor([0.87, 0.5]),
        torch.tensor([0, 2]),
    )
    return Explanation(dets, targets, torch.randn(2, len(targets), h, w))


def test_panel_layout_and_titles(image):
    fig = panel(image, explanation(), 1, class_names=["person", "car", "dog"])
    assert [ax.get_title() for ax in fig.axes] == [*TARGETS, "combined"]
    assert fig.get_suptitle() == "dog 0.50"
    assert not any(ax.axison for ax in fig.axes)
    assert panel(image, explanation(), 0).get_suptitle() == "0 0.87"
    assert panel(image, explanation(), 0, class_names={0: "person"}).get_suptitle() == "person 0.87"


def test_panel_shows_each_map_and_the_combined_map(image):
    e = explanation(targets=("score", "right"))
    fig = panel(image, e, 1)
    shown = [np.asarray(ax.get_images()[0].get_array()) for ax in fig.axes]
    box = e.detections.boxes[1]
    assert len(shown) == 3
    np.testing.assert_array_equal(shown[0], overlay(image, e.maps[1, 0], box))
    np.testing.assert_array_equal(shown[1], overlay(image, e.maps[1, 1], box))
    np.testing.assert_array_equal(shown[2], overlay(image, e.combined()[1], box, normalize=False))
    assert not np.array_equal(shown[0], shown[1])


@pytest.mark.parametrize("index", [2, -1])
def test_panel_index_out_of_range(image, index):
    with pytest.raises(ValueError, match=f"index {index} out of range for an explanation of 2 detections"):
        panel(image, explanation(), index)


def test_panel_unknown_label(image):
    with pytest.raises(ValueError, match=re.escape("label 2 has no entry in class_names (2 names)")):
        panel(image, explanation(), 1, class_names=["person", "car"])


def test_panel_map_size_must_match_image(image):
    with pytest.raises(
        ValueError, match=re.escape("heatmap shape (5, 6) does not match image shape (10, 12)")
    ):
        panel(image, explanation(h=5, w=6), 0)


def test_save_panel_writes_png(image, tmp_path):
    e = explanation()
    expected = np.rint(panel(image, e, 0).get_size_inches() * 80).astype(int).tolist()
    path = save_panel(tmp_path / "a" / "b" / "p.png", image, e, 0, dpi=80)
    assert path == tmp_path / "a" / "b" / "p.png"
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert list(png.size) == expected
        assert png.width > 4 * png.height  # six square-ish columns side by side


def test_save_panel_follows_the_image_aspect(tmp_path):
    wide = save_panel(tmp_path / "w.png", torch.rand(3, 10, 40), explanation(10, 40), 0)
    tall = save_panel(tmp_path / "t.png", torch.rand(3, 40, 10), explanation(40, 10), 0)
    with Image.open(wide) as w, Image.open(tall) as t:
        assert w.width == t.width
        assert t.height > 2 * w.height


def test_viz_does_not_import_pyplot():
    src = str(Path(odam.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = "import sys, odam.viz; assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# --- memory (issue 15) ---------------------------------------------------------------------------------


def traced_peak(fn) -> int:
    """Peak bytes numpy (and Python) allocate during ``fn()``; torch's own allocations are not traced."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_overlay_blends_in_bands_not_in_float64_at_full_resolution(monkeypatch):
    monkeypatch.setattr(odam.viz.overlays, "_CHUNK_PIXELS", 1024, raising=False)
    torch.manual_seed(3)
    img, heat = torch.rand(3, 500, 600), torch.rand(500, 600)
    box = [-1.0, 10.0, 550.0, 480.0]
    peak = traced_peak(lambda: overlay(img, heat, box))
    assert peak < 4 * 500 * 600  # the uint8 result is 3 bytes a pixel; it used to take 150 more
    # and the bands give what one full-resolution float64 pass gives
    monkeypatch.setattr(odam.viz.overlays, "_CHUNK_PIXELS", 10**9)
    np.testing.assert_array_equal(overlay(img, heat, box), overlay(img, heat, box))


def test_overlay_bands_equal_the_formula(monkeypatch):
    monkeypatch.setattr(odam.viz.overlays, "_CHUNK_PIXELS", 7)  # bands of one row, 6 pixels wide
    test_blend_formula_for_every_pixel()


def test_huge_box_is_clipped_without_a_mask_of_the_image(image):
    out = overlay(image, torch.rand(10, 12), [-1e300, -1e300, 1e300, 1e300], alpha=0.0)
    np.testing.assert_array_equal(out, to_uint8(image))
    out = overlay(image, torch.rand(10, 12), [3.0, -1e300, 5.0, 1e300], alpha=0.0)
    mask = np.zeros((10, 12), dtype=bool)
    mask[:, 3:5] = True  # a box two pixels wide is all outline
    assert (out[mask] == GREEN).all()
    np.testing.assert_array_equal(out[~mask], to_uint8(image)[~mask])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_normalized_is_normalize_maps_bit_for_bit(dtype):
    from odam.structures import normalize_maps

    torch.manual_seed(4)
    for heat in (torch.randn(7, 9) * 100, torch.full((3, 4), 2.5), torch.tensor([[0.0, 1e-40], [0.0, 0.0]]),
                 torch.tensor([[-3.0, 5.0]])):
        heat = heat.to(dtype)
        assert torch.equal(odam.viz.overlays._normalized(heat), normalize_maps(heat)), heat


def big_explanation(h: int, w: int, targets: tuple[str, ...] = ("score", "left")) -> Explanation:
    torch.manual_seed(5)
    dets = Detections(torch.tensor([[0.2 * w, 0.1 * h, 0.6 * w, 0.9 * h]]), torch.tensor([0.7]), torch.tensor([1]))
    return Explanation(dets, targets, torch.randn(1, len(targets), h, w))


def test_panel_draws_a_large_image_at_the_resolution_drawn():
    from odam.structures import normalize_maps

    torch.manual_seed(6)
    img, e = torch.rand(3, 600, 900), big_explanation(600, 900)
    fig = panel(img, e, 0, dpi=100)
    shown = [np.asarray(ax.get_images()[0].get_array()) for ax in fig.axes]
    assert [a.shape for a in shown] == [(200, 300, 3)] * 3  # a 3-inch column at 100 dpi
    resize = torch.nn.functional.interpolate
    small = resize(img[None], size=(200, 300), mode="bilinear", antialias=True)[0].clamp(0, 1)
    units = [*normalize_maps(e.maps[0]), e.combined()[0]]
    box = e.detections.boxes[0] / 3
    for got, unit in zip(shown, units, strict=True):
        heat = resize(unit[None, None], size=(200, 300), mode="bilinear", antialias=True)[0, 0].clamp(0, 1)
        np.testing.assert_array_equal(got, overlay(small, heat, box, normalize=False))
    assert [a.shape for a in (np.asarray(ax.get_images()[0].get_array()) for ax in panel(img, e, 0, dpi=50).axes)
            ] == [(100, 150, 3)] * 3


def test_panel_does_not_blend_at_full_resolution():
    peaks = []
    for h, w in [(600, 900), (1200, 1800)]:
        img, e = torch.rand(3, h, w), big_explanation(h, w, ("score", "left", "right"))
        peaks.append(traced_peak(lambda img=img, e=e: panel(img, e, 0)))
    # what grows with the image: under half a byte a pixel (matplotlib's own few MB do not); it used to take 90
    assert peaks[1] - peaks[0] < 0.5 * (1200 * 1800 - 600 * 900)


def test_save_panel_passes_its_dpi(tmp_path):
    img, e = torch.rand(3, 600, 900), big_explanation(600, 900)
    path = save_panel(tmp_path / "p.png", img, e, 0, dpi=40)
    with Image.open(path) as png:
        assert png.width == round(3 * 3.0 * 40)


@pytest.mark.parametrize("dpi", [0, -1.0, float("nan"), "100", True])
def test_panel_checks_dpi(image, dpi):
    with pytest.raises(ValueError, match=re.escape(f"expected dpi to be a positive number, got {dpi!r}")):
        panel(image, explanation(), 0, dpi=dpi)


def test_viz_sets_no_pixel_limit_of_its_own(tmp_path, monkeypatch):
    """The maps already have the image's size: a path over load_image's default limit still draws."""
    real = odam.viz.overlays.load_image

    def tiny_default(image, **kwargs):  # load_image as if its default max_pixels were 10
        return real(image, **{"max_pixels": 10, **kwargs})

    monkeypatch.setattr(odam.viz.overlays, "load_image", tiny_default)
    path = tmp_path / "i.png"
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(path)
    assert len(panel(path, explanation(), 0).axes) == 6
    assert overlay(path, torch.rand(10, 12)).shape == (10, 12, 3)
